//! Handlers of `/v1/sessions`.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use sessiond_proto::http::{CreateRequest, PutRequest, TouchRequest};

use super::AppState;
use super::error::ApiError;
use super::extract::{BodyLimit, IdParam, MediaType, idempotency_key, if_match, json_body};
use crate::service::JsonData;
use crate::store::Session;

/// Room for the JSON envelope around the session data in a request body.
const ENVELOPE_BYTES: usize = 4096;

fn body_limit(state: &AppState) -> BodyLimit {
    BodyLimit {
        bytes: state.service.config().max_session_bytes + ENVELOPE_BYTES,
        timeout: state.body_timeout,
    }
}

/// `POST /v1/sessions`
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: CreateRequest = json_body(
        &headers,
        body,
        MediaType::Json,
        body_limit(&state),
        Some(CreateRequest::default),
    )
    .await?;
    let data = match request.data {
        Some(raw) => JsonData::from_raw(raw)?,
        None => JsonData::empty_object(),
    };
    let session = state
        .service
        .create(data, request.ttl_secs, None, idempotency_key(&headers)?)
        .await?;
    Ok(created(&session))
}

/// `GET /v1/sessions/{id}`
pub async fn get(
    State(state): State<AppState>,
    IdParam(id): IdParam,
) -> Result<Response, ApiError> {
    let session = state.service.get(&id).await?;
    Ok(session_response(StatusCode::OK, &session))
}

/// `PUT /v1/sessions/{id}`
pub async fn put(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let request: PutRequest =
        json_body(&headers, body, MediaType::Json, body_limit(&state), None).await?;
    let data = JsonData::from_raw(request.data)?;
    let session = state
        .service
        .put(
            &id,
            data,
            request.ttl_secs,
            expected,
            idempotency_key(&headers)?,
        )
        .await?;
    Ok(session_response(StatusCode::OK, &session))
}

/// `PATCH /v1/sessions/{id}` with an RFC 7386 merge patch.
pub async fn patch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let patch: Box<RawValue> = json_body(
        &headers,
        body,
        MediaType::MergePatch,
        body_limit(&state),
        None,
    )
    .await?;
    let session = state
        .service
        .patch(&id, &patch, None, expected, idempotency_key(&headers)?)
        .await?;
    Ok(session_response(StatusCode::OK, &session))
}

/// `DELETE /v1/sessions/{id}`
pub async fn delete(
    State(state): State<AppState>,
    IdParam(id): IdParam,
) -> Result<StatusCode, ApiError> {
    state.service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sessions/{id}/touch`
pub async fn touch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: TouchRequest = json_body(
        &headers,
        body,
        MediaType::Json,
        BodyLimit {
            bytes: ENVELOPE_BYTES,
            timeout: state.body_timeout,
        },
        Some(TouchRequest::default),
    )
    .await?;
    let session = state.service.touch(&id, request.ttl_secs).await?;
    Ok(session_response(StatusCode::OK, &session))
}

/// `POST /v1/sessions/{id}/rotate`
pub async fn rotate(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state
        .service
        .rotate(&id, None, idempotency_key(&headers)?)
        .await?;
    Ok(created(&session))
}

fn created(session: &Session) -> Response {
    let mut response = session_response(StatusCode::CREATED, session);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sessions/{}", session.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn session_response(status: StatusCode, session: &Session) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        session_json(session),
    )
        .into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", session.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// The session as `SessionBody` JSON. Written by hand so the stored data,
/// already known to be valid JSON, is copied once and never re-parsed.
fn session_json(session: &Session) -> Vec<u8> {
    let head = format!(
        r#"{{"id":"{}","version":{},"created_at":"{}","updated_at":"{}","expires_at":"{}","ttl_secs":{},"data":"#,
        session.id,
        session.version,
        rfc3339(session.created_at_ms),
        rfc3339(session.updated_at_ms),
        rfc3339(session.expires_at_ms),
        session.ttl_ms / 1000,
    );
    let mut json = Vec::with_capacity(head.len() + session.data.len() + 1);
    json.extend_from_slice(head.as_bytes());
    json.extend_from_slice(&session.data);
    json.push(b'}');
    json
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}
