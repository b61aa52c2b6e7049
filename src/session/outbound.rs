//! Turns a client's batch into what one particular server connection must
//! receive: client statement names become shared server names, statements
//! missing on that connection are prepared in front (their replies are
//! swallowed), settings are replayed first on a fresh connection, and
//! replies the proxy can give itself (ParseComplete of a statement the
//! connection already has, CloseComplete, DEALLOCATE) are queued as
//! synthetic. Every message sent gets an [`Expect`] in reply order.

use std::sync::Arc;

use bytes::BytesMut;

use super::commands::Command;
use super::replies::{Expect, Kind};
use super::state::{Settings, Statement, Statements};
use crate::pool::ConnState;
use crate::protocol::ProtocolError;
use crate::protocol::backend as be;
use crate::protocol::codec::{FrameRef, Frames};
use crate::protocol::frontend as fe;
use crate::protocol::sqlstate;
use crate::router::{Reason, Route};

/// What to send and what to expect back.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Bytes for the server connection.
    pub bytes: BytesMut,
    /// Replies, in order.
    pub expects: Vec<Expect>,
    /// Client statement names this batch added (undone if the batch is
    /// sent again elsewhere).
    pub added: Vec<String>,
}

/// Everything a translation reads and updates.
pub struct Translation<'a> {
    /// The state of the connection the batch goes to.
    pub conn: &'a mut ConnState,
    /// The client's statements.
    pub statements: &'a mut Statements,
    /// The client's settings.
    pub settings: &'a Settings,
    /// The routes of the batch's Parse messages, in order (the plan's).
    pub parse_routes: &'a [Route],
    /// The session's id (whose sequence state a connection may hold).
    pub session: i32,
}

