//! Checks a client's credentials against `auth.users`: `trust`, `md5` or
//! `scram-sha-256` (with `-PLUS` channel binding over TLS).
//!
//! A wrong password and an unknown user get the same answer, after the
//! same exchange, so user names cannot be probed.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::AuthError;
use super::scram::{Binding, Exchange, Secrets};
use crate::config::{AuthMethod, Config};
use crate::protocol::{backend, frontend};
use crate::wire;

/// Runs the client side of authentication up to (not including)
/// AuthenticationOk.
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
) -> Result<(), AuthError> {
    match config.auth.method.value {
        AuthMethod::Trust => {
            if config.auth.users.is_empty() || config.user(user).is_some() {
                Ok(())
            } else {
                Err(AuthError::BadPassword { user: user.into() })
            }
        }
        AuthMethod::Md5 => md5(stream, rbuf, config, user).await,
        AuthMethod::ScramSha256 => scram(stream, rbuf, config, user, secrets, binding).await,
    }
}

async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    config: &Config,
    user: &str,
) -> Result<(), AuthError> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    backend::authentication_md5(&mut out, salt);
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    let frame = wire::read_frame(stream, rbuf, 4096).await?;
    if frame.tag != frontend::PASSWORD_TAG {
        return Err(AuthError::BadPassword { user: user.into() });
    }
    let answer = frontend::password(frame.body()).map_err(wire::WireError::Protocol)?;
    // An unknown user still gets a hash computed, against a random password.
    let password = config
        .user(user)
        .and_then(|u| u.password.clone())
        .unwrap_or_else(|| format!("{:x}", rand::random::<u128>()));
    let expected =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    let known = config.user(user).is_some();
    if constant_time_eq(expected.as_bytes(), answer.as_bytes()) && known {
        Ok(())
    } else {
        Err(AuthError::BadPassword { user: user.into() })
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

async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    config: &Config,
    user: &str,
    secrets: &Secrets,
    binding: &Binding,
) -> Result<(), AuthError> {
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
    // Unknown users run the same exchange against a mock secret.
    let password = config.user(user).and_then(|u| u.password.as_deref());
    let secret = secrets.get(user, password);
    let (exchange, server_first) =
        Exchange::start(&mechanism, data, secret, binding).map_err(|_| bad(user))?;
    backend::authentication_sasl_continue(&mut out, server_first.as_bytes());
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    let body = read_password_message(stream, rbuf, user).await?;
    let client_final = std::str::from_utf8(&body).map_err(|_| bad(user))?;
    let server_final = exchange.finish(client_final).map_err(|_| bad(user))?;
    if password.is_none() {
        return Err(bad(user));
    }
    backend::authentication_sasl_final(&mut out, server_final.as_bytes());
    wire::flush(stream, &mut out)
        .await
        .map_err(wire::WireError::Io)?;
    Ok(())
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
