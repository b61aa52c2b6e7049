//! The one path every batch takes to a server connection, whether it is
//! the first of a transaction, one within it, or a read sent again after
//! its node failed: where it goes ([`Placement`]), the checks before it
//! leaves (read-only users, held writes, the pin cap, a replica
//! transaction asked for the primary, DROP DATABASE), and the send. Also
//! what happens when the held connection fails.

use std::sync::Arc;

use bytes::BytesMut;

use super::super::SessionError;
use super::super::batch::Plan;
use super::super::choose::{Choice, Wants, choose};
use super::super::outbound::{Outbound, Translation};
use super::super::replies::{Expect, Kind, Replies};
use super::{
    Held, Hold, MAX_READ_TRIES, MAX_WRITE_TRIES, Phase, PinGuard, Retry, Session, WRITE_HOLD_LIMIT,
    backend_error,
};
use crate::cancel::CancelTarget;
use crate::pool::{PoolError, Pooled};
use crate::protocol::backend::{self as be, Severity, TxnStatus};
use crate::protocol::codec::{Frame, Frames};
use crate::protocol::frontend as fe;
use crate::protocol::sqlstate;
use crate::router::{Reason, Route, Target};
use crate::topology::Node;
use crate::wire::WireError;

/// A `sequence_owner` no session has: the connection's sequence state is
/// discarded before the next statement that may call nextval.
const STALE_SEQUENCES: i32 = i32::MIN;

/// Between two read-your-writes probes of one replica.
const PROBE_PAUSE: std::time::Duration = std::time::Duration::from_micros(500);

/// Why the held connection could not go on.
#[derive(Debug)]
pub(super) enum Failure {
    /// Its socket failed, closed, or spoke nonsense.
    Wire(WireError),
    /// The node said it is shutting down or restarting (the SQLSTATE),
    /// before anything of a retryable read reached the client.
    ShuttingDown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Wire(e) => e.fmt(f),
            Failure::ShuttingDown(code) => write!(f, "the node is shutting down ({code})"),
        }
    }
}

impl Failure {
    /// Whether it says the node itself is gone (not one bad connection).
    fn node_down(&self) -> bool {
        matches!(
            self,
            Failure::Wire(WireError::Io(_) | WireError::Closed | WireError::Protocol(_))
        )
    }

    fn into_wire(self) -> WireError {
        match self {
            Failure::Wire(e) => e,
            Failure::ShuttingDown(code) => WireError::Io(std::io::Error::other(format!(
                "the node is shutting down ({code})"
            ))),
        }
    }
}

/// A checkout failure that says the primary itself is gone or going
/// (unreachable, closed, or refusing logins while it shuts down or starts),
/// not that it is busy or refuses this user.
fn primary_gone(e: &PoolError) -> bool {
    match e {
        PoolError::Connect { .. } | PoolError::Closed { .. } => true,
        PoolError::Login {
            source: crate::auth::AuthError::Rejected { code, .. },
            ..
        } => matches!(code.as_str(), "57P01" | "57P02" | "57P03"),
        PoolError::Login {
            source: crate::auth::AuthError::Wire(_),
            ..
        } => true,
        _ => false,
    }
}

/// Where a batch goes.
enum Placement {
    /// On the held connection.
    Held,
    /// After the held connection has finished (it needs another node).
    Drain,
    /// Refused on the held connection (a replica transaction asked for the
    /// primary): the node fails the transaction with this message.
    RefuseOnHeld(String),
    /// On a connection chosen now.
    Fresh,
}

/// Whether a statement inside a transaction on a replica must be refused:
/// it needs the primary, and some such statements would succeed on a
/// replica meaning nothing (an advisory lock there excludes nobody).
fn needs_primary_in_replica_transaction(route: Route) -> bool {
    route.target == Target::Primary
        && matches!(
            route.reason,
            Reason::Write | Reason::Function | Reason::Lock | Reason::Hint
        )
}

