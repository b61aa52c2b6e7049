//! The SQL console: the virtual database `admin.database` on the proxy's
//! own port, PgBouncer's admin console for pgsplit. A client that logged
//! in (as any client does) to that database as one of `admin.users` or
//! `admin.stats_users` gets this loop instead of a relayed session. It
//! speaks the simple query protocol only; each query string may hold
//! several commands separated by semicolons.
//!
//! `command` parses, `show` builds the SHOW tables, `table` writes them.

mod command;
mod show;
mod table;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::config::ConsoleRight;
use crate::protocol::backend::{self as be, Severity, TxnStatus};
use crate::protocol::codec::{self, MAX_MESSAGE_LEN};
use crate::protocol::frontend as fe;
use crate::session::{ClientStream, SessionError};
use crate::state::State;
use crate::wire::{self, WireError};

pub use command::{Command, Show, parse, split};
pub use show::HELP;
pub use table::{Column, Table};

/// SQLSTATE of a command the console does not know.
const SYNTAX_ERROR: &str = "42601";
/// SQLSTATE of a command the user may not run.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE of a command that could not do what it was asked.
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// How long WAIT_CLOSE waits at most.
const WAIT_CLOSE_LIMIT: Duration = Duration::from_secs(300);

/// What a command answers: result sets, notices, its tag.
#[derive(Debug, Default)]
pub struct Answer {
    /// Result sets, in order (usually one or none).
    pub tables: Vec<Table>,
    /// NOTICE lines sent before them.
    pub notices: Vec<String>,
}

/// Serves a console session until the client leaves.
///
/// # Errors
/// The client's socket failed or it broke the protocol.
pub async fn serve(
    state: &Arc<State>,
    stream: &mut ClientStream,
    mut rbuf: BytesMut,
    startup: &crate::session::Startup,
    pid: i32,
    right: ConsoleRight,
) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    let version = format!("{}/pgsplit", env!("CARGO_PKG_VERSION"));
    let app = startup
        .params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map_or("", |(_, v)| v.as_str());
    let params = [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", app),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    crate::session::greeting(&mut out, &params, pid, rand::random());
    wire::flush(stream, &mut out)
        .await
        .map_err(|e| SessionError::Client(WireError::Io(e)))?;
    tracing::info!(user = %startup.user, "console session");
    // After an extended-protocol message: everything up to the Sync is
    // dropped, as PostgreSQL does after an error.
    let mut skipping = false;
    loop {
        let frame = loop {
            if let Some(f) = codec::decode_frame(&mut rbuf, MAX_MESSAGE_LEN)
                .map_err(SessionError::ClientProtocol)?
            {
                break f;
            }
            match wire::fill(stream, &mut rbuf).await {
                Ok(()) => {}
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(SessionError::Client(e)),
            }
        };
        match frame.tag {
            fe::TERMINATE_TAG => return Ok(()),
            fe::QUERY_TAG if !skipping => {
                let body = &frame.bytes[5..];
                let sql =
                    std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body)).unwrap_or("");
                run_query(state, &startup.user, right, sql, &mut out).await;
                be::ready_for_query(&mut out, TxnStatus::Idle);
            }
            fe::SYNC_TAG => {
                skipping = false;
                be::ready_for_query(&mut out, TxnStatus::Idle);
            }
            _ if skipping => {}
            fe::PARSE_TAG
            | fe::BIND_TAG
            | fe::DESCRIBE_TAG
            | fe::EXECUTE_TAG
            | fe::CLOSE_TAG
            | fe::FLUSH_TAG => {
                be::error_response(
                    &mut out,
                    Severity::Error,
                    crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
                    "the pgsplit console speaks only the simple query protocol \
                     (psql, or a driver's simple/unprepared mode)",
                );
                skipping = true;
            }
            _ => {
                return Err(SessionError::ClientProtocol(
                    crate::protocol::ProtocolError::Malformed {
                        what: "message the console does not take",
                    },
                ));
            }
        }
        wire::flush(stream, &mut out)
            .await
            .map_err(|e| SessionError::Client(WireError::Io(e)))?;
    }
}

/// Runs every command of one query string, writing the answers; stops at
/// the first error, as PostgreSQL does.
async fn run_query(
    state: &Arc<State>,
    user: &str,
    right: ConsoleRight,
    sql: &str,
    out: &mut BytesMut,
) {
    let pieces = split(sql);
    if pieces.is_empty() {
        be::empty_query_response(out);
        return;
    }
    for piece in pieces {
        let command = match parse(piece) {
            Ok(c) => c,
            Err(message) => {
                be::error_response(out, Severity::Error, SYNTAX_ERROR, &message);
                return;
            }
        };
        if right == ConsoleRight::Stats && !command.read_only() {
            let message = format!(
                "permission denied: user \"{user}\" is in admin.stats_users, which may only run \
                 SHOW, EXPLAIN ROUTE and CHECK drills; {} needs admin.users",
                command.tag()
            );
            be::error_response(out, Severity::Error, INSUFFICIENT_PRIVILEGE, &message);
            return;
        }
        tracing::info!(user, command = piece.trim(), "console command");
        match execute(state, &command).await {
            Ok(answer) => {
                for n in &answer.notices {
                    be::notice_response(out, n);
                }
                if answer.tables.is_empty() {
                    be::command_complete(out, command.tag());
                }
                for t in &answer.tables {
                    t.write(out, command.tag());
                }
            }
            Err(message) => {
                be::error_response(
                    out,
                    Severity::Error,
                    OBJECT_NOT_IN_PREREQUISITE_STATE,
                    &message,
                );
                return;
            }
        }
    }
}

