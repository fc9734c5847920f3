//! Handlers of `/v1/users/{user}/sessions`: a user's sessions, listed and
//! revoked.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use serde::Deserialize;
use sessiond_proto::http::{RevokedBody, SessionSummary, UserSessionsBody};
use sessiond_proto::{ErrorCode, SessionId, UserName};

use super::error::ApiError;
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

/// `?except={id}` of a revocation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeQuery {
    /// A session to keep.
    except: Option<String>,
}

/// `GET /v1/users/{user}/sessions`
pub async fn list(
    State(state): State<AppState>,
    UserParam(user): UserParam,
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

/// `DELETE /v1/users/{user}/sessions[?except={id}]`
pub async fn revoke(
    State(state): State<AppState>,
    UserParam(user): UserParam,
    query: Result<Query<RevokeQuery>, QueryRejection>,
) -> Result<Json<RevokedBody>, ApiError> {
    let Query(query) = query
        .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()))?;
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
