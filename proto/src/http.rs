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
}