fn one(table: Table) -> Answer {
    Answer {
        tables: vec![table],
        notices: Vec::new(),
    }
}

fn notice(text: String) -> Answer {
    Answer {
        tables: Vec::new(),
        notices: vec![text],
    }
}

/// Does what `command` says.
///
/// # Errors
/// Why it could not (the client gets it as an ERROR).
pub async fn execute(state: &Arc<State>, command: &Command) -> Result<Answer, String> {
    Ok(match command {
        Command::Show(what) => one(match what {
            Show::Nodes => show::nodes(state),
            Show::Pools => show::pools(state),
            Show::Clients => show::clients(state),
            Show::Servers => show::servers(state),
            Show::Stats => show::stats(state),
            Show::Routes => show::routes(state),
            Show::Config => show::config(state),
            Show::Version => show::version(),
            Show::Lists => show::lists(state),
            Show::Help => show::help(),
        }),
        Command::Reload => {
            let path = state
                .config_path
                .get()
                .ok_or("this proxy was not started from a file: nothing to reload")?;
            state.reload(path).map_err(|e| e.to_string())?;
            notice(format!("reloaded {}", path.display()))
        }
        Command::Pause(db) => {
            let waited = state.clients.pause_and_drain(db.as_deref()).await;
            notice(format!(
                "paused {} after {} ms: new transactions wait for RESUME",
                db.as_deref().unwrap_or("every database"),
                waited.as_millis()
            ))
        }
        Command::Resume(db) => {
            if !state.clients.resume(db.as_deref()) {
                return Err(match db {
                    Some(db) => format!("database {db} is not paused"),
                    None => "nothing is paused".into(),
                });
            }
            notice("resumed".into())
        }
        Command::Reconnect(db) => {
            let n = state.pools.reconnect(db.as_deref()).await;
            notice(format!(
                "{n} server connections in use will close when they come free"
            ))
        }
        Command::WaitClose(db) => {
            let started = std::time::Instant::now();
            while state.pools.retiring(db.as_deref()) > 0 {
                if started.elapsed() > WAIT_CLOSE_LIMIT {
                    return Err(format!(
                        "{} server connections still open after {} s",
                        state.pools.retiring(db.as_deref()),
                        WAIT_CLOSE_LIMIT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            notice("every server connection RECONNECT asked for is closed".into())
        }
        Command::Kill(db) => {
            let n = state.clients.kill(db);
            state.pools.close_database(db).await;
            notice(format!("ended {n} client sessions of {db}"))
        }
        Command::Failover { to, force, check } => {
            let report = crate::failover::run(state, to, *force, *check).await;
            let mut t = Table::new(&[
                ("step", Column::Text),
                ("ok", Column::Text),
                ("ms", Column::Float),
                ("detail", Column::Text),
            ]);
            for s in &report.steps {
                t.row(vec![
                    Some(s.name.clone()),
                    Some(s.ok.to_string()),
                    Some(format!("{:.1}", s.ms)),
                    s.detail.clone(),
                ]);
            }
            if !report.ok {
                let steps: Vec<String> = report
                    .steps
                    .iter()
                    .map(|s| format!("{}: {}", s.name, if s.ok { "ok" } else { "failed" }))
                    .collect();
                return Err(format!(
                    "{} refused: {} (steps: {})",
                    report.action,
                    report.error.as_deref().unwrap_or("no reason given"),
                    steps.join(", ")
                ));
            }
            let mut notices = vec![format!(
                "{} {} -> {}",
                report.action,
                report.old_primary.as_deref().unwrap_or("?"),
                report.candidate.as_deref().unwrap_or("?")
            )];
            if let Some(ms) = report.writes_held_ms {
                notices.push(format!("writes held {ms} ms"));
            }
            if let Some(bytes) = report.lost_bytes {
                notices.push(format!("{bytes} bytes of WAL may be lost"));
            }
            Answer {
                tables: vec![t],
                notices,
            }
        }
        Command::ExplainRoute(sql) => {
            let e = state.router.load().explain(sql);
            let mut t = Table::new(&[
                ("target", Column::Text),
                ("reason", Column::Text),
                ("pins", Column::Text),
                ("cached", Column::Text),
                ("parsed", Column::Text),
                ("hint", Column::Text),
                ("seen", Column::Text),
            ]);
            let seen: Vec<String> = e
                .seen
                .iter()
                .map(|s| format!("{} {}: {}", s.kind, s.name, s.fact))
                .collect();
            t.row(vec![
                Some(e.target),
                Some(e.reason),
                Some(e.pins.to_string()),
                Some(e.cached.to_string()),
                Some(e.parsed.to_string()),
                e.hint,
                Some(seen.join("; ")),
            ]);
            one(t)
        }
    })
}