impl Session<'_> {
    fn placement(&self, plan: &Plan) -> Placement {
        let Phase::Held(held) = &self.phase else {
            return Placement::Fresh;
        };
        let route = plan.route;
        let hold = held.hold(&self.replies);
        let in_txn = hold == Hold::Transaction;
        // (A batch sent without a Sync does not keep a batch that needs
        // another node here: Drain ends it with a Sync of our own.)
        let must_stay = held.pin.is_some() || in_txn;
        if in_txn && held.target == Target::Replica && needs_primary_in_replica_transaction(route) {
            return Placement::RefuseOnHeld(format!(
                "this read-only transaction runs on replica {} (placed by its first statement), \
                 and this statement needs the primary ({}); start the transaction with it, \
                 or use a read-write transaction",
                held.node.name,
                route.reason.as_str()
            ));
        }
        let fits =
            held.target == Target::Primary || (route.target == Target::Replica && !route.pins);
        // A read behind only the proxy's own work on a primary connection
        // (the client has its answers) waits for that work, then goes
        // where reads go: the connection is between the client's
        // statements, not in the middle of them.
        let behind_own_work = held.target == Target::Primary
            && route.target == Target::Replica
            && hold == Hold::Replies
            && !held.open_batch
            && self.replies.client_answered();
        if must_stay || (fits && !behind_own_work) {
            Placement::Held
        } else {
            Placement::Drain
        }
    }

    /// Routes a batch and sends it: the one path for every batch.
    /// `tried` names nodes a read already failed on.
    pub(super) async fn route_batch(
        &mut self,
        frames: Frames,
        plan: Plan,
        tried: Vec<Arc<str>>,
    ) -> Result<(), SessionError> {
        // A new unit of work: counted busy, then past the console's PAUSE.
        if self.between_transactions() && !self.start_work().await {
            return Err(SessionError::Shutdown);
        }
        match self.placement(&plan) {
            Placement::Held => {
                if let Phase::Held(held) = &self.phase {
                    let reason = if held.conn.status() != TxnStatus::Idle {
                        Reason::Transaction
                    } else {
                        plan.route.reason
                    };
                    self.state.metrics.decision(held.target, reason);
                }
                self.send(frames, plan, None, Vec::new(), 0).await
            }
            Placement::RefuseOnHeld(message) => {
                tracing::info!(parent: &self.span, error = %message, "statement refused in a replica transaction");
                self.refuse_on_held(&message, plan.syncs).await
            }
            Placement::Drain => {
                let Phase::Held(held) = &mut self.phase else {
                    unreachable!("placement saw a held connection");
                };
                // A batch that needs the primary behind reads on a replica
                // (pipelined, or after a Flush without Sync, as asyncpg
                // prepares): end the replica's extended-query sequence with a
                // Sync of our own, wait for its answers, then route afresh.
                if held.open_batch {
                    let mut sync = BytesMut::new();
                    fe::write_sync(&mut sync);
                    held.open_batch = false;
                    if let Err(e) = held.conn.send(&sync).await {
                        return self.backend_failed(Failure::Wire(e.into())).await;
                    }
                    self.replies.extend(vec![Expect::swallowed(Kind::Sync)]);
                }
                self.next = Some((frames, plan));
                Ok(())
            }
            Placement::Fresh => self.route_fresh(frames, plan, tried, 0).await,
        }
    }

    /// A batch with no connection held: choose the node, take a
    /// connection, send. `delivered`: replies of it the client already has
    /// (a retried read).
    async fn route_fresh(
        &mut self,
        frames: Frames,
        plan: Plan,
        mut tried: Vec<Arc<str>>,
        delivered: usize,
    ) -> Result<(), SessionError> {
        let begin = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Deferred { begin } => Some(begin),
            _ => None,
        };
        let mut route = plan.route;
        if route.target == Target::Replica && self.settings.serializable() {
            // SERIALIZABLE by default: a standby refuses every transaction.
            route = Route::primary(Reason::Session);
        }
        if begin.is_some() && route.target == Target::Replica {
            route.reason = Reason::ReadOnlyTransaction;
        }
        let config = self.config.load().clone();
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
                self.phase = Phase::before(begin);
                self.fail_batch(sqlstate::READ_ONLY_SQL_TRANSACTION, &message, plan.syncs);
                return Ok(());
            }
        }
        // A switchover holds new write transactions until the new primary
        // takes them; reads keep flowing.
        if route.target == Target::Primary && !self.state.writes_released(WRITE_HOLD_LIMIT).await {
            let message = "writes are held for a switchover that has not finished";
            self.phase = Phase::before(begin);
            self.fail_batch(sqlstate::CONNECTION_FAILURE, message, plan.syncs);
            return Ok(());
        }
        let floor = self.read_floor();
        self.slot.routing();
        if plan.reads_sequence_state && self.mode == crate::config::PoolMode::Transaction {
            return self.route_to_own_sequences(frames, plan, begin).await;
        }
        loop {
            let topology = self.topology.load().clone();
            // Session pooling: a read keeps using the replica connection the
            // session already has, when it is fresh enough.
            let kept = (route.target == Target::Replica)
                .then(|| {
                    self.spare.iter().position(|h| {
                        h.target == Target::Replica
                            && h.node.health.is_up()
                            && !tried.contains(&h.node.name)
                            && h.node.replayed() >= floor
                    })
                })
                .flatten();
            // A replica's connection a read-your-writes probe found caught up.
            let mut probed = None;
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
                        Choice::Probe { node } => {
                            let wait = config.routing.read_your_writes_wait.0;
                            probed = self.probe(&node, floor, wait).await;
                            if probed.is_some() {
                                (node, route.reason)
                            } else {
                                (topology.primary().clone(), Reason::ReadYourWrites)
                            }
                        }
                        Choice::Refuse { code, message } => {
                            // (a deferred BEGIN stays open, as the client
                            // believes)
                            self.phase = Phase::before(begin);
                            self.fail_batch(code, &message, plan.syncs);
                            return Ok(());
                        }
                    }
                }
            };
            let is_primary = Arc::ptr_eq(&node, topology.primary());
            let conn = match self.take_spare(&node) {
                Some(held) => Ok(held),
                None if probed.is_some() => Ok(Held::new(
                    probed.take().expect("checked"),
                    node.clone(),
                    Target::Replica,
                )),
                None => self.checkout(&node).await.map(|conn| {
                    let target = if is_primary {
                        Target::Primary
                    } else {
                        Target::Replica
                    };
                    Held::new(conn, node.clone(), target)
                }),
            };
            let held = match conn {
                Ok(held) => held,
                Err(e) => {
                    if route.target == Target::Replica
                        && !is_primary
                        && tried.len() < MAX_READ_TRIES
                    {
                        tried.push(node.name.clone());
                        continue;
                    }
                    // The primary is going away or gone (a switchover by
                    // Patroni or another proxy, a restart) and this write
                    // has not run anywhere: it waits for a primary that
                    // takes connections, then goes there.
                    if is_primary
                        && begin.is_none()
                        && !route.pins
                        && tried.len() < MAX_WRITE_TRIES
                        && primary_gone(&e)
                        && !self.settings.read_only()
                    {
                        tracing::info!(parent: &self.span, node = %node.name, error = %e, "the primary cannot be reached; holding the write for a primary that can");
                        if node.health.mark_down() {
                            tracing::warn!(parent: &self.span, node = %node.name, error = %e, state = "down", "node connection lost");
                        }
                        let found = self
                            .state
                            .await_writable_primary(&node.name, WRITE_HOLD_LIMIT)
                            .await;
                        self.state.metrics.held_write("unreachable", found);
                        if found {
                            tried.push(node.name.clone());
                            continue;
                        }
                    }
                    let code = match &e {
                        PoolError::Timeout { .. } => sqlstate::TOO_MANY_CONNECTIONS.to_owned(),
                        PoolError::Login {
                            source: crate::auth::AuthError::Rejected { code, .. },
                            ..
                        } => code.clone(),
                        _ => sqlstate::CONNECTION_FAILURE.to_owned(),
                    };
                    self.phase = Phase::before(begin);
                    self.fail_batch(&code, &e.to_string(), plan.syncs);
                    return Ok(());
                }
            };
            tracing::debug!(
                route = route.target.as_str(),
                reason = reason.as_str(),
                node = %node.name,
                "statement routed"
            );
            self.state.metrics.decision(held.target, reason);
            let cancel = self.take_hold(held);
            // Reads may go elsewhere until their replies start; an
            // autocommit write may wait for a new primary if a fenced one
            // refuses it (a transaction's statements may not: its BEGIN ran).
            let retryable = route.target == Target::Replica
                || (begin.is_none() && !route.pins && tried.len() < MAX_WRITE_TRIES);
            self.send(
                frames,
                plan,
                begin,
                if retryable { tried } else { Vec::new() },
                if retryable { 1 + delivered } else { 0 },
            )
            .await?;
            send_pending_cancel(cancel);
            return Ok(());
        }
    }

    /// Asks `node`, on the connection a read would use, whether it has
    /// replayed `floor`, asking again for up to `wait`; every answer
    /// raises what the proxy knows of the node for all sessions. Returns
    /// the connection when it has, else `None` (the read goes to the
    /// primary). One answer may take `lag.check_timeout`, as a poll of the
    /// monitor may: a replica that stalls costs the read that long, not
    /// forever.
    async fn probe(
        &mut self,
        node: &Arc<Node>,
        floor: u64,
        wait: std::time::Duration,
    ) -> Option<Pooled> {
        let deadline = std::time::Instant::now() + wait;
        let answer_limit = self.config.load().lag.check_timeout.0;
        let mut conn = self.checkout(node).await.ok()?;
        let mut notifications = bytes::BytesMut::new();
        loop {
            let answer =
                tokio::time::timeout(answer_limit, conn.replay_lsn(&mut notifications)).await;
            self.cwbuf.extend_from_slice(&notifications);
            notifications.clear();
            let Ok(Ok(lsn)) = answer else {
                conn.mark_broken();
                self.state.metrics.ryw_probe("failed");
                return None;
            };
            node.probed
                .fetch_max(lsn, std::sync::atomic::Ordering::Relaxed);
            if lsn >= floor {
                self.state.metrics.ryw_probe("caught_up");
                return Some(conn);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                self.state.metrics.ryw_probe("behind");
                conn.release();
                return None;
            }
            tokio::time::sleep((deadline - now).min(PROBE_PAUSE)).await;
        }
    }

    /// `currval`/`lastval` in transaction pooling: they run on the
    /// primary connection where this session last called `nextval`, if
    /// nobody used it since; otherwise the client gets 55000, never
    /// another session's value.
    async fn route_to_own_sequences(
        &mut self,
        frames: Frames,
        plan: Plan,
        begin: Option<Frame>,
    ) -> Result<(), SessionError> {
        let topology = self.topology.load().clone();
        let own = self.sequences.clone().and_then(|(node, id, uses)| {
            Arc::ptr_eq(&node, topology.primary())
                .then(|| self.pool_of(&node).checkout_exact(id, uses))
                .flatten()
                .map(|conn| Held::new(conn, node, Target::Primary))
        });
        let Some(held) = own else {
            self.phase = Phase::before(begin);
            self.fail_batch(
                "55000",
                "currval and lastval need the server connection where this session called \
                 nextval, and with transaction pooling it has since served another client \
                 (or is gone); use INSERT ... RETURNING, call them in the same transaction, \
                 or pool.mode: session",
                plan.syncs,
            );
            return Ok(());
        };
        self.state
            .metrics
            .decision(Target::Primary, plan.route.reason);
        let cancel = self.take_hold(held);
        self.send(frames, plan, begin, Vec::new(), 0).await?;
        send_pending_cancel(cancel);
        Ok(())
    }

    /// Holds `held` for the batch being routed, and points cancel requests
    /// at it. Returns the cancel that came while the batch waited for a
    /// connection, to be sent once the batch is.
    fn take_hold(&mut self, held: Box<Held>) -> Option<CancelTarget> {
        let target = held.cancel_target();
        self.phase = Phase::Held(held);
        self.slot.sent_to(target)
    }

    fn take_spare(&mut self, node: &Arc<crate::topology::Node>) -> Option<Box<Held>> {
        let at = self.spare.iter().position(|h| Arc::ptr_eq(&h.node, node))?;
        Some(self.spare.swap_remove(at))
    }

    /// Sends a batch on the held connection. `begin` goes in front (a
    /// deferred read-only BEGIN); `retry` > 0 makes it a read that may be
    /// sent elsewhere if this node fails before answering (`retry - 1`
    /// replies the client already has).
    async fn send(
        &mut self,
        frames: Frames,
        plan: Plan,
        begin: Option<Frame>,
        tried: Vec<Arc<str>>,
        retry: usize,
    ) -> Result<(), SessionError> {
        let Phase::Held(held) = &mut self.phase else {
            unreachable!("send needs a held connection");
        };
        let in_txn = held.conn.status() != TxnStatus::Idle;
        // Settings are brought to the session's before anything outside a
        // transaction (a no-op when the connection has them already).
        let fresh = !in_txn && self.replies.is_empty() && !held.open_batch;
        let route = plan.route;
        // A statement that pins needs room under the cap, checked before it
        // runs (the state it makes could not be undone).
        if route.pins && held.pin.is_none() && held.target == Target::Primary {
            let reason = plan.pin.unwrap_or(crate::pins::PinReason::Other);
            let cap = self.config.load().max_pinned_sessions();
            let Some(guard) = PinGuard::take(&self.state, reason, cap, held.conn.pool()) else {
                let message = format!(
                    "too many pinned sessions ({cap}, limits.max_pinned_sessions): this statement \
                     would keep a server connection for this session ({})",
                    reason.as_str()
                );
                self.fail_batch(sqlstate::TOO_MANY_CONNECTIONS, &message, plan.syncs);
                return self.settle_unused().await;
            };
            held.pin = Some(guard);
            held.conn.proto.dirty = true;
        }
        if let Some(database) = &plan.drops_database {
            // DROP DATABASE refuses while anyone is connected: the proxy's
            // own idle connections to it go first.
            self.state.pools.close_database(database).await;
            self.state.forget_database(database);
        }
        let Phase::Held(held) = &mut self.phase else {
            unreachable!("still held");
        };
        held.node.metrics.query(held.target);
        tracing::debug!(
            node = %held.node.name,
            in_txn,
            pinned = held.pin.is_some(),
            open_batch = held.open_batch,
            "statement sent"
        );
        held.wrote |= held.target == Target::Primary
            && route.target == Target::Primary
            && route.reason.may_write();
        held.catalog_ddl |= plan.catalog_ddl;
        let may_call_nextval = held.target == Target::Primary
            && matches!(
                route.reason,
                Reason::Write
                    | Reason::Function
                    | Reason::Hint
                    | Reason::StandbyRefused
                    | Reason::Unknown
                    | Reason::PrimaryRelation
            );
        if may_call_nextval {
            held.may_have_called_nextval = true;
            // Sequence state already on this connection (another session's,
            // or an older nextval of this one's made before it moved on)
            // must not answer a later currval as if this statement made it:
            // discarded first on a fresh connection, else currval is
            // refused until the next nextval.
            let current = self
                .sequences
                .as_ref()
                .is_some_and(|(n, id, _)| Arc::ptr_eq(n, &held.node) && *id == held.conn.id());
            let owner = held.conn.proto.sequence_owner;
            if owner.is_some_and(|o| o != self.pid) || (owner == Some(self.pid) && !current) {
                if fresh {
                    held.conn.proto.sequence_owner = Some(STALE_SEQUENCES);
                } else {
                    held.sequences_unclear = true;
                }
            }
        }
        held.dirtied |= route.dirties;
        let now = *held.timing.get_or_insert_with(std::time::Instant::now);
        held.xact_started.get_or_insert(now);
        let received = frames.byte_len();
        crate::pool::PoolStats::add(&held.conn.pool().stats.received, received as u64);
        self.retry = None;
        held.open_batch = plan.syncs == 0;
        // Written in place: the session's buffers, reused batch to batch.
        let out = &mut self.outbound;
        Translation {
            conn: &mut held.conn.proto,
            statements: &mut self.statements,
            settings: &self.settings,
            parse_routes: &plan.parse_routes,
            session: self.pid,
        }
        .translate_into(out, &frames, plan.command.as_deref(), fresh)
        .map_err(SessionError::ClientProtocol)?;
        if may_call_nextval {
            held.conn.proto.sequence_owner = Some(self.pid);
        }
        if let Some(begin) = &begin {
            // The deferred BEGIN goes first: after the settings replay (a
            // fresh connection's first expect), before the batch.
            let at = usize::from(
                out.expects
                    .first()
                    .is_some_and(|e| e.kind == Kind::Query && !e.forward),
            );
            let replay_len = if at == 1 { replay_bytes(&out.bytes) } else { 0 };
            let mut bytes = BytesMut::with_capacity(out.bytes.len() + begin.bytes.len());
            bytes.extend_from_slice(&out.bytes[..replay_len]);
            bytes.extend_from_slice(&begin.bytes);
            bytes.extend_from_slice(&out.bytes[replay_len..]);
            out.bytes = bytes;
            out.expects.insert(at, Expect::swallowed(Kind::Query));
        }
        if retry > 1 {
            Replies::skip_delivered(&mut out.expects, retry - 1);
        }
        let sent = held.conn.send(&out.bytes).await;
        self.replies.append(&mut out.expects);
        let added = std::mem::take(&mut out.added);
        if out.bytes.capacity() > OUTBOUND_KEEP {
            *out = Outbound::default();
        }
        let delivered = if retry > 0 {
            self.replies.leading_synthetics() + retry - 1
        } else {
            0
        };
        self.replies.emit_ready_synthetics(&mut self.cwbuf);
        if retry == 0 || in_txn {
            self.batch.recycle(frames);
        } else {
            self.retry = Some(Retry {
                write: route.target == Target::Primary,
                hold_back: plan.syncs > 0,
                frames,
                plan,
                tried,
                added,
                delivered,
                begin,
            });
        }
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.backend_failed(Failure::Wire(e.into())).await,
        }
    }

    /// A fresh connection was taken for a batch that was then refused
    /// before it was sent: it goes back at once.
    async fn settle_unused(&mut self) -> Result<(), SessionError> {
        if let Phase::Held(held) = &self.phase
            && held.hold(&self.replies) == Hold::Nothing
            && held.timing.is_none()
        {
            let Phase::Held(held) = std::mem::replace(&mut self.phase, Phase::Idle) else {
                unreachable!("held above");
            };
            self.put_back(held);
        }
        Ok(())
    }

    /// Fails the open transaction on the held (replica) connection with
    /// `message`, as the node itself would fail a statement: the client gets
    /// the error and a failed transaction, and nothing ran.
    async fn refuse_on_held(&mut self, message: &str, syncs: usize) -> Result<(), SessionError> {
        let Phase::Held(held) = &mut self.phase else {
            unreachable!("refused on a held connection");
        };
        let quoted = message.replace('\'', "''");
        let sql = format!(
            "DO $pgsplit$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = 'pgsplit: {quoted}'; END$pgsplit$",
            sqlstate::READ_ONLY_SQL_TRANSACTION
        );
        let mut bytes = BytesMut::new();
        let mut expects = Vec::new();
        for _ in 0..syncs.max(1) {
            be::query(&mut bytes, &sql);
            expects.push(Expect::new(Kind::Query));
        }
        held.conn.proto.unnamed = None;
        held.timing.get_or_insert_with(std::time::Instant::now);
        let sent = held.conn.send(&bytes).await;
        self.replies.extend(expects);
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.backend_failed(Failure::Wire(e.into())).await,
        }
    }

    /// Tells the client a batch failed before reaching any node.
    pub(super) fn fail_batch(&mut self, code: &str, message: &str, syncs: usize) {
        tracing::info!(parent: &self.span, code, error = message, "statement failed at the proxy");
        if !matches!(self.phase, Phase::Held(_)) {
            self.slot.set(None);
        }
        be::error_response(&mut self.cwbuf, Severity::Error, code, message);
        let status = match &self.phase {
            Phase::Held(held) => held.conn.status(),
            Phase::Deferred { .. } => TxnStatus::InTransaction,
            Phase::Idle => TxnStatus::Idle,
        };
        for _ in 0..syncs {
            be::ready_for_query(&mut self.cwbuf, status);
        }
    }

    /// The held connection failed: retry a read elsewhere, report a failed
    /// statement, or end the session when its state is gone.
    pub(super) async fn backend_failed(&mut self, failure: Failure) -> Result<(), SessionError> {
        let Phase::Held(mut held) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return Ok(());
        };
        held.conn.mark_broken();
        held.node.metrics.backend_errors.inc();
        self.slot.set(None);
        if failure.node_down() && held.node.health.mark_down() {
            tracing::warn!(parent: &self.span, node = %held.node.name, error = %failure, state = "down", "node connection lost");
        }
        let in_txn = held.conn.status() != TxnStatus::Idle;
        let pinned = held.pin.is_some();
        let open_batch = held.open_batch;
        let node = held.node.name.clone();
        let retry = self.retry.take();
        drop(held);
        let owed = self.replies.ready_owed();
        self.replies.clear();
        self.held_back.clear();
        if let Some(mut retry) = retry
            && !retry.write
            && !in_txn
            && !pinned
        {
            tracing::info!(parent: &self.span, node = %node, "read failed before any reply; trying another node");
            retry.tried.push(node);
            return self.send_again(retry, None).await;
        }
        if in_txn || pinned || open_batch {
            return Err(backend_error(&node, failure.into_wire()));
        }
        let message = format!("connection to node {node} lost: {failure}");
        self.fail_batch(sqlstate::CONNECTION_FAILURE, &message, owed);
        Ok(())
    }
}

