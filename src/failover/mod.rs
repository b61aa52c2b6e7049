//! Operator-initiated switchover (old primary alive), failover (`force`:
//! old primary gone) and drill (`check`: change nothing).
//!
//! Switchover: hold new writes at the proxy (reads keep flowing), let open
//! transactions on the old primary finish, fence it (read-only by default,
//! client backends ended), wait until the candidate has replayed its final
//! position, promote, publish the new topology, release the held writes,
//! repoint the other replicas. A failure before promotion undoes the fence
//! and writes resume on the old primary. The old primary is `retired`.

mod conninfo;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

pub use steps::{Step, Steps};

use crate::config::Config;
use crate::state::State;
use crate::topology::Node;

/// How long open transactions on the old primary may run on.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the candidate may take to replay the old primary's last WAL.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `pg_promote` may take.
pub const PROMOTE_TIMEOUT_SECS: i32 = 30;

/// What a failover did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct Report {
    /// It succeeded (or, for a drill, would be possible).
    pub ok: bool,
    /// `switchover`, `failover` or `drill`.
    pub action: String,
    /// The node promoted (or to be).
    pub candidate: Option<String>,
    /// The primary before.
    pub old_primary: Option<String>,
    /// Each step with its duration.
    pub steps: Vec<Step>,
    /// Why it was refused or failed.
    pub error: Option<String>,
    /// Failover: WAL bytes the old primary had that the candidate had not
    /// received (may be lost).
    pub lost_bytes: Option<u64>,
    /// How long new writes were held.
    pub writes_held_ms: Option<u64>,
}

impl Report {
    fn refused(action: &str, error: impl Into<String>) -> Report {
        Report {
            action: action.into(),
            error: Some(error.into()),
            ..Report::default()
        }
    }
}

/// Connects to a node as the monitor's login.
async fn connect(state: &State, config: &Config, node: &Node) -> Result<Client, String> {
    crate::tls::connect_node(
        config,
        &state.node_tls,
        &node.endpoint(),
        None,
        "pgsplit-failover",
    )
    .await
}

/// Formats a node's error with PostgreSQL's own message.
fn db(node: &Node) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| match e.as_db_error() {
        Some(d) => format!("{}: {} ({})", node.name, d.message(), d.code().code()),
        None => format!("{}: {e}", node.name),
    }
}

/// Runs a switchover, failover or drill and reports it. One at a time.
pub async fn run(state: &Arc<State>, to: &Option<String>, force: bool, check: bool) -> Report {
    let action = if check {
        "drill"
    } else if force {
        "failover"
    } else {
        "switchover"
    };
    let Ok(_one_at_a_time) = state.failover_lock.try_lock() else {
        state.metrics.failover("refused");
        return Report::refused(action, "another failover is in progress");
    };
    let report = if state.config.load().follows_patroni() {
        // Patroni manages the nodes: it is asked, never bypassed.
        crate::topology::patroni::delegate(state, to.as_deref(), force, check).await
    } else if force {
        failover(state, to.as_deref(), check).await
    } else {
        switchover(state, to.as_deref(), check).await
    };
    let result = if report.ok {
        "success"
    } else if report.steps.iter().any(|s| !s.ok) {
        "error"
    } else {
        "refused"
    };
    if !check {
        state.metrics.failover(result);
    }
    match &report.error {
        None => tracing::info!(action, candidate = ?report.candidate, result, "failover finished"),
        Some(e) => {
            tracing::warn!(action, candidate = ?report.candidate, result, error = %e, "failover did not happen")
        }
    }
    report
}

/// Checks the candidate for a switchover: a streaming replica within
/// `max_lag` that the monitor's login may promote.
async fn check_candidate(
    state: &State,
    config: &Config,
    candidate: &Node,
) -> Result<Client, String> {
    let client = connect(state, config, candidate).await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE coalesce(status, 'streaming') = 'streaming'), \
             has_function_privilege('pg_promote(boolean, integer)', 'execute')",
            &[],
        )
        .await
        .map_err(db(candidate))?;
    let (in_recovery, streaming, may_promote): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if !in_recovery {
        return Err(format!(
            "{} is not a replica (not in recovery)",
            candidate.name
        ));
    }
    if !streaming {
        return Err(format!(
            "{} is not streaming from the primary",
            candidate.name
        ));
    }
    if !may_promote {
        return Err(format!(
            "the monitor's login may not call pg_promote on {}",
            candidate.name
        ));
    }
    let stats = candidate.stats.load();
    if !stats.eligible {
        return Err(format!(
            "{} is beyond max_lag ({:.1}s, {} bytes behind)",
            candidate.name, stats.lag_seconds, stats.lag_bytes
        ));
    }
    Ok(client)
}

