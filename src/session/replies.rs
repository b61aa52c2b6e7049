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
use crate::pool::ConnState;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::{FrameRef, take_cstr};
use crate::protocol::sqlstate;

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

/// One reply owed, with the bookkeeping to undo if it never comes. (Kept
/// small: each is moved into the queue and out of it; the rarely set
/// bookkeeping is boxed.)
#[derive(Debug, Clone)]
pub struct Expect {
    /// What answers it.
    pub kind: Kind,
    /// Forward the answer to the client (false: pgsplit sent it).
    pub forward: bool,
    /// A query of the proxy's whose ParameterStatus messages the client
    /// must see (restoring a startup value after RESET).
    pub forward_status: bool,
    /// Server statement name to replace by the client's in errors (set on
    /// every message naming a prepared statement: inline, not boxed).
    pub rename: Option<(Arc<str>, Arc<str>)>,
    /// What else its answer or its loss updates, when anything does.
    pub books: Option<Box<Books>>,
}

/// What an answered, failed or skipped reply updates besides the client's
/// bytes (see [`Expect::books`]).
#[derive(Debug, Clone, Default)]
pub struct Books {
    /// A client's named Parse: forget the name if it fails or is skipped.
    pub client_parse: Option<String>,
    /// A server statement marked prepared: unmark if it fails or is skipped.
    pub server_prepared: Option<Arc<str>>,
    /// An eviction Close: if skipped, the statement is still there.
    pub closed: Option<Arc<str>>,
    /// A stale statement's Close: if skipped, it still waits to be closed.
    pub stale_closed: Option<Arc<str>>,
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
            forward_status: false,
            rename: None,
            books: None,
        }
    }

    /// Its bookkeeping, made on first use.
    pub fn books(&mut self) -> &mut Books {
        self.books.get_or_insert_with(Box::default)
    }

    /// The tracked command its Query or Sync carries.
    fn command(&self) -> Option<&Command> {
        self.books.as_ref().and_then(|b| b.command.as_ref())
    }

    /// A reply to something pgsplit inserted: not forwarded.
    pub fn swallowed(kind: Kind) -> Expect {
        Expect {
            forward: false,
            ..Expect::new(kind)
        }
    }

    /// A reply whose errors must name the client's statement.
    pub fn renamed(kind: Kind, server_name: Arc<str>, client_name: Arc<str>) -> Expect {
        Expect {
            rename: Some((server_name, client_name)),
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
    /// The state of the connection that sent it.
    pub conn: &'a mut ConnState,
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
    /// ParameterStatus values seen while swallowing, kept only while the
    /// greeting is being prepared (see [`Replies::capture_status`]).
    captured: Option<Vec<(String, String)>>,
    /// A tracked SET or RESET ran inside a transaction: whether it lasts
    /// depends on COMMIT, ROLLBACK and savepoints, so the session re-reads
    /// its settings from the node when the transaction is over.
    pub settings_unknown: bool,
    /// A COPY FROM STDIN (or COPY BOTH) waits for the client's data: the
    /// ReadyForQuery owed comes only after the client has sent it.
    copying_in: bool,
}

impl Replies {
    /// Queues the replies of a batch just sent.
    pub fn extend(&mut self, mut expects: Vec<Expect>) {
        self.append(&mut expects);
    }

    /// [`Replies::extend`], leaving `expects` empty with its capacity.
    pub fn append(&mut self, expects: &mut Vec<Expect>) {
        self.ready_owed += expects.iter().filter(|e| e.ends_with_ready()).count();
        if self.queue.is_empty() {
            // The usual case, a batch on a connection that owes nothing:
            // the two buffers trade places, nothing is moved (an empty
            // queue becomes a vector without moving anything either).
            let spent = std::mem::replace(&mut self.queue, VecDeque::from(std::mem::take(expects)));
            *expects = Vec::from(spent);
        } else {
            self.queue.extend(expects.drain(..));
        }
    }

    /// ReadyForQuery messages still owed.
    pub fn ready_owed(&self) -> usize {
        self.ready_owed
    }

    /// Whether the server answers up to the one ReadyForQuery owed without
    /// more from the client: one Sync or Query went (not a pipeline of
    /// them) and no COPY FROM STDIN waits for data.
    pub fn answers_alone(&self) -> bool {
        self.ready_owed == 1 && !self.copying_in
    }

    /// Whether nothing at all is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the client has every answer it is owed: what is still owed
    /// is the proxy's own work (a startup setting restored after RESET).
    pub fn client_answered(&self) -> bool {
        self.queue
            .iter()
            .all(|e| !e.forward && !matches!(e.kind, Kind::Synthetic(_)))
    }

    /// Forgets everything (the connection is gone).
    pub fn clear(&mut self) {
        *self = Replies::default();
    }

    /// Starts keeping the ParameterStatus values of swallowed replies.
    pub fn capture_status(&mut self) {
        self.captured = Some(Vec::new());
    }

    /// Stops keeping them and returns what was kept.
    pub fn take_captured(&mut self) -> Vec<(String, String)> {
        self.captured.take().unwrap_or_default()
    }

    /// The leading replies of a batch sent again elsewhere that the client
    /// already has (synthetic ones, given before the first node byte):
    /// the first `delivered` client-visible replies of the new
    /// translation are dropped or swallowed instead.
    pub fn skip_delivered(expects: &mut Vec<Expect>, mut delivered: usize) {
        let mut i = 0;
        while delivered > 0 && i < expects.len() {
            let e = &mut expects[i];
            if matches!(e.kind, Kind::Synthetic(_)) {
                expects.remove(i);
                delivered -= 1;
                continue;
            }
            if e.forward {
                e.forward = false;
                delivered -= 1;
            }
            i += 1;
        }
    }

    /// How many synthetic replies lead the queue (given at once when sent).
    pub fn leading_synthetics(&self) -> usize {
        self.queue
            .iter()
            .take_while(|e| matches!(e.kind, Kind::Synthetic(_)))
            .count()
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

    /// Whether the next reply answers something the proxy sent for itself
    /// (nothing of it reaches the client).
    pub fn head_swallowed(&self) -> bool {
        self.queue.front().is_some_and(|e| {
            !e.forward && !e.forward_status && !matches!(e.kind, Kind::Synthetic(_))
        })
    }

    /// Whether DataRow and CopyData messages now go to the client as they
    /// are, with nothing to learn from them: what is owed next is the
    /// client's own Query or Execute (no synthetic reply before it). For
    /// those, [`Replies::on_frame`] only copies them.
    pub fn relays_rows(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|e| e.forward && matches!(e.kind, Kind::Query | Kind::Execute))
    }

    /// A CommandComplete the client got (relayed as it is, while
    /// [`Replies::relays_rows`]): it ends an Execute's replies, not a
    /// Query's; synthetic replies due next follow it.
    pub fn command_completed(&mut self, out: &mut BytesMut) {
        self.end_execute();
        self.emit_ready_synthetics(out);
    }

    /// A CommandComplete ends the Execute owed first (a Query's goes on
    /// to its ReadyForQuery).
    fn end_execute(&mut self) {
        if self.queue.front().is_some_and(|e| e.kind == Kind::Execute) {
            self.queue.pop_front();
        }
    }

    /// Whether the next server message is the client's (not the proxy's
    /// own work, swallowed).
    pub fn head_forwards(&self) -> bool {
        self.queue.front().is_none_or(|e| e.forward)
    }

    fn head_forwards_status(&self) -> bool {
        self.queue
            .front()
            .is_none_or(|e| e.forward || e.forward_status)
    }

    /// Handles one server message. Returns the ReadyForQuery status when
    /// the message was one.
    pub fn on_frame(&mut self, frame: FrameRef<'_>, cx: &mut Context<'_>) -> Option<TxnStatus> {
        self.emit_ready_synthetics(cx.out);
        let forward = self.head_forwards();
        // (Borrowed, not cloned: a synthetic reply's kind holds bytes.)
        let head_kind = self.queue.front().map(|e| &e.kind);
        let mut ready = None;
        match frame.tag {
            be::NOTICE_RESPONSE_TAG => self.pass(frame, forward, cx),
            be::NOTIFICATION_TAG => cx.out.extend_from_slice(frame.bytes),
            be::PARAMETER_STATUS_TAG => {
                if self.head_forwards_status() {
                    cx.out.extend_from_slice(frame.bytes);
                } else if let Some(captured) = self.captured.as_mut() {
                    let mut body = frame.body();
                    if let (Some(n), Some(v)) = (take_cstr(&mut body), take_cstr(&mut body)) {
                        captured.push((n.to_owned(), v.to_owned()));
                    }
                }
            }
            be::ERROR_RESPONSE_TAG => self.on_error(frame, cx),
            be::READY_FOR_QUERY_TAG => {
                let status = TxnStatus::from_body(frame.body()).unwrap_or(TxnStatus::Failed);
                self.on_ready(status, frame, cx);
                ready = Some(status);
            }
            be::COPY_BOTH_RESPONSE_TAG => {
                self.copying_in = true;
                self.pass(frame, forward, cx);
            }
            be::COPY_IN_RESPONSE_TAG => {
                self.copying_in = true;
                self.pass(frame, forward, cx);
                if head_kind == Some(&Kind::Execute) {
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
            be::PARSE_COMPLETE_TAG
            | be::BIND_COMPLETE_TAG
            | be::CLOSE_COMPLETE_TAG
            | be::NO_DATA_TAG
            | be::EMPTY_QUERY_TAG
            | be::PORTAL_SUSPENDED_TAG => {
                self.pass(frame, forward, cx);
                if !matches!(head_kind, Some(Kind::Query)) {
                    self.queue.pop_front();
                }
            }
            be::ROW_DESCRIPTION_TAG => {
                self.pass(frame, forward, cx);
                if matches!(
                    head_kind,
                    Some(Kind::DescribeStatement | Kind::DescribePortal)
                ) {
                    self.queue.pop_front();
                }
            }
            be::COMMAND_COMPLETE_TAG => {
                self.pass(frame, forward, cx);
                self.end_execute();
            }
            _ => self.pass(frame, forward, cx),
        }
        self.emit_ready_synthetics(cx.out);
        ready
    }

    fn pass(&self, frame: FrameRef<'_>, forward: bool, cx: &mut Context<'_>) {
        if forward {
            cx.out.extend_from_slice(frame.bytes);
        }
    }

    fn on_error(&mut self, frame: FrameRef<'_>, cx: &mut Context<'_>) {
        let Some(head) = self.queue.front() else {
            cx.out.extend_from_slice(frame.bytes);
            return;
        };
        if head.kind == Kind::Query {
            self.query_failed = true;
            if head.forward {
                cx.out.extend_from_slice(frame.bytes);
            } else {
                tracing::warn!("replaying the session's settings failed on a server connection");
                cx.conn.settings = None;
            }
            return;
        }
        if head.kind == Kind::Bind
            && let Some((server, _)) = &head.rename
            && be::error_code_and_message(frame.body())
                .is_some_and(|(code, _)| code == sqlstate::FEATURE_NOT_SUPPORTED)
        {
            // "cached plan must not change result type": the shared
            // statement is stale on this connection for every client.
            cx.conn.prepared.mark_stale(server.clone());
        }
        match &head.rename {
            Some((server, client)) if be::rename_in_error(cx.out, frame.body(), server, client) => {
            }
            _ => cx.out.extend_from_slice(frame.bytes),
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

    fn on_ready(&mut self, status: TxnStatus, frame: FrameRef<'_>, cx: &mut Context<'_>) {
        while let Some(e) = self.queue.pop_front() {
            if !e.ends_with_ready() {
                undo(e, cx);
                continue;
            }
            self.ready_owed = self.ready_owed.saturating_sub(1);
            if e.forward {
                cx.out.extend_from_slice(frame.bytes);
            }
            if !self.query_failed && apply(&e, status, cx) == Applied::InTransaction {
                self.settings_unknown = true;
            }
            break;
        }
        cx.conn.status = status;
        self.query_failed = false;
        self.copying_in = false;
    }
}

/// A message the server skipped (or that failed): undo what sending it
/// recorded.
fn undo(e: Expect, cx: &mut Context<'_>) {
    let Some(books) = e.books else {
        return;
    };
    if let Some(name) = books.client_parse {
        cx.statements.remove(&name);
    }
    if let Some(name) = books.server_prepared {
        cx.conn.prepared.remove(&name);
    }
    if let Some(name) = books.closed {
        cx.conn.prepared.restore(name);
    }
    if let Some(name) = books.stale_closed {
        cx.conn.prepared.mark_stale(name);
    }
}

/// What applying a tracked command did.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// Nothing to track, or tracked.
    Done,
    /// A settings change inside a transaction: not recorded, re-read later.
    InTransaction,
}

/// A tracked session command succeeded.
fn apply(e: &Expect, status: TxnStatus, cx: &mut Context<'_>) -> Applied {
    let in_txn = status != TxnStatus::Idle;
    let changes_settings = matches!(
        e.command(),
        Some(Command::Set { .. } | Command::Reset { .. } | Command::ResetAll | Command::DiscardAll)
    );
    if in_txn && changes_settings {
        return Applied::InTransaction;
    }
    match e.command() {
        Some(Command::Set { name }) => cx
            .settings
            .record(name.clone(), e.books.as_ref().and_then(|b| b.sql.clone())),
        Some(Command::Reset { name }) => cx.settings.record(name.clone(), None),
        Some(Command::ResetAll) => cx.settings.reset_all(),
        Some(Command::DiscardAll) => {
            cx.settings.reset_all();
            cx.statements.clear();
            cx.conn.prepared.clear();
        }
        Some(Command::DeallocateAll) => {
            cx.statements.clear();
            cx.conn.prepared.clear();
        }
        _ => {}
    }
    if changes_settings {
        // It ran here (with its restore of startup values queued behind
        // it): this connection has the session's settings.
        cx.conn.settings = cx.settings.fingerprint();
    }
    Applied::Done
}

#[cfg(test)]
mod tests {
    //! Reply accounting fed with server messages, no socket.

    use super::*;
    use crate::protocol::codec::{Frame, decode_frame};

    fn frame(bytes: BytesMut) -> Frame {
        let mut buf = bytes;
        decode_frame(&mut buf, 1 << 20).unwrap().unwrap()
    }

    fn ready(status: TxnStatus) -> Frame {
        let mut b = BytesMut::new();
        be::ready_for_query(&mut b, status);
        frame(b)
    }

    fn simple(tag: u8) -> Frame {
        frame(BytesMut::from(&[tag, 0, 0, 0, 4][..]))
    }

    fn status(name: &str, value: &str) -> Frame {
        let mut b = BytesMut::new();
        be::parameter_status(&mut b, name, value);
        frame(b)
    }

    struct Fixture {
        conn: ConnState,
        statements: Statements,
        settings: Settings,
        out: BytesMut,
        replies: Replies,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                conn: ConnState::new(1),
                statements: Statements::default(),
                settings: Settings::default(),
                out: BytesMut::new(),
                replies: Replies::default(),
            }
        }

        fn feed(&mut self, frame: &Frame) -> Option<TxnStatus> {
            let mut cx = Context {
                conn: &mut self.conn,
                statements: &mut self.statements,
                settings: &mut self.settings,
                out: &mut self.out,
            };
            self.replies.on_frame(frame.view(), &mut cx)
        }

        fn tags(&mut self) -> Vec<u8> {
            let mut buf = std::mem::take(&mut self.out);
            let mut tags = Vec::new();
            while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
                tags.push(f.tag);
            }
            tags
        }
    }

    #[test]
    fn only_one_owed_answer_without_copy_in_comes_alone() {
        let mut fx = Fixture::new();
        assert!(!fx.replies.answers_alone(), "nothing owed");
        fx.replies.extend(vec![Expect::new(Kind::Query)]);
        assert!(fx.replies.answers_alone());
        fx.replies.extend(vec![Expect::new(Kind::Query)]);
        assert!(
            !fx.replies.answers_alone(),
            "a pipeline: the client may send more"
        );
        fx.feed(&ready(TxnStatus::Idle));
        assert!(fx.replies.answers_alone());
        fx.feed(&simple(be::COPY_IN_RESPONSE_TAG));
        assert!(
            !fx.replies.answers_alone(),
            "COPY FROM STDIN waits for the client's data"
        );
        fx.feed(&ready(TxnStatus::Idle));
        assert!(!fx.replies.answers_alone(), "all answered");
        fx.replies.extend(vec![
            Expect::new(Kind::Parse),
            Expect::new(Kind::Bind),
            Expect::new(Kind::Execute),
            Expect::new(Kind::Sync),
        ]);
        assert!(fx.replies.answers_alone());
        fx.feed(&simple(be::COPY_BOTH_RESPONSE_TAG));
        assert!(
            !fx.replies.answers_alone(),
            "COPY BOTH reads the client too"
        );
    }

    #[test]
    fn an_error_skips_to_sync_and_undoes_what_was_skipped() {
        let mut fx = Fixture::new();
        let statement = Arc::new(crate::session::state::Statement::new(
            b"SELECT 1",
            &[0, 0],
            crate::router::Route::replica(crate::router::Reason::Read),
            0,
        ));
        fx.statements.add("s1", statement);
        let mut parse = Expect::new(Kind::Parse);
        parse.books().client_parse = Some("s1".into());
        fx.replies.extend(vec![
            Expect::new(Kind::Bind),
            parse,
            Expect::new(Kind::Execute),
            Expect::new(Kind::Sync),
        ]);
        let mut err = BytesMut::new();
        be::error_response(&mut err, be::Severity::Error, "42P01", "no such table");
        fx.feed(&frame(err));
        assert!(
            fx.statements.get("s1").is_none(),
            "the skipped Parse is undone"
        );
        assert_eq!(fx.feed(&ready(TxnStatus::Idle)), Some(TxnStatus::Idle));
        assert!(fx.replies.is_empty());
        assert_eq!(
            fx.tags(),
            vec![be::ERROR_RESPONSE_TAG, be::READY_FOR_QUERY_TAG]
        );
    }

    #[test]
    fn swallowed_replies_keep_nothing_unless_asked() {
        let mut fx = Fixture::new();
        for _ in 0..3 {
            fx.replies.extend(vec![Expect::swallowed(Kind::Query)]);
            fx.feed(&status("TimeZone", "UTC"));
            fx.feed(&ready(TxnStatus::Idle));
        }
        assert!(fx.replies.take_captured().is_empty());
        assert!(fx.tags().is_empty());
        fx.replies.capture_status();
        fx.replies.extend(vec![Expect::swallowed(Kind::Query)]);
        fx.feed(&status("TimeZone", "UTC"));
        fx.feed(&ready(TxnStatus::Idle));
        assert_eq!(
            fx.replies.take_captured(),
            vec![("TimeZone".to_owned(), "UTC".to_owned())]
        );
        // A restore after RESET lets the client see the value.
        let mut e = Expect::swallowed(Kind::Query);
        e.forward_status = true;
        fx.replies.extend(vec![e]);
        fx.feed(&status("TimeZone", "America/Los_Angeles"));
        fx.feed(&simple(be::COMMAND_COMPLETE_TAG));
        fx.feed(&ready(TxnStatus::Idle));
        assert_eq!(fx.tags(), vec![be::PARAMETER_STATUS_TAG]);
    }

    #[test]
    fn notifications_always_reach_the_client() {
        let mut fx = Fixture::new();
        let notification = frame(BytesMut::from(
            &[be::NOTIFICATION_TAG, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0][..],
        ));
        fx.feed(&notification);
        fx.replies.extend(vec![Expect::swallowed(Kind::Query)]);
        fx.feed(&notification);
        fx.feed(&ready(TxnStatus::Idle));
        assert_eq!(fx.tags(), vec![be::NOTIFICATION_TAG, be::NOTIFICATION_TAG]);
    }

    #[test]
    fn a_set_inside_a_transaction_leaves_the_settings_to_be_read_back() {
        let mut fx = Fixture::new();
        let mut e = Expect::new(Kind::Query);
        e.books().command = Some(Command::Set {
            name: "search_path".into(),
        });
        e.books().sql = Some("SET search_path TO s1".into());
        fx.replies.extend(vec![e.clone()]);
        fx.feed(&simple(be::COMMAND_COMPLETE_TAG));
        fx.feed(&ready(TxnStatus::InTransaction));
        assert!(fx.replies.settings_unknown);
        assert_eq!(fx.settings.fingerprint(), None, "not recorded");
        // Outside a transaction it is recorded, and the connection has it.
        fx.replies.settings_unknown = false;
        fx.replies.extend(vec![e]);
        fx.feed(&simple(be::COMMAND_COMPLETE_TAG));
        fx.feed(&ready(TxnStatus::Idle));
        assert!(!fx.replies.settings_unknown);
        assert!(fx.settings.fingerprint().is_some());
        assert_eq!(fx.conn.settings, fx.settings.fingerprint());
    }
}
