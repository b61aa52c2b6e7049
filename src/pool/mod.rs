//! Server connection pools: one bb8 pool per node, user and database, with
//! our own `ManageConnection` over raw protocol streams.
//!
//! In front of each bb8 pool sits a small stack of connections that
//! sessions gave back: the next checkout takes the newest one with one
//! uncontended lock, without bb8's timer, statistics and waiter machinery.
//! bb8 still creates, validates, times out and reaps connections; a
//! connection goes back to bb8 itself whenever a checkout is waiting there,
//! so the stack never hides a free connection from a waiter.
//!
//! bb8 creates connections in a background task and only reports its
//! errors to an error sink, so a checkout from a dead node would wait the
//! whole `checkout_timeout`. Each pool therefore keeps the last connect
//! error and a watch counter of failures: a checkout that sees a failure
//! while it waits gives up at once with that error.

mod conn;
pub mod prepared;
mod servers;
mod stream;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, Pool, PooledConnection, QueueStrategy, RunError};
use tokio::sync::watch;

pub use conn::{BackendConn, ConnState, ConnectSpec};
pub use servers::{Listed, PoolStats, ServerInfo, ServerList, StatsSnapshot};

use crate::auth::AuthError;
use crate::config::Endpoint;

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
    servers: ServerList,
    /// Connections being opened now (SHOW POOLS' sv_login).
    logging_in: Arc<AtomicU32>,
}

/// Counts a login in progress for as long as it lasts.
struct LoggingIn<'a>(&'a AtomicU32);

impl Drop for LoggingIn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ManageConnection for Manager {
    type Connection = BackendConn;
    type Error = PoolError;