async fn switchover(state: &Arc<State>, to: Option<&str>, drill: bool) -> Report {
    let action = if drill { "drill" } else { "switchover" };
    let config = state.config.load_full();
    let topology = state.topology.load_full();
    let old = topology.primary().clone();
    let Some(name) = to else {
        return Report::refused(action, "a switchover needs --to NODE");
    };
    let Some(candidate) = topology.node(name).cloned() else {
        return Report::refused(action, format!("no node named {name}"));
    };
    if Arc::ptr_eq(&candidate, &old) {
        return Report::refused(action, format!("{name} is already the primary"));
    }
    if !topology.is_replica(&candidate) || !candidate.health.is_up() {
        return Report::refused(action, format!("{name} is not an available replica"));
    }
    let mut steps = Steps::default();
    let report = Report {
        action: action.into(),
        candidate: Some(name.to_owned()),
        old_primary: Some(old.name.to_string()),
        ..Report::default()
    };
    let candidate_client = match steps
        .run(
            "check candidate",
            check_candidate(state, &config, &candidate),
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return steps.finish(report, Some(e)),
    };
    if drill {
        return steps.drilled(
            report,
            &[
                "hold new writes",
                "drain open transactions on the old primary",
                "fence the old primary",
                "wait for the candidate to replay the final position",
                "promote",
                "publish the topology",
                "release writes",
                "repoint the other replicas",
            ],
        );
    }
    let old_client = match steps
        .run("connect to the old primary", connect(state, &config, &old))
        .await
    {
        Ok(c) => c,
        Err(e) => return steps.finish(report, Some(format!("{e} (use --force if it is gone)"))),
    };
    let held = std::time::Instant::now();
    state.hold_writes(true);
    steps.record("hold new writes", Duration::ZERO, true, None);
    steps
        .run("drain open transactions on the old primary", async {
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            while old.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, String>(())
        })
        .await
        .ok();
    let fenced = steps
        .run("fence the old primary", fence(&old, &old_client))
        .await;
    let final_lsn = match fenced {
        Ok(lsn) => lsn,
        Err(e) => return abort(state, steps, report, &old, &old_client, e).await,
    };
    let caught_up = steps
        .run(
            "wait for the candidate to replay the final position",
            async {
                let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
                loop {
                    let row = candidate_client
                        .query_one(
                            "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint",
                            &[],
                        )
                        .await
                        .map_err(db(&candidate))?;
                    let replay: Option<i64> = row.get(0);
                    if replay.unwrap_or(0) >= final_lsn {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "{} did not reach the final position in time",
                            candidate.name
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    if let Err(e) = caught_up {
        return abort(state, steps, report, &old, &old_client, e).await;
    }
    if let Err(e) = steps
        .run("promote", promote(&candidate, &candidate_client))
        .await
    {
        return abort(state, steps, report, &old, &old_client, e).await;
    }
    let promoted = Promoted {
        candidate: &candidate,
        old: &old.name,
        held,
    };
    finish_promotion(state, steps, report, &topology, promoted).await
}

/// Makes the old primary read-only, ends its client sessions, and returns
/// its final WAL position.
async fn fence(old: &Node, client: &Client) -> Result<i64, String> {
    // ALTER SYSTEM refuses to run in a transaction block: one at a time.
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    ] {
        client.batch_execute(sql).await.map_err(db(old))?;
    }
    let row = client
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map_err(db(old))?;
    Ok(row.get(0))
}

async fn promote(candidate: &Node, client: &Client) -> Result<(), String> {
    let row = client
        .query_one("SELECT pg_promote(true, $1)", &[&PROMOTE_TIMEOUT_SECS])
        .await
        .map_err(db(candidate))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(format!(
            "{} did not finish promoting in {PROMOTE_TIMEOUT_SECS}s",
            candidate.name
        ))
    }
}

/// A step before promotion failed: undo the fence, resume writes on the
/// old primary.
async fn abort(
    state: &Arc<State>,
    mut steps: Steps,
    report: Report,
    old: &Node,
    old_client: &Client,
    error: String,
) -> Report {
    let undo = async {
        old_client
            .batch_execute(
                "ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()",
            )
            .await
            .map_err(db(old))
    };
    let _ = steps.run("undo the fence", undo).await;
    state.hold_writes(false);
    steps.record(
        "release writes to the old primary",
        Duration::ZERO,
        true,
        None,
    );
    steps.finish(report, Some(error))
}

/// What was promoted, in place of what, since when writes were held.
struct Promoted<'a> {
    candidate: &'a Arc<Node>,
    old: &'a Arc<str>,
    held: std::time::Instant,
}

/// Publishes the new primary (the old one retired), releases writes,
/// repoints the other replicas, and completes the report.
async fn finish_promotion(
    state: &Arc<State>,
    mut steps: Steps,
    mut report: Report,
    topology: &crate::topology::Topology,
    promoted: Promoted<'_>,
) -> Report {
    let Promoted {
        candidate,
        old,
        held,
    } = promoted;
    let retire = std::slice::from_ref(old);
    let config = state.config.load_full();
    state
        .topology
        .store(Arc::new(topology.with_primary(&candidate.name, retire)));
    steps.record("publish the topology", Duration::ZERO, true, None);
    state.hold_writes(false);
    let held_ms = held.elapsed().as_millis() as u64;
    steps.record("release writes", Duration::ZERO, true, None);
    for node in &topology.nodes {
        if Arc::ptr_eq(node, candidate) || retire.contains(&node.name) || !topology.is_replica(node)
        {
            continue;
        }
        let step = format!("repoint {}", node.name);
        let _ = steps
            .run(&step, repoint(state, &config, node, candidate))
            .await;
    }
    report.writes_held_ms = Some(held_ms);
    report.ok = true;
    steps.finish(report, None)
}

/// Points a replica's WAL receiver at the new primary.
async fn repoint(
    state: &State,
    config: &Config,
    replica: &Node,
    primary: &Node,
) -> Result<(), String> {
    let client = connect(state, config, replica).await?;
    let row = client
        .query_one("SHOW primary_conninfo", &[])
        .await
        .map_err(db(replica))?;
    let current: String = row.get(0);
    let updated = conninfo::repoint(&current, &primary.host, primary.port);
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            postgres_protocol::escape::escape_literal(&updated)
        ))
        .await
        .map_err(db(replica))?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(db(replica))
}

