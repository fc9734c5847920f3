//! Handlers of `/v1/users/{user}/sessions`: a user's sessions, listed and
//! revoked.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::Deserialize;
use sessiond_proto::http::{RevokedBody, SessionSummary, UserSessionsBody};
use sessiond_proto::{ErrorCode, SessionId, UserName};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::{IntoParams, PartialSchema};

use super::error::ApiError;
use super::extract::{ApiQuery, NoQuery};
use super::openapi::{errors, parameter};
use super::response::rfc3339;
use super::state::AppState;
use crate::service::ServiceError;

/// The user of the route (percent-decoded), checked.
#[derive(Debug, Clone)]
pub struct UserParam(pub UserName);

impl<S: Send + Sync> FromRequestParts<S> for UserParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection: PathRejection| {
                ApiError::new(ErrorCode::InvalidUser, rejection.body_text())
            })?;
        UserName::parse(&text)
            .map(UserParam)
            .map_err(|err| ApiError::from(ServiceError::InvalidUser(err)))
    }
}

impl IntoParams for UserParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "user",
            ParameterIn::Path,
            true,
            UserName::schema(),
            "The user, percent-encoded (400 `invalid_user` when malformed).",
        )]
    }
}

/// `?except={id}` of a revocation.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// A session to keep (the caller's own, to sign out the other devices).
    #[param(value_type = Option<SessionId>)]
    except: Option<String>,
}

errors!(
    /// Failures of a listing.
    ListErrors: InvalidUser, InvalidRequest, Unauthorized, Unavailable
);

errors!(
    /// Failures of a revocation.
    RevokeErrors: InvalidUser, InvalidId, InvalidRequest, Unauthorized, Indeterminate,
        Unavailable
);

/// `GET /v1/users/{user}/sessions`: the user's live sessions, oldest first.
#[utoipa::path(
    get,
    path = "/v1/users/{user}/sessions",
    tag = "users",
    params(UserParam),
    responses(
        (status = 200, description = "The user's live sessions (without their data), oldest first.",
            body = UserSessionsBody),
        ListErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    UserParam(user): UserParam,
    _: NoQuery,
) -> Result<Json<UserSessionsBody>, ApiError> {
    let sessions = state.service.user_sessions(&user).await?;
    Ok(Json(UserSessionsBody {
        user: user.to_string(),
        sessions: sessions
            .into_iter()
            .map(|session| SessionSummary {
                id: session.id.to_string(),
                version: session.version,
                created_at: rfc3339(session.created_at_ms),
                updated_at: rfc3339(session.updated_at_ms),
                expires_at: rfc3339(session.expires_at_ms),
            })
            .collect(),
    }))
}

/// `DELETE /v1/users/{user}/sessions[?except={id}]`: ends every session of
/// the user but `except`.
#[utoipa::path(
    delete,
    path = "/v1/users/{user}/sessions",
    tag = "users",
    params(UserParam, RevokeQuery),
    responses(
        (status = 200, description = "How many sessions were deleted (0 when the user had none).",
            body = RevokedBody),
        RevokeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn revoke(
    State(state): State<AppState>,
    UserParam(user): UserParam,
    ApiQuery(query): ApiQuery<RevokeQuery>,
) -> Result<Json<RevokedBody>, ApiError> {
    let except = query
        .except
        .map(|text| text.parse::<SessionId>())
        .transpose()
        .map_err(|err| {
            ApiError::new(
                ErrorCode::InvalidId,
                format!("malformed session id in except: {err}"),
            )
        })?;
    let revoked = state.service.revoke_user(&user, except).await?;
    Ok(Json(RevokedBody { revoked }))
}

#[cfg(test)]
mod tests {
    use utoipa::IntoResponses;

    use super::*;

    #[test]
    fn a_revocation_documents_its_indeterminate_answer() {
        // With Redis, a deletion whose command got no answer ends the
        // revocation with 409 `indeterminate`.
        let responses = RevokeErrors::responses();
        assert!(responses.contains_key("409"), "{:?}", responses.keys());
    }
}
