//! Checks a client's credentials: `trust` or `md5` against `auth.users`.
//!
//! A wrong password and an unknown user get the same answer, after the
//! same exchange, so user names cannot be probed.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::AuthError;
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
        AuthMethod::ScramSha256 => Err(AuthError::Unsupported(
            "scram-sha-256 for clients is not implemented".into(),
        )),
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

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
