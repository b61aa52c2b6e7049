//! Framing: splits a byte stream into whole protocol messages.
//!
//! Regular messages are a tag byte plus a big-endian i32 length that counts
//! itself; the first message a client sends (startup, SSL/GSSENC request,
//! cancel) has no tag. Lengths are checked before anything is buffered for
//! them, so a lying length costs nothing. An incomplete message is
//! `Ok(None)`: the caller reads more bytes and calls again.

use bytes::{Buf, Bytes, BytesMut};

/// SSLRequest code in place of a protocol version.
pub const SSL_REQUEST_CODE: i32 = 80877103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST_CODE: i32 = 80877104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: i32 = 80877102;
/// Protocol 3.0, the only version pgsplit speaks.
pub const PROTOCOL_3_0: i32 = 196608;
/// PostgreSQL's own cap on a startup packet.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Upper bound for any regular message (PostgreSQL caps most at 1 GiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// A framing failure: the peer sent bytes that are not the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below its minimum.
    #[error("invalid message length {len}")]
    BadLength { len: i64 },
    /// A message longer than the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Message contents do not match its type.
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    /// The peer closed the connection partway through a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
}

/// One whole message, tag and length included, ready to forward untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The whole frame: tag, length and body.
    pub bytes: Bytes,
}

impl Frame {
    /// The body after the tag and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The frame, borrowed.
    pub fn view(&self) -> FrameRef<'_> {
        FrameRef {
            tag: self.tag,
            bytes: &self.bytes,
        }
    }
}

/// One whole message seen where it lies in a read buffer: what a reply
/// that is only looked at and copied on needs, without a [`Frame`]'s
/// reference-counted handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The message type byte.
    pub tag: u8,
    /// The whole frame: tag, length and body.
    pub bytes: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// The frame that is the whole of `bytes` (tag, length and body, as
    /// [`peek_frame_len`] measured them).
    pub fn whole(bytes: &'a [u8]) -> FrameRef<'a> {
        FrameRef {
            tag: bytes[0],
            bytes,
        }
    }

    /// The body after the tag and length.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[5..]
    }
}

/// Whole messages back to back in one buffer, as they arrived: a batch of
/// a client's messages, kept without a reference-counted handle each.
#[derive(Debug, Default)]
pub struct Frames {
    bytes: BytesMut,
    count: usize,
}

impl Frames {
    /// Appends one whole frame (tag, length and body, as
    /// [`peek_frame_len`] measured it).
    pub fn push(&mut self, frame: &[u8]) {
        debug_assert_eq!(peek_frame_len(frame, usize::MAX), Ok(Some(frame.len())));
        self.bytes.extend_from_slice(frame);
        self.count += 1;
    }

