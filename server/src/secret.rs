//! Secrets that never show in logs or `--check-config`, and the one way a
//! presented token is compared with the expected one.

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// A secret that `Debug` (and so `--check-config` and logs) never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Whether `presented` is `expected`, in a time that tells nothing of
/// `expected`, its length included: their SHA-256 digests are compared in
/// constant time (comparing the tokens themselves returns at once when the
/// lengths differ).
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    let (presented, expected) = (
        digest(&SHA256, presented.as_bytes()),
        digest(&SHA256, expected.as_bytes()),
    );
    bool::from(presented.as_ref().ct_eq(expected.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_matches() {
        assert!(tokens_match("s3cret", "s3cret"));
        for other in ["", "s3cre", "s3cret ", "S3cret", "s3cret-and-more"] {
            assert!(!tokens_match(other, "s3cret"), "{other:?}");
        }
    }
}
