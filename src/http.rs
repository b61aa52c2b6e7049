//! Plain HTTP/1.1 requests over hyper's client connection: the CLI asking
//! a proxy's admin API, and the Patroni follower asking Patroni's REST API
//! and etcd's JSON gateway (whose watch answers as an endless chunked
//! body, read here chunk by chunk). One request per connection; `http://`
//! only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The base URL is not `http://host:port`.
    #[error("{0:?} is not an http://host:port URL")]
    Url(String),
    /// The connection could not be made.
    #[error("cannot reach {base}: {source}")]
    Connect {
        /// Where.
        base: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("HTTP exchange with {base} failed: {source}")]
    Exchange {
        /// Where.
        base: String,
        /// Why.
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(String),
}

/// An answer with its whole body.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `host:port` of `base` (`http://host:port[/...]`).
fn authority(base: &str) -> Result<&str, HttpError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(base.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err(HttpError::Url(base.to_owned()));
    }
    Ok(authority)
}

/// Sends one request and returns the answer's head with its body still
/// to read.
async fn send(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<hyper::Response<Incoming>, HttpError> {
    let authority = authority(base)?;
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|source| HttpError::Connect {
            base: base.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let exchange = |source| HttpError::Exchange {
        base: base.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(exchange)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|_| HttpError::Url(format!("{base}{path}")))?;
    sender.send_request(request).await.map_err(exchange)
}

/// Sends one request to `base` and reads the whole answer, all within
/// `limit`.
///
/// # Errors
/// A bad URL, a refused connection, a broken exchange, or no answer in
/// time.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    limit: Duration,
) -> Result<Answer, HttpError> {
    let exchange = async {
        let answer = send(base, method, path, headers, body).await?;
        let status = answer.status().as_u16();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|source| HttpError::Exchange {
                base: base.to_owned(),
                source,
            })?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| HttpError::Timeout(base.to_owned()))?
}

/// An answer whose body is read as it comes (a watch).
pub struct Stream {
    /// Status code.
    pub status: u16,
    body: Incoming,
    base: String,
}

impl Stream {
    /// The next piece of the body; `None` at its end.
    ///
    /// # Errors
    /// The exchange broke.
    pub async fn next(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(HttpError::Exchange {
                        base: self.base.clone(),
                        source,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// Sends one request whose answer's body is read piece by piece; the
/// head must come within `limit`.
///
/// # Errors
/// As [`call`].
pub async fn open(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    limit: Duration,
) -> Result<Stream, HttpError> {
    let answer = tokio::time::timeout(limit, send(base, method, path, &[], body))
        .await
        .map_err(|_| HttpError::Timeout(base.to_owned()))??;
    Ok(Stream {
        status: answer.status().as_u16(),
        body: answer.into_body(),
        base: base.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(authority("http://10.0.0.1:8008").unwrap(), "10.0.0.1:8008");
        assert_eq!(
            authority("http://10.0.0.1:8008/patroni").unwrap(),
            "10.0.0.1:8008"
        );
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://").is_err());
    }
}