/// A forced failover: promote the most advanced reachable replica (or
/// `to`) without the old primary's final position. `drill`: choose and
/// report the survivor and the bytes that may be lost, change nothing.
async fn failover(state: &Arc<State>, to: Option<&str>, drill: bool) -> Report {
    let config = state.config.load_full();
    let topology = state.topology.load_full();
    let old = topology.primary().clone();
    let mut steps = Steps::default();
    let action = if drill { "drill" } else { "failover" };
    let mut report = Report {
        action: action.into(),
        old_primary: Some(old.name.to_string()),
        ..Report::default()
    };
    let candidates: Vec<Arc<Node>> = match to {
        Some(name) => match topology.node(name) {
            Some(n) if topology.is_replica(n) => vec![n.clone()],
            _ => return Report::refused(action, format!("{name} is not a replica")),
        },
        None => topology
            .nodes
            .iter()
            .filter(|n| topology.is_replica(n))
            .cloned()
            .collect(),
    };
    // The most advanced candidate by received WAL.
    let mut best: Option<(Arc<Node>, Client, i64)> = None;
    let chosen = steps
        .run("choose the most advanced replica", async {
            for node in &candidates {
                let Ok(client) = connect(state, &config, node).await else { continue };
                let Ok(row) = client
                    .query_one(
                        "SELECT pg_is_in_recovery(), (greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn)::bigint",
                        &[],
                    )
                    .await
                else {
                    continue;
                };
                let (in_recovery, received): (bool, Option<i64>) = (row.get(0), row.get(1));
                let received = received.unwrap_or(0);
                if in_recovery && best.as_ref().is_none_or(|(_, _, b)| received > *b) {
                    best = Some((node.clone(), client, received));
                }
            }
            best.take().ok_or_else(|| "no reachable replica to promote".to_owned())
        })
        .await;
    let (candidate, client, received) = match chosen {
        Ok(c) => c,
        Err(e) => return steps.finish(report, Some(e)),
    };
    report.candidate = Some(candidate.name.to_string());
    if drill {
        // What the monitor last saw of the old primary against what the
        // survivor has: the most that would be lost.
        let last_known = old.stats.load().lsn;
        report.lost_bytes = Some(last_known.saturating_sub(received.max(0) as u64));
        return steps.drilled(
            report,
            &[
                "hold new writes",
                "promote",
                "publish the topology",
                "release writes",
                "repoint the other replicas",
            ],
        );
    }
    let held = std::time::Instant::now();
    state.hold_writes(true);
    if let Err(e) = steps.run("promote", promote(&candidate, &client)).await {
        state.hold_writes(false);
        return steps.finish(report, Some(e));
    }
    let last_known = old.stats.load().lsn;
    report.lost_bytes = Some(last_known.saturating_sub(received.max(0) as u64));
    let promoted = Promoted {
        candidate: &candidate,
        old: &old.name,
        held,
    };
    finish_promotion(state, steps, report, &topology, promoted).await
}