    async fn connect(&self) -> Result<BackendConn, PoolError> {
        self.logging_in.fetch_add(1, Ordering::Relaxed);
        let _login = LoggingIn(&self.logging_in);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut conn = BackendConn::connect(&self.spec, id).await?;
        conn.proto.listed = Some(Listed::new(
            &self.servers,
            ServerInfo {
                id,
                node: self.spec.node.clone(),
                address: self.spec.address.clone(),
                user: self.spec.user.clone(),
                database: self.spec.database.clone(),
                connected_at: std::time::SystemTime::now(),
                pid: conn.login.pid,
                tls: self.spec.tls.is_some(),
                active: std::sync::atomic::AtomicBool::new(false),
            },
        ));
        Ok(conn)
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

/// Connections given back more than this long ago leave the stack for
/// bb8 at the next sweep; bb8's idle timeout then closes them if nobody
/// needs them.
pub const STACK_IDLE: Duration = Duration::from_secs(30);

/// bb8's handle on a checked-out connection (boxed: it moves between the
/// pool's stack and a session several times per transaction, and a
/// pointer moves cheaper than its ~190 bytes).
type BbConn = Box<PooledConnection<'static, Manager>>;

/// The pool of one (node, user, database).
pub struct NodePool {
    pool: Pool<Manager>,
    sink: FailureSink,
    node: Arc<str>,
    timeout: Duration,
    /// Connections sessions gave back, newest last, with when.
    stack: Mutex<Vec<(BbConn, Instant)>>,
    /// Checkouts waiting inside bb8.
    waiting: AtomicUsize,
    /// When each checkout now waiting inside bb8 began (SHOW POOLS'
    /// maxwait).
    waits: Mutex<Vec<Instant>>,
    /// Its user and database.
    key: PoolKey,
    /// Traffic through it.
    pub stats: PoolStats,
    /// Connections being opened.
    logging_in: Arc<AtomicU32>,
    /// RECONNECT: connections with a smaller id are closed when they come
    /// free.
    retire_below: AtomicU64,
    /// Sessions pinned to one of its connections, by
    /// [`crate::pins::PinReason::ALL`].
    pub pinned: [AtomicU32; crate::pins::PinReason::ALL.len()],
    /// What its connections log in with.
    credential: Option<crate::auth::Credential>,
}

/// A checked-out server connection. It goes back to the pool only through
/// [`Pooled::release`], and only when it is clean (idle, nothing unread,
/// no untracked session state); dropped any other way (an error, a panic,
/// a session that ended mid-transaction) it is closed, so no client ever
/// inherits another's transaction or session state.
pub struct Pooled {
    conn: Option<BbConn>,
    home: Arc<NodePool>,
}

impl Deref for Pooled {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Pooled {
    /// The pool it came from.
    pub fn pool(&self) -> &Arc<NodePool> {
        &self.home
    }

    /// Gives it back for the next client if it is clean; closes it if not.
    /// (In place: what is left is an empty handle.)
    pub fn release(&mut self) {
        self.release_at(Instant::now());
    }

    /// [`Pooled::release`], the caller having read the clock `at`.
    pub fn release_at(&mut self, at: Instant) {
        if let Some(mut conn) = self.conn.take() {
            if !conn.is_clean() {
                conn.mark_broken();
            }
            self.home.give_back(conn, at);
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Not released: its state is unknown.
            conn.mark_broken();
            self.home.give_back(conn, Instant::now());
        }
    }
}

impl NodePool {
    /// Checks out a connection: the newest given back, else one from bb8.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn checkout(self: &Arc<Self>) -> Result<Pooled, PoolError> {
        if let Some(conn) = self.pop_open() {
            return Ok(self.wrap(conn));
        }
        // Announce the wait before looking again: a connection given back
        // from now on goes to bb8, where this checkout will find it.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if let Some(conn) = self.pop_open() {
            return Ok(self.wrap(conn));
        }
        let mut failures = self.sink.failures.subscribe();
        failures.mark_unchanged();
        let started = Instant::now();
        self.waits.lock().expect("poisoned").push(started);
        let _waited = Waited(self, started);
        tokio::select! {
            got = self.pool.get_owned() => got.map(|c| self.wrap(Box::new(c))).map_err(|e| match e {
                RunError::User(e) => e,
                RunError::TimedOut => PoolError::Timeout { node: self.node.clone(), timeout: self.timeout },
            }),
            _ = failures.changed() => {
                let last = self.sink.last.lock().expect("poisoned").clone();
                Err(last
                    .unwrap_or_else(|| Failure::Unreachable("connection failed".into()))
                    .into_error(self.node.clone()))
            }
        }
    }

    fn wrap(self: &Arc<Self>, mut conn: BbConn) -> Pooled {
        conn.proto.uses += 1;
        if let Some(listed) = &conn.proto.listed {
            listed.info.active.store(true, Ordering::Relaxed);
        }
        Pooled {
            conn: Some(conn),
            home: self.clone(),
        }
    }

    /// Checks out one particular connection, if it is idle here and was
    /// not checked out since its `uses` count: a session's own sequence
    /// state (`currval`, `lastval`) is on it.
    pub fn checkout_exact(self: &Arc<Self>, id: u64, uses: u64) -> Option<Pooled> {
        let conn = {
            let mut stack = self.stack.lock().expect("poisoned");
            let at = stack
                .iter()
                .position(|(c, _)| c.proto.id == id && c.proto.uses == uses)?;
            stack.remove(at).0
        };
        if conn.idle_and_open() && conn.proto.id >= self.retire_below.load(Ordering::Relaxed) {
            Some(self.wrap(conn))
        } else {
            let mut conn = conn;
            conn.mark_broken();
            None
        }
    }

    /// The newest stacked connection that is still open; closed ones go
    /// back to bb8 marked broken, which drops them.
    fn pop_open(&self) -> Option<BbConn> {
        loop {
            let (mut conn, _) = self.stack.lock().expect("poisoned").pop()?;
            if conn.idle_and_open() && conn.proto.id >= self.retire_below.load(Ordering::Relaxed) {
                return Some(conn);
            }
            conn.mark_broken();
        }
    }

    fn give_back(&self, mut conn: BbConn, at: Instant) {
        if let Some(listed) = &conn.proto.listed {
            listed.info.active.store(false, Ordering::Relaxed);
        }
        if conn.proto.id < self.retire_below.load(Ordering::Relaxed) {
            conn.mark_broken(); // RECONNECT
        }
        if conn.is_broken() || self.waiting.load(Ordering::SeqCst) > 0 {
            return; // dropping it hands it to bb8 (which discards broken ones)
        }
        // Staleness is the sweep's business, not the hot path's.
        self.stack.lock().expect("poisoned").push((conn, at));
        // A checkout that started waiting meanwhile may have missed it.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let surplus = self.stack.lock().expect("poisoned").pop();
            drop(surplus);
        }
    }

