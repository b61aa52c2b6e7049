//! Client messages gathered until a boundary (Query, Sync, Flush,
//! FunctionCall), and the route of the whole batch.

use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::ProtocolError;
use crate::protocol::codec::Frames;
use crate::protocol::frontend as fe;
use crate::router::{Reason, Route, Router, Target};

use super::commands::{self, Command};
use super::outbound::Tracked;
use super::state::{Statement, Statements};
use crate::pins::PinReason;
use crate::router::contains_ignoring_case;

/// Messages not yet sent anywhere.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, as the client sent them.
    pub frames: Frames,
}

impl Batch {
    /// Bytes gathered.
    pub fn len(&self) -> usize {
        self.frames.byte_len()
    }

    /// Takes the whole message at the front of `buf` (`len` bytes, as
    /// [`codec::complete_frame_len`](crate::protocol::codec::complete_frame_len)
    /// measured it). A small one is copied (cheaper than splitting it
    /// off); a large one that starts the batch is split off without a
    /// copy. Returns true when it ends the batch.
    pub fn take_from(&mut self, buf: &mut BytesMut, len: usize) -> bool {
        let ends = is_boundary(buf[0]);
        if len >= LARGE_MESSAGE {
            if let Err(frame) = self.frames.adopt(buf.split_to(len)) {
                self.frames.push(&frame);
            }
        } else {
            if self.frames.capacity() == 0 {
                // one allocation for a whole P/B/D/E/S batch of a short statement
                self.frames.reserve(512);
            }
            self.frames.push(&buf[..len]);
            bytes::Buf::advance(buf, len);
        }
        ends
    }

    /// Gives back a taken batch's buffer once its messages are done with,
    /// so the next batch reuses its allocation.
    pub fn recycle(&mut self, mut frames: Frames) {
        if self.frames.capacity() == 0 && frames.capacity() <= MAX_KEPT_BYTES {
            frames.clear();
            self.frames = frames;
        }
    }

    /// Takes the gathered messages, leaving the batch empty.
    pub fn take(&mut self) -> Frames {
        std::mem::take(&mut self.frames)
    }
}

/// Whether a message of this type ends a batch.
fn is_boundary(tag: u8) -> bool {
    matches!(
        tag,
        fe::QUERY_TAG | fe::SYNC_TAG | fe::FLUSH_TAG | fe::FUNCTION_CALL_TAG
    )
}

/// A client message from this size on starts its batch without a copy.
const LARGE_MESSAGE: usize = 64 * 1024;

/// The largest message buffer a batch keeps for reuse.
const MAX_KEPT_BYTES: usize = 64 * 1024;

/// What routing learns from a batch.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where it must run.
    pub route: Route,
    /// A single statement that is a session command the proxy tracks.
    /// (The rare fields are boxed: a plan moves through the routing
    /// functions by value, and under 128 bytes it moves without a
    /// `memcpy` call.)
    pub command: Option<Box<Tracked>>,
    /// Messages that each produce a ReadyForQuery.
    pub syncs: usize,
    /// Creates, alters or drops something (the catalog is read again).
    pub catalog_ddl: bool,
    /// A `/* pgsplit:tag=NAME */` hint on one of its statements.
    pub tag: Option<Box<str>>,
    /// Why it would pin the session, when its route pins.
    pub pin: Option<PinReason>,
    /// `DROP DATABASE name`: the proxy's idle connections to it close first.
    pub drops_database: Option<Box<str>>,
    /// Calls `currval` or `lastval`: it must run where this session's
    /// `nextval` ran.
    pub reads_sequence_state: bool,
    /// The routes of its Parse messages' statements, in order (before
    /// session-command tracking): what the statements remember.
    pub parse_routes: smallvec::SmallVec<[Route; 2]>,
}

impl Plan {
    /// A lone `BEGIN`/`START TRANSACTION ... READ ONLY` query: the proxy
    /// answers it and opens the transaction where its first statement
    /// must run.
    pub fn is_read_only_begin(&self) -> bool {
        self.route.reason == Reason::ReadOnlyTransaction
            && matches!(
                self.command.as_deref(),
                Some(Tracked {
                    command: Command::Begin,
                    ..
                })
            )
    }
}

