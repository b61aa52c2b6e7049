//! A client's byte stream: plain TCP, or TLS over it after an SSLRequest.

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::wire::MaybeTls;

/// The client connection.
pub type ClientStream = MaybeTls<TlsStream<TcpStream>>;