    /// Hands connections stacked longer than `age` to bb8, which closes
    /// them after its idle timeout (or at once, if the node closed them).
    /// Run for every pool by [`Pools::sweep`], busy or quiet (a retired
    /// node's).
    fn sweep(&self, age: Duration) {
        let now = Instant::now();
        let stale: Vec<(BbConn, Instant)> = {
            let mut stack = self.stack.lock().expect("poisoned");
            let fresh = stack
                .iter()
                .position(|(_, at)| now.duration_since(*at) <= age)
                .unwrap_or(stack.len());
            stack.drain(..fresh).collect()
        };
        for (mut conn, _) in stale {
            if !conn.idle_and_open() {
                conn.mark_broken();
            }
        }
    }

    /// Closes every idle connection: the stacked ones and bb8's own.
    async fn close_idle(&self) {
        for (mut conn, _) in std::mem::take(&mut *self.stack.lock().expect("poisoned")) {
            conn.mark_broken();
        }
        // bb8 hands out its idle connections first; each is closed. A
        // bounded number of tries: others may be returning some meanwhile.
        for _ in 0..self.pool.state().connections {
            if self.pool.state().idle_connections == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), self.pool.get()).await {
                Ok(Ok(mut conn)) => conn.mark_broken(),
                _ => break,
            }
        }
    }

    fn counts(&self) -> PoolCounts {
        let state = self.pool.state();
        let stacked = u32::try_from(self.stack.lock().expect("poisoned").len()).unwrap_or(u32::MAX);
        PoolCounts {
            idle: state.idle_connections + stacked,
            active: state
                .connections
                .saturating_sub(state.idle_connections)
                .saturating_sub(stacked),
        }
    }
}

/// Accounts a checkout's wait in bb8 when it ends (however it ends).
struct Waited<'a>(&'a NodePool, Instant);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        let mut waits = self.0.waits.lock().expect("poisoned");
        if let Some(at) = waits.iter().position(|w| *w == self.1) {
            waits.swap_remove(at);
        }
        drop(waits);
        let micros = u64::try_from(self.1.elapsed().as_micros()).unwrap_or(u64::MAX);
        PoolStats::add(&self.0.stats.wait_time, micros);
    }
}

