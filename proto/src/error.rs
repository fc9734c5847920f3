//! Machine-readable error codes, shared by the HTTP API and the binary protocol.

use serde::{Deserialize, Serialize};

/// What went wrong, as a stable snake_case code. The HTTP API sends it as
/// `{"error": {"code": ...}}` and the binary protocol in its error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// The body is not valid JSON or not the expected shape.
    InvalidJson,
    /// The session id is not a well-formed id.
    InvalidId,
    /// The TTL is zero or above the server's maximum.
    InvalidTtl,
    /// Some other part of the request is malformed (a header, a patch).
    InvalidRequest,
    /// The bearer token is missing or wrong.
    Unauthorized,
    /// No live session has this id (never existed, deleted or expired).
    NotFound,
    /// No such route.
    UnknownRoute,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The expected version does not match the session's current version.
    VersionMismatch,
    /// The request body or the session data is over the size limit.
    PayloadTooLarge,
    /// The request has the wrong content type.
    UnsupportedMediaType,
    /// The store has no room for the write and its policy is to reject.
    StoreFull,
    /// A dependency (such as Redis) is unreachable; try again later.
    Unavailable,
    /// The node is shutting down or over its in-flight limit; try again.
    Overloaded,
    /// The binary protocol was violated (bad frame, bad handshake).
    ProtocolError,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// A bug in sessiond; the message says more.
    Internal,
    /// A write was sent again after its answer was lost, and no node can
    /// tell whether the first attempt was applied: it may or may not have
    /// been. The caller must read the session to find out; re-sending
    /// blindly could apply it twice.
    Indeterminate,
    /// The request body did not arrive in time (HTTP only).
    RequestTimeout,
    /// A user name is empty, over 256 bytes, or has control characters.
    InvalidUser,
    /// The user is at `--max-sessions-per-user` and the policy is to reject.
    TooManySessions,
    /// An event cursor older than what the log retains (events after it
    /// were dropped): resume from the `oldest` cursor the error carries.
    CursorExpired,
    /// An event cursor that is not one this log hands out.
    InvalidCursor,
    /// The event log is off (`--events off`).
    EventsOff,
    /// The write's `Idempotency-Key` (write tag) was sent with another
    /// write already; nothing was changed.
    KeyReused,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidId => "invalid_id",
            Self::InvalidTtl => "invalid_ttl",
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::UnknownRoute => "unknown_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::VersionMismatch => "version_mismatch",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::StoreFull => "store_full",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::ProtocolError => "protocol_error",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Internal => "internal",
            Self::Indeterminate => "indeterminate",
            Self::RequestTimeout => "request_timeout",
            Self::InvalidUser => "invalid_user",
            Self::TooManySessions => "too_many_sessions",
            Self::CursorExpired => "cursor_expired",
            Self::InvalidCursor => "invalid_cursor",
            Self::EventsOff => "events_off",
            Self::KeyReused => "key_reused",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::InvalidId
            | Self::InvalidTtl
            | Self::InvalidRequest
            | Self::ProtocolError
            | Self::UnsupportedVersion
            | Self::InvalidUser
            | Self::InvalidCursor => 400,
            Self::CursorExpired => 410,
            Self::Unauthorized => 401,
            Self::NotFound | Self::UnknownRoute | Self::EventsOff => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::VersionMismatch => 412,
            Self::Indeterminate | Self::TooManySessions | Self::KeyReused => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable | Self::Overloaded => 503,
            Self::StoreFull => 507,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_serde_name() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::VersionMismatch,
            ErrorCode::StoreFull,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::RequestTimeout,
        ] {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
