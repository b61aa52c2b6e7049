//! The shared context every task hangs off: configuration and topology
//! snapshots, the router, the pools and the cancel registry. Built by
//! `app`; no globals anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pool::Pools;
use crate::router::Router;
use crate::session::cancel::CancelRegistry;
use crate::topology::Topology;

/// Bytes of statement text the routing cache may hold.
pub const ROUTER_CACHE_BYTES: u64 = 32 << 20;

/// Everything sessions and background tasks share.
pub struct State {
    /// The configuration in force.
    pub config: ArcSwap<Config>,
    /// Nodes, roles and health.
    pub topology: Arc<ArcSwap<Topology>>,
    /// The statement classifier (rebuilt on reload).
    pub router: ArcSwap<Router>,
    /// Server connection pools.
    pub pools: Pools,
    /// Cancel keys handed to clients.
    pub cancels: CancelRegistry,
    /// Fires when the proxy starts shutting down.
    pub shutdown: CancellationToken,
    next_session: AtomicI32,
}

impl State {
    /// A fresh state for `config`.
    pub fn new(config: Config, shutdown: CancellationToken) -> State {
        let topology = Topology::from_config(&config, None);
        let router = Router::new(&config.routing.write_functions, ROUTER_CACHE_BYTES);
        let pools = Pools::new(config.pool.size, config.pool.checkout_timeout.0);
        State {
            config: ArcSwap::from_pointee(config),
            topology: Arc::new(ArcSwap::from_pointee(topology)),
            router: ArcSwap::from_pointee(router),
            pools,
            cancels: CancelRegistry::default(),
            shutdown,
            next_session: AtomicI32::new(1),
        }
    }

    /// A new session id, also the process id the client is told.
    pub fn next_session_id(&self) -> i32 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}
