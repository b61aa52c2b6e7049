//! A server connection's byte stream: plain TCP, or TLS after an
//! SSLRequest the node accepted.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use crate::config::BackendTls;
use crate::wire::MaybeTls;

/// The node connection.
pub type BackendStream = MaybeTls<TlsStream<TcpStream>>;

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

    /// The TCP socket underneath (none while a handshake holds it).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(s) => Some(s),
            MaybeTls::Tls(s) => Some(s.get_ref().0),
            MaybeTls::Upgrading => None,
        }
    }
}
