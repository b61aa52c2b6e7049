//! Logs in to a node: StartupMessage, then whatever the node asks for
//! (trust, cleartext, md5, SCRAM-SHA-256 via postgres-protocol's client),
//! then ParameterStatus and BackendKeyData up to ReadyForQuery.

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend as fe;
use tokio::io::{AsyncRead, AsyncWrite};

use super::AuthError;
use crate::protocol::backend::{self as be, TxnStatus};
use crate::protocol::codec::MAX_MESSAGE_LEN;
use crate::wire::{self, WireError};

/// What a node told us while logging in.
#[derive(Debug, Clone, Default)]
pub struct LoginInfo {
    /// Backend process id (for cancel).
    pub pid: i32,
    /// Cancel secret.
    pub secret: i32,
    /// ParameterStatus values, in the order sent.
    pub params: Vec<(String, String)>,
}

fn unsupported(what: impl Into<String>) -> AuthError {
    AuthError::Unsupported(what.into())
}

/// Runs the startup and authentication exchange on a fresh connection.
///
/// # Errors
/// The node's own ErrorResponse as [`AuthError::Rejected`], or a wire failure.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    database: &str,
    password: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<LoginInfo, AuthError> {
    let mut out = BytesMut::new();
    let mut params = vec![("user", user), ("database", database)];
    params.extend_from_slice(extra);
    fe::startup_message(params.iter().copied(), &mut out)
        .map_err(|e| unsupported(e.to_string()))?;
    send(stream, &mut out).await?;
    let mut scram: Option<ScramSha256> = None;
    let need_password = || password.ok_or_else(|| AuthError::NoPassword { user: user.into() });
    loop {
        let frame = wire::read_frame(stream, rbuf, MAX_MESSAGE_LEN).await?;
        let mut body = frame.body();
        match frame.tag {
            be::AUTHENTICATION_TAG => {
                if body.len() < 4 {
                    return Err(unsupported("short authentication request"));
                }
                match body.get_i32() {
                    0 => return finish_startup(stream, rbuf).await,
                    3 => {
                        fe::password_message(need_password()?.as_bytes(), &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                    }
                    5 => {
                        if body.len() < 4 {
                            return Err(unsupported("short md5 salt"));
                        }
                        let salt = [body[0], body[1], body[2], body[3]];
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            need_password()?.as_bytes(),
                            salt,
                        );
                        fe::password_message(hash.as_bytes(), &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                    }
                    10 => {
                        let offers_scram = body.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offers_scram {
                            return Err(unsupported(
                                "node offers no SASL mechanism pgsplit speaks",
                            ));
                        }
                        let s = ScramSha256::new(
                            need_password()?.as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        fe::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| unsupported("SASLContinue out of order"))?;
                        s.update(body)
                            .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
                        fe::sasl_response(s.message(), &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                    }
                    12 => {
                        let mut s = scram
                            .take()
                            .ok_or_else(|| unsupported("SASLFinal out of order"))?;
                        s.finish(body)
                            .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
                        continue;
                    }
                    other => {
                        return Err(unsupported(format!(
                            "authentication method {other} is not supported"
                        )));
                    }
                }
                send(stream, &mut out).await?;
            }
            be::ERROR_RESPONSE_TAG => return Err(rejected(body)),
            be::NEGOTIATE_PROTOCOL_VERSION_TAG | be::NOTICE_RESPONSE_TAG => {}
            other => {
                return Err(unsupported(format!(
                    "unexpected message {:?} during login",
                    other as char
                )));
            }
        }
    }
}

async fn finish_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<LoginInfo, AuthError> {
    let mut info = LoginInfo::default();
    loop {
        let frame = wire::read_frame(stream, rbuf, MAX_MESSAGE_LEN).await?;
        let mut body = frame.body();
        match frame.tag {
            be::PARAMETER_STATUS_TAG => {
                let name = crate::protocol::codec::take_cstr(&mut body);
                let value = crate::protocol::codec::take_cstr(&mut body);
                if let (Some(n), Some(v)) = (name, value) {
                    info.params.push((n.to_owned(), v.to_owned()));
                }
            }
            be::BACKEND_KEY_DATA_TAG if body.len() >= 8 => {
                info.pid = body.get_i32();
                info.secret = body.get_i32();
            }
            be::READY_FOR_QUERY_TAG => {
                return match TxnStatus::from_body(body) {
                    Some(TxnStatus::Idle) => Ok(info),
                    _ => Err(unsupported("node not idle after login")),
                };
            }
            be::ERROR_RESPONSE_TAG => return Err(rejected(body)),
            _ => {}
        }
    }
}

fn rejected(body: &[u8]) -> AuthError {
    let (code, message) = be::error_code_and_message(body)
        .unwrap_or_else(|| ("XX000".into(), "malformed error from node".into()));
    AuthError::Rejected { code, message }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut BytesMut) -> Result<(), AuthError> {
    wire::flush(stream, out)
        .await
        .map_err(|e| AuthError::Wire(WireError::Io(e)))
}

/// Writes a CancelRequest (protocol 3.0 keys).
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(crate::protocol::codec::CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}
