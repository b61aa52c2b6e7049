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
    credential: Option<&super::Credential>,
    extra: &[(&str, &str)],
) -> Result<LoginInfo, AuthError> {
    use super::Credential;
    let mut out = BytesMut::new();
    let mut params = vec![("user", user), ("database", database)];
    params.extend_from_slice(extra);
    fe::startup_message(params.iter().copied(), &mut out)
        .map_err(|e| unsupported(e.to_string()))?;
    send(stream, &mut out).await?;
    let mut scram: Option<Sasl> = None;
    let need = || credential.ok_or_else(|| AuthError::NoPassword { user: user.into() });
    let mismatch = |method: &'static str, c: &Credential| AuthError::Mismatch {
        user: user.into(),
        method,
        kind: match c {
            Credential::Password(_) => "password",
            Credential::ScramKey { .. } => "SCRAM verifier",
            Credential::Md5Hash(_) => "MD5 hash",
        },
    };
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
                        let Credential::Password(password) = need()? else {
                            return Err(mismatch("a cleartext password", need()?));
                        };
                        fe::password_message(password.as_bytes(), &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                    }
                    5 => {
                        if body.len() < 4 {
                            return Err(unsupported("short md5 salt"));
                        }
                        let salt = [body[0], body[1], body[2], body[3]];
                        let hash = match need()? {
                            Credential::Password(password) => {
                                postgres_protocol::authentication::md5_hash(
                                    user.as_bytes(),
                                    password.as_bytes(),
                                    salt,
                                )
                            }
                            Credential::Md5Hash(stored) => super::md5_answer(
                                stored.strip_prefix("md5").unwrap_or(stored).as_bytes(),
                                salt,
                            ),
                            c @ Credential::ScramKey { .. } => return Err(mismatch("MD5", c)),
                        };
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
                        let sasl = match need()? {
                            Credential::Password(password) => {
                                let s = ScramSha256::new(
                                    password.as_bytes(),
                                    ChannelBinding::unsupported(),
                                );
                                fe::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                                    .map_err(|e| unsupported(e.to_string()))?;
                                Sasl::Password(s)
                            }
                            Credential::ScramKey {
                                client_key,
                                server_key,
                            } => {
                                let (k, first) =
                                    super::scram::KeyClient::start(*client_key, *server_key);
                                fe::sasl_initial_response(
                                    "SCRAM-SHA-256",
                                    first.as_bytes(),
                                    &mut out,
                                )
                                .map_err(|e| unsupported(e.to_string()))?;
                                Sasl::Key(k)
                            }
                            c @ Credential::Md5Hash(_) => return Err(mismatch("SCRAM", c)),
                        };
                        scram = Some(sasl);
                    }
                    11 => {
                        let message = match scram.as_mut() {
                            Some(Sasl::Password(s)) => {
                                s.update(body)
                                    .map_err(|e| unsupported(format!("SCRAM: {e}")))?;
                                s.message().to_vec()
                            }
                            Some(Sasl::Key(k)) => {
                                let server_first = std::str::from_utf8(body)
                                    .map_err(|_| unsupported("SCRAM: server-first not UTF-8"))?;
                                k.respond(server_first)
                                    .map_err(|e| unsupported(format!("SCRAM: {e}")))?
                                    .into_bytes()
                            }
                            None => return Err(unsupported("SASLContinue out of order")),
                        };
                        fe::sasl_response(&message, &mut out)
                            .map_err(|e| unsupported(e.to_string()))?;
                    }
                    12 => {
                        match scram.take() {
                            Some(Sasl::Password(mut s)) => s
                                .finish(body)
                                .map_err(|e| unsupported(format!("SCRAM: {e}")))?,
                            Some(Sasl::Key(k)) => k
                                .finish(&String::from_utf8_lossy(body))
                                .map_err(|e| unsupported(format!("SCRAM: {e}")))?,
                            None => return Err(unsupported("SASLFinal out of order")),
                        }
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

/// A SCRAM exchange with a node in progress: with the password, or with
/// a client's key (pass-through).
enum Sasl {
    Password(ScramSha256),
    Key(super::scram::KeyClient),
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
