//! `topology.source: patroni`: Patroni decides who leads, pgsplit follows.
//!
//! The follower reads the cluster from Patroni's etcd keys (a range read
//! at once whenever the v3 watch reports a change, through etcd's JSON
//! gateway) or, without etcd or while it cannot be reached, from the
//! members' REST API (`GET /cluster`, every `poll_interval`). While a
//! switchover or failover is under way (the `failover` key, the leader
//! stopping, no leader) new writes are held; once Patroni names a leader
//! that is running and the follower itself finds it accepting writes
//! (`pg_is_in_recovery()` false), it becomes the primary and the writes
//! go there. pgsplit never promotes, fences or repoints a node Patroni
//! manages: [`delegate`] asks Patroni for switchovers instead. Lag is
//! still measured by the monitor.

mod delegate;
pub mod members;
mod source;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use delegate::delegate;
use view::{Verdict, View};

use crate::config::{Config, PatroniConfig};
use crate::state::{HoldReason, State};
use crate::topology::{Node, Topology};

/// How often the follower looks while a change is under way.
const CHANGING_LOOK: Duration = Duration::from_millis(20);
/// A switchover signal that outlives this with a writable leader is
/// ignored (a `failover` key Patroni left behind).
const HOLD_CAP: Duration = Duration::from_secs(20);
/// How long the first read of Patroni may take at startup.
const STARTUP_READ: Duration = Duration::from_secs(5);

/// What the follower last saw, for `/status` and the console.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observed {
    /// The view itself.
    pub view: Option<View>,
    /// Writes are held for a change under way.
    pub holding: bool,
    /// Why, when holding.
    pub why: Option<String>,
    /// The last error reading Patroni, if the last read failed.
    pub error: Option<String>,
}

/// The node of the proxy's topology a member is: by name, else by
/// host and port.
pub fn node_of<'t>(topology: &'t Topology, view: &View, member: &str) -> Option<&'t Arc<Node>> {
    topology.node(member).or_else(|| {
        let m = view.member(member)?;
        topology
            .nodes
            .iter()
            .find(|n| Some(n.host.as_str()) == m.host.as_deref() && Some(n.port) == m.port)
    })
}

