//! Checks a client's credentials against `auth.users`: `trust`, `md5` or
//! `scram-sha-256` (with `-PLUS` channel binding over TLS).
//!
//! A wrong password and an unknown user get the same answer, after the
//! same exchange, so user names cannot be probed.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::lookup::Verifier;
use super::scram::{Binding, Exchange, Secrets};
use super::{AuthError, Credential};
use crate::config::{AuthMethod, Config};
use crate::protocol::{backend, frontend};
use crate::wire;

/// Runs the client side of authentication up to (not including)
/// AuthenticationOk. `looked_up` is `auth.query`'s answer for a user that
/// proxy.yaml does not list (`None` when it was not asked). Returns what
/// the session logs in to the nodes with when that is not a configured
/// password: the client's SCRAM key or the stored MD5 hash (pass-through).
///
/// # Errors
/// [`AuthError::BadPassword`] for a wrong password or unknown user.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    config: &Config,
    user: &str,
    secrets: &Secrets,
    binding: &Binding,
    looked_up: Option<Option<Verifier>>,
) -> Result<Option<Credential>, AuthError> {
    let configured = config.user(user).is_some();
    let found = looked_up.flatten();
    match (config.auth.method.value, found) {
        (AuthMethod::Trust, found) => {
            if config.auth.users.is_empty() || configured || found.is_some() {
                Ok(None)
            } else {
                Err(bad(user))
            }
        }
        // As PostgreSQL does: a SCRAM verifier is checked by SCRAM even
        // where md5 is asked for.
        (_, Some(Verifier::Scram(secret))) if !configured => {
            let server_key = secret.server_key();
            let client_key = scram(stream, rbuf, user, secret, true, binding).await?;
            Ok(Some(Credential::ScramKey {
                client_key,
                server_key,
            }))
        }
        (AuthMethod::Md5, Some(Verifier::Md5(hash))) if !configured => {
            let inner = hash.strip_prefix("md5").unwrap_or(&hash).to_owned();
            md5(stream, rbuf, user, |salt| {
                Some(super::md5_answer(inner.as_bytes(), salt))
            })
            .await?;
            Ok(Some(Credential::Md5Hash(hash)))
        }
        (AuthMethod::Md5, _) => {
            let password = config.user(user).and_then(|u| u.password.clone());
            md5(stream, rbuf, user, |salt| {
                password.as_ref().map(|p| {
                    postgres_protocol::authentication::md5_hash(user.as_bytes(), p.as_bytes(), salt)
                })
            })
            .await?;
            Ok(None)
        }
        (AuthMethod::ScramSha256, _) => {
            // Unknown users run the same exchange against a mock secret.
            let password = config.user(user).and_then(|u| u.password.as_deref());
            let secret = secrets.get(user, password);
            scram(stream, rbuf, user, secret, password.is_some(), binding).await?;
            Ok(None)
        }
    }
}

/// An MD5 challenge; `expected(salt)` is the right answer (`None` for an
/// unknown user, who still gets the challenge and then the refusal).
async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    expected: impl FnOnce([u8; 4]) -> Option<String>,
) -> Result<(), AuthError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    backend::authentication_md5(&mut out, salt);
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    let frame = wire::read_frame(stream, rbuf, 4096).await?;
    if frame.tag != frontend::PASSWORD_TAG {
        return Err(bad(user));
    }
    let answer = frontend::password(frame.body()).map_err(wire::WireError::Protocol)?;
    // An unknown user still gets a hash compared, against a random one.
    let known = expected(salt);
    let expected = known
        .clone()
        .unwrap_or_else(|| format!("md5{:032x}", rand::random::<u128>()));
    if constant_time_eq(expected.as_bytes(), answer.as_bytes()) && known.is_some() {
        Ok(())
    } else {
        Err(bad(user))
    }
}

fn bad(user: &str) -> AuthError {
    AuthError::BadPassword { user: user.into() }
}

/// Reads a `'p'` message (SASLInitialResponse / SASLResponse).
async fn read_password_message<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
) -> Result<bytes::Bytes, AuthError> {
    let frame = wire::read_frame(stream, rbuf, 64 * 1024).await?;
    if frame.tag != frontend::PASSWORD_TAG {
        return Err(bad(user));
    }
    Ok(frame.bytes.slice(5..))
}

/// A SCRAM exchange against `secret`; returns the ClientKey the proof
/// revealed. `known`: false for a mock secret (an unknown user), refused
/// after the same exchange.
async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    secret: super::scram::Secret,
    known: bool,
    binding: &Binding,
) -> Result<[u8; 32], AuthError> {
    let mut out = BytesMut::new();
    let mut mechanisms: Vec<&str> = vec!["SCRAM-SHA-256"];
    if matches!(binding, Binding::EndPoint(_)) {
        mechanisms.insert(0, "SCRAM-SHA-256-PLUS");
    }
    backend::authentication_sasl(&mut out, &mechanisms);
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    // SASLInitialResponse: mechanism, then an i32 length and the data.
    let body = read_password_message(stream, rbuf, user).await?;
    let mut rest = &body[..];
    let mechanism = crate::protocol::codec::take_cstr(&mut rest)
        .ok_or_else(|| bad(user))?
        .to_owned();
    if !mechanisms.contains(&mechanism.as_str()) || rest.len() < 4 {
        return Err(bad(user));
    }
    let data = std::str::from_utf8(&rest[4..]).map_err(|_| bad(user))?;
    let (exchange, server_first) =
        Exchange::start(&mechanism, data, secret, binding).map_err(|_| bad(user))?;
    backend::authentication_sasl_continue(&mut out, server_first.as_bytes());
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    let body = read_password_message(stream, rbuf, user).await?;
    let client_final = std::str::from_utf8(&body).map_err(|_| bad(user))?;
    let (server_final, key) = exchange
        .finish_with_key(client_final)
        .map_err(|_| bad(user))?;
    if !known {
        return Err(bad(user));
    }
    backend::authentication_sasl_final(&mut out, server_final.as_bytes());
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    Ok(key)
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
