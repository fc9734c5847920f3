//! Frames: a 4-byte big-endian length, then one bincode-encoded message.
//!
//! The encoding lives here and nowhere else, so it can be swapped (bincode is
//! unmaintained upstream) without touching the rest. Decoding never panics
//! and never allocates more than the frame carries: the length is checked
//! against the maximum before any buffer grows, and bincode runs with a
//! limit.

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

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

/// A tokio codec that reads frames of `In` and writes frames of `Out`.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    frames: LengthDelimitedCodec,
    max_frame_bytes: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec accepting frames up to `max_frame_bytes` (capped at
    /// [`MAX_FRAME_BYTES_CAP`]).
    pub fn new(max_frame_bytes: usize) -> Self {
        let max_frame_bytes = max_frame_bytes.clamp(64, MAX_FRAME_BYTES_CAP);
        Self {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(LENGTH_PREFIX_BYTES)
                .max_frame_length(max_frame_bytes)
                .new_codec(),
            max_frame_bytes,
            _types: PhantomData,
        }
    }

    /// The largest frame this codec accepts.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The length a frame announces, if its prefix is there yet.
    fn announced(src: &BytesMut) -> Option<usize> {
        let prefix: [u8; LENGTH_PREFIX_BYTES] = src.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
        Some(u32::from_be_bytes(prefix) as usize)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        if let Some(announced) = Self::announced(src)
            && announced > self.max_frame_bytes
        {
            return Err(CodecError::TooLarge {
                announced,
                max: self.max_frame_bytes,
            });
        }
        match self.frames.decode(src)? {
            Some(frame) => decode(&frame).map(Some),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = encode(&message)?;
        if payload.len() > self.max_frame_bytes {
            return Err(CodecError::TooLarge {
                announced: payload.len(),
                max: self.max_frame_bytes,
            });
        }
        self.frames.encode(Bytes::from(payload), dst)?;
        Ok(())
    }
}
