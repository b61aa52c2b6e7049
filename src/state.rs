//! The shared context every task hangs off: configuration and topology
//! snapshots, the router, the pools and the cancel registry. Built by
//! `app`; no globals anywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::router::{Facts, Knowledge, Router};
use crate::topology::Topology;

/// Bytes of statement text the routing cache may hold.
pub const ROUTER_CACHE_BYTES: u64 = 32 << 20;

/// Why new writes are held (bits of [`State::writes_held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HoldReason {
    /// A switchover or failover this proxy runs (or asked Patroni for).
    Switchover = 1,
    /// Patroni is changing the leader.
    Patroni = 2,
}

/// Everything sessions and background tasks share.
pub struct State {
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// The configuration in force.
    pub config: Arc<ArcSwap<Config>>,
    /// Nodes, roles and health.
    pub topology: Arc<ArcSwap<Topology>>,
    /// The statement classifier (rebuilt on reload).
    pub router: ArcSwap<Router>,
    /// Server connection pools.
    pub pools: Pools,
    /// Cancel keys handed to clients.
    pub cancels: CancelRegistry,
    /// TLS towards clients, when configured.
    pub tls: ArcSwap<Option<crate::tls::ServerTls>>,
    /// TLS towards nodes.
    pub node_tls: crate::tls::NodeTls,
    /// SCRAM secrets of configured users.
    pub secrets: crate::auth::scram::Secrets,
    /// `auth.query` lookups of users proxy.yaml does not list.
    pub lookup: crate::auth::lookup::Lookup,
    /// Fires when the proxy starts shutting down.
    pub shutdown: CancellationToken,
    /// The highest WAL position of any write this proxy acknowledged
    /// (`read_your_writes: global`).
    pub global_floor: AtomicU64,
    /// Asks the catalog task to read the catalog again (after DDL, or
    /// when a statement called an unknown function).
    pub catalog_refresh: Arc<Notify>,
    /// What the catalogs said, last read.
    pub facts: ArcSwap<Facts>,
    /// Counts catalog reads (changes after each attempt).
    pub catalog_loads: watch::Sender<u64>,
    /// Why new writes are held, as [`HoldReason`] bits (0: not held).
    pub writes_held: watch::Sender<u8>,
    /// What the Patroni follower last saw (`topology.source: patroni`).
    pub patroni: arc_swap::ArcSwapOption<crate::topology::patroni::Observed>,
    /// Asks the monitor to poll the nodes now (a write found the primary
    /// fenced).
    pub topology_poll: Arc<Notify>,
    /// One failover at a time.
    pub failover_lock: tokio::sync::Mutex<()>,
    /// Sessions open per route rule they matched at startup.
    pub rule_sessions: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Databases clients have used (the catalog is read in each).
    pub databases: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Databases the catalog task has tried to read at least once
    /// (successfully or not): logins to them wait no more.
    pub catalog_tried: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Sessions pinned to a server connection.
    pub pins: crate::pins::PinCounts,
    /// Client sessions, and the console's PAUSE.
    pub clients: Arc<crate::clients::Clients>,
    /// The file RELOAD re-reads, when the proxy was started from one.
    pub config_path: std::sync::OnceLock<std::path::PathBuf>,
    next_session: AtomicI32,
}

