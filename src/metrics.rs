//! Typed Prometheus metric handles; no logic. Names are the contract the
//! dashboards and alerts use (DESIGN.md). Hot-path handles (per node,
//! target and reason) are resolved once, so counting takes no lock.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::router::{Reason, Target};

/// Label values of `target`.
pub const TARGETS: [Target; 2] = [Target::Primary, Target::Replica];
/// Label values of `role`.
pub const ROLES: [&str; 3] = ["primary", "replica", "retired"];
/// Label values of `result` for failovers.
pub const FAILOVER_RESULTS: [&str; 3] = ["success", "refused", "error"];
/// Label values of `result` for reloads.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Every metric of the proxy.
pub struct Metrics {
    registry: Registry,
    /// `pgsplit_client_connections`.
    pub client_connections: IntGauge,
    queries: IntCounterVec,
    decisions: Vec<IntCounter>,
    durations: Vec<Histogram>,
    node_up: IntGaugeVec,
    node_role: IntGaugeVec,
    lag_seconds: GaugeVec,
    lag_bytes: GaugeVec,
    effective_weight: GaugeVec,
    pool_connections: IntGaugeVec,
    backend_errors: IntCounterVec,
    failovers: IntCounterVec,
    reloads: IntCounterVec,
    /// `pgsplit_pinned_sessions{reason}`, by [`crate::pins::PinReason::ALL`].
    pub pinned: Vec<IntGauge>,
    /// `pgsplit_pinned_refused_total`.
    pub pinned_refused: IntCounter,
    /// `pgsplit_ryw_probes_total{result}`.
    ryw_probes: IntCounterVec,
    /// `pgsplit_writes_held`: 1 while new writes are held (a switchover).
    pub writes_held: IntGauge,
    /// `pgsplit_held_writes_total{cause,result}`.
    held_writes: IntCounterVec,
}

/// Label values of `cause` for writes held for a primary.
pub const HOLD_CAUSES: [&str; 3] = ["fenced", "gone", "unreachable"];

/// One node's handles, resolved once.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// `pgsplit_queries_total{node, target}` by [`Target`].
    queries: [IntCounter; 2],
    /// `pgsplit_backend_errors_total{node}`.
    pub backend_errors: IntCounter,
    /// `pgsplit_node_up{node}`.
    pub up: IntGauge,
    roles: [IntGauge; 3],
    /// `pgsplit_replication_lag_seconds{node}`.
    pub lag_seconds: Gauge,
    /// `pgsplit_replication_lag_bytes{node}`.
    pub lag_bytes: Gauge,
    /// `pgsplit_node_effective_weight{node}`.
    pub effective_weight: Gauge,
    pool: [IntGauge; 2],
}

fn target_index(t: Target) -> usize {
    match t {
        Target::Primary => 0,
        Target::Replica => 1,
    }
}

impl NodeMetrics {
    /// Counts a statement batch run on this node for `target`.
    pub fn query(&self, target: Target) {
        self.queries[target_index(target)].inc();
    }

    /// Sets the role gauge: 1 for `role`, 0 for the others.
    pub fn set_role(&self, role: &str) {
        for (r, g) in ROLES.iter().zip(&self.roles) {
            g.set(i64::from(*r == role));
        }
    }

