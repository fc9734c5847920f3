//! The balancer's own answers: a status, a stable code and a generic
//! message in a JSON body. Details (upstream addresses, OS errors) go to
//! the log only, never to the client.

use axum::http::header::{self, HeaderValue};
use axum::http::{Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;

use super::response::ClientBody;

/// An answer of the balancer's own.
#[derive(Debug)]
pub struct Failure {
    /// Its status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What happened, for people; never names an upstream.
    pub message: String,
    /// Whether the client connection closes after it.
    pub close: bool,
}

impl Failure {
    /// An answer that keeps the connection open.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            close: false,
        }
    }

    /// The same answer, closing the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }

    /// The answer as a response.
    pub fn into_response(self) -> Response<ClientBody> {
        let mut response = Response::new(ClientBody::Own(Full::new(Bytes::from(self.body()))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The answer as raw HTTP/1.1 bytes, for a connection refused before
    /// any request is read (`--max-client-conns`).
    pub fn to_http1(&self) -> Vec<u8> {
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

/// 503 `no_upstream`: nothing is in rotation.
pub fn no_upstream() -> Failure {
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_upstream",
        "no healthy upstream: every app server is down",
    )
}

/// 502 `bad_gateway`: the upstream failed mid-way.
pub fn bad_gateway() -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "the upstream closed the connection or sent a malformed response",
    )
}
