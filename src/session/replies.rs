//! The replies a server connection owes, in order, and what to do with
//! each server message: forward it, swallow it (it answers something the
//! proxy inserted), rename a statement in an error, or emit a synthetic
//! reply in its place. After an error the server skips everything up to
//! Sync, and so does this queue, undoing what those messages would have
//! created.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::commands::Command;
use super::state::{Settings, Statements};
use crate::pool::BackendConn;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::{Frame, take_cstr};

/// What a sent message is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows or COPY, then CommandComplete/EmptyQueryResponse/PortalSuspended.
    Execute,
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
    /// Anything up to ReadyForQuery (simple Query, FunctionCall).
    Query,
    /// Nothing from the server: these bytes go to the client when their
    /// turn comes.
    Synthetic(Bytes),
}

/// One reply owed, with the bookkeeping to undo if it never comes.
#[derive(Debug, Clone)]
pub struct Expect {
    /// What answers it.
    pub kind: Kind,
    /// Forward the answer to the client (false: pgsplit sent it).
    pub forward: bool,
    /// A client's named Parse: forget the name if it fails or is skipped.
    pub client_parse: Option<String>,
    /// A server statement marked prepared: unmark if it fails or is skipped.
    pub server_prepared: Option<Arc<str>>,
    /// An eviction Close: if skipped, the statement is still there.
    pub closed: Option<Arc<str>>,
    /// Server statement name to replace by the client's in errors.
    pub rename: Option<(Arc<str>, String)>,
    /// A tracked session command to apply if the Query succeeds.
    pub command: Option<Command>,
    /// The SQL of a tracked SET or RESET.
    pub sql: Option<String>,
}

impl Expect {
    /// A reply forwarded to the client.
    pub fn new(kind: Kind) -> Expect {
        Expect {
            kind,
            forward: true,
            client_parse: None,
            server_prepared: None,
            closed: None,
            rename: None,
            command: None,
            sql: None,
        }
    }

    /// A reply to something pgsplit inserted: not forwarded.
    pub fn swallowed(kind: Kind) -> Expect {
        Expect {
            forward: false,
            ..Expect::new(kind)
        }
    }

    /// A reply whose errors must name the client's statement.
    pub fn renamed(kind: Kind, server_name: Arc<str>, client_name: &str) -> Expect {
        Expect {
            rename: Some((server_name, client_name.to_owned())),
            ..Expect::new(kind)
        }
    }

    /// A reply pgsplit gives itself.
    pub fn synthetic(bytes: BytesMut) -> Expect {
        Expect::new(Kind::Synthetic(bytes.freeze()))
    }

    fn ends_with_ready(&self) -> bool {
        matches!(self.kind, Kind::Sync | Kind::Query)
    }
}

/// Everything a reply may update.
pub struct Context<'a> {
    /// The connection that sent it.
    pub conn: &'a mut BackendConn,
    /// The client's statements.
    pub statements: &'a mut Statements,
    /// The client's settings.
    pub settings: &'a mut Settings,
    /// Where client-bound bytes go.
    pub out: &'a mut BytesMut,
}

/// The replies owed by the held connection.
#[derive(Debug, Default)]
pub struct Replies {
    queue: VecDeque<Expect>,
    /// Syncs and Queries owed a ReadyForQuery.
    ready_owed: usize,
    /// An error arrived since the last ReadyForQuery.
    query_failed: bool,
    /// The last CommandComplete since ReadyForQuery was COMMIT.
    committed: bool,
    /// ParameterStatus values seen while swallowing (the settings replay).
    pub captured: Vec<(String, String)>,
}

impl Replies {
    /// Queues the replies of a batch just sent.
    pub fn extend(&mut self, expects: Vec<Expect>) {
        self.ready_owed += expects.iter().filter(|e| e.ends_with_ready()).count();
        self.queue.extend(expects);
    }

    /// ReadyForQuery messages still owed.
    pub fn ready_owed(&self) -> usize {
        self.ready_owed
    }

    /// Whether nothing at all is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Forgets everything (the connection is gone).
    pub fn clear(&mut self) {
        *self = Replies::default();
    }

    /// Emits synthetic replies whose turn has come.
    pub fn emit_ready_synthetics(&mut self, out: &mut BytesMut) {
        while let Some(Expect {
            kind: Kind::Synthetic(bytes),
            ..
        }) = self.queue.front()
        {
            out.extend_from_slice(bytes);
            self.queue.pop_front();
        }
    }

    fn head_forwards(&self) -> bool {
        self.queue.front().is_none_or(|e| e.forward)
    }

