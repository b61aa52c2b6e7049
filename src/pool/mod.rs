//! Server connection pools: one bb8 pool per node, user and database, with
//! our own `ManageConnection` over raw protocol streams.
//!
//! bb8 creates connections in a background task and only reports its
//! errors to an error sink, so a checkout from a dead node would wait the
//! whole `checkout_timeout`. Each pool therefore keeps the last connect
//! error and a watch counter of failures: a checkout that sees a failure
//! while it waits gives up at once with that error.

mod conn;
pub mod prepared;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8::{ErrorSink, ManageConnection, Pool, PooledConnection, RunError};
use tokio::sync::watch;

pub use conn::{BackendConn, ConnectSpec};

use crate::auth::AuthError;
use crate::topology::Node;

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The node did not accept a TCP connection.
    #[error("node {node} is unreachable: {source}")]
    Connect {
        node: Arc<str>,
        #[source]
        source: std::io::Error,
    },
    /// The node refused the login or spoke nonsense.
    #[error("node {node}: {source}")]
    Login {
        node: Arc<str>,
        #[source]
        source: AuthError,
    },
    /// Every connection stayed busy for `checkout_timeout`.
    #[error("no server connection to node {node} became free within {timeout:?}")]
    Timeout { node: Arc<str>, timeout: Duration },
    /// An idle connection turned out closed.
    #[error("node {node} closed an idle connection")]
    Closed { node: Arc<str> },
}

impl PoolError {
    /// The node is unreachable (as opposed to refusing a login or busy).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PoolError::Connect { .. } | PoolError::Closed { .. })
    }
}

/// Creates and checks connections for one (node, user, database).
pub struct Manager {
    spec: ConnectSpec,
    ids: Arc<AtomicU64>,
}

impl ManageConnection for Manager {
    type Connection = BackendConn;
    type Error = PoolError;

    async fn connect(&self) -> Result<BackendConn, PoolError> {
        BackendConn::connect(&self.spec, self.ids.fetch_add(1, Ordering::Relaxed)).await
    }

    async fn is_valid(&self, conn: &mut BackendConn) -> Result<(), PoolError> {
        if conn.idle_and_open() {
            Ok(())
        } else {
            Err(PoolError::Closed {
                node: self.spec.node.clone(),
            })
        }
    }

    fn has_broken(&self, conn: &mut BackendConn) -> bool {
        conn.is_broken()
    }
}

/// The last connection failure of a pool, kept in a form that can be
/// handed to every checkout that waited for it.
#[derive(Debug, Clone)]
enum Failure {
    Unreachable(String),
    Login { code: String, message: String },
}

impl Failure {
    fn into_error(self, node: Arc<str>) -> PoolError {
        match self {
            Failure::Unreachable(text) => PoolError::Connect {
                node,
                source: std::io::Error::other(text),
            },
            Failure::Login { code, message } => PoolError::Login {
                node,
                source: AuthError::Rejected { code, message },
            },
        }
    }
}

/// Records connect failures of one pool for waiting checkouts.
#[derive(Debug, Clone)]
struct FailureSink {
    last: Arc<Mutex<Option<Failure>>>,
    failures: watch::Sender<u64>,
}

impl ErrorSink<PoolError> for FailureSink {
    fn sink(&self, error: PoolError) {
        let failure = match error {
            PoolError::Closed { .. } | PoolError::Timeout { .. } => return,
            PoolError::Connect { source, .. } => Failure::Unreachable(source.to_string()),
            PoolError::Login {
                source: AuthError::Rejected { code, message },
                ..
            } => Failure::Login { code, message },
            PoolError::Login { source, .. } => Failure::Login {
                code: crate::protocol::sqlstate::REJECTED_CONNECTION.into(),
                message: source.to_string(),
            },
        };
        *self.last.lock().expect("poisoned") = Some(failure);
        self.failures.send_modify(|n| *n += 1);
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<PoolError>> {
        Box::new(self.clone())
    }
}

struct NodePool {
    pool: Pool<Manager>,
    sink: FailureSink,
    node: Arc<str>,
}

/// A checked-out server connection; dropping it returns it to its pool.
pub type Pooled = PooledConnection<'static, Manager>;

/// Key of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    address: String,
    node: Arc<str>,
    user: String,
    database: String,
}

