//! Handlers of `/v1/sessions`.
//!
//! Extractors run in argument order, so a request is checked in a fixed
//! order: the id, then `If-Match`, then the body. A write's
//! `Idempotency-Key` is taken as a `Result` and checked after the body (and
//! the data in it), so that a request with several faults keeps getting the
//! code it always got.

use axum::extract::State;
use axum::http::StatusCode;
use sessiond_proto::UserName;
use sessiond_proto::http::{CreateRequest, PutRequest, RotateRequest, TouchRequest};

use super::body::{JsonBody, MergePatch};
use super::error::ApiError;
use super::extract::{IdParam, IdempotencyKey, IfMatch};
use super::response::SessionResponse;
use super::state::AppState;
use crate::service::{JsonData, ServiceError};

/// `POST /v1/sessions`
pub async fn create(
    State(state): State<AppState>,
    key: Result<IdempotencyKey, ApiError>,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<SessionResponse, ApiError> {
    let data = match request.data {
        Some(raw) => JsonData::from_raw(raw)?,
        None => JsonData::empty_object(),
    };
    let user = user_name(request.user)?;
    let session = state
        .service
        .create(data, request.ttl_secs, None, key?.0, user)
        .await?;
    Ok(SessionResponse::created(session))
}

/// `GET /v1/sessions/{id}`
pub async fn get(
    State(state): State<AppState>,
    IdParam(id): IdParam,
) -> Result<SessionResponse, ApiError> {
    Ok(SessionResponse::ok(state.service.get(&id).await?))
}

/// `PUT /v1/sessions/{id}`
pub async fn put(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    IfMatch(expected): IfMatch,
    key: Result<IdempotencyKey, ApiError>,
    JsonBody(request): JsonBody<PutRequest>,
) -> Result<SessionResponse, ApiError> {
    let data = JsonData::from_raw(request.data)?;
    let session = state
        .service
        .put(&id, data, request.ttl_secs, expected, key?.0)
        .await?;
    Ok(SessionResponse::ok(session))
}

/// `PATCH /v1/sessions/{id}` with an RFC 7386 merge patch.
pub async fn patch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    IfMatch(expected): IfMatch,
    key: Result<IdempotencyKey, ApiError>,
    MergePatch(patch): MergePatch,
) -> Result<SessionResponse, ApiError> {
    let session = state
        .service
        .patch(&id, &patch, None, expected, key?.0)
        .await?;
    Ok(SessionResponse::ok(session))
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
    JsonBody(request): JsonBody<TouchRequest>,
) -> Result<SessionResponse, ApiError> {
    let session = state.service.touch(&id, request.ttl_secs).await?;
    Ok(SessionResponse::ok(session))
}

/// `POST /v1/sessions/{id}/rotate`, with an optional body `{"user": ...}`
/// that binds the session to a user in the same step (a login).
pub async fn rotate(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    key: Result<IdempotencyKey, ApiError>,
    JsonBody(request): JsonBody<RotateRequest>,
) -> Result<SessionResponse, ApiError> {
    let user = user_name(request.user)?;
    let session = state.service.rotate(&id, None, key?.0, user).await?;
    Ok(SessionResponse::created(session))
}

/// A user name from a request body, checked.
fn user_name(user: Option<String>) -> Result<Option<UserName>, ApiError> {
    user.map(|user| UserName::parse(&user))
        .transpose()
        .map_err(|err| ApiError::from(ServiceError::InvalidUser(err)))
}