    /// Handles one server message. Returns the ReadyForQuery status when
    /// the message was one.
    pub fn on_frame(&mut self, frame: &Frame, cx: &mut Context<'_>) -> Option<TxnStatus> {
        self.emit_ready_synthetics(cx.out);
        let forward = self.head_forwards();
        let head_kind = self.queue.front().map(|e| e.kind.clone());
        let mut ready = None;
        match frame.tag {
            be::NOTICE_RESPONSE_TAG => self.pass(frame, forward, cx),
            b'A' => cx.out.extend_from_slice(&frame.bytes),
            be::PARAMETER_STATUS_TAG => {
                if forward {
                    cx.out.extend_from_slice(&frame.bytes);
                } else {
                    let mut body = frame.body();
                    if let (Some(n), Some(v)) = (take_cstr(&mut body), take_cstr(&mut body)) {
                        self.captured.push((n.to_owned(), v.to_owned()));
                    }
                }
            }
            be::ERROR_RESPONSE_TAG => self.on_error(frame, cx),
            be::READY_FOR_QUERY_TAG => {
                let status = TxnStatus::from_body(frame.body()).unwrap_or(TxnStatus::Failed);
                self.on_ready(status, frame, cx);
                ready = Some(status);
            }
            be::COPY_IN_RESPONSE_TAG => {
                self.pass(frame, forward, cx);
                if head_kind == Some(Kind::Execute) {
                    // The server ignores Syncs that reach it during COPY
                    // FROM STDIN; drivers send one with the Execute.
                    let before = self.queue.len();
                    let mut first = true;
                    self.queue.retain(|e| {
                        let keep = first || e.kind != Kind::Sync;
                        first = false;
                        keep
                    });
                    self.ready_owed -= before - self.queue.len();
                }
            }
            b'1' | b'2' | b'3' | b'n' | b'I' | b's' => {
                self.pass(frame, forward, cx);
                if !matches!(head_kind, Some(Kind::Query)) {
                    self.queue.pop_front();
                }
            }
            b'T' => {
                self.pass(frame, forward, cx);
                if matches!(
                    head_kind,
                    Some(Kind::DescribeStatement | Kind::DescribePortal)
                ) {
                    self.queue.pop_front();
                }
            }
            b'C' => {
                self.pass(frame, forward, cx);
                let mut body = frame.body();
                self.committed = take_cstr(&mut body) == Some("COMMIT");
                if head_kind == Some(Kind::Execute) {
                    self.queue.pop_front();
                }
            }
            _ => self.pass(frame, forward, cx),
        }
        self.emit_ready_synthetics(cx.out);
        ready
    }

    fn pass(&self, frame: &Frame, forward: bool, cx: &mut Context<'_>) {
        if forward {
            cx.out.extend_from_slice(&frame.bytes);
        }
    }

    fn on_error(&mut self, frame: &Frame, cx: &mut Context<'_>) {
        let Some(head) = self.queue.front() else {
            cx.out.extend_from_slice(&frame.bytes);
            return;
        };
        if head.kind == Kind::Query {
            self.query_failed = true;
            if head.forward {
                cx.out.extend_from_slice(&frame.bytes);
            } else {
                tracing::warn!("replaying the session's settings failed on a server connection");
                cx.conn.settings = None;
            }
            return;
        }
        match &head.rename {
            Some((server, client)) if be::rename_in_error(cx.out, frame.body(), server, client) => {
            }
            _ => cx.out.extend_from_slice(&frame.bytes),
        }
        // The server now skips everything up to the next Sync.
        while let Some(e) = self.queue.front() {
            if e.kind == Kind::Sync {
                break;
            }
            let e = self.queue.pop_front().expect("front");
            undo(e, cx);
        }
    }

    fn on_ready(&mut self, status: TxnStatus, frame: &Frame, cx: &mut Context<'_>) {
        while let Some(e) = self.queue.pop_front() {
            if !e.ends_with_ready() {
                undo(e, cx);
                continue;
            }
            self.ready_owed = self.ready_owed.saturating_sub(1);
            if e.forward {
                cx.out.extend_from_slice(&frame.bytes);
            }
            if !self.query_failed {
                apply(&e, status, cx);
            }
            break;
        }
        cx.conn.status = status;
        if status == TxnStatus::Idle && cx.settings.end_transaction(self.committed) {
            cx.conn.settings = cx.settings.fingerprint();
        }
        self.query_failed = false;
        self.committed = false;
    }
}

/// A message the server skipped (or that failed): undo what sending it
/// recorded.
fn undo(e: Expect, cx: &mut Context<'_>) {
    if let Some(name) = e.client_parse {
        cx.statements.remove(&name);
    }
    if let Some(name) = e.server_prepared {
        cx.conn.prepared.remove(&name);
    }
    if let Some(name) = e.closed {
        cx.conn.prepared.restore(name);
    }
}

/// A tracked session command succeeded.
fn apply(e: &Expect, status: TxnStatus, cx: &mut Context<'_>) {
    let in_txn = status != TxnStatus::Idle;
    match &e.command {
        Some(Command::Set { name }) => cx.settings.record(name.clone(), e.sql.clone(), in_txn),
        Some(Command::Reset { name }) => cx.settings.record(name.clone(), None, in_txn),
        Some(Command::ResetAll) => {
            cx.settings.reset_all();
            cx.conn.settings = None;
            return;
        }
        Some(Command::DiscardAll) => {
            cx.settings.reset_all();
            cx.statements.clear();
            cx.conn.prepared.clear();
            cx.conn.settings = None;
            return;
        }
        Some(Command::DeallocateAll) => {
            cx.statements.clear();
            cx.conn.prepared.clear();
            return;
        }
        _ => return,
    }
    if !in_txn {
        // The SET ran here: this connection now has the session's settings.
        cx.conn.settings = cx.settings.fingerprint();
    }
}
