//! Client messages gathered until a boundary (Query, Sync, Flush,
//! FunctionCall), and the route of the whole batch.

use crate::protocol::ProtocolError;
use crate::protocol::codec::Frame;
use crate::protocol::frontend as fe;
use crate::router::{Reason, Route, Router};

use super::commands::{self, Command};
use super::state::Statements;

/// Messages not yet sent anywhere.
#[derive(Debug, Default)]
pub struct Batch {
    /// The messages, as the client sent them.
    pub frames: Vec<Frame>,
    bytes: usize,
}

impl Batch {
    /// Bytes gathered.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Adds a message. Returns true when it ends the batch.
    pub fn push(&mut self, frame: Frame) -> bool {
        if self.frames.capacity() == 0 {
            self.frames.reserve(8); // one allocation for a whole P/B/D/E/S batch
        }
        let boundary = matches!(
            frame.tag,
            fe::QUERY_TAG | fe::SYNC_TAG | fe::FLUSH_TAG | fe::FUNCTION_CALL_TAG
        );
        self.bytes += frame.bytes.len();
        self.frames.push(frame);
        boundary
    }

    /// Takes the gathered messages, leaving the batch empty.
    pub fn take(&mut self) -> Vec<Frame> {
        self.bytes = 0;
        std::mem::take(&mut self.frames)
    }
}

/// What routing learns from a batch.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where it must run.
    pub route: Route,
    /// A single Query that is a session command the proxy tracks.
    pub command: Option<Command>,
    /// Messages that each produce a ReadyForQuery.
    pub syncs: usize,
    /// Creates, alters or drops a function (the catalog must be re-read).
    pub function_ddl: bool,
    /// A `/* pgsplit:tag=NAME */` hint on one of its statements.
    pub tag: Option<String>,
}

/// Routes a batch from the statements it parses or executes: a Bind of an
/// earlier statement is routed by that statement's text.
///
/// # Errors
/// A malformed Query, Parse, Bind or Describe.
pub fn plan(
    frames: &[Frame],
    statements: &Statements,
    router: &Router,
) -> Result<Plan, ProtocolError> {
    let mut route = Route::replica(Reason::Read);
    let mut commands = Commands::default();
    let mut function_ddl = false;
    let mut tag = None;
    let mut syncs = 0;
    let mut parsed_unnamed = false;
    // Statements parsed earlier in this same batch route by their text.
    let mut parsed_here: Vec<(&str, Route)> = Vec::new();
    let named_route = |name: &str, parsed_here: &[(&str, Route)]| -> Option<Route> {
        if let Some((_, r)) = parsed_here.iter().rev().find(|(n, _)| *n == name) {
            return Some(*r);
        }
        if name.is_empty() {
            statements.unnamed.as_ref().map(|(s, _)| s.route)
        } else {
            statements.get(name).map(|s| s.route)
        }
    };
    for frame in frames {
        let body = frame.body();
        match frame.tag {
            fe::QUERY_TAG => {
                let sql = fe::query_text(body)?;
                function_ddl |= is_function_ddl(sql);
                tag = tag.or_else(|| crate::router::scan::leading_tag(sql));
                route = route.merge(tracked(router.classify(sql), sql, &mut commands));
                syncs += 1;
            }
            fe::PARSE_TAG => {
                let p = fe::parse(body)?;
                parsed_unnamed |= p.name.is_empty();
                function_ddl |= is_function_ddl(p.sql);
                tag = tag.or_else(|| crate::router::scan::leading_tag(p.sql));
                let r = tracked(router.classify(p.sql), p.sql, &mut commands);
                parsed_here.push((p.name, r));
                route = route.merge(r);
            }
            fe::BIND_TAG => {
                let name = fe::bind_statement(body)?;
                if !(name.is_empty() && parsed_unnamed) {
                    // An unknown name fails on the node; route it safely.
                    route = route.merge(
                        named_route(name, &parsed_here).unwrap_or(Route::primary(Reason::Session)),
                    );
                }
            }
            fe::DESCRIBE_TAG => {
                let (kind, name) = fe::target(body, "Describe")?;
                if kind == b'S' && !(name.is_empty() && parsed_unnamed) {
                    route = route.merge(
                        named_route(name, &parsed_here).unwrap_or(Route::primary(Reason::Session)),
                    );
                }
            }
            fe::CLOSE_TAG => {
                fe::target(body, "Close")?;
            }
            fe::SYNC_TAG => syncs += 1,
            fe::FUNCTION_CALL_TAG => {
                route = route.merge(Route::primary(Reason::Function));
                syncs += 1;
            }
            _ => {}
        }
    }
    // Only a batch of one statement is tracked as a session command.
    let command = if commands.count == 1 {
        commands.first
    } else {
        None
    };
    let untracked_set = commands.count > 1 && commands.any_set;
    if untracked_set {
        // A SET among other statements cannot be tracked: keep the pin.
        route = route.merge(Route::pinned(Reason::Session));
    }
    Ok(Plan {
        route,
        command,
        syncs,
        function_ddl,
        tag,
    })
}

/// CREATE/ALTER/DROP of a function or procedure (or anything mentioning
/// one after such a keyword: a refresh too many costs one catalog query).
fn is_function_ddl(sql: &str) -> bool {
    let (rest, _) = crate::router::scan::skip_leading_comments(sql);
    let starts = |word: &str| {
        rest.as_bytes()
            .get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word.as_bytes()))
    };
    (starts("create") || starts("alter") || starts("drop"))
        && (contains_ignoring_case(sql, "function") || contains_ignoring_case(sql, "procedure"))
}

/// Whether `haystack` contains the ASCII `needle`, in any case.
fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The session commands of a batch's statements: the first, how many
/// statements, and whether any is a SET or RESET.
#[derive(Default)]
struct Commands {
    first: Option<Command>,
    count: usize,
    any_set: bool,
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
        commands.any_set = true;
    }
    if commands.count == 0 {
        commands.first = command;
    }
    commands.count += 1;
    route
}
