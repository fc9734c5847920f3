//! JSON bodies of HTTP API v1.
//!
//! With the `openapi` feature each type also derives `utoipa::ToSchema`,
//! with the constraints the server checks (the server's OpenAPI document
//! is generated from them); the wire format is the same either way.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ErrorCode;

/// `POST /v1/sessions`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(
    example = json!({"data": {"user": "alice", "cart": []}, "ttl_secs": 1800})
))]
pub struct CreateRequest {
    /// The session's data, any JSON value; `{}` when absent or `null`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
    pub data: Option<Box<RawValue>>,
    /// Idle TTL in seconds; the server's default when absent.
    #[serde(default, deserialize_with = "whole_seconds")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_secs: Option<u64>,
    /// The user the session belongs to (1 to 256 bytes), if any.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::UserName>))]
    pub user: Option<String>,
}

/// `POST /v1/sessions/{id}/rotate` (the body is optional).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(
    example = json!({"user": "alice@example.com"})
))]
pub struct RotateRequest {
    /// Bind the session to this user in the same step (a login); without
    /// it the session keeps its user.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::UserName>))]
    pub user: Option<String>,
}

/// `GET /v1/users/{user}/sessions`.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserSessionsBody {
    /// The user.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::UserName))]
    pub user: String,
    /// The user's live sessions, oldest first.
    pub sessions: Vec<SessionSummary>,
}

/// A session in a user's listing (without its data).
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionSummary {
    /// The session id.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::SessionId))]
    pub id: String,
    /// Its version.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: u64,
    /// When it was created (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// When its data was last written (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    /// When it expires unless used again (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: String,
}

/// `DELETE /v1/users/{user}/sessions`.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(example = json!({"revoked": 2})))]
pub struct RevokedBody {
    /// How many sessions were deleted.
    pub revoked: u64,
}

/// `PUT /v1/sessions/{id}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(
    example = json!({"data": {"user": "alice", "cart": ["apple"]}})
))]
pub struct PutRequest {
    /// The session's new data, any JSON value (replaces the old data whole).
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: Box<RawValue>,
    /// A new idle TTL in seconds; the session keeps its TTL when absent.
    #[serde(default, deserialize_with = "whole_seconds")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/sessions/{id}/touch`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(example = json!({"ttl_secs": 3600})))]
pub struct TouchRequest {
    /// A new idle TTL in seconds; the session keeps its TTL when absent.
    #[serde(default, deserialize_with = "whole_seconds")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_secs: Option<u64>,
}

/// A session as the HTTP API shows it. The server fills `data` with the
/// stored JSON text borrowed as a `&RawValue`; clients read it into the
/// default `Box<RawValue>` (or any type of their own).
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = SessionBody, bound = "", example = json!({
    "id": "pB0x4b2ygQn7a8lrt5m1Xw", "version": 1,
    "created_at": "2026-11-25T09:31:29.058Z", "updated_at": "2026-11-25T09:31:29.058Z",
    "expires_at": "2026-11-25T10:01:29.058Z", "ttl_secs": 1800, "user": null,
    "data": {"user": "alice", "cart": []}
})))]
pub struct SessionBody<D = Box<RawValue>> {
    /// The session id.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::SessionId))]
    pub id: String,
    /// 1 on create, +1 on every write.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub version: u64,
    /// When the session was created (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// When the session's data was last written (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    /// When the session expires unless used again (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: String,
    /// The idle TTL: each use pushes `expires_at` to now + this.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_secs: u64,
    /// The user the session belongs to (`null` when none).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::UserName>))]
    pub user: Option<String>,
    /// The session's data (last, so that the metadata reads first).
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub data: D,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(example = json!({
    "error": {"code": "not_found", "message": "no live session has this id (it never existed, was deleted or expired)"}
})))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Code, human message and, for version conflicts, the current version.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The session's current version, on `version_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub current_version: Option<u64>,
    /// The oldest cursor still retained, on `cursor_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
}

/// `GET /v1/events`.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(example = json!({
    "events": [{"cursor": "1796529528416-0-2406849938060285720", "kind": "expired", "id": "pB0x4b2ygQn7a8lrt5m1Xw",
        "user": "alice", "at": "2026-12-01T11:12:21.327Z"}],
    "next": "1796529528416-0-2406849938060285720"
})))]
pub struct EventsBody {
    /// The events, in commit order.
    pub events: Vec<EventJson>,
    /// The cursor to pass as `after` next.
    pub next: String,
}

/// One event as the HTTP API shows it.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventJson {
    /// Resume after this event with `after=<cursor>` (or `Last-Event-ID`).
    pub cursor: String,
    /// What happened.
    pub kind: crate::EventKind,
    /// The session (its new id, for `rotated`).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::SessionId))]
    pub id: String,
    /// The user the session belonged to (`null` when none).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::UserName>))]
    pub user: Option<String>,
    /// When (RFC 3339, UTC).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub at: String,
    /// The id a rotated session had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::SessionId>))]
    pub old_id: Option<String>,
}

/// A `ttl_secs` as JSON may write a whole number: `1800`, or `1800.0` (as
/// Python's `json` writes a float, and as JSON Schema's `integer` allows);
/// `null` is none. One past `u64` (however written) is taken as
/// `u64::MAX`, past any `--max-ttl`; a fraction or a negative number is
/// refused.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|secs| secs.fract() == 0.0 && *secs >= 0.0)
            // `as` saturates: a whole number past `u64` is its largest.
            .map(|secs| secs as u64)
    });
    whole.map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "ttl_secs must be a whole number of seconds, got {number}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_secs_takes_whole_numbers_written_either_way() {
        let ttl = |json: &str| {
            serde_json::from_str::<TouchRequest>(json)
                .map(|request| request.ttl_secs)
                .map_err(|err| err.to_string())
        };
        assert_eq!(ttl(r#"{"ttl_secs": 1800}"#), Ok(Some(1800)));
        assert_eq!(ttl(r#"{"ttl_secs": 1800.0}"#), Ok(Some(1800)));
        assert_eq!(ttl(r#"{"ttl_secs": null}"#), Ok(None));
        assert_eq!(ttl("{}"), Ok(None));
        assert!(ttl(r#"{"ttl_secs": 1.5}"#).is_err());
        assert!(ttl(r#"{"ttl_secs": -1}"#).is_err());
        assert_eq!(ttl(r#"{"ttl_secs": 1e300}"#), Ok(Some(u64::MAX)));
        let past_u64 = r#"{"ttl_secs": 99999999999999999999}"#;
        assert_eq!(ttl(past_u64), Ok(Some(u64::MAX)));
        assert!(ttl(r#"{"ttl_secs": "60"}"#).is_err());
    }
}