/// Counts a checkout waiting in bb8 for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One pool as SHOW POOLS shows it.
#[derive(Debug, Clone)]
pub struct PoolView {
    /// Node name.
    pub node: Arc<str>,
    /// Role.
    pub user: String,
    /// Database.
    pub database: String,
    /// Connections checked out.
    pub active: u32,
    /// Connections free.
    pub idle: u32,
    /// Checkouts waiting for a connection.
    pub waiting: u32,
    /// Connections being opened.
    pub logging_in: u32,
    /// How long the oldest waiting checkout has waited.
    pub max_wait: Duration,
    /// Sessions pinned to its connections, by reason (non-zero only).
    pub pinned: Vec<(crate::pins::PinReason, u32)>,
    /// Traffic.
    pub stats: StatsSnapshot,
}

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
    /// Every open pooled server connection.
    pub servers: ServerList,
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
            servers: Arc::default(),
            size,
            timeout,
            ids: Arc::new(AtomicU64::new(1)),
            node_tls,
        }
    }

    /// The pool of `user` on `database` at `node`; sessions keep it to
    /// check out without looking it up again.
    pub fn pool_for(
        &self,
        node: &Endpoint,
        user: &str,
        database: &str,
        credential: Option<&crate::auth::Credential>,
    ) -> Arc<NodePool> {
        let key = PoolKey {
            address: node.address(),
            node: node.name.clone(),
            user: user.to_owned(),
            database: database.to_owned(),
        };
        let mut pools = self.pools.lock().expect("poisoned");
        // A pool logs in with one credential: a new one (a changed
        // password, a pass-through user's new key) gets a new pool, and the
        // old one's connections close as their sessions end.
        if pools
            .get(&key)
            .is_some_and(|np| np.credential.as_ref() != credential)
        {
            pools.remove(&key);
        }
        pools
            .entry(key)
            .or_insert_with_key(|key| {
                let sink = FailureSink {
                    last: Arc::new(Mutex::new(None)),
                    failures: watch::channel(0).0,
                };
                let logging_in = Arc::new(AtomicU32::new(0));
                let manager = Manager {
                    servers: self.servers.clone(),
                    logging_in: logging_in.clone(),
                    spec: ConnectSpec {
                        node: key.node.clone(),
                        address: key.address.as_str().into(),
                        host: node.host.clone(),
                        user: key.user.clone(),
                        database: key.database.clone(),
                        credential: credential.cloned(),
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
                    .queue_strategy(QueueStrategy::Lifo)
                    .idle_timeout(Some(Duration::from_secs(300)))
                    .error_sink(Box::new(sink.clone()))
                    .build_unchecked(manager);
                Arc::new(NodePool {
                    pool,
                    sink,
                    node: key.node.clone(),
                    timeout: self.timeout,
                    stack: Mutex::new(Vec::new()),
                    waiting: AtomicUsize::new(0),
                    waits: Mutex::new(Vec::new()),
                    key: key.clone(),
                    stats: PoolStats::default(),
                    logging_in,
                    retire_below: AtomicU64::new(0),
                    pinned: Default::default(),
                    credential: credential.cloned(),
                })
            })
            .clone()
    }

    /// Moves connections stacked longer than `age` (the proxy uses
    /// [`STACK_IDLE`]) back to bb8, in every pool.
    pub fn sweep(&self, age: Duration) {
        for np in self.all() {
            np.sweep(age);
        }
    }

    /// Every pool, taken out of the map so that no lock is held while
    /// they are looked at.
    fn all(&self) -> Vec<Arc<NodePool>> {
        self.pools
            .lock()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Closes the idle server connections to `database` on every node and
    /// forgets its pools (before DROP DATABASE, which refuses while any
    /// connection is open). Connections in use stay until given back.
    pub async fn close_database(&self, database: &str) {
        let pools: Vec<Arc<NodePool>> = {
            let mut map = self.pools.lock().expect("poisoned");
            let keys: Vec<PoolKey> = map
                .keys()
                .filter(|k| k.database == database)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for pool in pools {
            pool.close_idle().await;
        }
    }

    /// Every pool, for the console.
    pub fn views(&self) -> Vec<PoolView> {
        let mut out: Vec<PoolView> = self
            .all()
            .iter()
            .map(|np| {
                let counts = np.counts();
                let max_wait = np
                    .waits
                    .lock()
                    .expect("poisoned")
                    .iter()
                    .map(Instant::elapsed)
                    .max()
                    .unwrap_or_default();
                PoolView {
                    node: np.node.clone(),
                    user: np.key.user.clone(),
                    database: np.key.database.clone(),
                    active: counts.active,
                    idle: counts.idle,
                    waiting: u32::try_from(np.waiting.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
                    logging_in: np.logging_in.load(Ordering::Relaxed),
                    max_wait,
                    pinned: crate::pins::PinReason::ALL
                        .iter()
                        .zip(&np.pinned)
                        .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    stats: np.stats.snapshot(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.database, &a.user, &a.node).cmp(&(&b.database, &b.user, &b.node)));
        out
    }

    fn matching(&self, database: Option<&str>) -> Vec<Arc<NodePool>> {
        self.all()
            .into_iter()
            .filter(|np| database.is_none_or(|db| np.key.database == db))
            .collect()
    }

    /// RECONNECT: every server connection of `database` (of every
    /// database when `None`) open now is closed: the idle ones at once,
    /// the busy ones when their session gives them back. Returns how many
    /// are to be closed.
    pub async fn reconnect(&self, database: Option<&str>) -> usize {
        let below = self.ids.load(Ordering::Relaxed);
        for np in self.matching(database) {
            np.retire_below.store(below, Ordering::Relaxed);
            np.close_idle().await;
        }
        self.retiring(database)
    }

    /// Connections RECONNECT asked to close that are still open
    /// (WAIT_CLOSE waits for none).
    pub fn retiring(&self, database: Option<&str>) -> usize {
        let pools = self.matching(database);
        self.servers
            .lock()
            .expect("poisoned")
            .values()
            .filter(|s| {
                pools.iter().any(|np| {
                    np.node == s.node
                        && np.key.user == s.user
                        && np.key.database == s.database
                        && s.id < np.retire_below.load(Ordering::Relaxed)
                })
            })
            .count()
    }

    /// Active and idle connection counts per node name.
    pub fn counts(&self) -> HashMap<Arc<str>, PoolCounts> {
        let mut out: HashMap<Arc<str>, PoolCounts> = HashMap::new();
        for np in self.all() {
            let counts = np.counts();
            let c = out.entry(np.node.clone()).or_default();
            c.idle += counts.idle;
            c.active += counts.active;
        }
        out
    }
}
