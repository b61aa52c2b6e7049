//! The `/status` document: nodes, roles, lag, weights, pools, clients.

use serde::{Deserialize, Serialize};

use crate::state::State;

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// Client connections now open.
    pub clients: i64,
    /// Route rules and the sessions that matched each at startup.
    #[serde(default)]
    pub rules: Vec<RuleStatus>,
    /// Sessions pinned to a server connection, by why.
    #[serde(default)]
    pub pinned: std::collections::BTreeMap<String, i64>,
    /// `static` or `patroni`.
    #[serde(default)]
    pub topology_source: String,
    /// New writes are held now (a switchover under way).
    #[serde(default)]
    pub writes_held: bool,
    /// What the Patroni follower last saw (leader, members, holding).
    #[serde(default)]
    pub patroni: Option<serde_json::Value>,
}

/// One route rule in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleStatus {
    /// Name.
    pub name: String,
    /// Tags its reads go to.
    pub tags: Vec<String>,
    /// Sessions open that matched it.
    pub sessions: i64,
}

/// One node in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// `primary`, `replica` or `retired`.
    pub role: String,
    /// `up` or `down`.
    pub state: String,
    /// Replication lag in seconds (0 for the primary).
    pub lag_seconds: f64,
    /// Replication lag in bytes.
    pub lag_bytes: u64,
    /// Configured weight.
    pub weight: u32,
    /// Weight after lag.
    pub effective_weight: f64,
    /// Replay (replica) or current (primary) WAL position, `X/Y`.
    pub replay_lsn: String,
    /// Timeline.
    pub timeline: u32,
    /// Server connections.
    pub pool: PoolStatus,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}

/// Pool counts of one node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Checked out.
    pub active: u32,
    /// Waiting.
    pub idle: u32,
}

/// Formats a WAL position as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

impl Status {
    /// The status now.
    pub fn collect(state: &State) -> Status {
        let topology = state.topology.load();
        let counts = state.pools.counts();
        let nodes = topology
            .nodes
            .iter()
            .map(|n| {
                let stats = n.stats.load();
                let pool = counts.get(&n.name).copied().unwrap_or_default();
                NodeStatus {
                    name: n.name.to_string(),
                    role: topology.role_of(n).to_owned(),
                    state: if n.health.is_up() { "up" } else { "down" }.to_owned(),
                    lag_seconds: stats.lag_seconds,
                    lag_bytes: stats.lag_bytes,
                    weight: n.weight,
                    // Only a replica that is up takes reads by weight: the
                    // primary and retired nodes show 0, as the README says.
                    effective_weight: if n.health.is_up() && topology.role_of(n) == "replica" {
                        stats.effective_weight
                    } else {
                        0.0
                    },
                    replay_lsn: format_lsn(stats.lsn),
                    timeline: stats.timeline,
                    pool: PoolStatus {
                        active: pool.active,
                        idle: pool.idle,
                    },
                    tags: n.tags.clone(),
                    zone: n.zone.clone(),
                }
            })
            .collect();
        let config = state.config.load();
        let counts = state.rule_sessions.lock().expect("poisoned").clone();
        let rules = config
            .routing
            .rules
            .iter()
            .map(|r| RuleStatus {
                name: r.name.clone(),
                tags: r.tags.clone(),
                sessions: counts.get(&r.name).copied().unwrap_or(0),
            })
            .collect();
        let pinned = crate::pins::PinReason::ALL
            .iter()
            .zip(&state.metrics.pinned)
            .map(|(reason, gauge)| (reason.as_str().to_owned(), gauge.get()))
            .collect();
        let config = state.config.load();
        Status {
            nodes,
            clients: state.metrics.client_connections.get(),
            rules,
            pinned,
            topology_source: if config.follows_patroni() {
                "patroni"
            } else {
                "static"
            }
            .into(),
            writes_held: *state.writes_held.borrow() != 0,
            patroni: state
                .patroni
                .load_full()
                .and_then(|o| serde_json::to_value(&*o).ok()),
        }
    }

    /// A readable table for `pgsplit status`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<8} {:<8} {:<5} {:>10} {:>12} {:>6} {:>9} {:>14} {:>3} {:>6} {:>5}\n",
            "NODE",
            "ROLE",
            "STATE",
            "LAG",
            "LAG BYTES",
            "WEIGHT",
            "EFFECTIVE",
            "LSN",
            "TL",
            "ACTIVE",
            "IDLE"
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "{:<8} {:<8} {:<5} {:>9.3}s {:>12} {:>6} {:>9.1} {:>14} {:>3} {:>6} {:>5}\n",
                n.name,
                n.role,
                n.state,
                n.lag_seconds,
                n.lag_bytes,
                n.weight,
                n.effective_weight,
                n.replay_lsn,
                n.timeline,
                n.pool.active,
                n.pool.idle
            ));
        }
        out.push_str(&format!("clients: {}\n", self.clients));
        if let Some(p) = &self.patroni {
            let leader = p["view"]["leader"].as_str().unwrap_or("none");
            let via = p["view"]["source"].as_str().unwrap_or("-");
            out.push_str(&format!(
                "topology: patroni, leader {leader} (read from {via})\n"
            ));
            if let Some(e) = p["error"].as_str() {
                out.push_str(&format!("patroni: {e}\n"));
            }
        }
        if self.writes_held {
            out.push_str("writes: held (a switchover is under way)\n");
        }
        let pinned: Vec<String> = self
            .pinned
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !pinned.is_empty() {
            out.push_str(&format!("pinned sessions: {}\n", pinned.join(", ")));
        }
        for r in &self.rules {
            out.push_str(&format!(
                "rule {} -> tags {:?}: {} sessions\n",
                r.name, r.tags, r.sessions
            ));
        }
        out
    }
}
