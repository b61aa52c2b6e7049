//! Async reading and writing of protocol frames over any byte stream, and
//! the TCP-or-TLS stream type itself: the I/O helpers that the session,
//! authentication and pool share.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::protocol::codec::{self, Frame, ProtocolError};

/// A failure to read a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// The bytes were not the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The node answered the proxy's own query with an error (a standby
    /// shutting down or restarting after a crash, say): the connection
    /// is fine as a stream, useless for the answer.
    #[error("the node answered {code}: {message}")]
    Refused { code: String, message: String },
}

/// Reads until one whole frame is buffered, then returns it.
///
/// # Cancel safety
/// Cancel safe: bytes read stay in `buf` for the next call.
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, WireError> {
    loop {
        if let Some(frame) = codec::decode_frame(buf, max)? {
            return Ok(frame);
        }
        fill(stream, buf).await?;
    }
}

/// Reads more bytes into `buf`; a clean EOF is [`WireError::Closed`], and so
/// is an EOF in the middle of a message.
///
/// # Cancel safety
/// Cancel safe.
pub async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> Result<(), WireError> {
    std::future::poll_fn(|cx| poll_fill(stream, cx, buf)).await
}

/// [`fill`] as a poll: what a loop that waits on several sockets at once
/// polls, without a future per socket and turn.
pub fn poll_fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<Result<(), WireError>> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf))? {
        0 => Poll::Ready(Err(WireError::Closed)),
        _ => Poll::Ready(Ok(())),
    }
}

/// Writes and clears `buf`.
pub async fn flush<W: AsyncWrite + Unpin>(
    stream: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    if !buf.is_empty() {
        stream.write_all(buf).await?;
        buf.clear();
    }
    Ok(())
}

/// A TCP connection, plain or under TLS (`T`: rustls' client or server
/// stream). Clients and server connections both use it.
pub enum MaybeTls<T> {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<T>),
    /// Between plaintext and TLS while a handshake takes the socket; any
    /// I/O fails.
    Upgrading,
}

impl<T> std::fmt::Debug for MaybeTls<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaybeTls::Plain(_) => "Plain",
            MaybeTls::Tls(_) => "Tls",
            MaybeTls::Upgrading => "Upgrading",
        })
    }
}

impl<T> MaybeTls<T> {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

fn upgrading() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "TLS handshake in progress",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Upgrading => Poll::Ready(Ok(())),
        }
    }
}
