//! User names: who a session belongs to.

use std::fmt;
use std::sync::Arc;

/// Longest user name, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// A user name: 1 to 256 bytes of UTF-8 without control characters.
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(Arc<str>);

/// Why a string is not a user name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUser {
    /// Empty or over [`MAX_USER_BYTES`].
    #[error("a user name has 1 to {MAX_USER_BYTES} bytes, this one has {0}")]
    Length(usize),
    /// Has a control character.
    #[error("a user name has no control characters")]
    Control,
}

impl UserName {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<Self, InvalidUser> {
        if name.is_empty() || name.len() > MAX_USER_BYTES {
            return Err(InvalidUser::Length(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidUser::Control);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_1_to_256_bytes_without_control_characters() {
        assert_eq!(
            UserName::parse("alice").map(|n| n.to_string()),
            Ok("alice".into())
        );
        assert!(UserName::parse("Zoë @ example.com").is_ok());
        assert_eq!(UserName::parse(""), Err(InvalidUser::Length(0)));
        assert!(UserName::parse(&"a".repeat(256)).is_ok());
        assert_eq!(
            UserName::parse(&"a".repeat(257)),
            Err(InvalidUser::Length(257))
        );
        assert_eq!(UserName::parse("a\nb"), Err(InvalidUser::Control));
    }
}
