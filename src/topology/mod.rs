//! The topology: which nodes exist, their roles, whether they answer, and
//! the balancer that picks a node for a read.
//!
//! A [`Topology`] is an immutable snapshot published through an `ArcSwap`
//! and read without locks on the hot path; per node, the health flags and
//! in-flight count are atomics and the monitor's latest [`NodeStats`] sit
//! behind an `ArcSwap`. The [`monitor`] polls every node for role,
//! positions and lag; [`lag`] holds the arithmetic.

pub mod catalog;
pub mod lag;
pub mod monitor;
pub mod patroni;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rand::Rng;

use crate::config::{Config, Role};
use crate::metrics::{Metrics, NodeMetrics};

/// One PostgreSQL node.
#[derive(Debug)]
pub struct Node {
    /// Configured name.
    pub name: Arc<str>,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role in the configuration file (the topology decides the role in
    /// force: see [`Topology::role_of`]).
    pub role: Role,
    /// Configured read weight.
    pub weight: u32,
    /// Tags for route rules and tag hints.
    pub tags: Vec<String>,
    /// A tagged node that takes ordinary reads too.
    pub serve_default: bool,
    /// Availability zone.
    pub zone: Option<String>,
    /// TLS towards it.
    pub tls: crate::config::BackendTls,
    /// Whether it accepts connections.
    pub health: NodeHealth,
    /// The monitor's latest view.
    pub stats: ArcSwap<NodeStats>,
    /// Server connections of this proxy now running a client's work there.
    pub in_flight: AtomicU32,
    /// The highest replay position a read-your-writes probe saw on it
    /// (newer than the monitor's sample between polls); forgotten when the
    /// node goes down, since a restarted standby may show less.
    pub probed: AtomicU64,
    /// Its metric handles.
    pub metrics: NodeMetrics,
}

impl Node {
    /// The highest position it is known to have replayed: the monitor's
    /// sample or a later probe.
    pub fn replayed(&self) -> u64 {
        self.stats
            .load()
            .lsn
            .max(self.probed.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What the monitor last measured on a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStats {
    /// A poll has succeeded at least once.
    pub sampled: bool,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Replication lag in seconds (replicas).
    pub lag_seconds: f64,
    /// Replication lag in bytes (replicas).
    pub lag_bytes: u64,
    /// Replay position (replicas) or current position (primary).
    pub lsn: u64,
    /// Timeline.
    pub timeline: u32,
    /// Replay paused.
    pub replay_paused: bool,
    /// The WAL receiver streams.
    pub receiving: bool,
    /// Within the lag limits (with hysteresis).
    pub eligible: bool,
    /// weight x freshness; 0 when not eligible or down.
    pub effective_weight: f64,
}

/// Counts a server connection as in flight on its node while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Node>);

impl InFlight {
    /// Starts counting.
    pub fn new(node: Arc<Node>) -> InFlight {
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(node)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    /// How to reach it.
    pub fn endpoint(&self) -> crate::config::Endpoint {
        crate::config::Endpoint {
            name: self.name.clone(),
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
        }
    }

    /// `host:port`, for connecting.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Health flags of a node, updated in place by sessions and the monitor.
#[derive(Debug)]
pub struct NodeHealth {
    up: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            up: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl NodeHealth {
    /// Whether it takes traffic.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A connection to it was refused or died: stop sending reads there
    /// until the monitor sees it answer again. Returns whether it was up.
    pub fn mark_down(&self) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        self.up.swap(false, Ordering::Relaxed)
    }

    /// A successful poll; a down node comes back after `needed` in a row.
    /// Returns whether it came back now.
    pub fn observe_success(&self, needed: u32) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.is_up() {
            return false;
        }
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= needed {
            self.up.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// A failed poll; the node goes down after `needed` in a row, so one
    /// slow poll does not flap it. Returns whether it went down now.
    pub fn observe_failure(&self, needed: u32) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= needed && self.mark_down()
    }
}

/// A snapshot of all nodes.
#[derive(Debug)]
pub struct Topology {
    /// All nodes, in configuration order.
    pub nodes: Vec<Arc<Node>>,
    primary: usize,
    retired: Vec<Arc<str>>,
}

impl Topology {
    /// Builds the snapshot from the configuration. Nodes that already
    /// existed in `previous` under the same name, address and weight are
    /// kept as they are (health, lag, in-flight counts). What the running
    /// proxy learned about roles (a promoted primary, retired nodes) wins
    /// over the file while those nodes are still configured.
    pub fn from_config(
        config: &Config,
        previous: Option<&Topology>,
        metrics: &Metrics,
    ) -> Topology {
        let nodes: Vec<Arc<Node>> = config
            .nodes
            .value
            .iter()
            .map(|n| {
                if let Some(old) = previous.and_then(|p| p.node(&n.name.value)).filter(|old| {
                    old.host == n.host
                        && old.port == n.port
                        && old.weight == n.weight
                        && old.tags == n.tags
                        && old.serve_default == n.serve_default
                        && old.zone == n.zone
                        && old.tls == config.backend_tls(n)
                }) {
                    return old.clone();
                }
                Arc::new(Node {
                    name: n.name.value.as_str().into(),
                    host: n.host.clone(),
                    port: n.port,
                    role: n.role.value,
                    weight: n.weight,
                    tags: n.tags.clone(),
                    serve_default: n.serve_default,
                    zone: n.zone.clone(),
                    tls: config.backend_tls(n),
                    health: NodeHealth::default(),
                    stats: ArcSwap::from_pointee(NodeStats {
                        // Until the first poll, a replica takes reads at its
                        // configured weight.
                        eligible: true,
                        effective_weight: f64::from(n.weight),
                        ..NodeStats::default()
                    }),
                    in_flight: AtomicU32::new(0),
                    probed: AtomicU64::new(0),
                    metrics: metrics.node(&n.name.value),
                })
            })
            .collect();
        let configured = config.primary().name.value.as_str();
        let learned = previous
            .map(|p| &*p.primary().name)
            .filter(|name| nodes.iter().any(|n| &*n.name == *name));
        let primary_name = learned.unwrap_or(configured);
        let primary = nodes
            .iter()
            .position(|n| &*n.name == primary_name)
            .unwrap_or(0);
        let retired = previous
            .map(|p| {
                p.retired
                    .iter()
                    .filter(|r| nodes.iter().any(|n| n.name == **r) && &***r != primary_name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = previous {
            for old in &p.nodes {
                if !nodes.iter().any(|n| n.name == old.name) {
                    metrics.forget_node(&old.name);
                }
            }
        }
        let topology = Topology {
            nodes,
            primary,
            retired,
        };
        topology.publish_roles();
        topology
    }

    /// The same nodes with `primary` taking writes and `retire` never
    /// given anything again.
    pub fn with_primary(&self, primary: &str, retire: &[Arc<str>]) -> Topology {
        let index = self
            .nodes
            .iter()
            .position(|n| &*n.name == primary)
            .unwrap_or(self.primary);
        let mut retired: Vec<Arc<str>> = self.retired.clone();
        for r in retire {
            if !retired.contains(r) {
                retired.push(r.clone());
            }
        }
        retired.retain(|r| &**r != primary);
        let topology = Topology {
            nodes: self.nodes.clone(),
            primary: index,
            retired,
        };
        topology.publish_roles();
        topology
    }

    /// The same topology with `nodes` no longer retired.
    pub fn rejoin(&self, nodes: &[Arc<str>]) -> Topology {
        let topology = Topology {
            nodes: self.nodes.clone(),
            primary: self.primary,
            retired: self
                .retired
                .iter()
                .filter(|r| !nodes.contains(r))
                .cloned()
                .collect(),
        };
        topology.publish_roles();
        topology
    }

    fn publish_roles(&self) {
        for n in &self.nodes {
            n.metrics.set_role(self.role_of(n));
            n.metrics.up.set(i64::from(n.health.is_up()));
        }
    }

    /// `primary`, `replica` or `retired`.
    pub fn role_of(&self, node: &Node) -> &'static str {
        if std::ptr::eq(node, &*self.nodes[self.primary]) {
            "primary"
        } else if self.retired.contains(&node.name) {
            "retired"
        } else {
            "replica"
        }
    }

    /// Whether reads may go to `node` as a replica.
    pub fn is_replica(&self, node: &Node) -> bool {
        self.role_of(node) == "replica"
    }

    /// Nodes retired after a failover.
    pub fn retired(&self) -> &[Arc<str>] {
        &self.retired
    }

    /// The node that takes writes.
    pub fn primary(&self) -> &Arc<Node> {
        &self.nodes[self.primary]
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| &*n.name == name)
    }

    /// Replicas that are up, not excluded, and carry the requested tags
    /// (or, for ordinary reads, untagged or `serve_default`): the readers
    /// `req` allows before lag, floor and weight.
    fn allowed_readers<'t, 'r>(
        &'t self,
        req: &'r ReadRequest<'_>,
    ) -> impl Iterator<Item = &'t Arc<Node>> + use<'t, 'r> {
        self.nodes
            .iter()
            .filter(|n| self.is_replica(n) && n.health.is_up() && !req.exclude.contains(&n.name))
            .filter(|n| match req.tags {
                Some(tags) => tags.iter().all(|t| n.tags.contains(t)),
                None => n.tags.is_empty() || n.serve_default,
            })
    }

    /// A reader `req` allows (its floor aside) to ask whether it has
    /// replayed the floor since the monitor's sample: one that replays
    /// (not paused), drawn by effective weight.
    pub fn to_probe(&self, req: &ReadRequest<'_>, rng: &mut impl Rng) -> Option<&Arc<Node>> {
        let candidates: Vec<(&Arc<Node>, f64)> = self
            .allowed_readers(req)
            .filter_map(|n| {
                let stats = n.stats.load();
                (stats.eligible && !stats.replay_paused && stats.effective_weight > 0.0)
                    .then_some((n, stats.effective_weight))
            })
            .collect();
        let total: f64 = candidates.iter().map(|(_, w)| w).sum();
        if candidates.is_empty() || total <= 0.0 {
            return None;
        }
        let mut ticket = rng.random_range(0.0..total);
        for &(node, w) in &candidates {
            if ticket < w {
                return Some(node);
            }
            ticket -= w;
        }
        candidates.last().map(|(n, _)| *n)
    }

    /// Picks a node for a read (see [`ReadRequest`]): among replicas that
    /// are up, within the lag limits, replayed past the floor and carrying
    /// the requested tags (or, for ordinary reads, untagged or
    /// `serve_default`), preferring the proxy's zone, two are drawn by
    /// effective weight and the less loaded one (in flight per unit of
    /// weight) wins. The primary takes part with `primary_reads` as its
    /// weight. `None` when no replica is eligible.
    pub fn pick_reader(&self, req: &ReadRequest<'_>, rng: &mut impl Rng) -> Option<Pick<'_>> {
        if self.nodes.len() < 2 {
            return None; // the primary alone: no replica to weigh
        }
        // On the stack for the usual handful of nodes: this runs per read.
        let mut candidates: smallvec::SmallVec<[(&Arc<Node>, f64); 8]> = smallvec::SmallVec::new();
        candidates.extend(self.allowed_readers(req).filter_map(|n| {
            let stats = n.stats.load();
            let replayed = if req.floor > stats.lsn {
                n.replayed()
            } else {
                stats.lsn
            };
            (stats.eligible && replayed >= req.floor && stats.effective_weight > 0.0)
                .then_some((n, stats.effective_weight))
        }));
        if candidates.is_empty() {
            return None;
        }
        let mut by_zone = false;
        if let Some(zone) = req.zone {
            let (local, remote): (smallvec::SmallVec<[_; 8]>, smallvec::SmallVec<[_; 8]>) =
                candidates
                    .iter()
                    .copied()
                    .partition(|(n, _)| n.zone.as_deref() == Some(zone));
            if !local.is_empty() && !remote.is_empty() {
                let cross =
                    req.cross_zone_share > 0.0 && rng.random_bool(req.cross_zone_share.min(1.0));
                by_zone = !cross;
                candidates = if cross { remote } else { local };
            }
        }
        let primary = self.primary();
        if req.primary_reads > 0 && primary.health.is_up() && !req.exclude.contains(&primary.name) {
            candidates.push((primary, f64::from(req.primary_reads)));
        }
        let total: f64 = candidates.iter().map(|(_, w)| w).sum();
        let mut draw = || {
            let mut ticket = rng.random_range(0.0..total);
            for &(node, w) in &candidates {
                if ticket < w {
                    return (node, w);
                }
                ticket -= w;
            }
            candidates[candidates.len() - 1]
        };
        let (a, wa) = draw();
        let (b, wb) = draw();
        let load = |n: &Arc<Node>, w: f64| f64::from(n.in_flight.load(Ordering::Relaxed)) / w;
        let node = if load(b, wb) < load(a, wa) { b } else { a };
        Some(Pick { node, by_zone })
    }
}

/// What a read asks of the balancer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadRequest<'a> {
    /// Weight of the primary among readers.
    pub primary_reads: u32,
    /// Read-your-writes floor: replicas must have replayed this far.
    pub floor: u64,
    /// Nodes already tried for this statement.
    pub exclude: &'a [Arc<str>],
    /// Only nodes carrying all these tags (`None`: an ordinary read).
    pub tags: Option<&'a [String]>,
    /// The proxy's zone, preferred.
    pub zone: Option<&'a str>,
    /// Share of reads sent out of the zone anyway.
    pub cross_zone_share: f64,
}

/// The balancer's choice.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The node.
    pub node: &'a Arc<Node>,
    /// The zone preference decided it (other zones had eligible replicas).
    pub by_zone: bool,
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
        Topology::from_config(&config, None, &Metrics::new())
    }

    fn shares(t: &Topology, primary_reads: u32) -> [u32; 3] {
        let mut rng = rand::rng();
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let req = ReadRequest {
                primary_reads,
                ..ReadRequest::default()
            };
            if let Some(p) = t.pick_reader(&req, &mut rng) {
                counts[t.nodes.iter().position(|x| Arc::ptr_eq(x, p.node)).unwrap()] += 1;
            }
        }
        counts
    }

    #[test]
    fn weights_share_reads() {
        let t = topology("");
        // Two weighted draws, the less loaded wins (ties: the first): with
        // nothing in flight the shares follow the weights.
        let [p, a, b] = shares(&t, 0);
        assert_eq!(p, 0);
        assert!((7000..8000).contains(&a), "{a}");
        assert!((2000..3000).contains(&b), "{b}");
        let [p, _, _] = shares(&t, 400);
        assert!((4000..6000).contains(&p), "{p}");
        // load moves reads away from a busy replica
        let busy: Vec<InFlight> = (0..10).map(|_| InFlight::new(t.nodes[1].clone())).collect();
        let [_, a, b] = shares(&t, 0);
        assert!(
            b > 3500,
            "busy a={a} b={b}: b takes more than its 25% weight share"
        );
        drop(busy);
    }

    #[test]
    fn down_replicas_are_skipped_and_come_back_after_probes() {
        let t = topology("");
        t.nodes[1].health.mark_down();
        assert_eq!(shares(&t, 0), [0, 0, 10_000]);
        t.nodes[2].health.mark_down();
        let req = ReadRequest {
            primary_reads: 100,
            ..ReadRequest::default()
        };
        assert!(t.pick_reader(&req, &mut rand::rng()).is_none());
        assert!(!t.nodes[1].health.observe_success(2));
        assert!(t.nodes[1].health.observe_success(2));
        assert_eq!(shares(&t, 0), [0, 10_000, 0]);
        let tried = [t.nodes[1].name.clone()];
        let req = ReadRequest {
            exclude: &tried,
            ..ReadRequest::default()
        };
        assert!(t.pick_reader(&req, &mut rand::rng()).is_none());
        // one failed poll does not flap a node; three do
        assert!(!t.nodes[1].health.observe_failure(3));
        assert!(!t.nodes[1].health.observe_failure(3));
        assert!(t.nodes[1].health.observe_failure(3));
        assert!(!t.nodes[1].health.is_up());
    }

    #[test]
    fn lag_weights_and_floors() {
        let t = topology("");
        let set = |i: usize, eligible: bool, w: f64, lsn: u64| {
            t.nodes[i].stats.store(Arc::new(NodeStats {
                sampled: true,
                eligible,
                effective_weight: w,
                lsn,
                ..NodeStats::default()
            }))
        };
        set(1, true, 10.0, 100);
        set(2, true, 100.0, 200);
        let [_, a, b] = shares(&t, 0);
        assert!(b > 8 * a, "fresher replica gets most reads: a={a} b={b}");
        set(2, false, 0.0, 200);
        assert_eq!(shares(&t, 0), [0, 10_000, 0]);
        set(2, true, 100.0, 200);
        let floor = |floor| ReadRequest {
            floor,
            ..ReadRequest::default()
        };
        let pick = t.pick_reader(&floor(150), &mut rand::rng()).unwrap();
        assert_eq!(&*pick.node.name, "b", "only b replayed past the floor");
        assert!(t.pick_reader(&floor(250), &mut rand::rng()).is_none());
    }

    #[test]
    fn tags_and_zones() {
        let t = topology("");
        // reshape: a is tagged analytics in zone z2, b untagged in z1
        let text = "listen: 127.0.0.1:1\nzone: z1\nnodes:\n  - {name: p, host: h, port: 1, role: primary}\n  - {name: a, host: h, port: 2, role: replica, tags: [analytics], zone: z2}\n  - {name: b, host: h, port: 3, role: replica, zone: z1}\n  - {name: c, host: h, port: 4, role: replica, zone: z2}\n";
        let config = Config::from_text(Path::new("t.yaml"), text, |_| None).unwrap();
        let t2 = Topology::from_config(&config, Some(&t), &Metrics::new());
        let mut rng = rand::rng();
        let names = |req: ReadRequest| {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..500 {
                if let Some(p) = t2.pick_reader(&req, &mut rand::rng()) {
                    seen.insert(p.node.name.to_string());
                }
            }
            seen.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(
            names(ReadRequest::default()),
            ["b", "c"],
            "tagged a gets no ordinary reads"
        );
        let analytics = ["analytics".to_owned()];
        let tagged = ReadRequest {
            tags: Some(&analytics),
            ..ReadRequest::default()
        };
        assert_eq!(names(tagged), ["a"]);
        let zoned = ReadRequest {
            zone: Some("z1"),
            ..ReadRequest::default()
        };
        assert_eq!(names(zoned), ["b"]);
        assert!(t2.pick_reader(&zoned, &mut rng).unwrap().by_zone);
        let mostly = ReadRequest {
            zone: Some("z1"),
            cross_zone_share: 0.5,
            ..ReadRequest::default()
        };
        assert_eq!(names(mostly), ["b", "c"]);
    }
}
