//! Choosing the node for a batch that holds no connection yet: the
//! primary, or a reader by tags (route rules, tag hints), zone, lag,
//! read-your-writes floor and load; and what to do when none fits.

use std::sync::Arc;

use crate::config::{Config, NoReplica, RuleFallback, first_match};
use crate::protocol::sqlstate;
use crate::router::{Reason, Route, Target};
use crate::topology::{Node, ReadRequest, Topology};

/// What the choice needs from the session.
pub struct Wants<'a> {
    /// The batch's route.
    pub route: Route,
    /// A `/* pgsplit:tag=... */` hint.
    pub tag: Option<&'a str>,
    /// Who the session is: user, database, application_name.
    pub who: (&'a str, &'a str, &'a str),
    /// Read-your-writes floor.
    pub floor: u64,
    /// Nodes already tried for this batch.
    pub tried: &'a [Arc<str>],
}

/// The verdict.
pub enum Choice {
    /// Send it there.
    Node { node: Arc<Node>, reason: Reason },
    /// A replica that may have replayed the floor since the monitor's
    /// last sample: ask it (and wait a little), else the primary.
    Probe { node: Arc<Node> },
    /// Refuse it at the proxy.
    Refuse { code: &'static str, message: String },
}

/// Chooses the node for a batch.
pub fn choose(config: &Config, topology: &Topology, wants: &Wants<'_>) -> Choice {
    let route = wants.route;
    if route.target == Target::Primary {
        return Choice::Node {
            node: topology.primary().clone(),
            reason: route.reason,
        };
    }
    let mut rng = rand::rng();
    let (user, database, app) = wants.who;
    let rule = first_match(&config.routing.rules, user, database, app);
    let hinted: Option<Vec<String>> = wants.tag.map(|t| vec![t.to_owned()]);
    let tags = hinted.as_deref().or(rule.map(|r| r.tags.as_slice()));
    let base = ReadRequest {
        primary_reads: config.routing.primary_reads,
        floor: wants.floor,
        exclude: wants.tried,
        tags: None,
        zone: config.zone.as_deref(),
        cross_zone_share: config.routing.cross_zone_share,
    };
    let retry = |reason| {
        if wants.tried.is_empty() {
            reason
        } else {
            Reason::Retry
        }
    };
    if let Some(tags) = tags {
        let req = ReadRequest {
            tags: Some(tags),
            ..base
        };
        if let Some(pick) = topology.pick_reader(&req, &mut rng) {
            let reason = if wants.tag.is_some() {
                Reason::Hint
            } else {
                Reason::Rule
            };
            return Choice::Node {
                node: pick.node.clone(),
                reason: retry(reason),
            };
        }
        match rule.filter(|_| wants.tag.is_none()).map(|r| r.fallback) {
            Some(RuleFallback::Primary) => {
                return Choice::Node {
                    node: topology.primary().clone(),
                    reason: Reason::Rule,
                };
            }
            Some(RuleFallback::Error) => {
                return Choice::Refuse {
                    code: sqlstate::CONNECTION_FAILURE,
                    message: format!("no replica tagged {tags:?} is available for this read"),
                };
            }
            Some(RuleFallback::Replica) | None => {}
        }
    }
    if let Some(pick) = topology.pick_reader(&base, &mut rng) {
        let reason = if pick.by_zone {
            Reason::Zone
        } else {
            route.reason
        };
        return Choice::Node {
            node: pick.node.clone(),
            reason: retry(reason),
        };
    }
    if wants.floor > 0
        && let Some(node) = topology.to_probe(&base, &mut rng)
    {
        return Choice::Probe { node: node.clone() };
    }
    match config.routing.no_replica {
        NoReplica::Primary => Choice::Node {
            node: topology.primary().clone(),
            reason: Reason::NoReplica,
        },
        NoReplica::Error => Choice::Refuse {
            code: sqlstate::CONNECTION_FAILURE,
            message: "no replica is available for this read".into(),
        },
    }
}