    /// Sets the pool gauges.
    pub fn set_pool(&self, active: u32, idle: u32) {
        self.pool[0].set(i64::from(active));
        self.pool[1].set(i64::from(idle));
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let client_connections = registered(
            &r,
            IntGauge::new("pgsplit_client_connections", "Client connections now open")
                .expect("valid metric"),
        );
        let queries = counter_vec(
            "pgsplit_queries_total",
            "Statement batches run, by node and target",
            &["node", "target"],
        );
        let decisions_vec = counter_vec(
            "pgsplit_routing_decisions_total",
            "Routing decisions by target and reason",
            &["target", "reason"],
        );
        let mut decisions = Vec::new();
        for t in TARGETS {
            for reason in Reason::ALL {
                decisions.push(decisions_vec.with_label_values(&[t.as_str(), reason.as_str()]));
            }
        }
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ];
        let durations_vec = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "pgsplit_query_duration_seconds",
                    "Time from sending a batch to a node to its ReadyForQuery, by target",
                )
                .buckets(buckets),
                &["target"],
            )
            .expect("valid metric"),
        );
        let durations = TARGETS
            .iter()
            .map(|t| durations_vec.with_label_values(&[t.as_str()]))
            .collect();
        let failovers = counter_vec(
            "pgsplit_failovers_total",
            "Switchovers and failovers by result",
            &["result"],
        );
        for result in FAILOVER_RESULTS {
            failovers.with_label_values(&[result]);
        }
        let reloads = counter_vec(
            "pgsplit_config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        );
        for result in RELOAD_RESULTS {
            reloads.with_label_values(&[result]);
        }
        let pinned_vec = int_gauge_vec(
            "pgsplit_pinned_sessions",
            "Sessions holding a server connection for themselves, by why",
            &["reason"],
        );
        let pinned = crate::pins::PinReason::ALL
            .iter()
            .map(|r| pinned_vec.with_label_values(&[r.as_str()]))
            .collect();
        let pinned_refused = registered(
            &r,
            IntCounter::new(
                "pgsplit_pinned_refused_total",
                "Statements refused because limits.max_pinned_sessions were pinned",
            )
            .expect("valid metric"),
        );
        let ryw_probes = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "pgsplit_ryw_probes_total",
                    "Read-your-writes probes of a replica's replay position, by result \
                     (caught_up: the read ran there; behind: it went to the primary)",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        for result in ["caught_up", "behind", "failed"] {
            ryw_probes.with_label_values(&[result]);
        }
        let writes_held = registered(
            &r,
            IntGauge::new(
                "pgsplit_writes_held",
                "1 while new writes are held for a switchover (this proxy's, or Patroni's)",
            )
            .expect("valid metric"),
        );
        let held_writes = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "pgsplit_held_writes_total",
                    "Autocommit writes held for a new primary, by cause (fenced: refused as \
                     read-only; gone: the connection ended before an answer; unreachable: no \
                     connection could be made) and result (rerun or failed)",
                ),
                &["cause", "result"],
            )
            .expect("valid metric"),
        );
        for cause in HOLD_CAUSES {
            for result in ["rerun", "failed"] {
                held_writes.with_label_values(&[cause, result]);
            }
        }
        Metrics {
            writes_held,
            held_writes,
            client_connections,
            queries,
            pinned,
            pinned_refused,
            ryw_probes,
            decisions,
            durations,
            node_up: int_gauge_vec(
                "pgsplit_node_up",
                "1 when the node answers the monitor",
                &["node"],
            ),
            node_role: int_gauge_vec(
                "pgsplit_node_role",
                "1 for the node's current role",
                &["node", "role"],
            ),
            lag_seconds: gauge_vec(
                "pgsplit_replication_lag_seconds",
                "Replication lag in seconds",
                &["node"],
            ),
            lag_bytes: gauge_vec(
                "pgsplit_replication_lag_bytes",
                "Replication lag in bytes of WAL",
                &["node"],
            ),
            effective_weight: gauge_vec(
                "pgsplit_node_effective_weight",
                "Read weight after lag: weight x freshness",
                &["node"],
            ),
            pool_connections: int_gauge_vec(
                "pgsplit_pool_connections",
                "Server connections by node and state",
                &["node", "state"],
            ),
            backend_errors: counter_vec(
                "pgsplit_backend_errors_total",
                "Server connections that failed or could not be made",
                &["node"],
            ),
            failovers,
            reloads,
            registry: r,
        }
    }

    /// Resolves (and so creates, at 0) every series of one node.
    pub fn node(&self, name: &str) -> NodeMetrics {
        let queries = TARGETS.map(|t| self.queries.with_label_values(&[name, t.as_str()]));
        let roles = ROLES.map(|role| self.node_role.with_label_values(&[name, role]));
        let pool = ["active", "idle"].map(|s| self.pool_connections.with_label_values(&[name, s]));
        NodeMetrics {
            queries,
            backend_errors: self.backend_errors.with_label_values(&[name]),
            up: self.node_up.with_label_values(&[name]),
            roles,
            lag_seconds: self.lag_seconds.with_label_values(&[name]),
            lag_bytes: self.lag_bytes.with_label_values(&[name]),
            effective_weight: self.effective_weight.with_label_values(&[name]),
            pool,
        }
    }

    /// Counts a write held for a new primary (`cause` of [`HOLD_CAUSES`]).
    pub fn held_write(&self, cause: &str, rerun: bool) {
        let result = if rerun { "rerun" } else { "failed" };
        self.held_writes.with_label_values(&[cause, result]).inc();
    }

    /// Counts a read-your-writes probe.
    pub fn ryw_probe(&self, result: &str) {
        self.ryw_probes.with_label_values(&[result]).inc();
    }

    /// Counts one routing decision.
    pub fn decision(&self, target: Target, reason: Reason) {
        let r = Reason::ALL.iter().position(|x| *x == reason).unwrap_or(0);
        self.decisions[target_index(target) * Reason::ALL.len() + r].inc();
    }

    /// Every routing decision counter: (target, reason, count).
    pub fn decision_counts(&self) -> Vec<(Target, Reason, u64)> {
        TARGETS
            .iter()
            .flat_map(|t| Reason::ALL.iter().map(move |r| (*t, *r)))
            .zip(&self.decisions)
            .map(|((t, r), c)| (t, r, c.get()))
            .collect()
    }

    /// Records one batch's duration.
    pub fn duration(&self, target: Target, seconds: f64) {
        self.durations[target_index(target)].observe(seconds);
    }

    /// Counts a failover attempt by result (`success`, `refused`, `error`).
    pub fn failover(&self, result: &str) {
        self.failovers.with_label_values(&[result]).inc();
    }

    /// Counts a reload by result (`ok`, `error`).
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Removes the series of a node that left the configuration.
    pub fn forget_node(&self, name: &str) {
        let _ = self.node_up.remove_label_values(&[name]);
        for role in ROLES {
            let _ = self.node_role.remove_label_values(&[name, role]);
        }
        for g in [&self.lag_seconds, &self.lag_bytes, &self.effective_weight] {
            let _ = g.remove_label_values(&[name]);
        }
        for s in ["active", "idle"] {
            let _ = self.pool_connections.remove_label_values(&[name, s]);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_start() {
        let m = Metrics::new();
        let node = m.node("pg1");
        node.set_role("primary");
        let text = m.encode();
        for name in [
            "pgsplit_client_connections",
            "pgsplit_queries_total{node=\"pg1\",target=\"replica\"} 0",
            "pgsplit_routing_decisions_total{reason=\"read_your_writes\",target=\"primary\"} 0",
            "pgsplit_query_duration_seconds_bucket{target=\"replica\",le=\"0.0001\"} 0",
            "pgsplit_node_up{node=\"pg1\"}",
            "pgsplit_node_role{node=\"pg1\",role=\"primary\"} 1",
            "pgsplit_node_role{node=\"pg1\",role=\"retired\"} 0",
            "pgsplit_replication_lag_seconds{node=\"pg1\"}",
            "pgsplit_replication_lag_bytes{node=\"pg1\"}",
            "pgsplit_node_effective_weight{node=\"pg1\"}",
            "pgsplit_pool_connections{node=\"pg1\",state=\"idle\"}",
            "pgsplit_backend_errors_total{node=\"pg1\"} 0",
            "pgsplit_failovers_total{result=\"success\"} 0",
            "pgsplit_config_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        m.decision(Target::Replica, Reason::Read);
        node.query(Target::Primary);
        let text = m.encode();
        assert!(
            text.contains("pgsplit_routing_decisions_total{reason=\"read\",target=\"replica\"} 1")
        );
        assert!(text.contains("pgsplit_queries_total{node=\"pg1\",target=\"primary\"} 1"));
    }
}
