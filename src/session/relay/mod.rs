//! The session loop after the handshake, as a state machine.
//!
//! The session is in one [`Phase`]:
//!
//! ```text
//!                 route (route.rs)                          release (here)
//!   ┌──────┐  a batch, no connection   ┌──────────────┐  ReadyForQuery(I), nothing    ┌──────┐
//!   │ Idle │ ────────────────────────▶ │ Held(Hold)   │  owed, Hold::Nothing ───────▶ │ Idle │
//!   └──────┘                           └──────────────┘                               └──────┘
//!     │  ▲      BEGIN READ ONLY alone      │   Hold is computed in one place (Held::hold):
//!     │  │      (answered by the proxy)    │     Transaction  ReadyForQuery said T or E
//!     ▼  │                               ◀─┘     Replies      replies owed, or a batch sent
//!   ┌──────────┐ first statement:                             without Sync (open batch)
//!   │ Deferred │ BEGIN sent in front,            Pinned(why)  state only this connection has
//!   └──────────┘ on the node it needs ──▶ Held    Nothing      free to go back to the pool
//! ```
//!
//! Within `Held`, a batch that needs another node (a write behind reads on
//! a replica, outside a transaction) waits in `Held::next` until the held
//! connection has answered everything, is released, and the batch is
//! routed afresh. A connection that fails moves the session back to
//! `Idle` (a read is retried elsewhere when nothing of it reached the
//! client) or ends it (an open transaction or a pin is lost).
//!
//! Every batch is routed by one path (`route::route_batch`), fresh,
//! continued or retried. What goes on the wire is computed without I/O by
//! `outbound` (a batch for one connection) and `replies` (what each server
//! message means for the client); this module only moves bytes.
//!
//! After a transaction that may have changed session state the proxy
//! cannot follow (`after.rs`), the session re-reads its settings from the
//! node and pins itself if the node holds state that cannot be replayed
//! (temporary objects, LISTEN, SQL PREPARE, cursors WITH HOLD, session
//! advisory locks, a role), so a connection only ever goes back to the
//! pool clean ([`crate::pool::Pooled::release`]).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::ClientStream;
use bytes::BytesMut;

mod after;
mod route;

use super::SessionError;
use super::batch::{self, Batch, Plan};
use super::handshake::{self, Startup};
use super::outbound::Translation;
use super::replies::{Context, Replies};
use super::state::{Settings, Statements};
use crate::cancel::CancelSlot;
use crate::config::PoolMode;
use crate::pins::PinReason;
use crate::pool::{NodePool, PoolError, Pooled};
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::{self, Frame, FrameIter, FrameRef, Frames, MAX_MESSAGE_LEN};
use crate::protocol::frontend as fe;
use crate::router::Target;
use crate::state::State;
use crate::topology::{InFlight, Node};
use crate::wire::WireError;

/// Nodes a read may be tried on before the client is told it failed.
const MAX_READ_TRIES: usize = 3;
/// How many primaries one autocommit write may be refused by as read-only
/// (each refusal waits for the next primary).
const MAX_WRITE_TRIES: usize = 3;
/// Client output is flushed at this size even mid-result.
const FLUSH_AT: usize = 64 * 1024;
/// A batch without a boundary is sent on once it reaches this size.
const MAX_BATCH: usize = 1 << 20;
/// Message types a client may send after startup, as a table by type
/// byte (one load a message; `contains` on the list is a memchr call).
const KNOWN_TAGS: [bool; 256] = {
    let mut table = [false; 256];
    let tags = b"QPBDECSHXdcfF";
    let mut i = 0;
    while i < tags.len() {
        table[tags[i] as usize] = true;
        i += 1;
    }
    table
};
/// Buffers above this are dropped once empty, so idle clients stay small.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;
/// How long a write waits for a switchover to release it.
const WRITE_HOLD_LIMIT: Duration = Duration::from_secs(30);
/// How long resetting a server connection at session end may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a login waits for the catalog task to try its database.
const CATALOG_WAIT: Duration = Duration::from_secs(2);
/// Pool handles a session keeps (one per node it used).
const MAX_KNOWN_POOLS: usize = 16;

/// Where the session stands (see the module docs).
enum Phase {
    /// No server connection held (session pooling may keep spares).
    Idle,
    /// `BEGIN ... READ ONLY` was answered by the proxy; the transaction
    /// opens, with this BEGIN in front, on the node its first statement
    /// needs.
    Deferred { begin: Frame },
    /// A server connection is held; [`Held::hold`] says why. (Boxed: a
    /// phase changes a few times per transaction, and a move of the box is
    /// cheaper than one of the connection.)
    Held(Box<Held>),
}

impl Phase {
    /// The phase to go back to when a batch did not reach a node: still
    /// in the read-only transaction the proxy answered, or idle.
    fn before(begin: Option<Frame>) -> Phase {
        begin.map_or(Phase::Idle, |begin| Phase::Deferred { begin })
    }
}

/// Why a held connection is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Its last ReadyForQuery said a transaction is open (or failed).
    Transaction,
    /// Replies are owed, or a batch went without a Sync.
    Replies,
    /// It holds state that only this connection has.
    Pinned(PinReason),
    /// Nothing: it can go back.
    Nothing,
}

/// A pin counted in `/status`, `/metrics` and the console's SHOW POOLS
/// (on the pool of the pinned connection) for as long as it lives.
struct PinGuard {
    reason: PinReason,
    state: Arc<State>,
    pool: Arc<NodePool>,
}

