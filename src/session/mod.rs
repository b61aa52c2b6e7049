//! One client connection: its task, its state machine and its errors.
//!
//! `handshake` gets the client to ReadyForQuery; `relay` then routes each
//! batch of messages to a server connection and streams the replies back.
//! The task owns all of the session's state; an error ends this session
//! only.

mod batch;
mod choose;
mod commands;
mod handshake;
mod outbound;
mod relay;
mod replies;
mod state;
mod stream;

pub use handshake::{Startup, greeting};
pub use stream::ClientStream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::pool::PoolError;
use crate::protocol::ProtocolError;
use crate::protocol::sqlstate;
use crate::state::State;
use crate::wire::{self, WireError};

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's socket failed or closed.
    #[error("client: {0}")]
    Client(#[source] WireError),
    /// The client sent bytes that are not the protocol.
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[source] ProtocolError),
    /// pgsplit refused the client (auth, version...).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// A node refused the client's login (database missing, role...).
    #[error("{message}")]
    BackendRefused { code: String, message: String },
    /// No node could serve the session.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A server connection failed when the session could not go on
    /// without it (open transaction, pinned state).
    #[error("connection to node {node} lost: {source}")]
    Backend {
        node: Arc<str>,
        #[source]
        source: WireError,
    },
    /// The proxy is shutting down.
    #[error("terminating connection due to administrator command")]
    Shutdown,
    /// `limits.idle_timeout` passed with nothing to do.
    #[error("terminating connection due to idle-session timeout")]
    IdleTimeout,
}

impl SessionError {
    /// The SQLSTATE the client is told, if it is told anything.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SessionError::Client(_) => None,
            SessionError::ClientProtocol(_) => Some(sqlstate::PROTOCOL_VIOLATION),
            SessionError::Refused { code, .. } => Some(code),
            SessionError::BackendRefused { code, .. } => Some(code),
            SessionError::Pool(PoolError::Timeout { .. }) => Some(sqlstate::TOO_MANY_CONNECTIONS),
            SessionError::Pool(_) | SessionError::Backend { .. } => {
                Some(sqlstate::CONNECTION_FAILURE)
            }
            SessionError::Shutdown => Some(sqlstate::ADMIN_SHUTDOWN),
            SessionError::IdleTimeout => Some(sqlstate::IDLE_SESSION_TIMEOUT),
        }
    }
}

/// Answers a client beyond `limits.max_clients` with 53300 and closes.
pub async fn refuse_too_many(mut socket: TcpStream) {
    let mut out = BytesMut::new();
    handshake::refusal(
        &mut out,
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        wire::flush(&mut socket, &mut out),
    )
    .await;
}

/// Serves one client until it leaves, fails, or the proxy shuts down.
///
/// The session's span (id, peer, user, database) is entered for the
/// handshake. While statements are relayed it is entered on every poll
/// only when debug logging is on for pgsplit: entering and leaving it
/// costs more per transaction than the rest of the logging, and the
/// relay's few info and warn events name it as their parent instead.
pub async fn serve(state: Arc<State>, socket: TcpStream, peer: SocketAddr) {
    let session_id = state.next_session_id();
    let span = tracing::info_span!("session", session_id, %peer, user = tracing::field::Empty, db = tracing::field::Empty);
    state.metrics.client_connections.inc();
    let _ = socket.set_nodelay(true);
    let mut socket = ClientStream::Plain(socket);
    let result = run(&state, &mut socket, session_id, peer, &span).await;
    if let Err(e) = &result
        && let Some(code) = e.sqlstate()
    {
        let mut out = BytesMut::new();
        handshake::refusal(&mut out, code, &e.to_string());
        let _ = wire::flush(&mut socket, &mut out).await;
    }
    span.in_scope(|| match result {
        Ok(()) => tracing::debug!("session ended"),
        Err(e @ (SessionError::Client(_) | SessionError::Shutdown | SessionError::IdleTimeout)) => {
            tracing::debug!(error = %e, "session ended")
        }
        Err(e) => tracing::info!(error = %e, "session failed"),
    });
    state.metrics.client_connections.dec();
}

async fn run(
    state: &Arc<State>,
    socket: &mut ClientStream,
    session_id: i32,
    peer: SocketAddr,
    span: &tracing::Span,
) -> Result<(), SessionError> {
    let mut rbuf = BytesMut::with_capacity(8192);
    let handshake_deadline = state.config.load().limits.startup_timeout.0;
    let startup = tokio::time::timeout(handshake_deadline, async {
        let opening = handshake::read_startup(state, socket, &mut rbuf).await?;
        let handshake::Opening::Session(mut startup) = opening else {
            return Ok(None);
        };
        let config = state.config.load();
        startup.credential = handshake::login(state, &config, socket, &mut rbuf, &startup).await?;
        Ok::<_, SessionError>(Some(startup))
    })
    .instrument(span.clone())
    .await
    .map_err(|_| SessionError::Refused {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: "startup and authentication took too long".into(),
    })??;
    let Some(startup) = startup else {
        return Ok(());
    };
    span.record("user", startup.user.as_str());
    span.record("db", startup.database.as_str());
    let console = state
        .config
        .load()
        .admin
        .as_ref()
        .and_then(|admin| admin.console_right(&startup.user, &startup.database));
    if let Some(right) = console {
        let Some(right) = right else {
            return Err(SessionError::Refused {
                code: sqlstate::INVALID_AUTHORIZATION,
                message: format!(
                    "user \"{}\" may not use the console database \"{}\" \
                     (it is in neither admin.users nor admin.stats_users)",
                    startup.user, startup.database
                ),
            });
        };
        return crate::console::serve(state, socket, rbuf, &startup, session_id, right)
            .instrument(span.clone())
            .await;
    }
    let registration = state.clients.register(crate::clients::ClientEntry {
        pid: session_id,
        user: startup.user.clone(),
        database: startup.database.clone(),
        application_name: startup
            .params
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        peer,
        tls: socket.is_tls(),
        connected_at: std::time::SystemTime::now(),
        busy: std::sync::atomic::AtomicBool::new(false),
        paused: std::sync::atomic::AtomicBool::new(false),
        stop: state.shutdown.child_token(),
        killed: std::sync::atomic::AtomicBool::new(false),
        stopped: std::sync::atomic::AtomicBool::new(false),
        stop_waker: futures_util::task::AtomicWaker::new(),
    });
    let relay = async {
        relay::Session::start(
            state.clone(),
            socket,
            rbuf,
            startup,
            session_id,
            registration,
            span.clone(),
        )
        .await?
        .run()
        .await
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        relay.instrument(span.clone()).await
    } else {
        relay.await
    }
}
