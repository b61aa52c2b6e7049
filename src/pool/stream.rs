//! A server connection's byte stream: plain TCP, or TLS after an
//! SSLRequest the node accepted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use crate::config::BackendTls;

/// The node connection.
pub enum BackendStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for BackendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendStream::Plain(_) => "Plain",
            BackendStream::Tls(_) => "Tls",
        })
    }
}

impl BackendStream {
    /// Negotiates TLS on a fresh connection as `mode` says: SSLRequest,
    /// then the handshake if the node answers `S`.
    ///
    /// # Errors
    /// The node refused TLS under `require`/`verify-full`, or the handshake
    /// (certificate, host name) failed.
    pub async fn negotiate(
        mut tcp: TcpStream,
        mode: BackendTls,
        tls: Option<Arc<ClientConfig>>,
        host: &str,
    ) -> std::io::Result<BackendStream> {
        let Some(tls) = tls.filter(|_| mode != BackendTls::Disable) else {
            return Ok(BackendStream::Plain(tcp));
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&crate::protocol::codec::SSL_REQUEST_CODE.to_be_bytes());
        tcp.write_all(&request).await?;
        let answer = tcp.read_u8().await?;
        match (answer, mode) {
            (b'S', _) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = TlsConnector::from(tls).connect(name, tcp).await?;
                Ok(BackendStream::Tls(Box::new(stream)))
            }
            (b'N', BackendTls::Prefer) => Ok(BackendStream::Plain(tcp)),
            (b'N', _) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the node does not offer TLS, which tls.backend requires",
            )),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad answer to SSLRequest",
            )),
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