impl PinGuard {
    /// Takes a pin for `reason` on a connection of `pool` unless `cap`
    /// sessions hold one.
    fn take(
        state: &Arc<State>,
        reason: PinReason,
        cap: usize,
        pool: &Arc<NodePool>,
    ) -> Option<PinGuard> {
        if !state.pins.try_pin(cap) {
            state.metrics.pinned_refused.inc();
            return None;
        }
        state.metrics.pinned[reason.index()].inc();
        pool.pinned[reason.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(PinGuard {
            reason,
            state: state.clone(),
            pool: pool.clone(),
        })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.state.pins.unpin();
        self.state.metrics.pinned[self.reason.index()].dec();
        self.pool.pinned[self.reason.index()].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A batch that may be sent again elsewhere: a read whose replies have not
/// started reaching the client, or an autocommit write until the primary
/// has accepted it (a fenced primary refuses it before running it).
struct Retry {
    /// A write on the primary: sent again only after a fenced primary's
    /// refusal, never after a lost connection (it may have committed).
    write: bool,
    frames: Frames,
    plan: Plan,
    tried: Vec<Arc<str>>,
    /// Client statement names the batch added (forgotten before resending).
    added: Vec<String>,
    /// Replies the client already has (synthetic ones).
    delivered: usize,
    /// A deferred BEGIN that went in front of it.
    begin: Option<Frame>,
    /// Its first replies may be held back: it ends with a Sync or Query,
    /// so a ReadyForQuery will come (a batch ending in Flush is answered
    /// as it goes: prepares and describes, which a standby never refuses).
    hold_back: bool,
}

/// A server connection the session holds, and what it did on it.
struct Held {
    conn: Pooled,
    node: Arc<Node>,
    target: Target,
    _in_flight: InFlight,
    /// The session keeps this connection for good.
    pin: Option<PinGuard>,
    /// A batch was sent without a Sync; the rest must follow it.
    open_batch: bool,
    /// It ran something that may have written (read-your-writes).
    wrote: bool,
    /// DDL went through: the catalog is read again after.
    catalog_ddl: bool,
    /// It ran something on the primary that may have called `nextval`.
    may_have_called_nextval: bool,
    /// A statement that may have called nextval ran here on top of
    /// sequence state that could not be discarded first (inside a
    /// transaction): currval must not be answered here.
    sequences_unclear: bool,
    /// It ran something that may have changed session state the proxy does
    /// not track: re-read the session's state after.
    dirtied: bool,
    /// When the oldest unanswered batch was sent.
    timing: Option<std::time::Instant>,
    /// When the last ReadyForQuery came (the connection's time of release:
    /// no second clock read).
    answered: Option<std::time::Instant>,
    /// When the transaction in progress on it began (SHOW STATS).
    xact_started: Option<std::time::Instant>,
    /// Bytes sent to the client since the last ReadyForQuery (SHOW STATS).
    sent: u64,
}

impl Held {
    fn new(conn: Pooled, node: Arc<Node>, target: Target) -> Box<Held> {
        Box::new(Held {
            conn,
            _in_flight: InFlight::new(node.clone()),
            node,
            target,
            pin: None,
            open_batch: false,
            wrote: false,
            catalog_ddl: false,
            may_have_called_nextval: false,
            sequences_unclear: false,
            dirtied: false,
            timing: None,
            answered: None,
            xact_started: None,
            sent: 0,
        })
    }

    /// Counts one answered batch (and, when it left the connection idle,
    /// one transaction) in its pool's SHOW STATS.
    /// (`started` + `elapsed` is now: no second clock read.)
    fn account(&mut self, status: TxnStatus, started: std::time::Instant, elapsed: Duration) {
        use crate::pool::PoolStats;
        let stats = &self.conn.pool().stats;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        PoolStats::add(&stats.query_count, 1);
        PoolStats::add(&stats.query_time, micros(elapsed));
        PoolStats::add(&stats.sent, std::mem::take(&mut self.sent));
        if status == TxnStatus::Idle
            && let Some(began) = self.xact_started.take()
        {
            PoolStats::add(&stats.xact_count, 1);
            let xact = started.saturating_duration_since(began) + elapsed;
            PoolStats::add(&stats.xact_time, micros(xact));
        }
    }

    /// Where a cancel request for what runs on it goes.
    fn cancel_target(&self) -> crate::cancel::CancelTarget {
        crate::cancel::CancelTarget {
            address: self.conn.address.clone(),
            pid: self.conn.login.pid,
            secret: self.conn.login.secret,
        }
    }

    /// Why it is held: the one place that decides.
    fn hold(&self, replies: &Replies) -> Hold {
        if self.conn.status() != TxnStatus::Idle {
            Hold::Transaction
        } else if !replies.is_empty() || self.open_batch {
            Hold::Replies
        } else if let Some(pin) = &self.pin {
            Hold::Pinned(pin.reason)
        } else {
            Hold::Nothing
        }
    }
}

/// A client session after its handshake.
pub struct Session<'s> {
    /// The session's span: the parent of the relay's info and warn events
    /// (entered on every poll only when debug logging is on).
    span: tracing::Span,
    state: Arc<State>,
    client: &'s mut ClientStream,
    crbuf: BytesMut,
    cwbuf: BytesMut,
    startup: Startup,
    /// What its server connections log in with.
    credential: Option<crate::auth::Credential>,
    mode: PoolMode,
    phase: Phase,
    /// Session pooling: connections kept between transactions, by node.
    #[allow(
        clippy::vec_box,
        reason = "spares move to and from Phase::Held, which boxes them"
    )]
    spare: Vec<Box<Held>>,
    batch: Batch,
    /// The first replies (ParseComplete, RowDescription...) of a read that
    /// may still be sent elsewhere, held back until it is known to run
    /// where it is: whole messages, as they came (kept across batches for
    /// its capacity).
    held_back: BytesMut,
    /// While a connection is held: the read in flight, while it can still
    /// be sent elsewhere (kept out of [`Held`], which moves between phases).
    retry: Option<Retry>,
    /// While a connection is held: a batch waiting for it to finish (the
    /// batch needs another node).
    next: Option<(Frames, Plan)>,
    replies: Replies,
    /// The translated batch, kept across batches for its buffers' capacity.
    outbound: super::outbound::Outbound,
    statements: Statements,
    settings: Settings,
    slot: Arc<CancelSlot>,
    pid: i32,
    /// Read-your-writes: replicas must have replayed this far.
    floor: u64,
    /// When an unknown floor (a failed position read) may be dropped.
    floor_expires: Option<std::time::Instant>,
    /// The route rule the session matched at startup (for `/status`).
    rule: Option<String>,
    /// `limits.max_message_size`.
    max_message: usize,
    /// The pools this session used, by node: found once, not per batch.
    pools: Vec<(Arc<Node>, Arc<NodePool>)>,
    /// The client's `application_name` at startup.
    app: String,
    /// Transaction pooling: the primary connection this session last wrote
    /// on (where its `currval`/`lastval` live), as (node, id, uses).
    sequences: Option<(Arc<Node>, u64, u64)>,
    /// Resolves when the proxy shuts down or the console kills the
    /// session; kept across loop turns so its waiter is registered once,
    /// not once per statement.
    /// The proxy is shutting down: the session ends once between
    /// transactions.
    stopping: bool,
    /// The session's entry in the console's client list.
    listed: crate::clients::Registration,
    /// The configuration and the topology, as last seen: a load checks
    /// that they are current (one atomic read) without the shared
    /// slot's bookkeeping.
    config:
        arc_swap::Cache<Arc<arc_swap::ArcSwap<crate::config::Config>>, Arc<crate::config::Config>>,
    topology: arc_swap::Cache<
        Arc<arc_swap::ArcSwap<crate::topology::Topology>>,
        Arc<crate::topology::Topology>,
    >,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.state.cancels.unregister(self.pid);
        if let Some(rule) = &self.rule {
            self.state.count_rule_session(rule, -1);
        }
    }
}

