//! The answer of the session routes: the session as
//! [`SessionBody`] JSON, its version as the `ETag`, and on creation its
//! `Location`.

use std::time::{Duration, UNIX_EPOCH};

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use sessiond_proto::ErrorCode;
use sessiond_proto::http::SessionBody;
use utoipa::openapi::response::{self as doc, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, ToSchema};

use super::error::ApiError;
use super::openapi::text_header;
use crate::store::Session;

/// A session answered with its `ETag`.
#[derive(Debug)]
pub struct SessionResponse {
    status: StatusCode,
    session: Session,
}

impl SessionResponse {
    /// `200 OK` with the session.
    pub fn ok(session: Session) -> Self {
        Self {
            status: StatusCode::OK,
            session,
        }
    }

    /// `201 Created` with the session and its `Location`.
    pub fn created(session: Session) -> Self {
        Self {
            status: StatusCode::CREATED,
            session,
        }
    }
}

impl IntoResponse for SessionResponse {
    fn into_response(self) -> Response {
        let session = &self.session;
        let json = match body_json(session) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(id = %session.id, %err, "stored session data is not JSON");
                return ApiError::new(ErrorCode::Internal, "internal error; the server logged it")
                    .into_response();
            }
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", session.version)) {
            headers.insert(header::ETAG, etag);
        }
        if self.status == StatusCode::CREATED
            && let Ok(location) = HeaderValue::from_str(&format!("/v1/sessions/{}", session.id))
        {
            headers.insert(header::LOCATION, location);
        }
        response
    }
}

/// The documented answer of a read or write: `200 OK`, the session and its
/// `ETag`.
pub struct SessionOk;

impl IntoResponses for SessionOk {
    fn responses() -> BTreeMap<String, RefOr<doc::Response>> {
        documented(StatusCode::OK, "The session after the operation.")
    }
}

/// The documented answer of a create or rotation: `201 Created`, the
/// session, its `ETag` and its `Location`.
pub struct SessionCreated;

impl IntoResponses for SessionCreated {
    fn responses() -> BTreeMap<String, RefOr<doc::Response>> {
        documented(StatusCode::CREATED, "The session under its new id.")
    }
}

/// What [`SessionResponse`] sends with `status`, as OpenAPI.
fn documented(status: StatusCode, description: &str) -> BTreeMap<String, RefOr<doc::Response>> {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(
                    SessionBody::<Box<RawValue>>::name(),
                )))
                .build(),
        )
        .header(
            "ETag",
            text_header("The session's version, quoted (`\"1\"`): send it back in `If-Match`."),
        );
    if status == StatusCode::CREATED {
        response = response.header(
            "Location",
            text_header("`/v1/sessions/{id}` of the session."),
        );
    }
    BTreeMap::from([(status.as_u16().to_string(), RefOr::T(response.build()))])
}

/// The session as `SessionBody` JSON. The stored data, JSON text already,
/// is borrowed as a `&RawValue` (checked, not copied or rebuilt) and
/// copied once, into the answer.
fn body_json(session: &Session) -> Result<Vec<u8>, serde_json::Error> {
    let data: &RawValue = serde_json::from_slice(&session.data)?;
    let body = SessionBody {
        id: session.id.to_string(),
        version: session.version,
        created_at: rfc3339(session.created_at_ms),
        updated_at: rfc3339(session.updated_at_ms),
        expires_at: rfc3339(session.expires_at_ms),
        ttl_secs: session.ttl_ms / 1000,
        user: session.user.as_ref().map(ToString::to_string),
        data,
    };
    let mut json = Vec::with_capacity(session.data.len() + 192);
    serde_json::to_writer(&mut json, &body)?;
    Ok(json)
}

/// The last millisecond RFC 3339 can spell: 9999-12-31T23:59:59.999Z.
const LAST_SPELLED_MS: u64 = 253_402_300_799_999;

/// RFC 3339 UTC with milliseconds; a later time (a session another node
/// wrote to Redis with a longer TTL than this one allows) as the last
/// time it can spell, rather than a formatter's panic.
pub fn rfc3339(unix_ms: u64) -> String {
    let spelled = unix_ms.min(LAST_SPELLED_MS);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(spelled)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_is_spelled_without_a_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(LAST_SPELLED_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
