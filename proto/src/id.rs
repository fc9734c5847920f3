//! Session ids: 128 bits from the operating system's CSPRNG, written as
//! 22 characters of base64url without padding.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Number of random bytes in a session id.
pub const ID_BYTES: usize = 16;
/// Length of a session id in its text form (base64url, no padding).
pub const ID_TEXT_LEN: usize = 22;

/// A session id. Only the server creates new ones ([`SessionId::random`]);
/// everyone else parses them ([`str::parse`]) and must expect
/// [`ParseIdError`] for anything that is not exactly a canonical id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId([u8; ID_BYTES]);

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The text has the wrong number of characters.
    #[error("a session id has exactly {ID_TEXT_LEN} characters, this one has {0}")]
    Length(usize),
    /// The text is not canonical base64url without padding.
    #[error(
        "a session id is base64url text (A-Z, a-z, 0-9, '-', '_') ending in A, Q, g or w \
         (16 bytes, nothing in the last character's spare bits)"
    )]
    Alphabet,
}

impl SessionId {
    /// A fresh id from the operating system's cryptographic RNG.
    ///
    /// # Panics
    /// Only if the operating system cannot provide randomness at all, in which
    /// case no safe id can be made and the process must not go on issuing ids.
    pub fn random() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system RNG is unavailable");
        Self(bytes)
    }

    /// The id's raw bytes.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// Builds an id from raw bytes (as stored by the binary protocol or Redis).
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> Self {
        Self(bytes)
    }

    /// The id as a 128-bit number (big endian), one to one with its bytes.
    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The id whose [`as_u128`](Self::as_u128) is `value`.
    pub fn from_u128(value: u128) -> Self {
        Self(value.to_be_bytes())
    }

    /// A well-spread 64-bit hash of the id, for picking shards and nodes.
    /// The id is already uniformly random, so its first 8 bytes suffice.
    pub fn spread(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(head)
    }
}

/// Hashes the 16 id bytes as one write (no length prefix), so a hasher can
/// take its bits straight from the id, which is already random.
impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_TEXT_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..written]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != ID_TEXT_LEN {
            // Counted in characters, as the message says: a non-ASCII one
            // takes more than one byte.
            let characters = text.chars().count();
            return Err(if characters == ID_TEXT_LEN {
                ParseIdError::Alphabet
            } else {
                ParseIdError::Length(characters)
            });
        }
        let mut bytes = [0u8; ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(ID_BYTES) => Ok(Self(bytes)),
            _ => Err(ParseIdError::Alphabet),
        }
    }
}

/// Text in human-readable formats (JSON), 16 raw bytes in binary ones.
impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; ID_BYTES]>::deserialize(deserializer).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_url_safe() {
        for _ in 0..1000 {
            let id = SessionId::random();
            let text = id.to_string();
            assert_eq!(text.len(), ID_TEXT_LEN);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(text.parse::<SessionId>(), Ok(id));
        }
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| SessionId::random()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn malformed_text_is_rejected() {
        assert_eq!("".parse::<SessionId>(), Err(ParseIdError::Length(0)));
        assert_eq!("abc".parse::<SessionId>(), Err(ParseIdError::Length(3)));
        // Lengths in characters, not bytes.
        assert_eq!("é".parse::<SessionId>(), Err(ParseIdError::Length(1)));
        assert_eq!(
            "é".repeat(ID_TEXT_LEN).parse::<SessionId>(),
            Err(ParseIdError::Alphabet)
        );
        assert_eq!(
            "AAAAAAAAAAAAAAAAAAAAA=".parse::<SessionId>(),
            Err(ParseIdError::Alphabet)
        );
        assert_eq!(
            "AAAAAAAAAAAAAAAAAAAA+/".parse::<SessionId>(),
            Err(ParseIdError::Alphabet)
        );
        // Non-canonical: the last character carries bits beyond the 128.
        assert_eq!(
            "AAAAAAAAAAAAAAAAAAAAAB".parse::<SessionId>(),
            Err(ParseIdError::Alphabet)
        );
        assert!("AAAAAAAAAAAAAAAAAAAAAA".parse::<SessionId>().is_ok());
    }

    #[test]
    fn u128_form_is_one_to_one() {
        let id = SessionId::random();
        assert_eq!(SessionId::from_u128(id.as_u128()), id);
    }
}
