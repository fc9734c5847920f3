//! A frame's strings and bytes, read as slices of the frame and copied.
//!
//! bincode's own decoding of a `String` or a `Vec<u8>` makes a zeroed
//! buffer of the length the field claims and only then finds out whether
//! the frame holds that many bytes, so a 16-byte frame could claim, and
//! cost, 64 MiB. Read as a borrowed slice, the claim is checked against the
//! bytes left in the frame first, and a buffer is made only for bytes that
//! are there. Fields use these through `#[serde(deserialize_with = ...)]`;
//! the encoding does not change.

use std::fmt;

use bytes::Bytes;
use serde::Deserializer;
use serde::de::{Error, Visitor};

/// A string field.
pub fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_str(Text)
}

/// An optional string field.
pub fn optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_option(OptionalText)
}

/// A bytes field.
pub fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(Blob)
}

struct Text;

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<String, E> {
        Ok(text.to_owned())
    }
}

struct OptionalText;

impl<'de> Visitor<'de> for OptionalText {
    type Value = Option<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an optional string")
    }

    fn visit_none<E: Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<String>, D::Error> {
        string(deserializer).map(Some)
    }
}

struct Blob;

impl Visitor<'_> for Blob {
    type Value = Bytes;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::{decode, encode};
    use crate::wire::{ClientFrame, Hello, Op, PROTOCOL_VERSION, Request};

    /// A message's encoding up to a string or bytes field, then a length
    /// claiming 60 MiB and nothing more.
    fn claiming(fields: &[u8]) -> Vec<u8> {
        let mut payload = fields.to_vec();
        payload.push(0xfd);
        payload.extend_from_slice(&(60u64 << 20).to_le_bytes());
        payload
    }

    #[test]
    fn fields_decode_as_they_were_encoded() {
        let frames = [
            ClientFrame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                auth_token: Some("sekrit".into()),
                placement: None,
            }),
            ClientFrame::Request(Request {
                id: 7,
                op: Op::Create {
                    data: bytes::Bytes::from_static(b"{\"cart\":[1,2]}"),
                    ttl_secs: Some(60),
                    user: Some("alice".into()),
                },
                write: None,
            }),
        ];
        for frame in frames {
            let encoded = encode(&frame).expect("it encodes");
            assert_eq!(decode::<ClientFrame>(&encoded).expect("it decodes"), frame);
        }
    }

    #[test]
    fn a_claim_past_the_frame_is_malformed() {
        let hello = claiming(&[0, PROTOCOL_VERSION as u8, 1]);
        let create = claiming(&[1, 1, 0]);
        for payload in [hello, create] {
            let error = decode::<ClientFrame>(&payload).expect_err("too short");
            assert!(error.to_string().contains("malformed"), "{error}");
        }
    }
}
