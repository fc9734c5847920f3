//! Bearer-token authentication of `/v1`, compared in constant time: a
//! check of the request's head before its route runs (no future of its
//! own, no clone of the route).

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use sessiond_proto::ErrorCode;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use super::error::ApiError;
use super::extract::single_header;
use crate::secret::{ExpectedToken, bearer_token};

/// Lets a request through when no token is configured or when it carries
/// `Authorization: Bearer <token>` with the right token, once; answers 401
/// `unauthorized` otherwise (400 `invalid_request` for two `Authorization`
/// lines: the first one deciding would let a proxy's added line be
/// overridden, or the other way round).
#[derive(Debug, Clone, Copy)]
pub struct RequireToken(Option<ExpectedToken>);

impl RequireToken {
    /// The layer that checks every request of the routes it wraps.
    pub fn layer(expected: Option<ExpectedToken>) -> ValidateRequestHeaderLayer<Self> {
        ValidateRequestHeaderLayer::custom(Self(expected))
    }
}

impl<B> ValidateRequest<B> for RequireToken {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        let Some(expected) = &self.0 else {
            return Ok(());
        };
        if let Err(twice) = single_header(request.headers(), "Authorization") {
            return Err(twice.into_response());
        }
        let refusal = match bearer_token(request.headers()) {
            Some(presented) if expected.matches(presented) => return Ok(()),
            Some(_) => "the bearer token is wrong",
            None if request.headers().contains_key(AUTHORIZATION) => {
                "the Authorization header must be Bearer <token>"
            }
            None => "this server needs an Authorization: Bearer <token> header",
        };
        Err(ApiError::new(ErrorCode::Unauthorized, refusal).into_response())
    }
}
