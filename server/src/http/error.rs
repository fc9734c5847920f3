//! The HTTP face of every error: a status and `{"error": {"code", "message"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sessiond_proto::ErrorCode;
use sessiond_proto::http::{ErrorBody, ErrorDetail};

use crate::service::ServiceError;

/// `Retry-After` on a 503: what stops the request (Redis unreachable, a
/// full queue, too many connections) is expected to pass in seconds.
const RETRY_AFTER_SECS: HeaderValue = HeaderValue::from_static("1");

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    current_version: Option<u64>,
    oldest: Option<String>,
}

impl ApiError {
    /// An error with `code` and a human `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            current_version: None,
            oldest: None,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        Self {
            code: err.code(),
            message: err.to_string(),
            current_version: err.current_version(),
            oldest: err.oldest(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                current_version: self.current_version,
                oldest: self.oldest,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(version) = self.current_version
            && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
        {
            headers.insert(header::ETAG, etag);
        }
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, RETRY_AFTER_SECS);
        }
        response
    }
}
