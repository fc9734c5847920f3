//! Secrets that never show in logs or `--check-config`, and the one way a
//! presented token is compared with the expected one.

use axum::http::{HeaderMap, header};
use ring::digest::{Digest, SHA256, digest};
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

/// The token a server expects, kept as its SHA-256 digest (taken once, at
/// start-up): [`ExpectedToken::matches`] tells whether a presented token is
/// it in a time that tells nothing of it, its length included (comparing
/// the tokens themselves returns at once when the lengths differ).
#[derive(Clone, Copy)]
pub struct ExpectedToken(Digest);

impl ExpectedToken {
    /// The token `secret` holds.
    pub fn new(secret: &Secret) -> Self {
        Self(digest(&SHA256, secret.expose().as_bytes()))
    }

    /// Whether `presented` is the expected token: the digests compared in
    /// constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = digest(&SHA256, presented.as_bytes());
        bool::from(presented.as_ref().ct_eq(self.0.as_ref()))
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case, as RFC 9110 has it), or `None` without one, or with two
/// `Authorization` lines (a list, which the header is not: whichever line
/// was read first would decide).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut lines = headers.get_all(header::AUTHORIZATION).iter();
    let line = lines.next().filter(|_| lines.next().is_none());
    line.and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

impl std::fmt::Debug for ExpectedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_matches() {
        let expected = ExpectedToken::new(&Secret::new("s3cret".to_owned()));
        assert!(expected.matches("s3cret"));
        for other in ["", "s3cre", "s3cret ", "S3cret", "s3cret-and-more"] {
            assert!(!expected.matches(other), "{other:?}");
        }
        assert_eq!(format!("{expected:?}"), "\"<redacted>\"");
    }
}