/// Routes a batch from the statements it parses or executes: a Bind of an
/// earlier statement is routed (and tracked, for a prepared SET) by that
/// statement's text.
///
/// # Errors
/// A malformed Query, Parse, Bind or Describe.
pub fn plan(
    frames: &Frames,
    statements: &Statements,
    router: &Router,
) -> Result<Plan, ProtocolError> {
    let mut route = Route::replica(Reason::Read);
    let mut commands = Commands::default();
    let mut catalog_ddl = false;
    let mut tag = None;
    let mut syncs = 0;
    let mut pin = None;
    let mut drops_database = None;
    let mut reads_sequence_state = false;
    let mut writes_sequences = false;
    let mut parsed_unnamed = false;
    // Statements parsed earlier in this same batch route by their text.
    // (inline: a batch mostly parses one statement, or none)
    let mut parsed_here: smallvec::SmallVec<[(String, Route); 2]> = smallvec::SmallVec::new();
    let mut parse_routes: smallvec::SmallVec<[Route; 2]> = smallvec::SmallVec::new();
    // Where a statement name points: one parsed earlier in this batch (its
    // route), or one of the session's (with the statement). An unknown
    // name fails on the node; it is routed safely.
    let named = |name: &str, parsed_here: &[(String, Route)]| -> (Route, Option<&Arc<Statement>>) {
        if let Some((_, r)) = parsed_here.iter().rev().find(|(n, _)| n == name) {
            return (*r, None);
        }
        let statement = if name.is_empty() {
            statements.unnamed.as_ref().map(|(s, _)| s)
        } else {
            statements.get(name)
        };
        let route = statement.map_or(Route::primary(Reason::Session), |s| s.route);
        (route, statement)
    };
    let mut statement =
        |sql: &[u8], route: &mut Route, commands: &mut Commands| -> (Route, Route) {
            let text = fe::sql_text(sql);
            let utf8 = matches!(text, std::borrow::Cow::Borrowed(_));
            catalog_ddl |= is_catalog_ddl(&text);
            tag = tag
                .take()
                .or_else(|| crate::router::scan::leading_tag(&text));
            let mut r = if !utf8 && memchr::memchr(b'\\', sql).is_some() {
                // Another client_encoding may cut this text differently.
                Route::primary(Reason::ParseError).dirtying()
            } else {
                router.classify(&text)
            };
            let classified = r;
            r = if utf8 {
                tracked(r, &text, commands)
            } else {
                // Not UTF-8 (another client_encoding): a SET in it is not
                // replayed from its text but read back from the node.
                commands.note_statement(None, "");
                r
            };
            // What only primary statements can be (replicas get plain reads).
            if r.target == Target::Primary {
                if drops_database.is_none() && r.reason == Reason::Write {
                    drops_database = dropped_database(&text);
                }
                if r.reason == Reason::Function
                    && (contains_ignoring_case(&text, "currval")
                        || contains_ignoring_case(&text, "lastval"))
                {
                    reads_sequence_state = true;
                }
                if r.reason == Reason::Write
                    || contains_ignoring_case(&text, "nextval")
                    || contains_ignoring_case(&text, "setval")
                {
                    // The batch makes its own sequence state.
                    writes_sequences = true;
                }
            }
            if r.pins && pin.is_none() {
                pin = Some(PinReason::of_sql(&text));
            }
            *route = route.merge(r);
            (r, classified)
        };
    for frame in frames {
        let body = frame.body();
        match frame.tag {
            fe::QUERY_TAG => {
                statement(fe::query_sql(body)?, &mut route, &mut commands);
                syncs += 1;
            }
            fe::PARSE_TAG => {
                let p = fe::parse(body)?;
                parsed_unnamed |= p.name.is_empty();
                let (r, classified) = statement(p.sql, &mut route, &mut commands);
                parsed_here.push((p.name.into_owned(), r));
                parse_routes.push(classified);
            }
            fe::BIND_TAG => {
                let name = fe::bind_statement(body)?;
                if !(name.is_empty() && parsed_unnamed) {
                    let (r, prepared) = named(&name, &parsed_here);
                    route = route.merge(r);
                    // A prepared SET is tracked when it is executed.
                    if let Some(s) = prepared
                        && let Some(command) = &s.command
                    {
                        commands.note(command.clone(), &fe::sql_text(&s.sql));
                    }
                }
            }
            fe::DESCRIBE_TAG => {
                let (kind, name) = fe::target(body, "Describe")?;
                if kind == fe::STATEMENT && !(name.is_empty() && parsed_unnamed) {
                    route = route.merge(named(&name, &parsed_here).0);
                }
            }
            fe::CLOSE_TAG => {
                fe::target(body, "Close")?;
            }
            fe::SYNC_TAG => syncs += 1,
            fe::FUNCTION_CALL_TAG => {
                route = route.merge(Route::primary(Reason::Function).dirtying());
                syncs += 1;
            }
            _ => {}
        }
    }
    // Only a batch of one statement is tracked as a session command.
    let command = if commands.count == 1 {
        commands.first.map(Box::new)
    } else {
        None
    };
    if commands.count > 1 && commands.any_set {
        // A SET among other statements is not tracked: the session re-reads
        // its settings afterwards.
        route = route.dirtying();
    }
    Ok(Plan {
        route,
        command,
        syncs,
        catalog_ddl,
        tag: tag.map(String::into_boxed_str),
        pin,
        drops_database: drops_database.map(String::into_boxed_str),
        reads_sequence_state: reads_sequence_state && !writes_sequences,
        parse_routes,
    })
}

