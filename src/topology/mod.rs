//! The topology: which nodes exist, their roles, whether they answer, and
//! the balancer that picks a node for a read.
//!
//! A [`Topology`] is an immutable snapshot published through an `ArcSwap`
//! and read without locks on the hot path; only the per-node health flags
//! are atomics that change in place. The [`prober`] brings nodes that
//! stopped answering back once they accept connections again.

pub mod prober;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rand::Rng;

use crate::config::{Config, Role};

/// One PostgreSQL node.
#[derive(Debug)]
pub struct Node {
    /// Configured name.
    pub name: Arc<str>,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role in this snapshot.
    pub role: Role,
    /// Configured read weight.
    pub weight: u32,
    /// Whether it accepts connections.
    pub health: NodeHealth,
}

impl Node {
    /// `host:port`, for connecting.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Health flags of a node, updated in place by sessions and the prober.
#[derive(Debug)]
pub struct NodeHealth {
    up: AtomicBool,
    successes: AtomicU32,
}

/// Consecutive successful probes before a down node takes traffic again.
pub const PROBES_TO_COME_BACK: u32 = 2;

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            up: AtomicBool::new(true),
            successes: AtomicU32::new(0),
        }
    }
}

impl NodeHealth {
    /// Whether reads may be sent to it.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A connection to it was refused or died: stop sending reads there
    /// until the prober sees it answer again. Returns whether it was up.
    pub fn mark_down(&self) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        self.up.swap(false, Ordering::Relaxed)
    }

    /// One successful probe; the node comes back after
    /// [`PROBES_TO_COME_BACK`] in a row. Returns whether it came back now.
    pub fn probe_succeeded(&self) -> bool {
        if self.is_up() {
            return false;
        }
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= PROBES_TO_COME_BACK {
            self.up.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// A failed probe resets the streak.
    pub fn probe_failed(&self) {
        self.successes.store(0, Ordering::Relaxed);
    }
}

/// A snapshot of all nodes.
#[derive(Debug)]
pub struct Topology {
    /// All nodes, in configuration order.
    pub nodes: Vec<Arc<Node>>,
    primary: usize,
}

impl Topology {
    /// Builds the snapshot from the configuration, keeping the health of
    /// nodes that already existed in `previous` under the same address.
    pub fn from_config(config: &Config, previous: Option<&Topology>) -> Topology {
        let mut primary = 0;
        let nodes = config
            .nodes
            .value
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if n.role.value == Role::Primary {
                    primary = i;
                }
                let up = previous
                    .and_then(|p| p.node(&n.name.value))
                    .filter(|old| old.host == n.host && old.port == n.port)
                    .is_none_or(|old| old.health.is_up());
                let health = NodeHealth::default();
                if !up {
                    health.mark_down();
                }
                Arc::new(Node {
                    name: n.name.value.as_str().into(),
                    host: n.host.clone(),
                    port: n.port,
                    role: n.role.value,
                    weight: n.weight,
                    health,
                })
            })
            .collect();
        Topology { nodes, primary }
    }

    /// The node that takes writes.
    pub fn primary(&self) -> &Arc<Node> {
        &self.nodes[self.primary]
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| &*n.name == name)
    }

    /// Picks a node for a read among replicas that are up, by weight; the
    /// primary takes part with `primary_reads` as its weight. `None` when
    /// no replica is eligible (the caller applies `routing.no_replica`).
    /// `exclude` names nodes already tried for this statement.
    pub fn pick_reader(
        &self,
        primary_reads: u32,
        exclude: &[Arc<str>],
        rng: &mut impl Rng,
    ) -> Option<&Arc<Node>> {
        let eligible = |n: &&Arc<Node>| n.health.is_up() && !exclude.contains(&n.name);
        let replicas = || {
            self.nodes
                .iter()
                .filter(|n| n.role == Role::Replica)
                .filter(eligible)
        };
        let total: u64 = replicas().map(|n| u64::from(n.weight)).sum();
        if total == 0 {
            return None;
        }
        let primary = Some(self.primary()).filter(eligible);
        let primary_weight = primary.map_or(0, |_| u64::from(primary_reads));
        let mut ticket = rng.random_range(0..total + primary_weight);
        for node in replicas() {
            let w = u64::from(node.weight);
            if ticket < w {
                return Some(node);
            }
            ticket -= w;
        }
        primary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology(extra: &str) -> Topology {
        let text = format!(
            "listen: 127.0.0.1:1\nnodes:\n  - {{name: p, host: h, port: 1, role: primary}}\n  - {{name: a, host: h, port: 2, role: replica, weight: 300}}\n  - {{name: b, host: h, port: 3, role: replica, weight: 100}}\n{extra}"
        );
        let config = Config::from_text(Path::new("t.yaml"), &text, |_| None).unwrap();
        Topology::from_config(&config, None)
    }

    fn shares(t: &Topology, primary_reads: u32) -> [u32; 3] {
        let mut rng = rand::rng();
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            if let Some(n) = t.pick_reader(primary_reads, &[], &mut rng) {
                counts[t.nodes.iter().position(|x| Arc::ptr_eq(x, n)).unwrap()] += 1;
            }
        }
        counts
    }

    #[test]
    fn weights_share_reads() {
        let t = topology("");
        let [p, a, b] = shares(&t, 0);
        assert_eq!(p, 0);
        assert!((7000..8000).contains(&a), "{a}");
        assert!((2000..3000).contains(&b), "{b}");
        let [p, _, _] = shares(&t, 400);
        assert!((4500..5500).contains(&p), "{p}");
    }

    #[test]
    fn down_replicas_are_skipped_and_come_back_after_probes() {
        let t = topology("");
        t.nodes[1].health.mark_down();
        assert_eq!(shares(&t, 0), [0, 0, 10_000]);
        t.nodes[2].health.mark_down();
        assert!(t.pick_reader(100, &[], &mut rand::rng()).is_none());
        assert!(!t.nodes[1].health.probe_succeeded());
        assert!(t.nodes[1].health.probe_succeeded());
        assert_eq!(shares(&t, 0), [0, 10_000, 0]);
        let tried = [t.nodes[1].name.clone()];
        assert!(t.pick_reader(0, &tried, &mut rand::rng()).is_none());
    }
}
