//! Handlers of `/v1/sessions`.
//!
//! Extractors run in argument order, so a request is checked in a fixed
//! order: the id, then the query (which none of these routes takes), then
//! `If-Match`, then the body. A write's
//! `Idempotency-Key` is taken as a `Result` and checked after the body (and
//! the data in it), so that a request with several faults keeps getting the
//! code it always got.

use axum::extract::State;
use axum::http::StatusCode;
use sessiond_proto::UserName;
use sessiond_proto::http::{CreateRequest, PutRequest, RotateRequest, TouchRequest};

use super::body::{JsonBody, MergePatch};
use super::error::ApiError;
use super::extract::{IdParam, IdempotencyKey, IfMatch, NoQuery};
use super::openapi::errors;
use super::response::{SessionCreated, SessionOk, SessionResponse};
use super::state::AppState;
use crate::service::{JsonData, ServiceError};

errors!(
    /// Failures of a create.
    CreateErrors: InvalidJson, InvalidTtl, InvalidUser, InvalidRequest, Unauthorized,
    NotFound, RequestTimeout, TooManySessions, Indeterminate, KeyReused, PayloadTooLarge,
    UnsupportedMediaType, Unavailable, StoreFull
);

/// `POST /v1/sessions`: a new session under a fresh id.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    params(IdempotencyKey),
    request_body(content = Option<CreateRequest>, content_type = "application/json",
        description = "Optional: an empty body creates `{}` with the default TTL."),
    responses(SessionCreated, CreateErrors),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    _: NoQuery,
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

errors!(
    /// Failures of a read.
    GetErrors: InvalidId, InvalidRequest, Unauthorized, NotFound, Unavailable
);

/// `GET /v1/sessions/{id}`: the session; the read pushes its expiry.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(IdParam),
    responses(SessionOk, GetErrors),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
) -> Result<SessionResponse, ApiError> {
    Ok(SessionResponse::ok(state.service.get(&id).await?))
}

errors!(
    /// Failures of a replacement or a merge patch.
    WriteErrors: InvalidJson, InvalidId, InvalidTtl, InvalidRequest, Unauthorized, NotFound,
    RequestTimeout, Indeterminate, VersionMismatch, KeyReused, PayloadTooLarge,
    UnsupportedMediaType, Unavailable, StoreFull
);

/// `PUT /v1/sessions/{id}`: replaces the data whole (a compare-and-set with
/// `If-Match`).
#[utoipa::path(
    put,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(IdParam, IfMatch, IdempotencyKey),
    request_body(content = PutRequest, content_type = "application/json"),
    responses(SessionOk, WriteErrors),
    security(("bearer" = [])),
)]
pub async fn put(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
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

/// `PATCH /v1/sessions/{id}` with an RFC 7386 merge patch, applied
/// atomically (`null` removes a key).
#[utoipa::path(
    patch,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(IdParam, IfMatch, IdempotencyKey),
    request_body(content = serde_json::Value, content_type = "application/merge-patch+json",
        description = "An RFC 7386 merge patch of the session's data.",
        example = json!({"cart": ["apple", "pear"], "coupon": null})),
    responses(SessionOk, WriteErrors),
    security(("bearer" = [])),
)]
pub async fn patch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
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

errors!(
    /// Failures of a delete.
    DeleteErrors: InvalidId, InvalidRequest, Unauthorized, Unavailable
);

/// `DELETE /v1/sessions/{id}`: idempotent.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(IdParam),
    responses(
        (status = 204, description = "The session is gone (also when it already was)."),
        DeleteErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
) -> Result<StatusCode, ApiError> {
    state.service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

errors!(
    /// Failures of a touch.
    TouchErrors: InvalidJson, InvalidId, InvalidTtl, InvalidRequest, Unauthorized, NotFound,
    RequestTimeout, PayloadTooLarge, UnsupportedMediaType, Unavailable
);

/// `POST /v1/sessions/{id}/touch`: pushes the expiry without a write (the
/// version is unchanged), optionally with a new idle TTL.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/touch",
    tag = "sessions",
    params(IdParam),
    request_body(content = Option<TouchRequest>, content_type = "application/json",
        description = "Optional: an empty body keeps the TTL."),
    responses(SessionOk, TouchErrors),
    security(("bearer" = [])),
)]
pub async fn touch(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
    JsonBody(request): JsonBody<TouchRequest>,
) -> Result<SessionResponse, ApiError> {
    let session = state.service.touch(&id, request.ttl_secs).await?;
    Ok(SessionResponse::ok(session))
}

errors!(
    /// Failures of a rotation.
    RotateErrors: InvalidJson, InvalidId, InvalidUser, InvalidRequest, Unauthorized, NotFound,
    RequestTimeout, TooManySessions, Indeterminate, KeyReused, PayloadTooLarge,
    UnsupportedMediaType, Unavailable, StoreFull
);

/// `POST /v1/sessions/{id}/rotate`, with an optional body `{"user": ...}`
/// that binds the session to a user in the same step (a login): the same
/// data under a new id, the old id is 404 from now on.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/rotate",
    tag = "sessions",
    params(IdParam, IdempotencyKey),
    request_body(content = Option<RotateRequest>, content_type = "application/json",
        description = "Optional: without a user the session keeps its user."),
    responses(SessionCreated, RotateErrors),
    security(("bearer" = [])),
)]
pub async fn rotate(
    State(state): State<AppState>,
    IdParam(id): IdParam,
    _: NoQuery,
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