impl State {
    /// A fresh state for `config`.
    pub fn new(
        config: Config,
        shutdown: CancellationToken,
        node_tls: crate::tls::NodeTls,
    ) -> State {
        let metrics = Arc::new(Metrics::new());
        let topology = Topology::from_config(&config, None, &metrics);
        let catalog_refresh = Arc::new(Notify::new());
        let router = Router::new(
            Knowledge::new(&config.routing.write_functions, Arc::new(Facts::default())),
            ROUTER_CACHE_BYTES,
            Some(catalog_refresh.clone()),
        );
        let pools = Pools::new(
            config.pool.size,
            config.pool.checkout_timeout.0,
            node_tls.clone(),
        );
        State {
            metrics,
            config: Arc::new(ArcSwap::from_pointee(config)),
            topology: Arc::new(ArcSwap::from_pointee(topology)),
            router: ArcSwap::from_pointee(router),
            pools,
            cancels: CancelRegistry::default(),
            secrets: crate::auth::scram::Secrets::default(),
            lookup: crate::auth::lookup::Lookup::default(),
            node_tls: node_tls.clone(),
            tls: ArcSwap::from_pointee(None),
            shutdown,
            global_floor: AtomicU64::new(0),
            catalog_refresh,
            facts: ArcSwap::from_pointee(Facts::default()),
            catalog_loads: watch::channel(0).0,
            databases: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            catalog_tried: Arc::default(),
            pins: crate::pins::PinCounts::default(),
            clients: Arc::default(),
            config_path: std::sync::OnceLock::new(),
            writes_held: watch::channel(0).0,
            patroni: arc_swap::ArcSwapOption::empty(),
            topology_poll: Arc::new(Notify::new()),
            rule_sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            failover_lock: tokio::sync::Mutex::new(()),
            next_session: AtomicI32::new(1),
        }
    }

    /// Rebuilds the router from the configuration's `write_functions` and
    /// the catalog's facts (emptying its cache).
    pub fn rebuild_router(&self) {
        let config = self.config.load();
        let router = Router::new(
            Knowledge::new(&config.routing.write_functions, self.facts.load_full()),
            ROUTER_CACHE_BYTES,
            Some(self.catalog_refresh.clone()),
        );
        self.router.store(Arc::new(router));
    }

    /// Counts a session in (`+1`) or out (`-1`) of a rule.
    pub fn count_rule_session(&self, rule: &str, delta: i64) {
        *self
            .rule_sessions
            .lock()
            .expect("poisoned")
            .entry(rule.to_owned())
            .or_default() += delta;
    }

    /// Holds (or releases) new write transactions during a switchover.
    pub fn hold_writes(&self, held: bool) {
        self.hold(HoldReason::Switchover, held);
    }

    /// Holds (or releases) new writes for `reason`; they flow when no
    /// reason holds them.
    pub fn hold(&self, reason: HoldReason, held: bool) {
        let bit = reason as u8;
        self.writes_held.send_modify(|bits| {
            if held {
                *bits |= bit;
            } else {
                *bits &= !bit;
            }
            self.metrics.writes_held.set(i64::from(*bits != 0));
        });
    }

    /// Whether `reason` holds writes now.
    pub fn held_for(&self, reason: HoldReason) -> bool {
        *self.writes_held.borrow() & reason as u8 != 0
    }

    /// Waits while writes are held, at most `limit`; false if still held.
    pub async fn writes_released(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.writes_held.subscribe();
        if *rx.borrow_and_update() == 0 {
            return true;
        }
        tokio::time::timeout(limit, rx.wait_for(|held| *held == 0))
            .await
            .is_ok()
    }

    /// A write found `old` refusing writes as read-only (fenced by a
    /// switchover, maybe another proxy's): asks the monitor to poll now and
    /// waits, at most `limit`, for another node to become the primary.
    /// Returns whether one did.
    pub async fn await_new_primary(&self, old: &str, limit: std::time::Duration) -> bool {
        self.await_topology(limit, |t| *t.primary().name != *old)
            .await
    }

    /// The primary `old` went away under a write (its connection ended,
    /// or it refuses connections): asks the monitor to poll now and waits,
    /// at most `limit`, until another node is the primary or `old` answers
    /// again. Returns whether either happened.
    pub async fn await_writable_primary(&self, old: &str, limit: std::time::Duration) -> bool {
        self.await_topology(limit, |t| {
            *t.primary().name != *old || t.primary().health.is_up()
        })
        .await
    }