/// Counts of one node's server connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Checked out by a client.
    pub active: u32,
    /// Waiting in the pool.
    pub idle: u32,
}

/// All pools.
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<NodePool>>>,
    size: u32,
    timeout: Duration,
    ids: Arc<AtomicU64>,
    node_tls: crate::tls::NodeTls,
}

impl Pools {
    /// Pools of at most `size` connections each; a checkout waits at most
    /// `timeout`.
    pub fn new(size: u32, timeout: Duration, node_tls: crate::tls::NodeTls) -> Pools {
        Pools {
            pools: Mutex::new(HashMap::new()),
            size,
            timeout,
            ids: Arc::new(AtomicU64::new(1)),
            node_tls,
        }
    }

    fn pool_for(
        &self,
        node: &Node,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Arc<NodePool> {
        let key = PoolKey {
            address: node.address(),
            node: node.name.clone(),
            user: user.to_owned(),
            database: database.to_owned(),
        };
        let mut pools = self.pools.lock().expect("poisoned");
        pools
            .entry(key)
            .or_insert_with_key(|key| {
                let sink = FailureSink {
                    last: Arc::new(Mutex::new(None)),
                    failures: watch::channel(0).0,
                };
                let manager = Manager {
                    spec: ConnectSpec {
                        node: key.node.clone(),
                        address: key.address.clone(),
                        host: node.host.clone(),
                        user: key.user.clone(),
                        database: key.database.clone(),
                        password: password.map(str::to_owned),
                        timeout: self.timeout,
                        tls_mode: node.tls,
                        tls: self.node_tls.for_mode(node.tls),
                    },
                    ids: self.ids.clone(),
                };
                let pool = Pool::builder()
                    .max_size(self.size)
                    .min_idle(None)
                    .connection_timeout(self.timeout)
                    .retry_connection(false)
                    .test_on_check_out(true)
                    .idle_timeout(Some(Duration::from_secs(300)))
                    .error_sink(Box::new(sink.clone()))
                    .build_unchecked(manager);
                Arc::new(NodePool {
                    pool,
                    sink,
                    node: key.node.clone(),
                })
            })
            .clone()
    }

    /// Checks out a connection to `node` as `user` on `database`.
    ///
    /// # Errors
    /// [`PoolError::Connect`]/[`PoolError::Login`] as soon as a connection
    /// attempt fails while this checkout waits; [`PoolError::Timeout`] when
    /// all connections stay busy.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn checkout(
        &self,
        node: &Node,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Result<Pooled, PoolError> {
        let np = self.pool_for(node, user, database, password);
        let mut failures = np.sink.failures.subscribe();
        failures.mark_unchanged();
        let get = np.pool.get_owned();
        tokio::select! {
            got = get => got.map_err(|e| match e {
                RunError::User(e) => e,
                RunError::TimedOut => PoolError::Timeout { node: np.node.clone(), timeout: self.timeout },
            }),
            _ = failures.changed() => {
                let last = np.sink.last.lock().expect("poisoned").clone();
                Err(last
                    .unwrap_or_else(|| Failure::Unreachable("connection failed".into()))
                    .into_error(np.node.clone()))
            }
        }
    }

    /// Active and idle connection counts per node name.
    pub fn counts(&self) -> HashMap<Arc<str>, PoolCounts> {
        let pools: Vec<Arc<NodePool>> = self
            .pools
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        let mut out: HashMap<Arc<str>, PoolCounts> = HashMap::new();
        for np in pools {
            let state = np.pool.state();
            let c = out.entry(np.node.clone()).or_default();
            c.idle += state.idle_connections;
            c.active += state.connections - state.idle_connections;
        }
        out
    }
}
