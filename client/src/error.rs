//! The client's errors: one variant per thing a caller may want to handle.

use sessiond_proto::ErrorCode;
use sessiond_proto::wire::WireError;

/// Everything a sessiond call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No live session has this id (never existed, deleted or expired).
    #[error("session not found")]
    NotFound,
    /// A conditional write lost: the session is at another version.
    #[error("version conflict: the session is at version {current_version}")]
    Conflict {
        /// The session's version now.
        current_version: u64,
    },
    /// The session data (or a frame) is over the server's size limit; or
    /// the node's answer was over this client's `max_frame_bytes` (then the
    /// request was carried out, and its message says so).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The server refused the auth token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The server's memory bound is reached and it rejects writes.
    #[error("store full: {0}")]
    StoreFull(String),
    /// No node could take the request (down, unreachable, overloaded, or its
    /// own dependency such as Redis is down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request got no answer within the client's timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A write's answer was lost and no node could tell whether it was
    /// applied: it may or may not have been. Read the session to find out;
    /// sending the write again blindly could apply it twice. (Only writes
    /// end this way: the client re-sends a write whose answer was lost, with
    /// the same identity, to the nodes that can judge it, and answers its
    /// true outcome whenever one of them can tell.)
    #[error("the write may or may not have been applied: {0}")]
    Indeterminate(String),
    /// The server rejected the request as malformed (bad TTL, bad JSON).
    #[error("invalid request ({code}): {message}")]
    Invalid {
        /// The server's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The user is at the server's `--max-sessions-per-user` and the server
    /// rejects more.
    #[error("too many sessions for this user: {0}")]
    TooManySessions(String),
    /// The event log no longer holds the events after this cursor; resume
    /// after `oldest` (the events in between are lost to this reader).
    #[error("events after this cursor are no longer kept; the oldest cursor is {oldest}")]
    CursorExpired {
        /// The cursor to resume after.
        oldest: String,
    },
    /// The node keeps no event log (`--events off`, or Redis Cluster).
    #[error("the event log is off: {0}")]
    EventsOff(String),
    /// `update()` kept losing to concurrent writers.
    #[error("update gave up after {attempts} version conflicts")]
    TooManyConflicts {
        /// Attempts made.
        attempts: u32,
    },
    /// The session data could not be turned into or from `T`.
    #[error("session data does not match the type: {0}")]
    Serde(#[from] serde_json::Error),
    /// The server broke the protocol or answered with an unexpected message.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was configured wrongly.
    #[error("configuration error: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same call may simply be made again: it was not applied
    /// (`Unavailable`), or it is a call safe to repeat (a read, delete,
    /// touch, listing or revocation) that got no answer (`Timeout`; a
    /// write that gets no answer ends as [`Error::Indeterminate`], which is
    /// not retryable blindly).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        let WireError {
            code,
            message,
            current_version,
            oldest,
        } = error;
        match code {
            ErrorCode::NotFound => Self::NotFound,
            ErrorCode::VersionMismatch => Self::Conflict {
                current_version: current_version.unwrap_or(0),
            },
            ErrorCode::PayloadTooLarge => Self::TooLarge(message),
            ErrorCode::Unauthorized => Self::Unauthorized(message),
            ErrorCode::StoreFull => Self::StoreFull(message),
            ErrorCode::Unavailable | ErrorCode::Overloaded => Self::Unavailable(message),
            ErrorCode::Indeterminate => Self::Indeterminate(message),
            ErrorCode::TooManySessions => Self::TooManySessions(message),
            ErrorCode::EventsOff => Self::EventsOff(message),
            ErrorCode::CursorExpired => Self::CursorExpired {
                oldest: oldest.unwrap_or_default(),
            },
            ErrorCode::InvalidJson
            | ErrorCode::InvalidId
            | ErrorCode::InvalidTtl
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidUser
            | ErrorCode::InvalidCursor
            | ErrorCode::KeyReused => Self::Invalid { code, message },
            ErrorCode::UnknownRoute
            | ErrorCode::MethodNotAllowed
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::ProtocolError
            | ErrorCode::UnsupportedVersion
            | ErrorCode::RequestTimeout
            | ErrorCode::Internal => Self::Protocol(format!("{code}: {message}")),
        }
    }
}