fn backend_error(node: &Arc<str>, source: WireError) -> SessionError {
    SessionError::Backend {
        node: node.clone(),
        source,
    }
}

impl<'s> Session<'s> {
    /// Finds a node for the session's first server connection (which also
    /// proves the user and database exist), applies the client's startup
    /// settings there, and greets the client with what the node reports.
    ///
    /// # Errors
    /// The node's refusal (e.g. 3D000 for a missing database), or no
    /// reachable node.
    pub async fn start(
        state: Arc<State>,
        client: &'s mut ClientStream,
        crbuf: BytesMut,
        startup: Startup,
        pid: i32,
        listed: crate::clients::Registration,
        span: tracing::Span,
    ) -> Result<Session<'s>, SessionError> {
        let config = state.config.load_full();
        let credential = config
            .user(&startup.user)
            .and_then(|u| u.password.clone())
            .map(crate::auth::Credential::Password)
            .or_else(|| startup.credential.clone());
        let secret: i32 = rand::random();
        let slot = Arc::new(CancelSlot::default());
        state.cancels.register(pid, secret, slot.clone());
        let settings = Settings::from_startup(&startup.params);
        state.note_database(&startup.database);
        let app = startup
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let rule = crate::config::first_match(
            &config.routing.rules,
            &startup.user,
            &startup.database,
            &app,
        )
        .map(|r| r.name.clone());
        let mut session = Session {
            config: arc_swap::Cache::new(state.config.clone()),
            topology: arc_swap::Cache::new(state.topology.clone()),
            span,
            state,
            client,
            crbuf,
            cwbuf: BytesMut::new(),
            startup,
            credential,
            mode: config.pool.mode,
            phase: Phase::Idle,
            spare: Vec::new(),
            batch: Batch::default(),
            held_back: BytesMut::new(),
            retry: None,
            next: None,
            replies: Replies::default(),
            outbound: super::outbound::Outbound::default(),
            statements: Statements::default(),
            settings,
            slot,
            pid,
            floor: 0,
            floor_expires: None,
            rule,
            max_message: usize::try_from(config.limits.max_message_size.0)
                .unwrap_or(MAX_MESSAGE_LEN)
                .min(MAX_MESSAGE_LEN),
            pools: Vec::new(),
            app,
            sequences: None,
            stopping: false,
            listed,
        };
        if let Some(rule) = &session.rule {
            session.state.count_rule_session(rule, 1);
            tracing::debug!(rule = %rule, "session matches a route rule");
        }
        // A PAUSE holds logins too: the first connection is server work.
        session.start_work().await;
        let mut first = session.first_connection().await?;
        let params = session.apply_startup_settings(&mut first).await?;
        // The database exists (the node let us in): route its first
        // statements by its catalog's facts.
        session
            .state
            .await_catalog(&session.startup.database, CATALOG_WAIT)
            .await;
        handshake::greeting(&mut session.cwbuf, &params, pid, secret);
        if session.mode == PoolMode::Session && first.target == Target::Primary {
            // Session pooling takes a primary connection only once the
            // session needs the primary.
            session.release(first);
        } else {
            session.put_back(first);
        }
        session.flush().await?;
        Ok(session)
    }

    /// Runs the settings replay on `held` and returns the parameters to
    /// report: the node's login values overridden by what the replay
    /// reported.
    async fn apply_startup_settings(
        &mut self,
        held: &mut Box<Held>,
    ) -> Result<Vec<(String, String)>, SessionError> {
        let mut params = held.conn.login.params.clone();
        let out = Translation {
            conn: &mut held.conn.proto,
            statements: &mut self.statements,
            settings: &self.settings,
            parse_routes: &[],
            session: self.pid,
        }
        .translate(&Frames::default(), None, true)
        .map_err(SessionError::ClientProtocol)?;
        if out.expects.is_empty() {
            return Ok(params);
        }
        let node = held.node.name.clone();
        held.conn
            .send(&out.bytes)
            .await
            .map_err(|e| backend_error(&node, e.into()))?;
        self.replies.extend(out.expects);
        self.replies.capture_status();
        let mut sink = BytesMut::new();
        while self.replies.ready_owed() > 0 {
            let frame = held
                .conn
                .read_frame()
                .await
                .map_err(|e| backend_error(&node, e))?;
            let mut cx = Context {
                conn: &mut held.conn.proto,
                statements: &mut self.statements,
                settings: &mut self.settings,
                out: &mut sink,
            };
            self.replies.on_frame(frame.view(), &mut cx);
        }
        for (name, value) in self.replies.take_captured() {
            match params.iter_mut().find(|(n, _)| *n == name) {
                Some(p) => p.1 = value,
                None => params.push((name, value)),
            }
        }
        Ok(params)
    }

    async fn first_connection(&mut self) -> Result<Box<Held>, SessionError> {
        let topology = self.topology.load().clone();
        let mut candidates = vec![topology.primary().clone()];
        candidates.extend(topology.nodes.iter().filter(|n| n.health.is_up()).cloned());
        let mut last = None;
        for node in candidates {
            match self.checkout(&node).await {
                Ok(conn) => {
                    let target = if Arc::ptr_eq(&node, topology.primary()) {
                        Target::Primary
                    } else {
                        Target::Replica
                    };
                    return Ok(Held::new(conn, node, target));
                }
                Err(PoolError::Login {
                    source: crate::auth::AuthError::Rejected { code, message },
                    ..
                }) => return Err(SessionError::BackendRefused { code, message }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(SessionError::Shutdown, SessionError::Pool))
    }

    async fn checkout(&mut self, node: &Arc<Node>) -> Result<Pooled, PoolError> {
        let pool = self.pool_of(node);
        // Soft affinity: the connection that holds this session's sequence
        // state, when it is idle and nobody used it since, serves the
        // session's next work there (its currval stays right, its caches
        // warm).
        if let Some((own, id, uses)) = &self.sequences
            && Arc::ptr_eq(own, node)
            && let Some(conn) = pool.checkout_exact(*id, *uses)
        {
            return Ok(conn);
        }
        let result = pool.checkout().await;
        if result.is_err() {
            node.metrics.backend_errors.inc();
        }
        if let Err(e) = &result
            && e.is_unreachable()
            && {
                node.probed.store(0, std::sync::atomic::Ordering::Relaxed);
                node.health.mark_down()
            }
        {
            if Arc::ptr_eq(node, self.topology.load().primary()) {
                // Once (the node was up), and outside this client's span:
                // it is the operator's news, not this session's.
                tracing::warn!(
                    parent: None,
                    node = %node.name,
                    error = %e,
                    state = "down",
                    hint = "if it is gone for good: pgsplit failover --to NODE --force",
                    "primary unreachable"
                );
            } else {
                tracing::warn!(parent: &self.span, node = %node.name, error = %e, state = "down", "node unreachable");
            }
        }
        result
    }

    /// A unit of work starts (a login, or a batch between transactions):
    /// the session counts itself busy, then passes the console's PAUSE,
    /// waiting only while something is paused (the gate's future is boxed:
    /// inline it would enlarge every batch's future). False when a KILL
    /// ended the session meanwhile.
    async fn start_work(&self) -> bool {
        self.listed.entry.start_work();
        if !self.state.clients.any_paused() {
            return true;
        }
        Box::pin(self.state.clients.gate(&self.listed.entry)).await;
        !(self.listed.entry.is_stopped() && self.listed.entry.was_killed())
    }

    /// Serves the client until it leaves.
    ///
    /// # Errors
    /// Whatever ended the session; the caller tells the client.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.serve().await;
        self.finish().await;
        result
    }

    fn held(&mut self) -> Option<&mut Held> {
        match &mut self.phase {
            Phase::Held(held) => Some(held),
            _ => None,
        }
    }

    /// Between transactions as the client sees it (pinned or not): where
    /// shutdown and the idle timeout may end the session.
    fn between_transactions(&self) -> bool {
        match &self.phase {
            Phase::Idle => true,
            Phase::Deferred { .. } => false,
            Phase::Held(held) => {
                matches!(held.hold(&self.replies), Hold::Nothing | Hold::Pinned(_))
            }
        }
    }

    /// Whether client messages are read now: not while a batch waits for
    /// the held connection to drain.
    fn reading_client(&self) -> bool {
        match &self.phase {
            Phase::Held(_) => self.next.is_none(),
            _ => true,
        }
    }

    /// Whether the client's socket is left unpolled for now: the held
    /// connection answers up to the one ReadyForQuery owed without more
    /// from the client, and nothing of a next message has arrived. Its
    /// read interest, registered now, would be dropped again before the
    /// answer comes (one waker registration per transaction saved); the
    /// client is read again once the answer is relayed. (A client that
    /// leaves meanwhile is seen then: its statement runs to its end, as it
    /// would on the node anyway.)
    fn awaiting_answer(&self) -> bool {
        matches!(&self.phase, Phase::Held(held) if !held.open_batch)
            && self.replies.answers_alone()
            && self.crbuf.is_empty()
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            // The task's budget, once a turn: the plain-TCP reads and
            // writes below take none of it, and a session whose sockets
            // stay ready must still let the worker's other sessions run.
            tokio::task::consume_budget().await;
            self.drain_backend().await?;
            if !self.drain_client().await? {
                return Ok(());
            }
            self.flush().await?;
            let idle = self.between_transactions();
            self.listed.entry.set_busy(!idle);
            if (self.stopping && idle) || self.listed.entry.was_killed() {
                // (KILL is also seen here: the shutdown branch below is
                // polled last, after reads that may stay ready.)
                return Err(SessionError::Shutdown);
            }
            let reading_client = self.reading_client() && !self.awaiting_answer();
            // limits.idle_timeout: only a client with nothing in progress.
            let idle_limit = self.config.load().limits.idle_timeout.map(|d| d.0);
            let quiet =
                idle_limit.is_some() && matches!(self.phase, Phase::Idle) && self.batch.len() == 0;
            // Only a quiet session with a limit reads the clock (the
            // sleep starts at its first poll).
            let mut idle_sleep = std::pin::pin!(async {
                if let Some(limit) = idle_limit {
                    tokio::time::sleep(limit).await;
                }
            });
            // One poll of what the session waits on, in this order: the
            // reads first (the server's answer is what a session mostly
            // waits for), the shutdown signal only when neither is ready.
            // (By hand, not select!: no future per socket and turn.)
            let woke = std::future::poll_fn(|cx| {
                if let Phase::Held(held) = &mut self.phase
                    && let Poll::Ready(read) = held.conn.poll_fill(cx)
                {
                    return Poll::Ready(Woke::Server(read));
                }
                if reading_client
                    && let Poll::Ready(read) = self.client.poll_fill(cx, &mut self.crbuf)
                {
                    return Poll::Ready(Woke::Client(read));
                }
                if !self.stopping && self.listed.entry.poll_stopped(cx).is_ready() {
                    return Poll::Ready(Woke::Stopped);
                }
                if quiet && idle_sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::IdleTimeout);
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Server(Ok(())) | Woke::Client(Ok(())) => {}
                Woke::Server(Err(e)) => self.backend_failed(route::Failure::Wire(e)).await?,
                Woke::Client(Err(WireError::Closed)) => return Ok(()),
                Woke::Client(Err(e)) => return Err(SessionError::Client(e)),
                Woke::Stopped => {
                    // KILL ends the session at once; a shutdown lets an
                    // open transaction finish.
                    if idle || self.listed.entry.was_killed() {
                        return Err(SessionError::Shutdown);
                    }
                    self.stopping = true;
                }
                Woke::IdleTimeout => return Err(SessionError::IdleTimeout),
            }
        }
    }

    /// Handles every complete frame the held connection has buffered, and
    /// what follows when the connection is done: release, then the batch
    /// that waited for it.
    async fn drain_backend(&mut self) -> Result<(), SessionError> {
        loop {
            let Phase::Held(held) = &mut self.phase else {
                return Ok(());
            };
            if self.replies.relays_rows() {
                // The client's own statement's rows, COPY data and
                // CommandComplete go on as byte ranges, without a frame
                // each (what [`Replies::on_frame`] would do with them).
                let before = self.cwbuf.len();
                match held.conn.complete_tag() {
                    Some(be::DATA_ROW_TAG | be::COPY_DATA_TAG | be::COMMAND_COMPLETE_TAG)
                        if self.retry.is_some() =>
                    {
                        // The first reply that is not a preamble: the read
                        // runs here; what was held back goes first.
                        self.settle_retry();
                        continue;
                    }
                    Some(be::DATA_ROW_TAG | be::COPY_DATA_TAG) if self.held_back.is_empty() => {
                        held.conn.relay_rows(&mut self.cwbuf);
                    }
                    Some(be::COMMAND_COMPLETE_TAG) if self.held_back.is_empty() => {
                        held.conn.relay_frame(&mut self.cwbuf);
                        self.replies.command_completed(&mut self.cwbuf);
                    }
                    _ => {}
                }
                if self.cwbuf.len() > before {
                    held.sent += (self.cwbuf.len() - before) as u64;
                    if self.cwbuf.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                    continue;
                }
            }
            // The message is looked at where it lies in the read buffer,
            // lent out meanwhile: no frame is made of it.
            let len = match held.conn.buffered_frame_len() {
                Ok(Some(len)) => len,
                Ok(None) => {
                    if held.hold(&self.replies) == Hold::Nothing {
                        self.end_of_transaction().await?;
                        continue;
                    }
                    return Ok(());
                }
                Err(e) => return self.backend_failed(route::Failure::Wire(e)).await,
            };
            let mut rbuf = held.conn.lend_read_buffer();
            let step = self.on_backend_frame(FrameRef::whole(&rbuf[..len]));
            bytes::Buf::advance(&mut rbuf, len);
            if let Some(held) = self.held() {
                held.conn.restore_read_buffer(rbuf);
            }
            match step {
                Step::Next => {}
                Step::Fenced(refusal) => return self.refused_by_fenced_primary(refusal).await,
                Step::PrimaryGone(code) => return self.primary_went_away(code).await,
                Step::ShuttingDown(code) => {
                    return self
                        .backend_failed(route::Failure::ShuttingDown(code))
                        .await;
                }
                Step::StandbyRefused(why) => return self.refused_by_standby(why).await,
            }
            if self.cwbuf.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Takes one server message of the held connection (the connection's
    /// read buffer is lent out meanwhile): relayed and accounted, held
    /// back, or what the session must do about it.
    fn on_backend_frame(&mut self, frame: FrameRef<'_>) -> Step {
        if frame.tag == be::ERROR_RESPONSE_TAG && self.replies.is_empty() {
            // An error nothing was asked for: the server ends this
            // connection on its own (a shutdown, pg_terminate_backend,
            // an idle timeout) after the client had all its answers.
            // Relayed, it would break the client's protocol; the
            // connection is dropped instead (an open transaction on it
            // fails at the client's next statement).
            if let Some(held) = self.held() {
                held.conn.mark_broken();
            }
            tracing::debug!(parent: &self.span, "the server ended an idle connection");
            return Step::Next;
        }
        if let Some(retry) = &self.retry {
            // (Only an ErrorResponse or NoticeResponse can refuse or end
            // the statement in flight.)
            if matches!(frame.tag, be::ERROR_RESPONSE_TAG | be::NOTICE_RESPONSE_TAG)
                && let Some(step) = self.refusal(frame, retry.write)
            {
                return step;
            }
            if self.held_back.is_empty() && self.replies.head_swallowed() {
                // The proxy's own (a settings replay, a parse in front):
                // nothing of the client's read yet.
                self.on_reply(frame);
                return Step::Next;
            }
            if is_preamble(frame) && self.retry.as_ref().is_some_and(|r| r.hold_back) {
                // Held back until the read is known to run here (an
                // error may still come before its first row).
                self.held_back.extend_from_slice(frame.bytes);
                return Step::Next;
            }
            self.settle_retry();
        }
        self.on_reply(frame);
        Step::Next
    }

    /// What an ErrorResponse or NoticeResponse to the statement in flight
    /// (which may still be sent elsewhere; `write`: a write) asks of the
    /// session, if anything beyond relaying it.
    fn refusal(&self, frame: FrameRef<'_>, write: bool) -> Option<Step> {
        if write {
            if let Some(refusal) = fenced_refusal(frame)
                && !self.settings.read_only()
            {
                // The primary refuses writes as read-only and ran nothing:
                // a switchover fenced it (maybe through another proxy).
                // Held until the new primary is known.
                return Some(Step::Fenced(refusal));
            }
            if frame.tag == be::ERROR_RESPONSE_TAG
                && let Some(code) = shutdown_code(frame)
                && !self.settings.read_only()
                && !FrameIter::new(&self.held_back).any(|f| f.tag == be::NOTICE_RESPONSE_TAG)
            {
                // The primary ended this connection before any of the
                // write's replies: an autocommit statement commits before
                // its CommandComplete, and the backend takes the
                // termination only at its next interrupt check, so nothing
                // of it committed. (A warning first, such as "the
                // transaction has already committed locally" from a
                // cancelled synchronous-replication wait, may mean it did:
                // then the client gets the error.)
                return Some(Step::PrimaryGone(code));
            }
            return None;
        }
        if let Some(code) = shutdown_code(frame) {
            // The node is going away (shut down, crashed, restarting) and
            // nothing of this read reached the client: retry it.
            return Some(Step::ShuttingDown(code));
        }
        // A replica cannot run it because it is a standby, and nothing of
        // it reached the client: the primary runs it.
        standby_refusal(frame).map(Step::StandbyRefused)
    }
    /// The read in flight runs where it is (a reply that is not a
    /// preamble came): it can no longer be sent elsewhere, and the replies
    /// held back go to the client.
    fn settle_retry(&mut self) {
        // (Dropped in place: moved out, the ~200-byte retry is copied.)
        if let Some(settled) = &mut self.retry {
            self.batch.recycle(std::mem::take(&mut settled.frames));
            self.retry = None;
        }
        let early = std::mem::take(&mut self.held_back);
        for frame in FrameIter::new(&early) {
            self.on_reply(frame);
        }
        crate::wire::put_back_lent(&mut self.held_back, early);
        self.held_back.clear();
    }

    /// Accounts one server message of the held connection: what the client
    /// gets, what the session learns.
    fn on_reply(&mut self, frame: FrameRef<'_>) {
        let Phase::Held(held) = &mut self.phase else {
            return;
        };
        let mut cx = Context {
            conn: &mut held.conn.proto,
            statements: &mut self.statements,
            settings: &mut self.settings,
            out: &mut self.cwbuf,
        };
        let before = cx.out.len();
        let clients = self.replies.head_forwards();
        let ready = self.replies.on_frame(frame, &mut cx);
        held.sent += (self.cwbuf.len() - before) as u64;
        if let Some(status) = ready
            && let Some(started) = held.timing.take()
        {
            let now = std::time::Instant::now();
            let elapsed = now.saturating_duration_since(started);
            held.answered = Some(now);
            self.state
                .metrics
                .duration(held.target, elapsed.as_secs_f64());
            tracing::debug!(
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "statement done"
            );
            if clients {
                held.account(status, started, elapsed);
            }
            if self.replies.ready_owed() > 0 {
                held.timing = Some(now);
            }
        }
    }

    /// The held connection owes nothing and no transaction is open: record
    /// what the transaction did, then release the connection (unless the
    /// session pinned it) and route the batch that waited for it.
    async fn end_of_transaction(&mut self) -> Result<(), SessionError> {
        self.after_transaction().await?;
        let Phase::Held(held) = &mut self.phase else {
            return Ok(());
        };
        if held.hold(&self.replies) != Hold::Nothing {
            // Pinned now, or the work after the transaction failed it.
            if let Some((frames, plan)) = self.next.take() {
                return self.route_batch(frames, plan, Vec::new()).await;
            }
            return Ok(());
        }
        let Phase::Held(held) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("held above");
        };
        let next = self.next.take();
        self.put_back(held);
        if let Some((frames, plan)) = next {
            self.route_batch(frames, plan, Vec::new()).await?;
        }
        Ok(())
    }

    /// Consumes complete client frames; false when the client said goodbye.
    async fn drain_client(&mut self) -> Result<bool, SessionError> {
        while self.reading_client() {
            // An unknown type is refused as soon as its first byte arrives,
            // before waiting for the length it claims.
            if self
                .crbuf
                .first()
                .is_some_and(|&tag| !KNOWN_TAGS[usize::from(tag)])
            {
                return Err(SessionError::ClientProtocol(
                    crate::protocol::ProtocolError::Malformed {
                        what: "unknown message type",
                    },
                ));
            }
            let Some(len) = codec::complete_frame_len(&mut self.crbuf, self.max_message)
                .map_err(SessionError::ClientProtocol)?
            else {
                if self.crbuf.is_empty() && self.crbuf.capacity() > IDLE_BUFFER_LIMIT {
                    // Do not keep a big message's buffer for an idle client.
                    self.crbuf = BytesMut::new();
                }
                return Ok(true);
            };
            match self.crbuf[0] {
                fe::TERMINATE_TAG => return Ok(false),
                fe::COPY_DATA_TAG | fe::COPY_DONE_TAG | fe::COPY_FAIL_TAG => {
                    // COPY FROM STDIN data goes straight to the connection
                    // running the COPY; outside COPY it is dropped, as
                    // PostgreSQL itself ignores it.
                    let frame = self.crbuf.split_to(len);
                    if let Some(held) = self.held()
                        && let Err(e) = held.conn.send(&frame).await
                    {
                        self.backend_failed(route::Failure::Wire(e.into())).await?;
                    }
                }
                _ => {
                    // A huge batch without a Sync (a driver's bulk insert) is
                    // sent on in pieces; the rest follows on the same connection.
                    let ends = self.batch.take_from(&mut self.crbuf, len);
                    if ends || self.batch.len() > MAX_BATCH {
                        self.dispatch().await?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Plans the gathered batch and hands it to the router of batches;
    /// answers at the proxy what needs no node (a lone prepare, a
    /// read-only BEGIN).
    async fn dispatch(&mut self) -> Result<(), SessionError> {
        let frames = self.batch.take();
        if tracing::enabled!(tracing::Level::TRACE) {
            trace_sql(&frames);
            let tags: String = frames.iter().map(|f| f.tag as char).collect();
            tracing::trace!(tags, "batch");
        }
        let plan = batch::plan(&frames, &self.statements, &self.state.router.load())
            .map_err(SessionError::ClientProtocol)?;
        if matches!(self.phase, Phase::Idle) {
            if self.prepare_lazily(&frames, &plan) {
                return Ok(());
            }
            if plan.is_read_only_begin()
                && frames.len() == 1
                && frames.first().is_some_and(|f| f.tag == fe::QUERY_TAG)
            {
                // Answered here; the BEGIN goes in front of the first
                // statement, to the node that statement needs.
                be::command_complete(&mut self.cwbuf, "BEGIN");
                be::ready_for_query(&mut self.cwbuf, TxnStatus::InTransaction);
                let begin = frames.into_first().expect("one frame");
                self.phase = Phase::Deferred { begin };
                return Ok(());
            }
        }
        self.route_batch(frames, plan, Vec::new()).await
    }

    /// Returns a connection the session no longer needs: kept as a spare in
    /// session pooling, released to the pool in transaction pooling.
    fn put_back(&mut self, held: Box<Held>) {
        match self.mode {
            PoolMode::Session => {
                self.slot.set(None);
                self.spare.push(held);
            }
            // (release clears the cancel slot)
            PoolMode::Transaction => self.release(held),
        }
    }

    /// Gives a connection back to its pool (which closes it if unclean).
    #[allow(
        clippy::boxed_local,
        reason = "it comes out of Phase::Held, which boxes it; unboxing it here would copy it"
    )]
    fn release(&mut self, mut held: Box<Held>) {
        self.slot.set(None);
        let ours = self
            .sequences
            .as_ref()
            .is_some_and(|(node, id, _)| Arc::ptr_eq(node, &held.node) && *id == held.conn.id());
        if held.target == Target::Primary && held.sequences_unclear {
            self.sequences = None;
        } else if held.target == Target::Primary && (held.may_have_called_nextval || ours) {
            // (this session's own use keeps its sequence state its own)
            self.sequences = Some((held.node.clone(), held.conn.id(), held.conn.proto.uses));
        }
        let at = held.answered.unwrap_or_else(std::time::Instant::now);
        held.conn.release_at(at);
    }

    /// The pool handle of `node`, looked up once per session.
    fn pool_of(&mut self, node: &Arc<Node>) -> Arc<NodePool> {
        if let Some((_, pool)) = self.pools.iter().find(|(n, _)| Arc::ptr_eq(n, node)) {
            return pool.clone();
        }
        let pool = self.state.pools.pool_for(
            &node.endpoint(),
            &self.startup.user,
            &self.startup.database,
            self.credential.as_ref(),
        );
        if self.pools.len() >= MAX_KNOWN_POOLS {
            self.pools.clear(); // nodes come and go with reloads
        }
        self.pools.push((node.clone(), pool.clone()));
        pool
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.cwbuf.is_empty() {
            self.client
                .write_all_now(&self.cwbuf)
                .await
                .map_err(|e| SessionError::Client(WireError::Io(e)))?;
            self.cwbuf.clear();
        }
        if self.cwbuf.capacity() > IDLE_BUFFER_LIMIT {
            self.cwbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Resets and releases every connection still held when the session
    /// ends; one that cannot be made clean is closed.
    async fn finish(&mut self) {
        let mut conns: Vec<Box<Held>> = self.spare.drain(..).collect();
        if let Phase::Held(mut held) = std::mem::replace(&mut self.phase, Phase::Idle) {
            if !self.replies.is_empty() || held.open_batch || held.conn.has_buffered() {
                held.conn.mark_broken();
            }
            conns.push(held);
        }
        for mut held in conns {
            if !held.conn.is_broken()
                && tokio::time::timeout(RESET_TIMEOUT, held.conn.reset())
                    .await
                    .is_err()
            {
                held.conn.mark_broken();
            }
            held.conn.release();
        }
        self.slot.set(None);
    }
}

/// Logs the SQL of a batch at trace level, truncated (never at any other
/// level: statements can carry personal data).
fn trace_sql(frames: &Frames) {
    for frame in frames {
        let sql = match frame.tag {
            fe::QUERY_TAG => fe::query_text(frame.body()).ok(),
            fe::PARSE_TAG => fe::parse(frame.body()).ok().map(|p| fe::sql_text(p.sql)),
            _ => None,
        };
        if let Some(sql) = sql {
            let (cut, truncated) = cut_for_log(&sql);
            tracing::trace!(sql = cut, truncated, "statement text");
        }
    }
}

/// Statement text cut for a log line (at 200 characters), and whether it
/// was cut.
fn cut_for_log(sql: &str) -> (&str, bool) {
    const MAX: usize = 200;
    let cut = sql.char_indices().nth(MAX).map_or(sql.len(), |(i, _)| i);
    (&sql[..cut], cut < sql.len())
}

/// The SQLSTATE of an ErrorResponse or NoticeResponse saying the node is
/// shutting down or restarting (57P01 admin_shutdown, 57P02
/// crash_shutdown, 57P03 cannot_connect_now; on SIGQUIT PostgreSQL sends
/// 57P02 as a warning).
#[inline]
fn shutdown_code(frame: FrameRef<'_>) -> Option<String> {
    if !matches!(frame.tag, be::ERROR_RESPONSE_TAG | be::NOTICE_RESPONSE_TAG) {
        return None;
    }
    be::error_code_and_message(frame.body())
        .map(|(code, _)| code)
        .filter(|code| matches!(code.as_str(), "57P01" | "57P02" | "57P03"))
}

/// Replies that come before a statement's first row and may be followed by
/// its error: held back while the statement may still run elsewhere.
#[inline]
fn is_preamble(frame: FrameRef<'_>) -> bool {
    matches!(
        frame.tag,
        be::PARSE_COMPLETE_TAG
            | be::BIND_COMPLETE_TAG
            | be::PARAMETER_DESCRIPTION_TAG
            | be::ROW_DESCRIPTION_TAG
            | be::NO_DATA_TAG
            | be::NOTICE_RESPONSE_TAG
            | be::PARAMETER_STATUS_TAG
    )
}

/// The SQLSTATE and message of an ErrorResponse with which a standby
/// refuses what only a primary can do: 25006 (read-only transaction),
/// 0A000 or 55000 mentioning recovery, anything "during recovery".
/// Hot-standby conflicts (40001, 40P01) are not refusals: the primary
/// would not help.
#[inline]
fn standby_refusal(frame: FrameRef<'_>) -> Option<String> {
    if frame.tag != be::ERROR_RESPONSE_TAG {
        return None;
    }
    let (code, message) = be::error_code_and_message(frame.body())?;
    let recovery = message.contains("recovery");
    let refused = code == crate::protocol::sqlstate::READ_ONLY_SQL_TRANSACTION
        || (matches!(code.as_str(), "0A000" | "55000") && recovery)
        || message.contains("during recovery");
    refused.then(|| format!("{code}: {message}"))
}

/// The SQLSTATE and message of an ErrorResponse with which a primary
/// refuses a write because it is read-only (25006): what a fence does.
fn fenced_refusal(frame: FrameRef<'_>) -> Option<(String, String)> {
    if frame.tag != be::ERROR_RESPONSE_TAG {
        return None;
    }
    let (code, message) = be::error_code_and_message(frame.body())?;
    (code == crate::protocol::sqlstate::READ_ONLY_SQL_TRANSACTION).then_some((code, message))
}

/// What a server message asks of the session, beyond relaying it.
enum Step {
    /// Nothing more: on to the next message.
    Next,
    /// A fenced primary refused the write in flight (code, message).
    Fenced((String, String)),
    /// The primary is going away before the write in flight ran (SQLSTATE).
    PrimaryGone(String),
    /// The node is going away before the read in flight answered (SQLSTATE).
    ShuttingDown(String),
    /// A standby refused the read in flight.
    StandbyRefused(String),
}

/// What ended a wait of the session loop.
enum Woke {
    /// The held connection's socket read (or failed).
    Server(Result<(), WireError>),
    /// The client's socket read (or failed).
    Client(Result<(), WireError>),
    /// A shutdown or KILL.
    Stopped,
    /// `limits.idle_timeout` passed.
    IdleTimeout,
}
