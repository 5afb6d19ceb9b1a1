//! The frame codec: a 4-byte big-endian length, then that many bytes of payload.
//!
//! ```text
//! +--------- len: u32 BE ---------+------------ payload: len bytes ------------+
//! | 0x00 | 0x00 | 0x00 | 0x1f     | {"id":1,"msg":{"type":"ping"}}             |
//! +-------------------------------+--------------------------------------------+
//! ```
//!
//! This is the framing layer only: it never looks inside a payload. Its decisions:
//!
//! | Declared length | Outcome |
//! |---|---|
//! | `0 ..= max_frame_bytes` | [`Decoded::Frame`] once the whole payload has arrived (a zero-length payload is delivered and rejected by validation as `invalid_json`) |
//! | `max_frame_bytes + 1 ..= ceiling` | [`Decoded::TooLarge`] at once; the payload is then discarded as it streams in, never buffered, and decoding goes on with the next frame |
//! | over `ceiling` | [`CodecError::Unframed`]: the peer is not speaking this protocol (text on the channel reads as a length of hundreds of megabytes); the session ends |
//!
//! Defaults: `max_frame_bytes` is 1 MiB ([`DEFAULT_MAX_FRAME_BYTES`]); the ceiling is
//! [`CEILING_FACTOR`] (64) times `max_frame_bytes`, capped at `u32::MAX`. A stream that ends
//! inside a frame is [`CodecError::Truncated`].
//!
//! Oversize frames are reported as an item rather than an error on purpose: a
//! [`tokio_util::codec::FramedRead`] ends the stream after the first decoder error, and an
//! oversize frame must not end the session.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub use drover_proto::limits::DEFAULT_MAX_FRAME_BYTES;

/// A declared length over `CEILING_FACTOR * max_frame_bytes` means the stream is not framed.
pub const CEILING_FACTOR: u64 = 64;

/// Length of the frame header, in bytes.
pub const HEADER_LEN: usize = 4;

/// How many bytes of a non-framed stream an [`CodecError::Unframed`] diagnostic shows.
const DIAGNOSTIC_BYTES: usize = 64;

/// A frame longer than the limit; it was (or is being) discarded without buffering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes is over the limit of {max} bytes and was discarded")]
pub struct FrameTooLarge {
    /// The declared payload length.
    pub len: u64,
    /// The limit in force.
    pub max: u64,
}

/// What the decoder produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete payload, not yet parsed.
    Frame(Bytes),
    /// A frame over the limit; its payload is skipped.
    TooLarge(FrameTooLarge),
}

/// Errors that end a session: the stream cannot be read as frames any more.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading or writing the channel failed.
    #[error("transport I/O failed")]
    Io(#[from] std::io::Error),
    /// A declared length beyond the hard ceiling: whatever the peer writes, it is not frames.
    #[error(
        "the peer is not sending frames: declared length {len} is over the ceiling of {ceiling} bytes; the stream starts with {head:?}"
    )]
    Unframed {
        /// The declared length.
        len: u64,
        /// The ceiling in force.
        ceiling: u64,
        /// The first bytes of the stream at that point, as lossy UTF-8.
        head: String,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame: {received} of {expected} bytes arrived")]
    Truncated {
        /// Bytes the header (or the frame) announced.
        expected: u64,
        /// Bytes that arrived before the end.
        received: u64,
    },
    /// An outgoing payload over the limit; nothing was written.
    #[error("outgoing frame of {len} bytes is over the limit of {max} bytes; nothing was sent")]
    OutgoingTooLarge {
        /// The payload length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a 4-byte header.
    Head,
    /// Waiting for a payload of this many bytes.
    Body(usize),
    /// Discarding this many more bytes of an oversize payload.
    Skip(u64),
}

/// Length-prefixed frame codec with oversize skipping. See the [module docs](self).
///
/// ```
/// use bytes::BytesMut;
/// use drover_transport::codec::{Decoded, FrameCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut wire = BytesMut::new();
/// codec.encode(&br#"{"msg":{"type":"ping"}}"#[..], &mut wire).unwrap();
/// assert_eq!(&wire[..4], &[0, 0, 0, 23]);
/// let Some(Decoded::Frame(payload)) = codec.decode(&mut wire).unwrap() else { panic!() };
/// assert_eq!(&payload[..], br#"{"msg":{"type":"ping"}}"#);
/// ```
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_bytes: u32,
    state: State,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the default limit of 1 MiB.
    pub fn new() -> Self {
        Self::with_max_frame_bytes(DEFAULT_MAX_FRAME_BYTES)
    }

    /// A codec that accepts payloads of at most `max_frame_bytes` bytes.
    pub fn with_max_frame_bytes(max_frame_bytes: u32) -> Self {
        Self { max_frame_bytes, state: State::Head }
    }

    /// The current payload limit, in bytes.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Changes the limit, e.g. after the handshake negotiated another one. Takes effect from
    /// the next header; a frame already being read or skipped finishes under the old limit.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Declared lengths above this end the session as [`CodecError::Unframed`].
    pub fn ceiling(&self) -> u64 {
        (u64::from(self.max_frame_bytes) * CEILING_FACTOR).min(u64::from(u32::MAX))
    }
}

