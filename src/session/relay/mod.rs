//! The session loop after the handshake: gathers client messages into
//! batches, routes each batch to a server connection, translates it for
//! that connection (`outbound`), and streams the replies back through the
//! reply queue (`replies`), holding the connection until ReadyForQuery says
//! the transaction is over and every Sync has been answered.
//!
//! Both sockets are read in one `select!`, so pipelined batches, COPY,
//! Flush and asynchronous notifications all flow without special modes.
//! A read whose node fails before any reply byte reached the client is
//! sent again to another node; nothing else is ever re-sent.

use std::sync::Arc;
use std::time::Duration;

use super::ClientStream;
use bytes::BytesMut;

mod fresh;
mod writes;

use super::SessionError;
use super::batch::{self, Batch, Plan};
use super::cancel::CancelSlot;
use super::handshake::{self, Startup};
use super::outbound::Translation;
use super::replies::{Context, Replies};
use super::state::{Settings, Statements};
use crate::config::PoolMode;
use crate::pool::{NodePool, PoolError, Pooled};
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::{self, Frame, MAX_MESSAGE_LEN};
use crate::protocol::frontend as fe;
use crate::router::{Reason, Target};
use crate::state::State;
use crate::topology::{InFlight, Node};
use crate::wire::{self, WireError};

/// Nodes a read may be tried on before the client is told it failed.
const MAX_READ_TRIES: usize = 3;
/// Client output is flushed at this size even mid-result.
const FLUSH_AT: usize = 64 * 1024;
/// A batch without a boundary is sent on once it reaches this size.
const MAX_BATCH: usize = 1 << 20;
/// Message types a client may send after startup.
const KNOWN_TAGS: &[u8] = b"QPBDECSHXdcfF";
/// Buffers above this are dropped once empty, so idle clients stay small.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;
/// How long a write waits for a switchover to release it.
const WRITE_HOLD_LIMIT: Duration = Duration::from_secs(30);
/// How long resetting a server connection at session end may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool handles a session keeps (one per node it used).
const MAX_KNOWN_POOLS: usize = 16;

struct Held {
    conn: Pooled,
    node: Arc<Node>,
    target: Target,
    _in_flight: InFlight,
}

impl Held {
    fn new(conn: Pooled, node: Arc<Node>, target: Target) -> Held {
        Held {
            conn,
            _in_flight: InFlight::new(node.clone()),
            node,
            target,
        }
    }
}

/// A batch that may be sent again elsewhere: a read whose replies have not
/// started reaching the client.
struct Retry {
    frames: Vec<Frame>,
    plan: Plan,
    tried: Vec<Arc<str>>,
    added: Vec<String>,
}