impl Translation<'_> {
    /// Translates `frames`; `fresh` means the connection was just taken
    /// for this session and needs its settings.
    ///
    /// # Errors
    /// A malformed client message.
    pub fn translate(
        &mut self,
        frames: &Frames,
        command: Option<&Tracked>,
        fresh: bool,
    ) -> Result<Outbound, ProtocolError> {
        let mut out = Outbound::default();
        self.translate_into(&mut out, frames, command, fresh)?;
        Ok(out)
    }

    /// [`Translation::translate`] into `out`, emptied first and its
    /// buffers' capacity reused (the session keeps one across batches).
    ///
    /// # Errors
    /// A malformed client message.
    pub fn translate_into(
        &mut self,
        out: &mut Outbound,
        frames: &Frames,
        command: Option<&Tracked>,
        fresh: bool,
    ) -> Result<(), ProtocolError> {
        let size = frames.byte_len();
        out.bytes.clear();
        out.bytes.reserve(size + 64);
        out.expects.clear();
        out.expects.reserve(frames.len() + 1);
        out.added.clear();
        if fresh {
            self.replay_settings(out);
        }
        if self.conn.prepared.has_stale() {
            self.close_stale(out);
        }
        let mut parsed_unnamed = false;
        let mut skipping = false;
        let mut routes = self.parse_routes.iter().copied();
        for frame in frames {
            if skipping && frame.tag != fe::SYNC_TAG {
                continue;
            }
            let body = frame.body();
            match frame.tag {
                fe::PARSE_TAG => {
                    let p = fe::parse(body)?;
                    // (the plan routed every Parse; unknown means primary)
                    let route = routes.next().unwrap_or(Route::primary(Reason::ParseError));
                    if p.name.is_empty() {
                        parsed_unnamed = true;
                        // A driver parses the same unnamed text again and
                        // again: the statement is kept when nothing changed.
                        let s = match &self.statements.unnamed {
                            Some((s, _))
                                if s.route == route && s.sql == p.sql && s.types == p.types =>
                            {
                                s.clone()
                            }
                            _ => Arc::new(Statement::unnamed(p.sql, p.types, route)),
                        };
                        let token = ConnState::next_unnamed();
                        self.statements.unnamed = Some((s, token));
                        self.conn.unnamed = Some(token);
                        forward(out, frame, Kind::Parse);
                    } else {
                        skipping = !self.parse_named(out, p, route)?;
                    }
                }
                fe::BIND_TAG => {
                    let b = fe::bind(body)?;
                    match self.resolve(out, &b.statement, parsed_unnamed) {
                        Some((server_name, client_name)) => {
                            fe::write_bind(&mut out.bytes, &b, &server_name);
                            out.expects
                                .push(Expect::renamed(Kind::Bind, server_name, client_name));
                        }
                        None => forward(out, frame, Kind::Bind),
                    }
                }
                fe::DESCRIBE_TAG => {
                    let (kind, name) = fe::target(body, "Describe")?;
                    let resolved = (kind == fe::STATEMENT)
                        .then(|| self.resolve(out, &name, parsed_unnamed))
                        .flatten();
                    match resolved {
                        Some((server_name, client_name)) => {
                            fe::write_target(
                                &mut out.bytes,
                                fe::DESCRIBE_TAG,
                                fe::STATEMENT,
                                &server_name,
                            );
                            out.expects.push(Expect::renamed(
                                Kind::DescribeStatement,
                                server_name,
                                client_name,
                            ));
                        }
                        None if kind == fe::STATEMENT => {
                            forward(out, frame, Kind::DescribeStatement);
                        }
                        None => forward(out, frame, Kind::DescribePortal),
                    }
                }
                fe::CLOSE_TAG => {
                    let (kind, name) = fe::target(body, "Close")?;
                    if kind == fe::STATEMENT && !name.is_empty() {
                        // Server statements are shared and closed on eviction;
                        // the client's name just goes away.
                        self.statements.remove(&name);
                        synthetic(out, be::close_complete);
                    } else {
                        forward(out, frame, Kind::Close);
                    }
                }
                fe::EXECUTE_TAG => forward(out, frame, Kind::Execute),
                fe::SYNC_TAG => {
                    skipping = false;
                    forward(out, frame, Kind::Sync);
                    // A SET sent as Parse/Bind/Execute is tracked at its Sync.
                    if let Some(command) = command {
                        let books = out.expects.last_mut().expect("just pushed").books();
                        books.command = Some(command.command.clone());
                        books.sql = Some(command.sql.clone());
                        self.restore_startup(out, &command.command);
                    }
                }
                fe::QUERY_TAG => self.query(out, frame, command),
                fe::FUNCTION_CALL_TAG => forward(out, frame, Kind::Query),
                _ => out.bytes.extend_from_slice(frame.bytes),
            }
        }
        Ok(())
    }

    fn replay_settings(&mut self, out: &mut Outbound) {
        let desired = self.settings.fingerprint();
        // Another session's currval/lastval state goes first.
        let foreign_sequences = self
            .conn
            .sequence_owner
            .is_some_and(|owner| owner != self.session);
        if self.conn.settings == desired && !foreign_sequences {
            return;
        }
        let mut sql = String::new();
        if foreign_sequences {
            sql.push_str("DISCARD SEQUENCES;");
            self.conn.sequence_owner = None;
        }
        if self.conn.settings != desired {
            if self.conn.settings.is_some() {
                sql.push_str("RESET ALL;");
            }
            if let Some(replay) = self.settings.replay_sql() {
                sql.push_str(replay);
            }
        }
        be::query(&mut out.bytes, &sql);
        out.expects.push(Expect::swallowed(Kind::Query));
        self.conn.settings = desired;
        self.conn.unnamed = None;
    }

    /// Closes the statements the server reported stale, before anything in
    /// the batch may prepare their names again.
    fn close_stale(&mut self, out: &mut Outbound) {
        for name in self.conn.prepared.take_stale() {
            fe::write_target(&mut out.bytes, fe::CLOSE_TAG, fe::STATEMENT, &name);
            let mut e = Expect::swallowed(Kind::Close);
            e.books().stale_closed = Some(name);
            out.expects.push(e);
        }
    }

    /// After RESET of a setting given at connect time (or RESET ALL,
    /// DISCARD ALL): set the startup value again, as a direct connection
    /// would have it, and let the client see the ParameterStatus.
    fn restore_startup(&mut self, out: &mut Outbound, command: &Command) {
        let sql = match command {
            Command::Reset { name } => self.settings.restore_sql(name),
            Command::ResetAll | Command::DiscardAll => self.settings.restore_all_sql(),
            _ => None,
        };
        if let Some(sql) = sql {
            be::query(&mut out.bytes, &sql);
            let mut e = Expect::swallowed(Kind::Query);
            e.forward_status = true;
            out.expects.push(e);
            self.conn.unnamed = None;
        }
    }

    /// A client's named Parse. False when the name is taken (the client
    /// gets PostgreSQL's 42P05 and the batch is skipped up to Sync).
    fn parse_named(
        &mut self,
        out: &mut Outbound,
        p: fe::Parse<'_>,
        route: Route,
    ) -> Result<bool, ProtocolError> {
        if self.statements.get(&p.name).is_some() {
            let message = format!("prepared statement \"{}\" already exists", p.name);
            let mut bytes = BytesMut::new();
            be::error_response(
                &mut bytes,
                be::Severity::Error,
                sqlstate::DUPLICATE_PREPARED_STATEMENT,
                &message,
            );
            out.expects.push(Expect::synthetic(bytes));
            return Ok(false);
        }
        let statement = Arc::new(Statement::new(
            p.sql,
            p.types,
            route,
            self.settings.resolution_key(),
        ));
        let server_name = statement.server_name.clone();
        self.statements.add(&p.name, statement.clone());
        out.added.push(p.name.to_string());
        if self.conn.prepared.touch(&server_name) {
            let mut bytes = BytesMut::new();
            be::parse_complete(&mut bytes);
            let mut e = Expect::synthetic(bytes);
            e.books().client_parse = Some(p.name.to_string());
            out.expects.push(e);
        } else {
            self.prepare(out, &statement);
            let e = out.expects.last_mut().expect("just pushed");
            e.forward = true;
            e.books().client_parse = Some(p.name.to_string());
        }
        Ok(true)
    }

    /// Sends Parse of `statement` under its server name, closing the least
    /// recently used statement first when the connection is full. The
    /// ParseComplete is swallowed unless the caller says otherwise.
    fn prepare(&mut self, out: &mut Outbound, statement: &Statement) {
        if let Some(evicted) = self.conn.prepared.insert(statement.server_name.clone()) {
            fe::write_target(&mut out.bytes, fe::CLOSE_TAG, fe::STATEMENT, &evicted);
            let mut e = Expect::swallowed(Kind::Close);
            e.books().closed = Some(evicted);
            out.expects.push(e);
        }
        fe::write_parse(
            &mut out.bytes,
            &statement.server_name,
            &statement.sql,
            &statement.types,
        );
        let mut e = Expect::swallowed(Kind::Parse);
        e.books().server_prepared = Some(statement.server_name.clone());
        out.expects.push(e);
    }

    /// The server name for a client statement name (and the client's name,
    /// shared), preparing it on this connection when needed. `None`: send the message unchanged (the
    /// unnamed statement, or a name the client never prepared, which the
    /// node will report under the client's own name).
    fn resolve(
        &mut self,
        out: &mut Outbound,
        name: &str,
        parsed_unnamed: bool,
    ) -> Option<(Arc<str>, Arc<str>)> {
        if name.is_empty() {
            if !parsed_unnamed
                && let Some((s, token)) = self.statements.unnamed.clone()
                && self.conn.unnamed != Some(token)
            {
                // This connection does not hold the session's unnamed
                // statement (another connection, or something replaced
                // it since): parse it again here, in the same batch.
                fe::write_parse(&mut out.bytes, "", &s.sql, &s.types);
                out.expects.push(Expect::swallowed(Kind::Parse));
                let token = ConnState::next_unnamed();
                self.statements.unnamed = Some((s, token));
                self.conn.unnamed = Some(token);
            }
            return None;
        }
        let (client_name, statement) = self.statements.get_named(name)?;
        let (client_name, statement) = (client_name.clone(), statement.clone());
        if !self.conn.prepared.touch(&statement.server_name) {
            self.prepare(out, &statement);
        }
        Some((statement.server_name.clone(), client_name))
    }

    fn query(&mut self, out: &mut Outbound, frame: FrameRef<'_>, command: Option<&Tracked>) {
        let command = command.map(|c| &c.command);
        if let Some(Command::Deallocate { name }) = command
            && self.statements.get(name).is_some()
        {
            // A protocol-level statement: forget it here, and let a Sync
            // fetch the ReadyForQuery with the real transaction status.
            self.statements.remove(name);
            synthetic(out, |b| be::command_complete(b, "DEALLOCATE"));
            fe::write_sync(&mut out.bytes);
            out.expects.push(Expect::new(Kind::Sync));
            return;
        }
        out.bytes.extend_from_slice(frame.bytes);
        // A simple query replaces the unnamed statement.
        self.conn.unnamed = None;
        let mut e = Expect::new(Kind::Query);
        if let Some(command) = command {
            let books = e.books();
            books.command = Some(command.clone());
            if let Command::Set { .. } | Command::Reset { .. } = command {
                books.sql = fe::query_text(frame.body()).ok().map(|t| t.into_owned());
            }
        }
        out.expects.push(e);
        if let Some(command) = command {
            self.restore_startup(out, command);
        }
    }
}

