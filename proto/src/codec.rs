//! Frames: a 4-byte big-endian length, then one bincode-encoded message.
//!
//! The encoding lives here and nowhere else, so it can be swapped (bincode is
//! unmaintained upstream) without touching the rest. Decoding never panics
//! and never allocates more than the frame carries: the length is checked
//! against the maximum before any buffer grows, bincode runs with a limit,
//! and a string or bytes field is read as a slice of the frame before it
//! is copied (`copied`), so a length it claims past the frame's end is
//! refused without a buffer of that size.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::wire::MAX_FRAME_BYTES_CAP;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {announced} bytes is over the {max}-byte limit")]
    TooLarge {
        /// What the prefix said (or the encoded size, when writing).
        announced: usize,
        /// The limit.
        max: usize,
    },
    /// The frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES_CAP>()
}

/// Encodes one message (without the length prefix).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(message, config())
        .map_err(|err| CodecError::Encode(err.to_string()))
}

/// Decodes one message that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (message, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|err| CodecError::Malformed(err.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} bytes left over after the message",
            bytes.len() - read
        )));
    }
    Ok(message)
}

/// Payload bytes that always hold the request id of a
/// [`ServerFrame::Response`](crate::wire::ServerFrame::Response): its
/// variant (one byte) and the id (a varint of at most 9 bytes).
pub const RESPONSE_HEAD_BYTES: usize = 10;

/// The request id a frame answers, read from the first
/// [`RESPONSE_HEAD_BYTES`] of its payload (after the length prefix), for
/// a frame too large to read whole; `None` when the frame is no
/// [`ServerFrame::Response`](crate::wire::ServerFrame::Response).
pub fn answered_request(payload_head: &[u8]) -> Option<u64> {
    /// `ServerFrame::Response`'s variant index.
    const RESPONSE_VARIANT: u32 = 1;
    let ((variant, id), _): ((u32, u64), usize) =
        bincode::serde::decode_from_slice(payload_head, config()).ok()?;
    (variant == RESPONSE_VARIANT).then_some(id)
}

/// A tokio codec that reads frames of `In` and writes frames of `Out`.
///
/// Stateless: a frame stays in the buffer, prefix included, until all of it
/// has arrived, so a frame split over any number of reads is reassembled.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_frame_bytes: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec accepting frames up to `max_frame_bytes` (capped at
    /// [`MAX_FRAME_BYTES_CAP`]).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes: max_frame_bytes.clamp(64, MAX_FRAME_BYTES_CAP),
            _types: PhantomData,
        }
    }

    /// The largest frame this codec accepts.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let mut length = [0u8; LENGTH_PREFIX_BYTES];
        length.copy_from_slice(prefix);
        let announced = u32::from_be_bytes(length) as usize;
        if announced > self.max_frame_bytes {
            return Err(CodecError::TooLarge {
                announced,
                max: self.max_frame_bytes,
            });
        }
        let total = LENGTH_PREFIX_BYTES + announced;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        // Decoded in place, then consumed: splitting the frame off would
        // turn the buffer into a shared one, with a reference count to
        // keep per frame.
        let message = decode(&src[LENGTH_PREFIX_BYTES..total]);
        src.advance(total);
        message.map(Some)
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        // Encode straight into the output buffer behind a placeholder
        // length, then fill the length in: no intermediate copy.
        let start = dst.len();
        dst.put_u32(0);
        let written = bincode::serde::encode_into_std_write(&message, &mut dst.writer(), config())
            .map_err(|err| CodecError::Encode(err.to_string()));
        let payload = dst.len() - start - LENGTH_PREFIX_BYTES;
        if let Err(err) = written {
            dst.truncate(start);
            return Err(err);
        }
        if payload > self.max_frame_bytes {
            dst.truncate(start);
            return Err(CodecError::TooLarge {
                announced: payload,
                max: self.max_frame_bytes,
            });
        }
        dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(payload as u32).to_be_bytes());
        Ok(())
    }
}
