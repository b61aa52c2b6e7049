//! The monitor: every `lag.check_interval` it polls every node over its
//! own tokio-postgres connection (with `lag.check_timeout`) for recovery
//! state, WAL positions, replay pause, timeline and WAL receiver status;
//! flips node health after `down_after`/`up_after` consecutive results;
//! computes lag (see [`super::lag`]) and publishes each node's
//! [`NodeStats`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::lag::{History, Limits, ReplicaTrack};
use super::{Node, NodeStats, Topology};
use crate::config::Config;
use crate::tls::{NodeTls, connect_node};

/// One poll's answer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    in_recovery: bool,
    current: Option<i64>,
    replay: Option<i64>,
    paused: bool,
    timeline: Option<i32>,
    receiving: bool,
}

const SAMPLE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint END, \
    (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
    CASE WHEN pg_is_in_recovery() \
         THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE coalesce(status, 'streaming') = 'streaming')";

/// A node's monitor connection.
struct Poller {
    name: Arc<str>,
    address: (String, u16),
    client: Option<Client>,
}

impl Poller {
    async fn poll(
        &mut self,
        config: &Config,
        node_tls: &NodeTls,
        node: &Node,
        timeout: Duration,
    ) -> Result<Sample, String> {
        let result = tokio::time::timeout(timeout, self.poll_inner(config, node_tls, node)).await;
        match result {
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(e)) => {
                self.client = None;
                Err(e)
            }
            Err(_) => {
                self.client = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn poll_inner(
        &mut self,
        config: &Config,
        node_tls: &NodeTls,
        node: &Node,
    ) -> Result<Sample, String> {
        if self.client.is_none() {
            self.client = Some(
                connect_node(config, node_tls, &node.endpoint(), None, "pgsplit-monitor").await?,
            );
        }
        let client = self.client.as_ref().expect("connected");
        let row = client
            .query_one(SAMPLE_SQL, &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(Sample {
            in_recovery: row.get(0),
            current: row.get(1),
            replay: row.get(2),
            paused: row.get(3),
            timeline: row.get(4),
            receiving: row.get(5),
        })
    }
}

/// Polls until `shutdown` fires.
pub async fn run(
    topology: Arc<ArcSwap<Topology>>,
    config: Arc<ArcSwap<Config>>,
    node_tls: NodeTls,
    shutdown: CancellationToken,
    poll_now: Arc<tokio::sync::Notify>,
) {
    let mut pollers: Vec<Poller> = Vec::new();
    let mut history = History::default();
    let mut tracks: HashMap<Arc<str>, ReplicaTrack> = HashMap::new();
    let mut last_primary: Option<Arc<str>> = None;
    loop {
        let cfg = config.load_full();
        let topo = topology.load_full();
        // A new primary (switchover, failover): lag is measured against its
        // positions from now on, not the old primary's (which may be ahead
        // of anything the new one will write for a while).
        let primary_now = topo.primary().name.clone();
        if last_primary.as_ref().is_some_and(|p| *p != primary_now) {
            tracing::info!(primary = %primary_now, "primary changed: lag history starts again");
            history = History::default();
            tracks.clear();
        }
        last_primary = Some(primary_now);
        sync_pollers(&mut pollers, &topo);
        let timeout = cfg.lag.check_timeout.0;
        let results = futures_util::future::join_all(pollers.iter_mut().map(|p| {
            let node = topo.node(&p.name).cloned();
            let (cfg, node_tls) = (&cfg, &node_tls);
            async move {
                match node {
                    Some(node) => p.poll(cfg, node_tls, &node, timeout).await,
                    None => Err("removed".to_owned()),
                }
            }
        }))
        .await;
        let now = Instant::now();
        let window = (cfg.lag.max_lag.0 * 10).max(Duration::from_secs(300));
        let limits = Limits {
            max_seconds: cfg.lag.max_lag.0.as_secs_f64(),
            max_bytes: cfg.lag.max_lag_bytes.0,
        };
        let primary_name = topo.primary().name.clone();
        let mut primary_sampled = false;
        for (poller, result) in pollers.iter().zip(&results) {
            let Some(node) = topo.node(&poller.name) else {
                continue;
            };
            match result {
                Ok(sample) => {
                    if node.health.observe_success(cfg.lag.up_after) {
                        tracing::info!(node = %node.name, state = "up", "node answers again");
                    }
                    if poller.name == primary_name && !sample.in_recovery {
                        history.record(now, sample.current.unwrap_or(0).max(0) as u64, window);
                        primary_sampled = true;
                        node.stats.store(Arc::new(NodeStats {
                            sampled: true,
                            in_recovery: false,
                            lsn: sample.current.unwrap_or(0).max(0) as u64,
                            timeline: sample.timeline.unwrap_or(0) as u32,
                            eligible: true,
                            effective_weight: f64::from(node.weight),
                            ..NodeStats::default()
                        }));
                    } else if poller.name == primary_name {
                        tracing::warn!(node = %node.name, "the configured primary is in recovery");
                    }
                }
                Err(error) => {
                    // A standby that restarts may show less than it did.
                    node.probed.store(0, std::sync::atomic::Ordering::Relaxed);
                    if node.health.observe_failure(cfg.lag.down_after) {
                        if poller.name == primary_name {
                            tracing::warn!(
                                node = %node.name,
                                %error,
                                state = "down",
                                hint = "if it is gone for good: pgsplit failover --to NODE --force",
                                "primary unreachable"
                            );
                        } else {
                            tracing::warn!(node = %node.name, %error, state = "down", "node stopped answering");
                        }
                    } else {
                        tracing::debug!(node = %node.name, %error, "poll failed");
                    }
                }
            }
        }
        // With Patroni deciding, the follower alone changes the primary.
        let found = if cfg.follows_patroni() {
            None
        } else {
            discover(&topo, &pollers, &results)
        };
        let topo = match found {
            Some(changed) => {
                // Only over the snapshot this round started from: a reload or
                // failover published meanwhile wins, and the next round sees it.
                let changed = Arc::new(changed);
                let previous = topology.compare_and_swap(&topo, changed.clone());
                if Arc::ptr_eq(&previous, &topo) {
                    changed
                } else {
                    topo
                }
            }
            None => topo,
        };
        for (poller, result) in pollers.iter().zip(&results) {
            let Some(node) = topo.node(&poller.name) else {
                continue;
            };
            let Ok(sample) = result else { continue };
            if !topo.is_replica(node) || !primary_sampled {
                // Without a fresh primary position the lag is unknown: the
                // replica keeps its last verdict.
                continue;
            }
            let replay = sample.replay.unwrap_or(0).max(0) as u64;
            let track = tracks
                .entry(node.name.clone())
                .or_insert_with(ReplicaTrack::admitted);
            let lag = track.observe(now, replay, sample.receiving, &history);
            let was = track.eligible;
            let eligible = track.judge(lag, limits) && sample.in_recovery;
            if was != eligible {
                tracing::info!(node = %node.name, lag_bytes = lag.bytes, lag_secs = lag.seconds, eligible, "replica eligibility changed");
            }
            tracing::trace!(node = %node.name, lag_bytes = lag.bytes, lag_secs = lag.seconds, state = if eligible { "eligible" } else { "lagging" }, "lag");
            let effective_weight = if eligible {
                f64::from(node.weight) * limits.freshness(lag)
            } else {
                0.0
            };
            node.stats.store(Arc::new(NodeStats {
                sampled: true,
                in_recovery: sample.in_recovery,
                lag_seconds: lag.seconds,
                lag_bytes: lag.bytes,
                lsn: replay,
                timeline: sample.timeline.unwrap_or(0) as u32,
                replay_paused: sample.paused,
                receiving: sample.receiving,
                eligible,
                effective_weight,
            }));
        }
        for node in &topo.nodes {
            let stats = node.stats.load();
            let m = &node.metrics;
            m.up.set(i64::from(node.health.is_up()));
            m.lag_seconds.set(stats.lag_seconds);
            m.lag_bytes.set(stats.lag_bytes as f64);
            m.effective_weight.set(if node.health.is_up() {
                stats.effective_weight
            } else {
                0.0
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cfg.lag.check_interval.0) => {}
            // A write found the primary fenced: look again at once.
            _ = poll_now.notified() => {}
        }
    }
}

/// Roles as the nodes report them: the primary is the writable node (not
/// in recovery) on the highest timeline; a writable node on a lower
/// timeline is retired and never gets writes again. This is how several
/// proxies over the same nodes converge after one of them (or anyone)
/// promoted a replica. Returns the new topology when it changes.
fn discover(
    topo: &Topology,
    pollers: &[Poller],
    results: &[Result<Sample, String>],
) -> Option<Topology> {
    // A retired node that was rebuilt as a streaming replica is a replica
    // again.
    let rejoined: Vec<Arc<str>> = pollers
        .iter()
        .zip(results)
        .filter(|(p, r)| {
            topo.retired().contains(&p.name) && matches!(r, Ok(s) if s.in_recovery && s.receiving)
        })
        .map(|(p, _)| p.name.clone())
        .collect();
    let writable: Vec<(&Arc<str>, i32)> = pollers
        .iter()
        .zip(results)
        .filter_map(|(p, r)| match r {
            Ok(s) if !s.in_recovery => Some((&p.name, s.timeline.unwrap_or(0))),
            _ => None,
        })
        .collect();
    let Some(top) = writable.iter().map(|(_, tl)| *tl).max() else {
        return (!rejoined.is_empty()).then(|| topo.rejoin(&rejoined));
    };
    let current = topo.primary();
    let current_timeline = current.stats.load().timeline as i32;
    let leaders: Vec<&Arc<str>> = writable
        .iter()
        .filter(|(name, tl)| *tl == top && !topo.retired().contains(name))
        .map(|(name, _)| *name)
        .collect();
    let stale: Vec<Arc<str>> = writable
        .iter()
        .filter(|(name, tl)| *tl < top && !topo.retired().contains(name))
        .map(|(name, _)| (*name).clone())
        .collect();
    let current_leads = leaders.contains(&&current.name);
    let new_primary = match leaders.as_slice() {
        _ if current_leads => None,
        [one] if top > current_timeline || !writable.iter().any(|(n, _)| **n == current.name) => {
            Some((*one).clone())
        }
        [] | [_] => None,
        several => {
            tracing::error!(nodes = ?several, timeline = top, "several writable nodes on one timeline; keeping the current primary");
            None
        }
    };
    if new_primary.is_none() && stale.is_empty() && rejoined.is_empty() {
        return None;
    }
    let primary = new_primary.clone().unwrap_or_else(|| current.name.clone());
    let mut retire = stale;
    retire.retain(|n| *n != primary);
    if let Some(p) = &new_primary {
        tracing::warn!(old = %current.name, new = %p, timeline = top, "the primary changed: writes now go to the node on the highest timeline");
    }
    for r in &retire {
        tracing::warn!(node = %r, "a writable node on an older timeline is retired");
    }
    for r in &rejoined {
        tracing::info!(node = %r, "a retired node streams as a replica again");
    }
    Some(topo.with_primary(&primary, &retire).rejoin(&rejoined))
}

fn sync_pollers(pollers: &mut Vec<Poller>, topology: &Topology) {
    pollers.retain(|p| {
        topology
            .node(&p.name)
            .is_some_and(|n| (n.host.as_str(), n.port) == (p.address.0.as_str(), p.address.1))
    });
    for node in &topology.nodes {
        if !pollers.iter().any(|p| p.name == node.name) {
            pollers.push(Poller {
                name: node.name.clone(),
                address: (node.host.clone(), node.port),
                client: None,
            });
        }
    }
}