/// The database a `DROP DATABASE [IF EXISTS] name [WITH (FORCE)]` drops.
fn dropped_database(sql: &str) -> Option<String> {
    let (rest, _) = crate::router::scan::skip_leading_comments(sql);
    let rest = after_keyword(rest, "drop")?;
    let rest = after_keyword(rest, "database")?;
    let rest = after_keyword(rest, "if")
        .and_then(|r| after_keyword(r, "exists"))
        .unwrap_or(rest);
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    return Some(name);
                }
            }
            name.push(c);
        }
        return None;
    }
    let name = rest
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .filter(|n| !n.is_empty())?;
    Some(name.to_ascii_lowercase())
}

/// What follows `word` (any case, then white space) at the start of
/// `text`, white space skipped.
fn after_keyword<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let after = text.get(word.len()..)?;
    (text.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
        && after.starts_with(char::is_whitespace))
    .then(|| after.trim_start())
}

/// CREATE/ALTER/DROP of anything: the catalog facts may change (a read
/// too many costs one catalog query, and reads are rate-limited).
fn is_catalog_ddl(sql: &str) -> bool {
    let (rest, _) = crate::router::scan::skip_leading_comments(sql);
    let starts = |word: &str| {
        rest.as_bytes()
            .get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word.as_bytes()))
    };
    starts("create") || starts("alter") || starts("drop")
}

/// The session commands of a batch's statements: the first, how many
/// statements, and whether any is a SET or RESET.
#[derive(Default)]
struct Commands {
    first: Option<Tracked>,
    count: usize,
    any_set: bool,
}

impl Commands {
    fn note_statement(&mut self, command: Option<Command>, sql: &str) {
        if matches!(
            command,
            Some(Command::Set { .. } | Command::Reset { .. } | Command::ResetAll)
        ) {
            self.any_set = true;
        }
        if self.count == 0 {
            self.first = command.map(|command| Tracked {
                command,
                sql: sql.to_owned(),
            });
        }
        self.count += 1;
    }

    /// A prepared statement's command, executed by a Bind: it counts as
    /// the batch's statement unless the batch parsed one itself.
    fn note(&mut self, command: Command, sql: &str) {
        if self.count == 0 {
            self.note_statement(Some(command), sql);
        }
    }
}

/// Notes a statement's session command; SET and RESET are tracked and
/// replayed by the session, so they need no pin.
fn tracked(mut route: Route, sql: &str, commands: &mut Commands) -> Route {
    let command = commands::recognise(sql);
    if matches!(
        command,
        Some(Command::Set { .. } | Command::Reset { .. } | Command::ResetAll)
    ) {
        route.pins = false;
        route.dirties = false;
    }
    commands.note_statement(command, sql);
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_databases() {
        assert_eq!(dropped_database("DROP DATABASE x"), Some("x".into()));
        assert_eq!(
            dropped_database("drop database if exists \"My Db\";"),
            Some("My Db".into())
        );
        assert_eq!(dropped_database("DROP TABLE x"), None);
        assert_eq!(dropped_database("DROP DATABASE if"), Some("if".into()));
        assert_eq!(
            dropped_database("/* c */ DROP DATABASE IF  EXISTS x WITH (FORCE)"),
            Some("x".into())
        );
        assert_eq!(dropped_database("SELECT 1"), None);
    }
}
