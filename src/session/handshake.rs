//! The start of a client connection: SSL/GSSENC refusals, cancel requests,
//! the protocol version, authentication, and the greeting
//! (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery).

use super::ClientStream;
use bytes::{BufMut, BytesMut};

use super::SessionError;
use crate::auth::client::authenticate;
use crate::config::Config;
use crate::protocol::backend::{self as be, Severity, TxnStatus};
use crate::protocol::codec::{PROTOCOL_3_0, StartupPacket, decode_startup};
use crate::protocol::sqlstate;
use crate::state::State;
use crate::wire;

/// Who the client is, once the handshake is done.
#[derive(Debug, Clone)]
pub struct Startup {
    /// Role name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// All startup parameters as sent.
    pub params: Vec<(String, String)>,
    /// What the session logs in to nodes with, when it is not a password
    /// from proxy.yaml (an `auth.query` user's key or hash).
    pub credential: Option<crate::auth::Credential>,
}

/// What the first packet turned out to be.
pub enum Opening {
    /// A client that wants a session.
    Session(Startup),
    /// A cancel request (already handled); close the socket.
    Cancelled,
}

/// Reads the untagged first packet(s): refuses SSL and GSSENC, handles a
/// CancelRequest, negotiates the protocol version.
///
/// # Errors
/// Malformed packets, unsupported protocol versions, a missing user name.
pub async fn read_startup(
    state: &State,
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
) -> Result<Opening, SessionError> {
    let tls = state.tls.load_full();
    loop {
        let packet = loop {
            if let Some(p) = decode_startup(rbuf).map_err(SessionError::ClientProtocol)? {
                break p;
            }
            wire::fill(stream, rbuf)
                .await
                .map_err(SessionError::Client)?;
        };
        match packet {
            StartupPacket::Ssl if !stream.is_tls() && tls.is_some() => {
                let tls = tls.as_ref().as_ref().expect("checked");
                if !rbuf.is_empty() {
                    // Bytes after the SSLRequest would be plaintext smuggled
                    // into the TLS session (CVE-2021-23214 style).
                    return Err(SessionError::ClientProtocol(
                        crate::protocol::ProtocolError::Malformed {
                            what: "data after SSLRequest",
                        },
                    ));
                }
                let mut out = BytesMut::from(&b"S"[..]);
                wire::flush(stream, &mut out).await.map_err(client_io)?;
                let ClientStream::Plain(tcp) = std::mem::replace(stream, ClientStream::Upgrading)
                else {
                    unreachable!("checked is_tls");
                };
                let encrypted = tls.acceptor.accept(tcp).await.map_err(client_io)?;
                *stream = ClientStream::Tls(Box::new(encrypted));
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                // 'N' tells the client to go on in plaintext or give up, as
                // its sslmode says.
                let mut out = BytesMut::from(&b"N"[..]);
                wire::flush(stream, &mut out).await.map_err(client_io)?;
            }
            StartupPacket::Cancel { pid, secret } => {
                state.cancels.cancel(pid, &secret).await;
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup { version, params } => {
                if !stream.is_tls() && tls.as_ref().as_ref().is_some_and(|t| t.require) {
                    return Err(SessionError::Refused {
                        code: sqlstate::INVALID_AUTHORIZATION,
                        message: "this proxy requires TLS (sslmode=require)".into(),
                    });
                }
                return negotiate(stream, version, params)
                    .await
                    .map(Opening::Session);
            }
        }
    }
}

fn client_io(e: std::io::Error) -> SessionError {
    SessionError::Client(wire::WireError::Io(e))
}

async fn negotiate(
    stream: &mut ClientStream,
    version: i32,
    params: Vec<(String, String)>,
) -> Result<Startup, SessionError> {
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != 3 {
        return Err(SessionError::Refused {
            code: sqlstate::FEATURE_NOT_SUPPORTED,
            message: format!(
                "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
            ),
        });
    }
    let options: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if version != PROTOCOL_3_0 || !options.is_empty() {
        // As PostgreSQL does: offer 3.0 and name the options we ignore.
        let mut out = BytesMut::new();
        out.put_u8(be::NEGOTIATE_PROTOCOL_VERSION_TAG);
        let at = out.len();
        out.put_i32(0);
        out.put_i32(PROTOCOL_3_0);
        out.put_i32(options.len() as i32);
        for o in &options {
            out.put_slice(o.as_bytes());
            out.put_u8(0);
        }
        let len = (out.len() - at) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        wire::flush(stream, &mut out).await.map_err(client_io)?;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user")
        .filter(|u| !u.is_empty())
        .ok_or(SessionError::Refused {
            code: sqlstate::INVALID_AUTHORIZATION,
            message: "no PostgreSQL user name specified in startup packet".into(),
        })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Startup {
        user,
        database,
        params,
        credential: None,
    })
}

/// Authenticates the client against `auth` (and, for users proxy.yaml
/// does not list, `auth.query`); returns the pass-through credential of
/// such a user.
///
/// # Errors
/// 28P01 for a wrong password or unknown user.
pub async fn login(
    state: &State,
    config: &Config,
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
    startup: &Startup,
) -> Result<Option<crate::auth::Credential>, SessionError> {
    let looked_up = if config.auth.user.is_some()
        && config.user(&startup.user).is_none()
        && config.auth.method.value != crate::config::AuthMethod::Trust
    {
        let primary = state.topology.load().primary().endpoint();
        let (_, _, database) = config.monitor_login();
        match state
            .lookup
            .verifier(config, &state.node_tls, &primary, &database, &startup.user)
            .await
        {
            Ok(found) => Some(found),
            Err(e) => {
                // The client gets the same refusal as for a wrong password.
                tracing::warn!(user = %startup.user, error = %e, "auth.query could not be run");
                Some(None)
            }
        }
    } else {
        None
    };
    let tls = state.tls.load();
    let binding = match (stream.is_tls(), tls.as_ref()) {
        (true, Some(t)) => crate::auth::scram::Binding::EndPoint(t.end_point.clone()),
        _ => crate::auth::scram::Binding::None,
    };
    authenticate(
        stream,
        rbuf,
        config,
        &startup.user,
        &state.secrets,
        &binding,
        looked_up,
    )
    .await
    .map_err(|e| match e {
        crate::auth::AuthError::Wire(w) => SessionError::Client(w),
        other => SessionError::Refused {
            code: sqlstate::INVALID_PASSWORD,
            message: other.to_string(),
        },
    })
}

/// Writes the greeting that ends a successful startup: the parameters are
/// what the node reported once the client's startup settings were applied.
pub fn greeting(out: &mut BytesMut, params: &[(String, String)], pid: i32, secret: i32) {
    be::authentication_ok(out);
    for (name, value) in params {
        be::parameter_status(out, name, value);
    }
    be::backend_key_data(out, pid, secret);
    be::ready_for_query(out, TxnStatus::Idle);
}

/// Writes a FATAL error for a refused startup.
pub fn refusal(out: &mut BytesMut, code: &str, message: &str) {
    be::error_response(out, Severity::Fatal, code, message);
}