/// Reads the cluster once: etcd when configured and reachable, else the
/// REST API.
///
/// # Errors
/// Neither answered, with each one's reason.
pub async fn read(patroni: &PatroniConfig, limit: Duration) -> Result<View, String> {
    let mut errors = Vec::new();
    if let Some(etcd) = &patroni.etcd {
        match source::etcd_range(etcd, limit).await {
            Ok(view) => return Ok(view),
            Err(e) => errors.push(e),
        }
    }
    if !patroni.urls.is_empty() {
        match source::rest_cluster(&patroni.urls, limit).await {
            Ok(view) => return Ok(view),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// The configuration to start with in Patroni mode: Patroni is read once
/// so that its members complete the nodes.
///
/// # Errors
/// No node is left to serve: proxy.yaml lists none with a host and
/// Patroni could not be read.
pub async fn starting_config(config: Config) -> anyhow::Result<Config> {
    let Some(patroni) = config.topology.patroni.as_ref() else {
        return Ok(config);
    };
    let read = read(patroni, STARTUP_READ).await;
    if let Err(e) = &read {
        tracing::warn!(error = %e, "cannot read Patroni at startup; starting with the nodes proxy.yaml lists");
    }
    let (merged, _) = members::merge(&config, read.as_ref().ok());
    if merged.nodes.value.is_empty() {
        anyhow::bail!(
            "no node to serve: proxy.yaml lists none with a host, and Patroni could not be read ({})",
            read.err().unwrap_or_default()
        );
    }
    Ok(merged)
}

/// Members proxy.yaml does not list (or lists by name only) become
/// nodes, keeping what the running proxy knows of the others.
fn absorb(state: &State, view: &View) {
    let config = state.config.load_full();
    let (merged, changed) = members::merge(&config, Some(view));
    if changed {
        state.adopt(merged);
    }
}

/// Whether `node` accepts writes now (asked over a fresh connection).
async fn writable(state: &State, config: &Config, node: &Node) -> Result<bool, String> {
    let client = crate::tls::connect_node(
        config,
        &state.node_tls,
        &node.endpoint(),
        None,
        "pgsplit-patroni",
    )
    .await?;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(!row.get::<_, bool>(0))
}

/// The follower's memory between rounds.
#[derive(Default)]
struct Follower {
    /// Since when writes are held for a change.
    held_since: Option<Instant>,
    why: Option<&'static str>,
    /// Members already warned about (not among the nodes).
    unknown: Vec<String>,
}

impl Follower {
    fn hold(&mut self, state: &State, why: &'static str) {
        if self.held_since.is_none() {
            tracing::info!(why, "Patroni is changing the leader: new writes are held");
            self.held_since = Some(Instant::now());
            state.hold(HoldReason::Patroni, true);
        }
        self.why = Some(why);
    }

    fn release(&mut self, state: &State, leader: &str) {
        if let Some(since) = self.held_since.take() {
            tracing::info!(
                leader,
                held_ms = since.elapsed().as_millis() as u64,
                "writes released to Patroni's leader"
            );
            state.hold(HoldReason::Patroni, false);
        }
        self.why = None;
    }

    /// Acts on one view; returns whether a change is still under way (the
    /// next look comes soon).
    async fn apply(&mut self, state: &State, config: &Config, view: &View) -> bool {
        let leader = match view.verdict() {
            Verdict::Changing(why) => {
                let topology = state.topology.load();
                let stale = self
                    .held_since
                    .is_some_and(|since| since.elapsed() > HOLD_CAP);
                if stale
                    && view.switching
                    && view.leader.as_deref() == Some(&*topology.primary().name)
                {
                    // A `failover` key left behind while the leader runs on.
                    self.release(state, &topology.primary().name);
                    return false;
                }
                self.hold(state, why);
                return true;
            }
            Verdict::Steady(leader) => leader,
        };
        let topology = state.topology.load_full();
        let Some(node) = node_of(&topology, view, &leader).cloned() else {
            if !self.unknown.contains(&leader) {
                tracing::error!(
                    leader,
                    "Patroni's leader is not among proxy.yaml's nodes: writes are held until it is added"
                );
                self.unknown.push(leader.clone());
            }
            self.hold(state, "the leader is not among the nodes");
            return true;
        };
        if Arc::ptr_eq(topology.primary(), &node) && self.held_since.is_none() {
            return false;
        }
        match writable(state, config, &node).await {
            Ok(true) => {}
            Ok(false) => {
                self.hold(state, "the new leader is still in recovery");
                return true;
            }
            Err(error) => {
                tracing::debug!(node = %node.name, %error, "Patroni's leader does not answer yet");
                self.hold(state, "the new leader does not answer yet");
                return true;
            }
        }
        if !Arc::ptr_eq(topology.primary(), &node) {
            tracing::warn!(old = %topology.primary().name, new = %node.name, "Patroni's leader changed: writes now go to it");
            let changed = Arc::new(topology.with_primary(&node.name, &[]));
            // Only over the snapshot read above: a reload meanwhile wins,
            // and the next round looks again.
            let previous = state.topology.compare_and_swap(&topology, changed);
            if !Arc::ptr_eq(&previous, &topology) {
                return true;
            }
            state.topology_poll.notify_one();
        }
        self.release(state, &node.name);
        false
    }
}

/// Follows Patroni until shutdown (started when `topology.source:
/// patroni`).
pub async fn run(state: Arc<State>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let watcher = state
        .config
        .load()
        .topology
        .patroni
        .as_ref()
        .and_then(|p| p.etcd.clone())
        .map(|etcd| tokio::spawn(source::watch(etcd, changed.clone(), state.shutdown.clone())));
    let mut follower = Follower::default();
    loop {
        let config = state.config.load_full();
        let Some(patroni) = config
            .topology
            .patroni
            .as_ref()
            .filter(|_| config.follows_patroni())
        else {
            break;
        };
        let limit = config.lag.check_timeout.0;
        let (view, error) = match read(patroni, limit).await {
            Ok(view) => (Some(view), None),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read Patroni's view of the cluster");
                (None, Some(e))
            }
        };
        if let Some(view) = &view {
            absorb(&state, view);
        }
        let config = state.config.load_full();
        let busy = match &view {
            Some(view) => follower.apply(&state, &config, view).await,
            None => false,
        };
        state.patroni.store(Some(Arc::new(Observed {
            view,
            holding: follower.held_since.is_some(),
            why: follower.why.map(str::to_owned),
            error,
        })));
        let wait = if busy {
            CHANGING_LOOK
        } else {
            patroni.poll_interval.0
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(w) = watcher {
        w.abort();
    }
}
