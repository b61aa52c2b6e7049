//! What the console reads of the pools: every open server connection
//! (SHOW SERVERS, WAIT_CLOSE) and each pool's traffic counters (SHOW
//! STATS). Sessions touch only atomics here on their hot path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One open server connection.
#[derive(Debug)]
pub struct ServerInfo {
    /// The proxy's id of it (grows with every connection opened).
    pub id: u64,
    /// Node name.
    pub node: Arc<str>,
    /// `host:port`.
    pub address: Arc<str>,
    /// Role it logged in as.
    pub user: String,
    /// Database.
    pub database: String,
    /// When it logged in.
    pub connected_at: SystemTime,
    /// The backend's process id.
    pub pid: i32,
    /// Over TLS.
    pub tls: bool,
    /// Checked out by a session.
    pub active: AtomicBool,
}

/// Every open server connection, by id.
pub type ServerList = Arc<Mutex<BTreeMap<u64, Arc<ServerInfo>>>>;

/// Keeps a connection in the [`ServerList`] for as long as it lives.
#[derive(Debug)]
pub struct Listed {
    /// Its row.
    pub info: Arc<ServerInfo>,
    list: ServerList,
}

impl Listed {
    /// Lists `info` until the guard drops.
    pub fn new(list: &ServerList, info: ServerInfo) -> Listed {
        let info = Arc::new(info);
        list.lock().expect("poisoned").insert(info.id, info.clone());
        Listed {
            info,
            list: list.clone(),
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.list.lock().expect("poisoned").remove(&self.info.id);
    }
}

/// Traffic through one pool (one node, user, database), PgBouncer's
/// SHOW STATS counters. Times in microseconds.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Transactions (a ReadyForQuery back to idle).
    pub xact_count: AtomicU64,
    /// Batches answered (one ReadyForQuery each).
    pub query_count: AtomicU64,
    /// Bytes from clients sent to the node.
    pub received: AtomicU64,
    /// Bytes from the node sent to clients.
    pub sent: AtomicU64,
    /// Time in transactions.
    pub xact_time: AtomicU64,
    /// Time in batches.
    pub query_time: AtomicU64,
    /// Time clients waited for a connection.
    pub wait_time: AtomicU64,
}

/// A copy of [`PoolStats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`PoolStats`].
    pub xact_count: u64,
    /// See [`PoolStats`].
    pub query_count: u64,
    /// See [`PoolStats`].
    pub received: u64,
    /// See [`PoolStats`].
    pub sent: u64,
    /// See [`PoolStats`].
    pub xact_time: u64,
    /// See [`PoolStats`].
    pub query_time: u64,
    /// See [`PoolStats`].
    pub wait_time: u64,
}

impl PoolStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            xact_count: get(&self.xact_count),
            query_count: get(&self.query_count),
            received: get(&self.received),
            sent: get(&self.sent),
            xact_time: get(&self.xact_time),
            query_time: get(&self.query_time),
            wait_time: get(&self.wait_time),
        }
    }
}

impl std::ops::AddAssign for StatsSnapshot {
    fn add_assign(&mut self, o: StatsSnapshot) {
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_time += o.xact_time;
        self.query_time += o.query_time;
        self.wait_time += o.wait_time;
    }
}
