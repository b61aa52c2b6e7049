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
    make_room(buf);
    match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf))? {
        0 => Poll::Ready(Err(WireError::Closed)),
        _ => Poll::Ready(Ok(())),
    }
}

/// Puts a buffer that was lent out with `std::mem::take` back in `slot`.
/// The placeholder the take left owns no memory and is not dropped (a
/// drop saved per server message); one that does (nothing should have
/// used it meanwhile) is dropped as usual.
#[inline]
pub fn put_back_lent(slot: &mut BytesMut, lent: BytesMut) {
    let placeholder = std::mem::replace(slot, lent);
    debug_assert!(placeholder.is_empty(), "nothing is buffered while lent");
    if placeholder.capacity() == 0 {
        std::mem::forget(placeholder);
    }
}

/// Room for a read: at least 4 KiB free at the end of `buf`.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
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

impl<T: AsyncWrite + Unpin> MaybeTls<T> {
    /// Writes all of `bytes`. Plain TCP writes while the socket is known
    /// writable and waits for the reactor only when it is not: no
    /// `WriteAll` future and no task budget per write (issue 17; the
    /// session loop takes its budget once a turn instead).
    ///
    /// # Cancel safety
    /// Not cancel safe: how much was written is lost.
    pub async fn write_all_now(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let MaybeTls::Plain(tcp) = self else {
            return self.write_all(bytes).await;
        };
        while !bytes.is_empty() {
            match tcp.try_write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> MaybeTls<T> {
    /// [`poll_fill`] on this stream. Plain TCP reads straight into `buf`
    /// while the socket is known readable, and asks the reactor only when
    /// it is not: no `ReadBuf` and no task budget per read that finds
    /// bytes (issue 17). As tokio's own `poll_read` does, a read that does
    /// not fill the buffer's room counts as draining the socket (its
    /// readiness is cleared), so the next poll waits without a syscall.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<Result<(), WireError>> {
        let MaybeTls::Plain(tcp) = self else {
            return poll_fill(self, cx, buf);
        };
        make_room(buf);
        let room = buf.capacity() - buf.len();
        loop {
            let mut read = 0;
            let outcome = tcp.try_io(tokio::io::Interest::READABLE, || {
                read = tcp.try_read_buf(buf)?;
                if read > 0 && read < room {
                    // (WouldBlock, with the bytes kept: try_io then clears
                    // the readiness this read used up)
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match outcome {
                _ if read > 0 => return Poll::Ready(Ok(())),
                Ok(()) => return Poll::Ready(Err(WireError::Closed)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::task::ready!(tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
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

#[cfg(test)]
mod tests {
    //! The plain-TCP paths of [`MaybeTls`] against a real loopback socket.

    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    type Plain = MaybeTls<TcpStream>;

    async fn pair() -> (Plain, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (MaybeTls::Plain(ours.unwrap()), theirs.unwrap().0)
    }

    async fn fill_once(stream: &mut Plain, buf: &mut BytesMut) -> Result<(), WireError> {
        std::future::poll_fn(|cx| stream.poll_fill(cx, buf)).await
    }

    #[tokio::test]
    async fn poll_fill_reads_what_arrives_waits_for_more_and_sees_the_close() {
        let (mut ours, mut theirs) = pair().await;
        let mut buf = BytesMut::new();
        theirs.write_all(b"abc").await.unwrap();
        fill_once(&mut ours, &mut buf).await.unwrap();
        assert_eq!(&buf[..], b"abc");
        // Drained: the next fill waits until the peer writes again.
        let later = tokio::spawn(async move {
            tokio::task::yield_now().await;
            theirs.write_all(b"de").await.unwrap();
            theirs
        });
        fill_once(&mut ours, &mut buf).await.unwrap();
        assert_eq!(&buf[..], b"abcde");
        drop(later.await.unwrap());
        assert!(matches!(
            fill_once(&mut ours, &mut buf).await,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn write_all_now_waits_for_room_and_writes_everything_in_order() {
        let (mut ours, mut theirs) = pair().await;
        // Far more than the socket buffers hold: writes must wait for the
        // reader.
        let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            got
        });
        ours.write_all_now(&sent).await.unwrap();
        drop(ours);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
