//! Sending a batch when the session holds no server connection: choosing
//! the node, checking out (or keeping, in session pooling) a connection,
//! translating and sending; and what happens when a connection fails.

use std::sync::Arc;

use super::super::SessionError;
use super::super::batch::Plan;
use super::super::cancel::CancelTarget;
use super::super::choose::{Choice, Wants, choose};
use super::super::outbound::Translation;
use super::{Held, MAX_READ_TRIES, Retry, Session, WRITE_HOLD_LIMIT, backend_error};
use crate::pool::{PoolError, Pooled};
use crate::protocol::backend::{self as be, Severity, TxnStatus};
use crate::protocol::codec::Frame;
use crate::protocol::sqlstate;
use crate::router::{Reason, Target};
use crate::topology::Node;
use crate::wire::WireError;

impl Session<'_> {
    /// Routes a batch when no connection is held, and sends it.
    pub(super) async fn send_fresh(
        &mut self,
        frames: Vec<Frame>,
        plan: Plan,
        mut tried: Vec<Arc<str>>,
    ) -> Result<(), SessionError> {
        let mut route = plan.route;
        let config = self.state.config.load_full();
        if route.target == Target::Primary
            && config.user(&self.startup.user).is_some_and(|u| u.read_only)
        {
            // A read-only user: transaction control and tracked SETs run on
            // a replica (where nothing can write); the rest never leaves.
            if matches!(route.reason, Reason::Transaction | Reason::Session) && !route.pins {
                route.target = Target::Replica;
            } else {
                let message = format!(
                    "user \"{}\" may only read through pgsplit: this statement needs the primary",
                    self.startup.user
                );
                self.fail_batch(sqlstate::READ_ONLY_SQL_TRANSACTION, &message, plan.syncs);
                return Ok(());
            }
        }
        // A switchover holds new write transactions until the new primary
        // takes them; reads keep flowing.
        if route.target == Target::Primary && !self.state.writes_released(WRITE_HOLD_LIMIT).await {
            let message = "writes are held for a switchover that has not finished";
            self.fail_batch(sqlstate::CONNECTION_FAILURE, message, plan.syncs);
            return Ok(());
        }
        let floor = self.read_floor();
        loop {
            let topology = self.state.topology.load_full();
            // Session pooling: a read keeps using the replica connection the
            // session already has.
            let kept = (route.target == Target::Replica)
                .then(|| {
                    self.spare.iter().position(|h| {
                        h.target == Target::Replica
                            && h.node.health.is_up()
                            && !tried.contains(&h.node.name)
                    })
                })
                .flatten();
            let (node, reason) = match kept {
                Some(i) => (self.spare[i].node.clone(), route.reason),
                None => {
                    let wants = Wants {
                        route,
                        tag: plan.tag.as_deref(),
                        who: (&self.startup.user, &self.startup.database, &self.app),
                        floor,
                        tried: &tried,
                    };
                    match choose(&config, &topology, &wants) {
                        Choice::Node { node, reason } => (node, reason),
                        Choice::Refuse { code, message } => {
                            self.fail_batch(code, &message, plan.syncs);
                            return Ok(());
                        }
                    }
                }
            };
            let is_primary = Arc::ptr_eq(&node, topology.primary());
            let conn = match self.take_spare(&node) {
                Some(conn) => Ok(conn),
                None => self.checkout(&node).await,
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    if route.target == Target::Replica
                        && !is_primary
                        && tried.len() < MAX_READ_TRIES
                    {
                        tried.push(node.name.clone());
                        continue;
                    }
                    let code = match &e {
                        PoolError::Timeout { .. } => sqlstate::TOO_MANY_CONNECTIONS.to_owned(),
                        PoolError::Login {
                            source: crate::auth::AuthError::Rejected { code, .. },
                            ..
                        } => code.clone(),
                        _ => sqlstate::CONNECTION_FAILURE.to_owned(),
                    };
                    self.fail_batch(&code, &e.to_string(), plan.syncs);
                    return Ok(());
                }
            };
            tracing::debug!(
                route = route.target.as_str(),
                reason = reason.as_str(),
                node = %node.name,
                in_txn = false,
                "statement routed"
            );
            if route.pins {
                self.pinned = true;
                conn.dirty = true;
            }
            self.slot.set(Some(CancelTarget {
                address: conn.address.clone(),
                pid: conn.login.pid,
                secret: conn.login.secret,
            }));
            let out = Translation {
                conn: &mut conn,
                statements: &mut self.statements,
                settings: &self.settings,
                router: &self.state.router.load(),
            }
            .translate(&frames, plan.command.as_ref(), true)
            .map_err(SessionError::ClientProtocol)?;
            let send = conn.send(&out.bytes).await;
            let target = if is_primary {
                Target::Primary
            } else {
                Target::Replica
            };
            self.state.metrics.decision(target, reason);
            node.metrics.query(target);
            self.timing
                .get_or_insert((std::time::Instant::now(), target));
            self.held = Some(Held::new(conn, node, target));
            self.wrote |= is_primary && route.target == Target::Primary && route.reason.may_write();
            self.function_ddl |= plan.function_ddl;
            self.open_batch = plan.syncs == 0;
            self.replies.extend(out.expects);
            self.replies.emit_ready_synthetics(&mut self.cwbuf);
            self.retry = (route.target == Target::Replica).then(|| Retry {
                frames,
                plan,
                tried,
                added: out.added,
            });
            return match send {
                Ok(()) => Ok(()),
                Err(e) => self.backend_failed(e.into()).await,
            };
        }
    }

    pub(super) fn take_spare(&mut self, node: &Arc<Node>) -> Option<Pooled> {
        let at = self.spare.iter().position(|h| Arc::ptr_eq(&h.node, node))?;
        Some(self.spare.swap_remove(at).conn)
    }

    /// Tells the client a batch failed before reaching any node.
    pub(super) fn fail_batch(&mut self, code: &str, message: &str, syncs: usize) {
        tracing::info!(code, error = message, "statement failed at the proxy");
        be::error_response(&mut self.cwbuf, Severity::Error, code, message);
        for _ in 0..syncs {
            be::ready_for_query(&mut self.cwbuf, TxnStatus::Idle);
        }
    }

    /// The held connection failed: retry a read elsewhere, report a failed
    /// statement, or end the session when its state is gone.
    pub(super) async fn backend_failed(&mut self, error: WireError) -> Result<(), SessionError> {
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        held.conn.mark_broken();
        held.node.metrics.backend_errors.inc();
        self.timing = None;
        self.slot.set(None);
        if matches!(
            error,
            WireError::Io(_) | WireError::Closed | WireError::Protocol(_)
        ) && held.node.health.mark_down()
        {
            tracing::warn!(node = %held.node.name, error = %error, state = "down", "node connection lost");
        }
        let in_txn = held.conn.status != TxnStatus::Idle;
        let node = held.node.name.clone();
        drop(held);
        let owed = self.replies.ready_owed();
        self.replies.clear();
        if let Some(mut retry) = self.retry.take()
            && !in_txn
            && !self.pinned
        {
            tracing::info!(node = %node, "read failed before any reply; trying another node");
            for name in &retry.added {
                self.statements.remove(name);
            }
            retry.tried.push(node);
            self.open_batch = false;
            return Box::pin(self.send_fresh(retry.frames, retry.plan, retry.tried)).await;
        }
        if in_txn || self.pinned || self.open_batch {
            return Err(backend_error(&node, error));
        }
        let message = format!("connection to node {node} lost: {error}");
        self.fail_batch(sqlstate::CONNECTION_FAILURE, &message, owed);
        Ok(())
    }
}