/// The one session command of a batch that the session tracks, with the
/// SQL that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// The command.
    pub command: Command,
    /// Its SQL text.
    pub sql: String,
}

fn forward(out: &mut Outbound, frame: FrameRef<'_>, kind: Kind) {
    out.bytes.extend_from_slice(frame.bytes);
    out.expects.push(Expect::new(kind));
}

fn synthetic(out: &mut Outbound, write: impl FnOnce(&mut BytesMut)) {
    let mut bytes = BytesMut::new();
    write(&mut bytes);
    out.expects.push(Expect::synthetic(bytes));
}

#[cfg(test)]
mod tests {
    //! The translation of client batches, without sockets: what a server
    //! connection receives and which replies the client is owed.

    use super::super::replies::Replies;
    use super::*;
    use crate::protocol::codec::decode_frame;

    /// Frames from raw message bytes.
    pub(crate) fn frames(bytes: &[u8]) -> Frames {
        let mut buf = BytesMut::from(bytes);
        let mut out = Frames::default();
        while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
            out.push(&f.bytes);
        }
        out
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    pub(crate) fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        fe::write_parse(&mut b, name, sql.as_bytes(), &[0, 0]);
        b.to_vec()
    }

    pub(crate) fn bind(statement: &str) -> Vec<u8> {
        message(b'B', format!("\0{statement}\0\0\0\0\0\0\0").as_bytes())
    }

    pub(crate) fn execute() -> Vec<u8> {
        message(b'E', b"\0\0\0\0\0")
    }

    pub(crate) fn sync() -> Vec<u8> {
        message(b'S', b"")
    }

    fn describe_statement(name: &str) -> Vec<u8> {
        message(b'D', format!("S{name}\0").as_bytes())
    }

    fn query(sql: &str) -> Vec<u8> {
        message(b'Q', format!("{sql}\0").as_bytes())
    }

    /// The tags and first strings of the messages in `bytes`.
    fn sent(bytes: &[u8]) -> Vec<(char, String)> {
        frames(bytes)
            .iter()
            .map(|f| {
                let body = f.body();
                let skip = usize::from(matches!(f.tag, b'D' | b'C'));
                let text: String = body[skip..]
                    .iter()
                    .take_while(|b| **b != 0)
                    .map(|b| *b as char)
                    .collect();
                (f.tag as char, text)
            })
            .collect()
    }

    struct Fixture {
        conn: ConnState,
        statements: Statements,
        settings: Settings,
        router: crate::router::Router,
    }

    impl Fixture {
        fn new(startup: &[(&str, &str)]) -> Fixture {
            let params: Vec<(String, String)> = startup
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            Fixture {
                conn: ConnState::new(1),
                statements: Statements::default(),
                settings: Settings::from_startup(&params),
                router: crate::router::Router::new(
                    crate::router::Knowledge::new(&[], Default::default()),
                    1 << 20,
                    None,
                ),
            }
        }

        fn translate(&mut self, bytes: &[u8], command: Option<&Tracked>, fresh: bool) -> Outbound {
            let frames = frames(bytes);
            // The plan's routes of the Parse messages.
            let parse_routes: Vec<Route> = frames
                .iter()
                .filter(|f| f.tag == fe::PARSE_TAG)
                .map(|f| {
                    let p = fe::parse(f.body()).unwrap();
                    self.router.classify(&fe::sql_text(p.sql))
                })
                .collect();
            Translation {
                conn: &mut self.conn,
                statements: &mut self.statements,
                settings: &self.settings,
                parse_routes: &parse_routes,
                session: 1,
            }
            .translate(&frames, command, fresh)
            .unwrap()
        }
    }

    #[test]
    fn named_statements_get_shared_server_names_and_synthetic_parse_completes() {
        let mut fx = Fixture::new(&[]);
        let batch = [parse("s1", "SELECT 1"), bind("s1"), execute(), sync()].concat();
        let out = fx.translate(&batch, None, true);
        let wire = sent(&out.bytes);
        let server = wire[0].1.clone();
        assert!(server.starts_with("pgsplit_"), "{wire:?}");
        assert_eq!(wire[1], ('B', String::new())); // unnamed portal
        assert_eq!(
            out.expects
                .iter()
                .map(|e| e.kind.clone())
                .collect::<Vec<_>>(),
            vec![Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]
        );
        assert!(out.expects[0].forward, "the client's ParseComplete");
        assert_eq!(out.added, vec!["s1".to_owned()]);
        // The same text under another client name on the same connection:
        // no Parse goes out, the ParseComplete is the proxy's.
        let out = fx.translate(&[parse("s2", "SELECT 1"), sync()].concat(), None, false);
        assert_eq!(sent(&out.bytes), vec![('S', String::new())]);
        assert!(matches!(out.expects[0].kind, Kind::Synthetic(_)));
        // A name taken: 42P05 from the proxy, the batch skipped to Sync.
        let out = fx.translate(
            &[parse("s1", "SELECT 2"), bind("s1"), sync()].concat(),
            None,
            false,
        );
        assert_eq!(sent(&out.bytes), vec![('S', String::new())]);
    }

    #[test]
    fn a_stale_statement_is_closed_before_its_text_is_parsed_again() {
        let mut fx = Fixture::new(&[]);
        let out = fx.translate(&[parse("s1", "SELECT 1"), sync()].concat(), None, true);
        let server: Arc<str> = sent(&out.bytes)[0].1.clone().into();
        // The server failed a Bind of it with 0A000 (replies.rs marks it).
        fx.conn.prepared.mark_stale(server.clone());
        let out = fx.translate(
            &[parse("s2", "SELECT 1"), bind("s2"), execute(), sync()].concat(),
            None,
            false,
        );
        let wire = sent(&out.bytes);
        assert_eq!(wire[0], ('C', server.to_string()), "{wire:?}");
        assert_eq!(wire[1], ('P', server.to_string()), "parsed afresh");
        assert!(!out.expects[0].forward, "the CloseComplete is swallowed");
        assert!(out.expects[1].forward, "the client's ParseComplete");
        // Closed once: the next batch has no Close.
        let out = fx.translate(&[bind("s2"), execute(), sync()].concat(), None, false);
        assert_eq!(sent(&out.bytes)[0].0, 'B');
    }

    #[test]
    fn a_fresh_connection_gets_the_session_settings_first() {
        let mut fx = Fixture::new(&[("application_name", "web")]);
        let out = fx.translate(&query("SELECT 1"), None, true);
        let wire = sent(&out.bytes);
        assert_eq!(wire.len(), 2);
        assert!(wire[0].1.contains("set_config('application_name', 'web'"));
        assert!(
            !out.expects[0].forward,
            "the replay's replies are swallowed"
        );
        // Same settings already there: nothing replayed.
        let out = fx.translate(&query("SELECT 1"), None, true);
        assert_eq!(sent(&out.bytes).len(), 1);
        // Another session's settings on the connection: RESET ALL first.
        fx.conn.settings = Some(42);
        let out = fx.translate(&query("SELECT 1"), None, true);
        assert!(sent(&out.bytes)[0].1.starts_with("RESET ALL;"));
        // Another session's sequence state: discarded first, once.
        fx.conn.sequence_owner = Some(2);
        let out = fx.translate(&query("SELECT 1"), None, true);
        assert_eq!(sent(&out.bytes)[0].1, "DISCARD SEQUENCES;");
        assert_eq!(fx.conn.sequence_owner, None);
        fx.conn.sequence_owner = Some(1);
        let out = fx.translate(&query("SELECT 1"), None, true);
        assert_eq!(sent(&out.bytes).len(), 1, "its own: kept");
    }

    #[test]
    fn the_unnamed_statement_is_parsed_again_where_it_is_missing() {
        let mut fx = Fixture::new(&[]);
        fx.translate(&[parse("", "SELECT $1"), sync()].concat(), None, false);
        // Described on the same connection: nothing to add.
        let out = fx.translate(&[describe_statement(""), sync()].concat(), None, false);
        assert_eq!(sent(&out.bytes)[0].0, 'D');
        // A simple query (the proxy's own, or anyone's) replaced it.
        fx.translate(&query("SELECT 1"), None, false);
        let out = fx.translate(&[describe_statement(""), sync()].concat(), None, false);
        let wire = sent(&out.bytes);
        assert_eq!(wire[0], ('P', String::new()), "{wire:?}");
        assert!(!out.expects[0].forward);
        // Another connection never had it.
        let mut other = ConnState::new(2);
        std::mem::swap(&mut fx.conn, &mut other);
        let out = fx.translate(&[bind(""), execute(), sync()].concat(), None, false);
        assert_eq!(sent(&out.bytes)[0].0, 'P');
    }

    #[test]
    fn reset_of_a_startup_setting_restores_it_and_reports_it() {
        let mut fx = Fixture::new(&[("TimeZone", "America/Los_Angeles")]);
        let command = Tracked {
            command: Command::Reset {
                name: "timezone".into(),
            },
            sql: "RESET TimeZone".into(),
        };
        let out = fx.translate(&query("RESET TimeZone"), Some(&command), false);
        let wire = sent(&out.bytes);
        assert_eq!(wire.len(), 2, "{wire:?}");
        assert!(wire[1].1.contains("'America/Los_Angeles'"));
        assert!(!out.expects[1].forward && out.expects[1].forward_status);
        // A setting not given at connect time: RESET alone.
        let command = Tracked {
            command: Command::Reset {
                name: "search_path".into(),
            },
            sql: "RESET search_path".into(),
        };
        let out = fx.translate(&query("RESET search_path"), Some(&command), false);
        assert_eq!(sent(&out.bytes).len(), 1);
    }

    #[test]
    fn replies_already_delivered_are_not_delivered_twice() {
        let mut fx = Fixture::new(&[]);
        fx.translate(&[parse("s1", "SELECT 1"), sync()].concat(), None, false);
        // Prepared on this connection: a synthetic ParseComplete leads.
        let mut out = fx.translate(
            &[parse("s2", "SELECT 1"), bind("s2"), execute(), sync()].concat(),
            None,
            false,
        );
        assert!(matches!(out.expects[0].kind, Kind::Synthetic(_)));
        // Sent again elsewhere after the client had that ParseComplete:
        Replies::skip_delivered(&mut out.expects, 1);
        assert_eq!(out.expects[0].kind, Kind::Bind);
        // On a connection where it must be parsed, the node's ParseComplete
        // is swallowed instead.
        let mut other = Fixture::new(&[]);
        let mut out = other.translate(
            &[parse("s2", "SELECT 1"), bind("s2"), execute(), sync()].concat(),
            None,
            false,
        );
        assert!(out.expects[0].forward);
        Replies::skip_delivered(&mut out.expects, 1);
        assert!(!out.expects[0].forward);
        assert!(out.expects[1].forward);
    }
}
