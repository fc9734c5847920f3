//! JSON bodies of HTTP API v1.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ErrorCode;

/// `POST /v1/sessions`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The session's data; `{}` when absent or `null`.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Idle TTL in seconds; the server's default when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The user the session belongs to (1 to 256 bytes), if any.
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /v1/sessions/{id}/rotate` (the body is optional).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Bind the session to this user in the same step (a login); without
    /// it the session keeps its user.
    #[serde(default)]
    pub user: Option<String>,
}

/// `GET /v1/users/{user}/sessions`.
#[derive(Debug, Deserialize, Serialize)]
pub struct UserSessionsBody {
    /// The user.
    pub user: String,
    /// The user's live sessions, oldest first.
    pub sessions: Vec<SessionSummary>,
}

/// A session in a user's listing (without its data).
#[derive(Debug, Deserialize, Serialize)]
pub struct SessionSummary {
    /// The session id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// When its data was last written (RFC 3339, UTC).
    pub updated_at: String,
    /// When it expires unless used again (RFC 3339, UTC).
    pub expires_at: String,
}

/// `DELETE /v1/users/{user}/sessions`.
#[derive(Debug, Deserialize, Serialize)]
pub struct RevokedBody {
    /// How many sessions were deleted.
    pub revoked: u64,
}

/// `PUT /v1/sessions/{id}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    /// The session's new data (replaces the old data whole).
    pub data: Box<RawValue>,
    /// A new idle TTL in seconds; the session keeps its TTL when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/sessions/{id}/touch`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TouchRequest {
    /// A new idle TTL in seconds; the session keeps its TTL when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A session as the HTTP API shows it. The server fills `data` with the
/// stored JSON text borrowed as a `&RawValue`; clients read it into the
/// default `Box<RawValue>` (or any type of their own).
#[derive(Debug, Deserialize, Serialize)]
pub struct SessionBody<D = Box<RawValue>> {
    /// The session id.
    pub id: String,
    /// 1 on create, +1 on every write.
    pub version: u64,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the session's data was last written (RFC 3339, UTC).
    pub updated_at: String,
    /// When the session expires unless used again (RFC 3339, UTC).
    pub expires_at: String,
    /// The idle TTL: each use pushes `expires_at` to now + this.
    pub ttl_secs: u64,
    /// The user the session belongs to (`null` when none).
    pub user: Option<String>,
    /// The session's data (last, so that the metadata reads first).
    pub data: D,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Code, human message and, for version conflicts, the current version.
#[derive(Debug, Deserialize, Serialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The session's current version, on `version_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// The oldest cursor still retained, on `cursor_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
}

/// `GET /v1/events`.
#[derive(Debug, Deserialize, Serialize)]
pub struct EventsBody {
    /// The events, in commit order.
    pub events: Vec<EventJson>,
    /// The cursor to pass as `after` next.
    pub next: String,
}

/// One event as the HTTP API shows it.
#[derive(Debug, Deserialize, Serialize)]
pub struct EventJson {
    /// Resume after this event with `after=<cursor>` (or `Last-Event-ID`).
    pub cursor: String,
    /// What happened.
    pub kind: crate::EventKind,
    /// The session.
    pub id: String,
    /// The user the session belonged to (`null` when none).
    pub user: Option<String>,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// The id a rotated session had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_id: Option<String>,
}