    /// Asks the monitor to poll now and again, and waits, at most `limit`,
    /// until the topology satisfies `done`.
    async fn await_topology(
        &self,
        limit: std::time::Duration,
        done: impl Fn(&Topology) -> bool,
    ) -> bool {
        const LOOK: std::time::Duration = std::time::Duration::from_millis(10);
        const ASK_EVERY: u32 = 5;
        let deadline = tokio::time::Instant::now() + limit;
        for round in 0.. {
            if done(&self.topology.load()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            if round % ASK_EVERY == 0 {
                self.topology_poll.notify_one();
            }
            tokio::time::sleep(LOOK).await;
        }
        false
    }

    /// Forgets a database a client dropped.
    pub fn forget_database(&self, database: &str) {
        self.databases.lock().expect("poisoned").remove(database);
        self.catalog_tried
            .lock()
            .expect("poisoned")
            .remove(database);
    }

    /// Notes a database a client uses; a new one triggers a catalog read.
    pub fn note_database(&self, database: &str) {
        let new = self
            .databases
            .lock()
            .expect("poisoned")
            .insert(database.to_owned());
        if new {
            self.catalog_refresh.notify_one();
        }
    }

    /// Waits (at most `limit`) until the catalog of `database` has been
    /// read, so a session's first statements are routed by its facts
    /// (until then every function call is unknown and goes to the primary).
    /// Once the catalog task has tried the database, nobody waits (one
    /// whose catalog cannot be read costs one wait, not one per login).
    pub async fn await_catalog(&self, database: &str, limit: std::time::Duration) {
        self.note_database(database);
        let settled = || {
            self.facts.load().has_database(database)
                || self
                    .catalog_tried
                    .lock()
                    .expect("poisoned")
                    .contains(database)
        };
        if settled() {
            return;
        }
        let mut loads = self.catalog_loads.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while !settled() {
                if loads.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Raises the global read-your-writes floor to `lsn`.
    pub fn raise_global_floor(&self, lsn: u64) {
        self.global_floor.fetch_max(lsn, Ordering::Relaxed);
    }

    /// A new session id, also the process id the client is told.
    pub fn next_session_id(&self) -> i32 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

impl State {
    /// Re-reads the configuration file and swaps it in; a bad file is refused
    /// (logged with file, line and key, and counted) and the running
    /// configuration stays. Nodes added or removed, weights, thresholds and
    /// routing take effect; the pools of unchanged nodes and every client
    /// connection are kept.
    ///
    /// # Errors
    /// The new file does not validate.
    pub fn reload(&self, path: &std::path::Path) -> Result<(), crate::config::ConfigError> {
        // Patroni's members complete the nodes, as at startup.
        let view = self.patroni.load_full();
        let loaded = Config::load(path).and_then(|config| {
            let (config, _) = crate::topology::patroni::members::merge(
                &config,
                view.as_ref().and_then(|o| o.view.as_ref()),
            );
            if config.nodes.value.is_empty() {
                return Err(crate::config::ConfigError::Invalid {
                    path: path.to_owned(),
                    line: 1,
                    column: 1,
                    key: "nodes".into(),
                    message: "no node with a host, and Patroni has not been read".into(),
                });
            }
            Ok(config)
        });
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, result = "error", "reload refused; keeping the running configuration");
                self.metrics.reload("error");
                return Err(e);
            }
        };
        self.adopt(config);
        self.rebuild_router();
        self.metrics.reload("ok");
        tracing::info!(path = %path.display(), result = "ok", "configuration reloaded");
        Ok(())
    }

    /// Puts `config` in force with the topology it describes; nodes that
    /// stay keep what the proxy knows of them (health, lag, a learned
    /// primary).
    pub fn adopt(&self, config: Config) {
        let previous = self.topology.load_full();
        self.topology.store(Arc::new(Topology::from_config(
            &config,
            Some(&previous),
            &self.metrics,
        )));
        self.config.store(Arc::new(config));
    }
}
