//! The console's SHOW tables, read from the running proxy's state, with
//! PgBouncer's column names wherever the concept is the same.

use std::time::SystemTime;

use super::table::{Column, Table};
use crate::admin::Status;
use crate::config::{Config, PoolMode};
use crate::state::State;

fn text(s: impl ToString) -> Option<String> {
    Some(s.to_string())
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// SHOW NODES.
pub fn nodes(state: &State) -> Table {
    let status = Status::collect(state);
    let topology = state.topology.load();
    let mut t = Table::new(&[
        ("name", Column::Text),
        ("host", Column::Text),
        ("port", Column::Int),
        ("role", Column::Text),
        ("state", Column::Text),
        ("zone", Column::Text),
        ("tags", Column::Text),
        ("lag_seconds", Column::Float),
        ("lag_bytes", Column::Int),
        ("weight", Column::Int),
        ("effective_weight", Column::Float),
        ("replay_lsn", Column::Text),
        ("timeline", Column::Int),
        ("in_flight", Column::Int),
    ]);
    for (n, s) in topology.nodes.iter().zip(&status.nodes) {
        t.row(vec![
            text(&s.name),
            text(&n.host),
            text(n.port),
            text(&s.role),
            text(&s.state),
            s.zone.clone(),
            text(s.tags.join(",")),
            text(s.lag_seconds),
            text(s.lag_bytes),
            text(s.weight),
            text(s.effective_weight),
            text(&s.replay_lsn),
            text(s.timeline),
            text(n.in_flight.load(std::sync::atomic::Ordering::Relaxed)),
        ]);
    }
    t
}

fn mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// SHOW POOLS: one row per (database, user, node).
pub fn pools(state: &State) -> Table {
    let mode = mode_name(state.config.load().pool.mode);
    let mut t = Table::new(&[
        ("database", Column::Text),
        ("user", Column::Text),
        ("node", Column::Text),
        ("cl_active", Column::Int),
        ("cl_waiting", Column::Int),
        ("sv_active", Column::Int),
        ("sv_idle", Column::Int),
        ("sv_used", Column::Int),
        ("sv_login", Column::Int),
        ("maxwait", Column::Int),
        ("maxwait_us", Column::Int),
        ("pool_mode", Column::Text),
        ("pinned", Column::Int),
        ("pinned_by", Column::Text),
    ]);
    for p in state.pools.views() {
        let pinned: u32 = p.pinned.iter().map(|(_, n)| n).sum();
        let by: Vec<String> = p
            .pinned
            .iter()
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        t.row(vec![
            text(&p.database),
            text(&p.user),
            text(&p.node),
            // A client is active on a pool while it holds one of its
            // connections: as many as are checked out.
            text(p.active),
            text(p.waiting),
            text(p.active),
            text(p.idle),
            // Connections are reset before they go back: none is "used".
            text(0),
            text(p.logging_in),
            text(p.max_wait.as_secs()),
            text(p.max_wait.subsec_micros()),
            text(mode),
            text(pinned),
            text(by.join(",")),
        ]);
    }
    t
}

/// SHOW CLIENTS.
pub fn clients(state: &State) -> Table {
    let mut t = Table::new(&[
        ("type", Column::Text),
        ("user", Column::Text),
        ("database", Column::Text),
        ("state", Column::Text),
        ("addr", Column::Text),
        ("port", Column::Int),
        ("connect_time", Column::Text),
        ("pid", Column::Int),
        ("tls", Column::Text),
        ("application_name", Column::Text),
    ]);
    for c in state.clients.list() {
        let st = if c.paused.load(std::sync::atomic::Ordering::Relaxed) {
            "waiting"
        } else if c.busy.load(std::sync::atomic::Ordering::Relaxed) {
            "active"
        } else {
            "idle"
        };
        t.row(vec![
            text("C"),
            text(&c.user),
            text(&c.database),
            text(st),
            text(c.peer.ip()),
            text(c.peer.port()),
            text(timestamp(c.connected_at)),
            text(c.pid),
            text(if c.tls { "TLS" } else { "" }),
            text(&c.application_name),
        ]);
    }
    t
}

/// SHOW SERVERS.
pub fn servers(state: &State) -> Table {
    let mut t = Table::new(&[
        ("type", Column::Text),
        ("user", Column::Text),
        ("database", Column::Text),
        ("node", Column::Text),
        ("state", Column::Text),
        ("addr", Column::Text),
        ("connect_time", Column::Text),
        ("remote_pid", Column::Int),
        ("tls", Column::Text),
        ("id", Column::Int),
    ]);
    let servers: Vec<_> = state
        .pools
        .servers
        .lock()
        .expect("poisoned")
        .values()
        .cloned()
        .collect();
    for s in servers {
        let active = s.active.load(std::sync::atomic::Ordering::Relaxed);
        t.row(vec![
            text("S"),
            text(&s.user),
            text(&s.database),
            text(&s.node),
            text(if active { "active" } else { "idle" }),
            text(&s.address),
            text(timestamp(s.connected_at)),
            text(s.pid),
            text(if s.tls { "TLS" } else { "" }),
            text(s.id),
        ]);
    }
    t
}

/// SHOW STATS: totals per database and node since the proxy started,
/// and averages per transaction and per query.
pub fn stats(state: &State) -> Table {
    let mut totals: std::collections::BTreeMap<(String, String), crate::pool::StatsSnapshot> =
        std::collections::BTreeMap::new();
    for p in state.pools.views() {
        *totals
            .entry((p.database.clone(), p.node.to_string()))
            .or_default() += p.stats;
    }
    let mut t = Table::new(&[
        ("database", Column::Text),
        ("node", Column::Text),
        ("total_xact_count", Column::Int),
        ("total_query_count", Column::Int),
        ("total_received", Column::Int),
        ("total_sent", Column::Int),
        ("total_xact_time", Column::Int),
        ("total_query_time", Column::Int),
        ("total_wait_time", Column::Int),
        ("avg_xact_time", Column::Int),
        ("avg_query_time", Column::Int),
        ("avg_recv", Column::Int),
        ("avg_sent", Column::Int),
    ]);
    for ((db, node), s) in totals {
        let per = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        t.row(vec![
            text(db),
            text(node),
            text(s.xact_count),
            text(s.query_count),
            text(s.received),
            text(s.sent),
            text(s.xact_time),
            text(s.query_time),
            text(s.wait_time),
            text(per(s.xact_time, s.xact_count)),
            text(per(s.query_time, s.query_count)),
            text(per(s.received, s.query_count)),
            text(per(s.sent, s.query_count)),
        ]);
    }
    t
}

/// SHOW ROUTES: routing decisions since start, by target and reason.
pub fn routes(state: &State) -> Table {
    let mut t = Table::new(&[
        ("target", Column::Text),
        ("reason", Column::Text),
        ("count", Column::Int),
    ]);
    for (target, reason, count) in state.metrics.decision_counts() {
        if count > 0 {
            t.row(vec![
                text(target.as_str()),
                text(reason.as_str()),
                text(count),
            ]);
        }
    }
    t
}

/// SHOW CONFIG: the settings in force (passwords and tokens masked).
pub fn config(state: &State) -> Table {
    let c = state.config.load();
    let mut t = Table::new(&[
        ("key", Column::Text),
        ("value", Column::Text),
        ("default", Column::Text),
        ("changeable", Column::Text),
    ]);
    for (key, value, default, changeable) in settings(&c) {
        t.row(vec![
            text(key),
            text(value),
            text(default),
            text(if changeable { "yes" } else { "no" }),
        ]);
    }
    t
}

/// (key, value, default, changeable by RELOAD).
fn settings(c: &Config) -> Vec<(&'static str, String, String, bool)> {
    let d = crate::config::RoutingConfig::default();
    let l = crate::config::LagConfig::default();
    let p = crate::config::PoolConfig::default();
    let lim = crate::config::LimitsConfig::default();
    let lower = |x: &dyn std::fmt::Debug| format!("{x:?}").to_lowercase();
    let admin = c.admin.as_ref();
    vec![
        ("listen", c.listen.value.clone(), String::new(), false),
        (
            "zone",
            c.zone.clone().unwrap_or_default(),
            String::new(),
            true,
        ),
        (
            "admin.listen",
            admin.map(|a| a.listen.value.clone()).unwrap_or_default(),
            "127.0.0.1:9930".into(),
            false,
        ),
        (
            "admin.database",
            admin.map(|a| a.database.clone()).unwrap_or_default(),
            "pgsplit".into(),
            true,
        ),
        (
            "admin.users",
            admin.map(|a| a.users.join(",")).unwrap_or_default(),
            String::new(),
            true,
        ),
        (
            "admin.stats_users",
            admin.map(|a| a.stats_users.join(",")).unwrap_or_default(),
            String::new(),
            true,
        ),
        (
            "admin.token",
            if admin.and_then(|a| a.token.as_ref()).is_some() {
                "(set)".into()
            } else {
                String::new()
            },
            String::new(),
            true,
        ),
        (
            "auth.method",
            lower(&c.auth.method.value).replace("sha256", "-sha-256"),
            "trust".into(),
            true,
        ),
        (
            "auth.users",
            c.auth
                .users
                .iter()
                .map(|u| u.name.value.clone())
                .collect::<Vec<_>>()
                .join(","),
            String::new(),
            true,
        ),
        (
            "pool.mode",
            mode_name(c.pool.mode).into(),
            mode_name(p.mode).into(),
            false,
        ),
        (
            "pool.size",
            c.pool.size.to_string(),
            p.size.to_string(),
            false,
        ),
        (
            "pool.checkout_timeout",
            c.pool.checkout_timeout.to_string(),
            p.checkout_timeout.to_string(),
            false,
        ),
        (
            "routing.primary_reads",
            c.routing.primary_reads.to_string(),
            d.primary_reads.to_string(),
            true,
        ),
        (
            "routing.no_replica",
            lower(&c.routing.no_replica),
            lower(&d.no_replica),
            true,
        ),
        (
            "routing.read_your_writes",
            lower(&c.routing.read_your_writes),
            lower(&d.read_your_writes),
            true,
        ),
        (
            "routing.read_your_writes_wait",
            c.routing.read_your_writes_wait.to_string(),
            d.read_your_writes_wait.to_string(),
            true,
        ),
        (
            "routing.write_functions",
            c.routing.write_functions.join(","),
            String::new(),
            true,
        ),
        (
            "routing.functions_refresh",
            c.routing.functions_refresh.to_string(),
            d.functions_refresh.to_string(),
            true,
        ),
        (
            "routing.rules",
            c.routing
                .rules
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(","),
            String::new(),
            true,
        ),
        (
            "routing.cross_zone_share",
            c.routing.cross_zone_share.to_string(),
            d.cross_zone_share.to_string(),
            true,
        ),
        (
            "lag.check_interval",
            c.lag.check_interval.to_string(),
            l.check_interval.to_string(),
            true,
        ),
        (
            "lag.max_lag",
            c.lag.max_lag.to_string(),
            l.max_lag.to_string(),
            true,
        ),
        (
            "lag.max_lag_bytes",
            c.lag.max_lag_bytes.0.to_string(),
            l.max_lag_bytes.0.to_string(),
            true,
        ),
        (
            "lag.check_timeout",
            c.lag.check_timeout.to_string(),
            l.check_timeout.to_string(),
            true,
        ),
        (
            "lag.down_after",
            c.lag.down_after.to_string(),
            l.down_after.to_string(),
            true,
        ),
        (
            "lag.up_after",
            c.lag.up_after.to_string(),
            l.up_after.to_string(),
            true,
        ),
        (
            "limits.max_clients",
            c.limits.max_clients.to_string(),
            lim.max_clients.to_string(),
            true,
        ),
        (
            "limits.startup_timeout",
            c.limits.startup_timeout.to_string(),
            lim.startup_timeout.to_string(),
            true,
        ),
        (
            "limits.max_message_size",
            c.limits.max_message_size.0.to_string(),
            lim.max_message_size.0.to_string(),
            true,
        ),
        (
            "limits.idle_timeout",
            c.limits
                .idle_timeout
                .map(|d| d.to_string())
                .unwrap_or_default(),
            String::new(),
            true,
        ),
        (
            "limits.max_pinned_sessions",
            c.max_pinned_sessions().to_string(),
            "pool.size - 1".into(),
            true,
        ),
        (
            "workers",
            c.workers
                .as_ref()
                .map(|w| w.value.to_string())
                .unwrap_or_default(),
            "one per CPU".into(),
            false,
        ),
        (
            "sched_batch",
            c.sched_batch.to_string(),
            "false".into(),
            false,
        ),
    ]
}

/// SHOW VERSION.
pub fn version() -> Table {
    let mut t = Table::new(&[("version", Column::Text)]);
    t.row(vec![text(format!("pgsplit {}", env!("CARGO_PKG_VERSION")))]);
    t
}

/// SHOW LISTS: how many of each thing.
pub fn lists(state: &State) -> Table {
    let views = state.pools.views();
    let clients = state.clients.list();
    let databases: std::collections::BTreeSet<&str> =
        clients.iter().map(|c| c.database.as_str()).collect();
    let users: std::collections::BTreeSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
    let servers = state.pools.servers.lock().expect("poisoned").len();
    let active_servers: u32 = views.iter().map(|v| v.active).sum();
    let busy = clients
        .iter()
        .filter(|c| c.busy.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    let paused = clients
        .iter()
        .filter(|c| c.paused.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    let mut t = Table::new(&[("list", Column::Text), ("items", Column::Int)]);
    for (name, n) in [
        ("nodes", state.topology.load().nodes.len()),
        ("databases", databases.len()),
        ("users", users.len()),
        ("pools", views.len()),
        ("used_clients", clients.len()),
        ("active_clients", busy),
        ("paused_clients", paused),
        ("used_servers", servers),
        ("active_servers", active_servers as usize),
        ("pinned_sessions", state.pins.count()),
    ] {
        t.row(vec![text(name), text(n)]);
    }
    t
}

/// SHOW HELP.
pub fn help() -> Table {
    let mut t = Table::new(&[("command", Column::Text), ("does", Column::Text)]);
    for (c, d) in HELP {
        t.row(vec![text(c), text(d)]);
    }
    t
}

/// Every command, for SHOW HELP and the README.
pub const HELP: &[(&str, &str)] = &[
    (
        "SHOW NODES",
        "nodes, roles, lag, weights, in-flight statements",
    ),
    (
        "SHOW POOLS",
        "server connection pools per database, user and node",
    ),
    ("SHOW CLIENTS", "client sessions"),
    ("SHOW SERVERS", "server connections"),
    ("SHOW STATS", "traffic per database and node since start"),
    ("SHOW ROUTES", "routing decisions by target and reason"),
    ("SHOW CONFIG", "the configuration in force"),
    ("SHOW VERSION", "the proxy's version"),
    ("SHOW LISTS", "how many of each thing"),
    ("SHOW HELP", "this list"),
    ("RELOAD", "re-read proxy.yaml"),
    (
        "PAUSE [db]",
        "finish the transactions in flight, then hold new ones",
    ),
    ("RESUME [db]", "release what PAUSE holds"),
    (
        "RECONNECT [db]",
        "close server connections as they come free",
    ),
    (
        "WAIT_CLOSE [db]",
        "wait until RECONNECT's connections are closed",
    ),
    ("KILL db", "end every client session of a database"),
    (
        "SWITCHOVER TO 'node' [CHECK]",
        "planned switchover (CHECK: drill only)",
    ),
    (
        "FAILOVER [TO 'node'] [CHECK]",
        "forced failover, the primary being gone",
    ),
    ("EXPLAIN ROUTE 'sql'", "where a statement would go, and why"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(timestamp(t), "2026-11-18 11:06:40 UTC");
    }
}
