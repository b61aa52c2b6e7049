//! Async reading and writing of protocol frames over any byte stream: the
//! one I/O helper that the session, authentication and pool share.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match stream.read_buf(buf).await? {
        0 => Err(WireError::Closed),
        _ => Ok(()),
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