    /// Takes one whole frame as it is, without a copy, into an empty
    /// `Frames` (a large message split off the read buffer); gives it
    /// back when there are messages already.
    ///
    /// # Errors
    /// The frame, untouched, when `self` is not empty.
    pub fn adopt(&mut self, frame: BytesMut) -> Result<(), BytesMut> {
        if self.count > 0 {
            return Err(frame);
        }
        debug_assert_eq!(peek_frame_len(&frame, usize::MAX), Ok(Some(frame.len())));
        self.bytes = frame;
        self.count = 1;
        Ok(())
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No messages.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of all the messages.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Makes room for `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
    }

    /// Forgets the messages, keeping the buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }

    /// The messages, in order.
    pub fn iter(&self) -> FrameIter<'_> {
        FrameIter::new(&self.bytes)
    }

    /// The first message.
    pub fn first(&self) -> Option<FrameRef<'_>> {
        self.iter().next()
    }

    /// The first message as a frame of its own (the rest are dropped).
    pub fn into_first(mut self) -> Option<Frame> {
        let len = self.first()?.bytes.len();
        Some(Frame {
            tag: self.bytes[0],
            bytes: self.bytes.split_to(len).freeze(),
        })
    }
}

impl<'a> IntoIterator for &'a Frames {
    type Item = FrameRef<'a>;
    type IntoIter = FrameIter<'a>;

    fn into_iter(self) -> FrameIter<'a> {
        self.iter()
    }
}

/// The whole messages in a buffer that holds only whole messages (a
/// [`Frames`], or bytes kept one measured frame after another).
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    rest: &'a [u8],
}

impl<'a> FrameIter<'a> {
    /// The frames of `buf`, which holds whole frames only; an incomplete
    /// tail ends the iteration.
    pub fn new(buf: &'a [u8]) -> FrameIter<'a> {
        FrameIter { rest: buf }
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = FrameRef<'a>;

    fn next(&mut self) -> Option<FrameRef<'a>> {
        let len = peek_frame_len(self.rest, usize::MAX).ok()??;
        let (frame, after) = self.rest.split_at_checked(len)?;
        self.rest = after;
        Some(FrameRef::whole(frame))
    }
}

/// The untagged first message of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage with its protocol version and parameters.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the key the client was given (variable length
    /// since protocol 3.2).
    Cancel { pid: i32, secret: Bytes },
}

/// Decodes the untagged first message.
///
/// # Errors
/// A length under 8 or over [`MAX_STARTUP_LEN`], or a body that is not a
/// valid startup packet.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::BadLength { len: len.into() });
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_i32();
    let decoded = match code {
        SSL_REQUEST_CODE => StartupPacket::Ssl,
        GSSENC_REQUEST_CODE => StartupPacket::GssEnc,
        CANCEL_REQUEST_CODE => {
            if packet.len() < 8 {
                return Err(ProtocolError::Malformed { what: "cancel" });
            }
            let pid = packet.get_i32();
            StartupPacket::Cancel {
                pid,
                secret: packet,
            }
        }
        version => StartupPacket::Startup {
            version,
            params: decode_params(&packet)?,
        },
    };
    Ok(Some(decoded))
}

fn decode_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: ProtocolError = ProtocolError::Malformed { what: "startup" };
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut body).ok_or(WHAT)?;
        if key.is_empty() {
            break;
        }
        let value = take_cstr(&mut body).ok_or(WHAT)?;
        params.push((key.to_owned(), value.to_owned()));
    }
    if !body.is_empty() {
        return Err(WHAT);
    }
    Ok(params)
}

/// Splits one NUL-terminated UTF-8 string off the front of `body`.
pub fn take_cstr<'a>(body: &mut &'a [u8]) -> Option<&'a str> {
    let end = body.iter().position(|&b| b == 0)?;
    // (Most names on the hot path are the unnamed statement or portal.)
    let s = if end == 0 {
        ""
    } else {
        std::str::from_utf8(&body[..end]).ok()?
    };
    *body = &body[end + 1..];
    Some(s)
}

/// Decodes one tagged message (either direction).
///
/// # Errors
/// A length below 4 or above `max`.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = complete_frame_len(buf, max)? else {
        return Ok(None);
    };
    let tag = buf[0];
    Ok(Some(Frame {
        tag,
        bytes: buf.split_to(len).freeze(),
    }))
}

/// The total size (tag included) of the frame at the front of `buf`, once
/// all of it has arrived; room is reserved for the rest of one that has
/// not.
///
/// # Errors
/// A length below 4 or above `max`.
pub fn complete_frame_len(buf: &mut BytesMut, max: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(len) = peek_frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    Ok(Some(len))
}

/// The total size (tag included) of the frame at the front of `buf`, once
/// its header has arrived.
///
/// # Errors
/// A length below 4 or above `max`.
pub fn peek_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength { len: len.into() });
    }
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    Ok(Some(len + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn frames_keep_whole_messages_in_order() {
        let mut frames = Frames::default();
        assert!(frames.is_empty() && frames.first().is_none());
        let parse = [b'P', 0, 0, 0, 8, b's', 0, 0, 0];
        let sync = [b'S', 0, 0, 0, 4];
        frames.push(&parse[..9]);
        frames.push(&sync);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames.byte_len(), 14);
        let seen: Vec<_> = frames.iter().map(|f| (f.tag, f.bytes.len())).collect();
        assert_eq!(seen, [(b'P', 9), (b'S', 5)]);
        assert_eq!(frames.first().unwrap().body(), &parse[5..9]);
        let first = frames.into_first().unwrap();
        assert_eq!((first.tag, &first.bytes[..]), (b'P', &parse[..9]));
        // a large message is taken as it is, into empty frames only
        let mut big = Frames::default();
        assert!(big.adopt(BytesMut::from(&sync[..])).is_ok());
        assert!(big.adopt(BytesMut::from(&sync[..])).is_err());
        assert_eq!(big.len(), 1);
        // an incomplete tail is not a frame
        assert_eq!(FrameIter::new(&[b'S', 0, 0, 0, 4, b'Q', 0, 0]).count(), 1);
        assert_eq!(FrameIter::new(&[b'Q', 0, 0, 0, 9, b'x']).count(), 0);
    }

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_i32(PROTOCOL_3_0);
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::new();
        out.put_i32(body.len() as i32 + 4);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn startup_fed_one_byte_at_a_time() {
        let bytes = startup_bytes(&[("user", "app"), ("database", "db")]);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode_startup(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(
                    got,
                    Some(StartupPacket::Startup {
                        version: PROTOCOL_3_0,
                        params: vec![
                            ("user".into(), "app".into()),
                            ("database".into(), "db".into())
                        ]
                    })
                );
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 47][..]);
        assert_eq!(decode_startup(&mut buf).unwrap(), Some(StartupPacket::Ssl));
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 4, 210, 22, 48][..]);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::GssEnc)
        );
        let mut buf = BytesMut::new();
        buf.put_i32(16);
        buf.put_i32(CANCEL_REQUEST_CODE);
        buf.put_i32(42);
        buf.put_i32(7);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 42,
                secret: Bytes::from_static(&[0, 0, 0, 7])
            })
        );
    }

    #[test]
    fn lying_startup_lengths_are_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::BadLength { .. })
        ));
        // parameters without the final terminator
        let mut bad = startup_bytes(&[("user", "app")]);
        bad.pop();
        bad.pop();
        bad[3] -= 2;
        let mut buf = BytesMut::from(&bad[..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn frames_one_byte_at_a_time_and_limits() {
        let msg = [
            b'Q', 0, 0, 0, 13, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1', 0,
        ];
        let mut stream = msg.to_vec();
        stream.extend_from_slice(&msg);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in stream {
            buf.put_u8(b);
            while let Some(f) = decode_frame(&mut buf, 1024).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag, b'Q');
        assert_eq!(frames[0].body(), b"SELECT 1\0");
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(ProtocolError::BadLength { len: 2 })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x40, 0, 0, 1][..]);
        assert!(matches!(
            decode_frame(&mut buf, MAX_MESSAGE_LEN),
            Err(ProtocolError::TooLarge { .. })
        ));
    }
}

#[cfg(test)]
mod random_input {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random bytes, and random bytes behind plausible headers, never panic
    /// the decoders and never make them buffer what a lying length claims.
    #[test]
    fn decoders_survive_random_bytes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..20_000 {
            let len: i32 = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len as usize).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && bytes.len() >= 5 {
                bytes[0] = *[b'Q', b'P', b'B', b'D', b'E', b'S', b'p']
                    .get(rng.random_range(0..7))
                    .unwrap();
                let claimed: i32 = rng.random_range(0..len + 8);
                bytes[1..5].copy_from_slice(&claimed.to_be_bytes());
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_startup(&mut buf);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decode_frame(&mut buf, 1 << 20) {
                let body = frame.body();
                let _ = crate::protocol::frontend::query_text(body);
                let _ = crate::protocol::frontend::parse(body);
                let _ = crate::protocol::frontend::bind_statement(body);
                let _ = crate::protocol::frontend::password(body);
                let _ = crate::protocol::backend::error_fields(body);
            }
            assert!(buf.capacity() < (1 << 21), "buffered for a lying length");
        }
    }
}

#[cfg(test)]
mod round_trips {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn frame_bytes(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    proptest! {
        /// Frames written back to back and fed in arbitrary pieces come out
        /// whole, in order, with their bytes untouched.
        #[test]
        fn frames_survive_any_chunking(
            frames in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..20),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let stream: Vec<u8> = frames.iter().flat_map(|(t, b)| frame_bytes(*t, b)).collect();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                buf.put_slice(&stream[at..at + n]);
                at += n;
                i += 1;
                while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
                    got.push((f.tag, f.body().to_vec()));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// Startup parameters round-trip.
        #[test]
        fn startup_parameters_round_trip(
            params in prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,40}"), 0..8),
        ) {
            let mut body = BytesMut::new();
            body.put_i32(PROTOCOL_3_0);
            for (k, v) in &params {
                body.put_slice(k.as_bytes());
                body.put_u8(0);
                body.put_slice(v.as_bytes());
                body.put_u8(0);
            }
            body.put_u8(0);
            let mut buf = BytesMut::new();
            buf.put_i32(body.len() as i32 + 4);
            buf.put_slice(&body);
            let decoded = decode_startup(&mut buf).unwrap().unwrap();
            prop_assert_eq!(decoded, StartupPacket::Startup { version: PROTOCOL_3_0, params: params.clone() });
        }
    }
}
