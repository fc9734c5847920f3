//! Bearer-token authentication of `/v1`, compared in constant time.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sessiond_proto::ErrorCode;

use super::error::ApiError;
use super::state::AppState;
use crate::secret::bearer_token;

/// Lets the request through when no token is configured or when it carries
/// `Authorization: Bearer <token>` with the right token.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = &state.auth_token else {
        return Ok(next.run(request).await);
    };
    let presented = bearer_token(request.headers()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "this server needs an Authorization: Bearer <token> header",
        )
    })?;
    if expected.matches(presented) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the bearer token is wrong",
        ))
    }
}
