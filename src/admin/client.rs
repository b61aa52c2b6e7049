//! The CLI's requests (`pgsplit status`, `pgsplit failover`) to a proxy's
//! admin API on loopback or a private network, over [`crate::http`].

use std::time::Duration;

use anyhow::Context;

/// How long the CLI waits for an answer (a failover may hold writes for
/// up to the write hold limit, then report).
const ANSWER_LIMIT: Duration = Duration::from_secs(120);

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Sends one request to `base` (`http://host:port`).
///
/// # Errors
/// The URL is not `http://host:port`, or the connection failed.
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<Answer> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect();
    let answer = crate::http::call(
        base.trim_end_matches('/'),
        method,
        path,
        &headers,
        body.map(str::as_bytes),
        ANSWER_LIMIT,
    )
    .await
    .with_context(|| format!("cannot reach the admin API at {base}"))?;
    Ok(Answer {
        status: answer.status,
        body: answer.text(),
    })
}