/// A client session after its handshake.
pub struct Session<'s> {
    state: Arc<State>,
    client: &'s mut ClientStream,
    crbuf: BytesMut,
    cwbuf: BytesMut,
    startup: Startup,
    password: Option<String>,
    mode: PoolMode,
    held: Option<Held>,
    spare: Vec<Held>,
    pinned: bool,
    /// A batch was sent without a Sync; the rest must follow it.
    open_batch: bool,
    batch: Batch,
    replies: Replies,
    statements: Statements,
    settings: Settings,
    /// A batch that waits for the held replica connection to drain.
    waiting: Option<(Vec<Frame>, Plan)>,
    retry: Option<Retry>,
    slot: Arc<CancelSlot>,
    pid: i32,
    /// Read-your-writes: replicas must have replayed this far.
    floor: u64,
    /// When an unknown floor (a failed position read) may be dropped.
    floor_expires: Option<std::time::Instant>,
    /// The held primary connection ran something that may have written.
    wrote: bool,
    /// Function DDL went through: re-read the catalog at the end.
    function_ddl: bool,
    /// When the oldest unanswered batch was sent, and where.
    timing: Option<(std::time::Instant, Target)>,
    /// The route rule the session matched at startup (for `/status`).
    rule: Option<String>,
    /// `limits.max_message_size`.
    max_message: usize,
    /// The pools this session used, by node: found once, not per batch.
    pools: Vec<(Arc<Node>, Arc<NodePool>)>,
    /// The client's `application_name` at startup.
    app: String,
    /// Resolves when the proxy shuts down; kept across loop turns so its
    /// waiter is registered once, not once per statement.
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
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
    ) -> Result<Session<'s>, SessionError> {
        let config = state.config.load_full();
        let password = config.user(&startup.user).and_then(|u| u.password.clone());
        let secret: i32 = rand::random();
        let slot = Arc::new(CancelSlot::default());
        state.cancels.register(pid, secret, slot.clone());
        let settings = Settings::from_startup(&startup.params);
        state.note_database(&startup.database);
        let shutdown = state.shutdown.clone().cancelled_owned();
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
            state,
            client,
            crbuf,
            cwbuf: BytesMut::new(),
            startup,
            password,
            mode: config.pool.mode,
            held: None,
            spare: Vec::new(),
            pinned: false,
            open_batch: false,
            batch: Batch::default(),
            replies: Replies::default(),
            statements: Statements::default(),
            settings,
            waiting: None,
            retry: None,
            slot,
            pid,
            floor: 0,
            floor_expires: None,
            wrote: false,
            function_ddl: false,
            timing: None,
            rule,
            max_message: usize::try_from(config.limits.max_message_size.0)
                .unwrap_or(MAX_MESSAGE_LEN)
                .min(MAX_MESSAGE_LEN),
            pools: Vec::new(),
            app,
            shutdown: Box::pin(shutdown),
        };
        if let Some(rule) = &session.rule {
            session.state.count_rule_session(rule, 1);
            tracing::debug!(rule = %rule, "session matches a route rule");
        }
        let mut first = session.first_connection().await?;
        let params = session.apply_startup_settings(&mut first).await?;
        handshake::greeting(&mut session.cwbuf, &params, pid, secret);
        session.put_back(first);
        session.flush().await?;
        Ok(session)
    }

    /// Runs the settings replay on `held` and returns the parameters to
    /// report: the node's login values overridden by what the replay
    /// reported.
    async fn apply_startup_settings(
        &mut self,
        held: &mut Held,
    ) -> Result<Vec<(String, String)>, SessionError> {
        let mut params = held.conn.login.params.clone();
        let mut translation = Translation {
            conn: &mut held.conn,
            statements: &mut self.statements,
            settings: &self.settings,
            router: &self.state.router.load(),
        };
        let out = translation
            .translate(&[], None, true)
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
        let mut sink = BytesMut::new();
        while self.replies.ready_owed() > 0 {
            let frame = held
                .conn
                .read_frame()
                .await
                .map_err(|e| backend_error(&node, e))?;
            let mut cx = Context {
                conn: &mut held.conn,
                statements: &mut self.statements,
                settings: &mut self.settings,
                out: &mut sink,
            };
            self.replies.on_frame(&frame, &mut cx);
        }
        for (name, value) in std::mem::take(&mut self.replies.captured) {
            match params.iter_mut().find(|(n, _)| *n == name) {
                Some(p) => p.1 = value,
                None => params.push((name, value)),
            }
        }
        Ok(params)
    }

    async fn first_connection(&mut self) -> Result<Held, SessionError> {
        let topology = self.state.topology.load_full();
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
        let pool = match self.pools.iter().find(|(n, _)| Arc::ptr_eq(n, node)) {
            Some((_, pool)) => pool.clone(),
            None => {
                let pool = self.state.pools.pool_for(
                    node,
                    &self.startup.user,
                    &self.startup.database,
                    self.password.as_deref(),
                );
                if self.pools.len() >= MAX_KNOWN_POOLS {
                    self.pools.clear(); // nodes come and go with reloads
                }
                self.pools.push((node.clone(), pool.clone()));
                pool
            }
        };
        let result = pool.checkout().await;
        if result.is_err() {
            node.metrics.backend_errors.inc();
        }
        if let Err(e) = &result
            && e.is_unreachable()
            && node.health.mark_down()
        {
            tracing::warn!(node = %node.name, error = %e, state = "down", "node unreachable");
        }
        result
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

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            self.drain_backend().await?;
            if self.held.is_none()
                && let Some((frames, plan)) = self.waiting.take()
            {
                self.send_fresh(frames, plan, Vec::new()).await?;
                continue;
            }
            if !self.drain_client().await? {
                return Ok(());
            }
            self.flush().await?;
            let reading_client = self.waiting.is_none();
            let holding = self.held.is_some();
            // Shutdown ends a session between transactions, pinned or not;
            // an open transaction may run on until the drain timeout.
            let idle = self.held.as_ref().is_none_or(|h| {
                h.conn.status == TxnStatus::Idle && self.replies.is_empty() && !self.open_batch
            });
            // limits.idle_timeout: only a client with nothing in progress.
            let idle_limit = self.state.config.load().limits.idle_timeout.map(|d| d.0);
            let quiet =
                idle && self.held.is_none() && self.batch.len() == 0 && idle_limit.is_some();
            // Only a quiet session with a limit reads the clock.
            let idle_sleep = async {
                match idle_limit {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.as_mut(), if idle => return Err(SessionError::Shutdown),
                _ = idle_sleep, if quiet => return Err(SessionError::IdleTimeout),
                read = wire::fill(&mut *self.client, &mut self.crbuf), if reading_client => match read {
                    Ok(()) => {}
                    Err(WireError::Closed) => return Ok(()),
                    Err(e) => return Err(SessionError::Client(e)),
                },
                read = fill_held(&mut self.held), if holding => {
                    if let Err(e) = read {
                        self.backend_failed(e).await?;
                    }
                }
            }
        }
    }

    /// Handles every complete frame the held connection has buffered.
    async fn drain_backend(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(held) = self.held.as_mut() else {
                return Ok(());
            };
            let frame = match held.conn.buffered_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return self.backend_failed(e).await,
            };
            if self.retry.is_some() && is_shutdown_error(&frame) {
                // The node is going away (shut down, crashed, restarting)
                // and nothing of this read reached the client: retry it.
                return self
                    .backend_failed(WireError::Protocol(
                        crate::protocol::ProtocolError::Malformed {
                            what: "node shutting down",
                        },
                    ))
                    .await;
            }
            self.retry = None;
            let mut cx = Context {
                conn: &mut held.conn,
                statements: &mut self.statements,
                settings: &mut self.settings,
                out: &mut self.cwbuf,
            };
            let ready = self.replies.on_frame(&frame, &mut cx);
            if ready.is_some()
                && let Some((started, target)) = self.timing.take()
            {
                let elapsed = started.elapsed();
                self.state.metrics.duration(target, elapsed.as_secs_f64());
                tracing::debug!(
                    elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                    "statement done"
                );
                if self.replies.ready_owed() > 0 {
                    self.timing = Some((std::time::Instant::now(), target));
                }
            }
            if ready == Some(TxnStatus::Idle) && self.replies.is_empty() && !self.open_batch {
                self.after_transaction().await?;
                if !self.pinned {
                    let held = self.held.take().expect("held");
                    self.put_back(held);
                }
            }
            if self.cwbuf.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Consumes complete client frames; false when the client said goodbye.
    async fn drain_client(&mut self) -> Result<bool, SessionError> {
        while self.waiting.is_none() {
            // An unknown type is refused as soon as its first byte arrives,
            // before waiting for the length it claims.
            if self
                .crbuf
                .first()
                .is_some_and(|tag| !KNOWN_TAGS.contains(tag))
            {
                return Err(SessionError::ClientProtocol(
                    crate::protocol::ProtocolError::Malformed {
                        what: "unknown message type",
                    },
                ));
            }
            let Some(frame) = codec::decode_frame(&mut self.crbuf, self.max_message)
                .map_err(SessionError::ClientProtocol)?
            else {
                if self.crbuf.is_empty() && self.crbuf.capacity() > IDLE_BUFFER_LIMIT {
                    // Do not keep a big message's buffer for an idle client.
                    self.crbuf = BytesMut::new();
                }
                return Ok(true);
            };
            match frame.tag {
                fe::TERMINATE_TAG => return Ok(false),
                fe::COPY_DATA_TAG | fe::COPY_DONE_TAG | fe::COPY_FAIL_TAG => {
                    // COPY FROM STDIN data goes straight to the connection
                    // running the COPY; outside COPY it is dropped, as
                    // PostgreSQL itself ignores it.
                    if let Some(held) = self.held.as_mut()
                        && let Err(e) = held.conn.send(&frame.bytes).await
                    {
                        self.backend_failed(e.into()).await?;
                    }
                }
                _ => {
                    // A huge batch without a Sync (a driver's bulk insert) is
                    // sent on in pieces; the rest follows on the same connection.
                    if self.batch.push(frame) || self.batch.len() > MAX_BATCH {
                        self.dispatch().await?;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Sends the gathered batch where it belongs.
    async fn dispatch(&mut self) -> Result<(), SessionError> {
        let frames = self.batch.take();
        if tracing::enabled!(tracing::Level::TRACE) {
            trace_sql(&frames);
            let tags: String = frames.iter().map(|f| f.tag as char).collect();
            tracing::trace!(tags, "batch");
        }
        let plan = batch::plan(&frames, &self.statements, &self.state.router.load())
            .map_err(SessionError::ClientProtocol)?;
        let Some(held) = self.held.as_mut() else {
            if self.prepare_lazily(&frames, &plan) {
                return Ok(());
            }
            return self.send_fresh(frames, plan, Vec::new()).await;
        };
        let route = plan.route;
        let in_txn = self.pinned || held.conn.status != TxnStatus::Idle;
        let must_stay = in_txn || self.open_batch;
        let fits =
            held.target == Target::Primary || (route.target == Target::Replica && !route.pins);
        if !in_txn && !fits {
            // A batch that needs the primary behind reads on a replica
            // (pipelined, or after a Flush without Sync, as asyncpg
            // prepares): end the replica's extended-query sequence with a
            // Sync of our own, wait for its answers, then route afresh.
            if self.open_batch {
                let mut sync = BytesMut::new();
                fe::write_sync(&mut sync);
                if let Err(e) = held.conn.send(&sync).await {
                    return self.backend_failed(e.into()).await;
                }
                self.replies.extend(vec![super::replies::Expect::swallowed(
                    super::replies::Kind::Sync,
                )]);
                self.open_batch = false;
            }
            self.waiting = Some((frames, plan));
            return Ok(());
        }
        if route.pins && held.target == Target::Primary {
            self.pinned = true;
            held.conn.dirty = true;
        }
        tracing::debug!(
            node = %held.node.name,
            in_txn = must_stay,
            pinned = self.pinned,
            open_batch = self.open_batch,
            "statement on held connection"
        );
        self.wrote |= held.target == Target::Primary
            && route.target == Target::Primary
            && route.reason.may_write();
        self.function_ddl |= plan.function_ddl;
        let reason = if in_txn {
            Reason::Transaction
        } else {
            route.reason
        };
        self.state.metrics.decision(held.target, reason);
        held.node.metrics.query(held.target);
        self.timing
            .get_or_insert((std::time::Instant::now(), held.target));
        self.retry = None;
        self.open_batch = plan.syncs == 0;
        let out = Translation {
            conn: &mut held.conn,
            statements: &mut self.statements,
            settings: &self.settings,
            router: &self.state.router.load(),
        }
        .translate(&frames, plan.command.as_ref(), false)
        .map_err(SessionError::ClientProtocol)?;
        let send = held.conn.send(&out.bytes).await;
        self.replies.extend(out.expects);
        self.replies.emit_ready_synthetics(&mut self.cwbuf);
        match send {
            Ok(()) => Ok(()),
            Err(e) => self.backend_failed(e.into()).await,
        }
    }

    /// Returns a connection the session no longer needs.
    fn put_back(&mut self, held: Held) {
        self.slot.set(None);
        match self.mode {
            PoolMode::Session => self.spare.push(held),
            PoolMode::Transaction => drop(held),
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        wire::flush(&mut *self.client, &mut self.cwbuf)
            .await
            .map_err(|e| SessionError::Client(WireError::Io(e)))?;
        if self.cwbuf.capacity() > IDLE_BUFFER_LIMIT {
            self.cwbuf = BytesMut::new();
        }
        Ok(())
    }

    /// Resets or drops every connection still held when the session ends.
    async fn finish(&mut self) {
        let mut conns: Vec<Held> = self.spare.drain(..).collect();
        if let Some(mut held) = self.held.take() {
            if !self.replies.is_empty() || self.open_batch || !held.conn.rbuf.is_empty() {
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
        }
        self.slot.set(None);
    }
}

/// Logs the SQL of a batch at trace level, truncated (never at any other
/// level: statements can carry personal data).
fn trace_sql(frames: &[Frame]) {
    const MAX: usize = 200;
    for frame in frames {
        let sql = match frame.tag {
            fe::QUERY_TAG => fe::query_text(frame.body()).ok(),
            fe::PARSE_TAG => fe::parse(frame.body()).ok().map(|p| p.sql),
            _ => None,
        };
        if let Some(sql) = sql {
            let cut = sql.char_indices().nth(MAX).map_or(sql.len(), |(i, _)| i);
            tracing::trace!(
                sql = &sql[..cut],
                truncated = cut < sql.len(),
                "statement text"
            );
        }
    }
}

/// An ErrorResponse or NoticeResponse saying the node is shutting down or
/// restarting (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
/// cannot_connect_now; on SIGQUIT PostgreSQL sends 57P02 as a warning).
fn is_shutdown_error(frame: &Frame) -> bool {
    matches!(frame.tag, be::ERROR_RESPONSE_TAG | be::NOTICE_RESPONSE_TAG)
        && be::error_code_and_message(frame.body())
            .is_some_and(|(code, _)| matches!(code.as_str(), "57P01" | "57P02" | "57P03"))
}

async fn fill_held(held: &mut Option<Held>) -> Result<(), WireError> {
    match held {
        Some(h) => {
            let conn = &mut *h.conn;
            wire::fill(&mut conn.stream, &mut conn.rbuf).await
        }
        None => std::future::pending().await,
    }
}