impl Decoder for FrameCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        loop {
            match self.state {
                State::Head => {
                    let Some(header) = src.first_chunk::<HEADER_LEN>() else {
                        return Ok(None);
                    };
                    let len = u64::from(u32::from_be_bytes(*header));
                    let max = u64::from(self.max_frame_bytes);
                    if len > self.ceiling() {
                        let shown = src.len().min(DIAGNOSTIC_BYTES);
                        return Err(CodecError::Unframed {
                            len,
                            ceiling: self.ceiling(),
                            head: String::from_utf8_lossy(&src[..shown]).into_owned(),
                        });
                    }
                    src.advance(HEADER_LEN);
                    if len > max {
                        self.state = State::Skip(len);
                        return Ok(Some(Decoded::TooLarge(FrameTooLarge { len, max })));
                    }
                    // `len <= max_frame_bytes`, a u32, so it fits in usize on every supported
                    // target (this crate requires a 32- or 64-bit platform via tokio).
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    self.state = State::Body(len);
                }
                State::Body(len) => {
                    if src.len() < len {
                        // Make room for the rest of this frame in one allocation. Bounded by
                        // `max_frame_bytes`.
                        src.reserve(len - src.len());
                        return Ok(None);
                    }
                    self.state = State::Head;
                    return Ok(Some(Decoded::Frame(src.split_to(len).freeze())));
                }
                State::Skip(remaining) => {
                    let available = src.len() as u64;
                    if available < remaining {
                        src.clear();
                        self.state = State::Skip(remaining - available);
                        return Ok(None);
                    }
                    // `remaining <= available`, which is a usize.
                    src.advance(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.state = State::Head;
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        match self.state {
            State::Head if src.is_empty() => Ok(None),
            State::Head => Err(CodecError::Truncated {
                expected: HEADER_LEN as u64,
                received: src.len() as u64,
            }),
            State::Body(len) => {
                Err(CodecError::Truncated { expected: len as u64, received: src.len() as u64 })
            }
            // The header was already reported as `TooLarge`; the peer stopped mid-skip.
            State::Skip(remaining) => {
                Err(CodecError::Truncated { expected: remaining, received: 0 })
            }
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = payload.len() as u64;
        let max = u64::from(self.max_frame_bytes);
        if len > max {
            return Err(CodecError::OutgoingTooLarge { len, max });
        }
        dst.reserve(HEADER_LEN + payload.len());
        // `len <= max_frame_bytes`, a u32.
        dst.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        dst.extend_from_slice(payload);
        Ok(())
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&payload[..], dst)
    }
}

impl Encoder<Vec<u8>> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: Vec<u8>, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&payload[..], dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Vec<Decoded> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn partial_header_waits_then_completes() {
        let mut codec = FrameCodec::new();
        let wire = framed(b"{}");
        let mut buf = BytesMut::from(&wire[..2]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[2..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Decoded::Frame(Bytes::from_static(b"{}")))
        );
    }

    #[test]
    fn partial_body_waits_and_reserves_the_rest() {
        let mut codec = FrameCodec::new();
        let payload = vec![b'x'; 10_000];
        let wire = framed(&payload);
        let mut buf = BytesMut::from(&wire[..100]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= payload.len(), "the body is reserved in one go");
        buf.extend_from_slice(&wire[100..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Decoded::Frame(payload.into())));
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_length_frame_is_delivered_empty() {
        let mut codec = FrameCodec::new();
        let items = decode_all(&mut codec, &[0, 0, 0, 0]);
        assert_eq!(items, vec![Decoded::Frame(Bytes::new())]);
    }

    #[test]
    fn exactly_max_is_accepted_and_max_plus_one_is_skipped() {
        let mut codec = FrameCodec::with_max_frame_bytes(16);
        let at_max = framed(&[b'a'; 16]);
        assert_eq!(decode_all(&mut codec, &at_max), vec![Decoded::Frame(vec![b'a'; 16].into())]);

        let over = framed(&[b'b'; 17]);
        assert_eq!(
            decode_all(&mut codec, &over),
            vec![Decoded::TooLarge(FrameTooLarge { len: 17, max: 16 })]
        );
    }

    #[test]
    fn oversize_is_skipped_without_buffering_then_next_frame_decodes() {
        let mut codec = FrameCodec::with_max_frame_bytes(1024);
        let big = vec![b'z'; 50_000];
        let mut wire = framed(&big);
        wire.extend(framed(b"{\"ok\":1}"));

        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        // Feed in 1 KiB slices, as a socket would, and check the buffer never holds the frame.
        for chunk in wire.chunks(1000) {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                items.push(item);
            }
            assert!(buf.len() <= 1000 + HEADER_LEN, "oversize payload was buffered");
        }
        assert_eq!(
            items,
            vec![
                Decoded::TooLarge(FrameTooLarge { len: 50_000, max: 1024 }),
                Decoded::Frame(Bytes::from_static(b"{\"ok\":1}")),
            ]
        );
    }

    #[test]
    fn huge_declared_length_is_fatal_with_a_readable_diagnostic() {
        let mut codec = FrameCodec::new();
        // A driver that prints to the channel: "hello world\n" reads as a ~1.7 GB length.
        let mut buf = BytesMut::from(&b"hello world\nmore text"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        match &err {
            CodecError::Unframed { len, ceiling, head } => {
                assert_eq!(*len, u64::from(u32::from_be_bytes(*b"hell")));
                assert_eq!(*ceiling, 64 << 20);
                assert_eq!(head, "hello world\nmore text");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(r#""hello world\nmore text""#), "{err}");
    }

    #[test]
    fn just_under_the_ceiling_is_skipped_not_fatal() {
        let mut codec = FrameCodec::with_max_frame_bytes(1);
        let mut buf = BytesMut::from(&64u32.to_be_bytes()[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Decoded::TooLarge(FrameTooLarge { len: 64, max: 1 }))
        );
        let mut codec = FrameCodec::with_max_frame_bytes(1);
        let mut buf = BytesMut::from(&65u32.to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Unframed { len: 65, .. })));
    }

    #[test]
    fn eof_inside_header_body_or_skip_is_truncated() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated { expected: 4, received: 2 })
        ));

        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&framed(b"abcdef")[..7]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated { expected: 6, received: 3 })
        ));

        let mut codec = FrameCodec::with_max_frame_bytes(2);
        let mut buf = BytesMut::from(&framed(b"abcdef")[..6]);
        assert!(matches!(codec.decode_eof(&mut buf), Ok(Some(Decoded::TooLarge(_)))));
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated { expected: 4, received: 0 })
        ));

        let mut codec = FrameCodec::new();
        assert!(matches!(codec.decode_eof(&mut BytesMut::new()), Ok(None)));
    }

    #[test]
    fn encoder_refuses_oversize_and_writes_nothing() {
        let mut codec = FrameCodec::with_max_frame_bytes(4);
        let mut dst = BytesMut::new();
        let err = codec.encode(&b"12345"[..], &mut dst).unwrap_err();
        assert!(matches!(err, CodecError::OutgoingTooLarge { len: 5, max: 4 }));
        assert!(dst.is_empty());
        codec.encode(&b"1234"[..], &mut dst).unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 4, b'1', b'2', b'3', b'4']);
    }

    #[test]
    fn new_limit_applies_from_the_next_header() {
        let mut codec = FrameCodec::with_max_frame_bytes(4);
        let mut buf = BytesMut::from(&framed(b"12345678")[..]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Decoded::TooLarge(_))));
        codec.set_max_frame_bytes(8);
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "still skipping the old frame");
        let mut buf = BytesMut::from(&framed(b"12345678")[..]);
        assert!(matches!(codec.decode(&mut buf).unwrap(), Some(Decoded::Frame(_))));
    }
}