impl Session<'_> {
    /// A node refused the batch in flight before any of it reached the
    /// client: the held connection is closed (the rest of its replies would
    /// have to be read and dropped; this happens once per statement) and
    /// the batch comes back to be sent again, with the node's name. `None`
    /// (nothing changed) when no connection is held or the batch may not
    /// be sent again.
    fn abandon_for_retry(&mut self) -> Option<(Retry, Arc<str>)> {
        let Phase::Held(mut held) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return None;
        };
        let Some(retry) = self.retry.take() else {
            self.phase = Phase::Held(held);
            return None;
        };
        held.conn.mark_broken();
        let node = held.node.name.clone();
        drop(held);
        self.replies.clear();
        self.held_back.clear();
        self.slot.set(None);
        Some((retry, node))
    }

    /// The primary refused the write in flight as read-only before running
    /// any of it: a switchover fenced it, maybe through another proxy,
    /// which this one has not seen yet. The write is held (the monitor asked
    /// to look now) until another node is the primary, then sent there; if
    /// none is within the write hold limit, the client gets the refusal.
    pub(super) async fn refused_by_fenced_primary(
        &mut self,
        (code, message): (String, String),
    ) -> Result<(), SessionError> {
        let Some((retry, node)) = self.abandon_for_retry() else {
            return Ok(());
        };
        tracing::info!(parent: &self.span, node = %node, "the primary refused a write as read-only; holding it for the new primary");
        let found = self.state.await_new_primary(&node, WRITE_HOLD_LIMIT).await;
        self.state.metrics.held_write("fenced", found);
        self.after_hold(retry, node, found, &code, &message).await
    }

    /// Ends the hold of a write that reached nobody: sent again, to the
    /// primary now in force, when one was `found`; otherwise the client
    /// gets `code` and `message` and the write is forgotten as if never
    /// sent.
    async fn after_hold(
        &mut self,
        mut retry: Retry,
        node: Arc<str>,
        found: bool,
        code: &str,
        message: &str,
    ) -> Result<(), SessionError> {
        if !found {
            for name in &retry.added {
                self.statements.remove(name);
            }
            self.phase = Phase::before(retry.begin);
            self.fail_batch(code, message, retry.plan.syncs);
            return Ok(());
        }
        retry.tried.push(node);
        self.send_again(retry, None).await
    }

    /// The primary ended the connection of the write in flight (57P01,
    /// 57P02, 57P03: shutting down, crashed, restarting) before any of its
    /// replies reached the client, so nothing of it was committed: it is
    /// held until a primary takes connections again (a new one, or the
    /// same one back), then sent there; if none does within the write
    /// hold limit, the client gets the error.
    pub(super) async fn primary_went_away(&mut self, code: String) -> Result<(), SessionError> {
        let node = match &self.phase {
            Phase::Held(held) => held.node.clone(),
            _ => return Ok(()),
        };
        let Some((retry, name)) = self.abandon_for_retry() else {
            return Ok(());
        };
        tracing::info!(parent: &self.span, node = %name, code, "the primary went away before answering a write; holding it for a primary");
        if node.health.mark_down() {
            tracing::warn!(parent: &self.span, node = %name, state = "down", "node connection lost");
        }
        let found = self
            .state
            .await_writable_primary(&name, WRITE_HOLD_LIMIT)
            .await;
        self.state.metrics.held_write("gone", found);
        let message = format!("connection to node {name} lost: the node is shutting down ({code})");
        self.after_hold(retry, name, found, sqlstate::CONNECTION_FAILURE, &message)
            .await
    }

    /// The replica refused the read in flight because it is a standby
    /// (`why`), before any of it reached the client: its statements are
    /// remembered as primary-only and it runs on the primary; the client
    /// sees only the primary's answer.
    pub(super) async fn refused_by_standby(&mut self, why: String) -> Result<(), SessionError> {
        let Some((retry, node)) = self.abandon_for_retry() else {
            return Ok(());
        };
        let router = self.state.router.load();
        let refused = Route {
            dirties: retry.plan.route.dirties,
            ..Route::primary(Reason::StandbyRefused)
        };
        for frame in &retry.frames {
            let sql = match frame.tag {
                fe::QUERY_TAG => fe::query_sql(frame.body()).ok(),
                fe::PARSE_TAG => fe::parse(frame.body()).ok().map(|p| p.sql),
                fe::BIND_TAG => {
                    let name = fe::bind_statement(frame.body()).ok();
                    if let Some(name) = name.filter(|n| !n.is_empty())
                        && !retry.added.iter().any(|a| *a == *name)
                        && let Some(s) = self.statements.get(&name).cloned()
                    {
                        self.statements
                            .replace(&name, Arc::new(s.rerouted(refused)));
                    }
                    None
                }
                _ => None,
            };
            if let Some(sql) = sql {
                let text = fe::sql_text(sql);
                if router.mark_standby_refused(&text) {
                    tracing::info!(
                        parent: &self.span,
                        node = %node,
                        refusal = %why,
                        statement = super::cut_for_log(&text).0,
                        "a replica refused a read as a standby; it runs on the primary from now on"
                    );
                }
            }
        }
        let retry = Retry {
            tried: Vec::new(),
            ..retry
        };
        self.send_again(retry, Some(refused)).await
    }

    /// Sends a read that reached nobody again, routed afresh (by `route`
    /// when given, avoiding the nodes it `tried`): the statement names its
    /// first attempt added are forgotten, and its deferred BEGIN goes with
    /// it.
    async fn send_again(
        &mut self,
        mut retry: Retry,
        route: Option<Route>,
    ) -> Result<(), SessionError> {
        for name in &retry.added {
            self.statements.remove(name);
        }
        if let Some(route) = route {
            retry.plan.route = route;
        }
        self.phase = Phase::before(retry.begin);
        Box::pin(self.route_fresh(retry.frames, retry.plan, retry.tried, retry.delivered)).await
    }
}

/// The largest translated-batch buffer a session keeps between batches.
const OUTBOUND_KEEP: usize = 64 * 1024;

/// Sends a cancel that came while a batch waited for a connection, now
/// that the node has the batch.
fn send_pending_cancel(cancel: Option<CancelTarget>) {
    if let Some(target) = cancel {
        tokio::spawn(async move { crate::cancel::send_cancel(&target).await });
    }
}

/// The length of the first message in `bytes` (the settings replay).
fn replay_bytes(bytes: &[u8]) -> usize {
    let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    1 + usize::try_from(len).unwrap_or(0)
}
