//! The balancer's own answers: a status, a stable code and a generic
//! message in a JSON body. Details (upstream addresses, OS errors) go to
//! the log only, never to the client.

use std::io::Write;

use axum::http::header::{self, HeaderValue};
use axum::http::{Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;

use super::response::ClientBody;

/// Why the balancer answers itself: each kind has one status and one
/// stable code, given here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 503 `no_upstream`: nothing in rotation accepted the request.
    NoUpstream,
    /// 502 `bad_gateway`: the upstream failed mid-way.
    BadGateway,
    /// 504 `upstream_timeout`: no response headers in time.
    UpstreamTimeout,
    /// 503 `overloaded`: every upstream at `--max-conns` and the queue full
    /// or too slow.
    Overloaded,
    /// 503 `too_many_connections`: past `--max-client-conns`.
    TooManyConnections,
    /// 405 `method_not_allowed`: CONNECT.
    MethodNotAllowed,
    /// 400 `bad_host`: no valid `Host`, or two.
    BadHost,
    /// 414 `uri_too_long`: the request line is over the limit.
    UriTooLong,
    /// 431 `header_too_large`: a header line or the head is over the limit.
    HeaderTooLarge,
    /// 400 `bad_request`: the request body was cut short or malformed.
    BadRequest,
    /// 408 `body_timeout`: the request body arrived too slowly.
    BodyTimeout,
    /// 413 `payload_too_large`: the request body is over the limit.
    PayloadTooLarge,
}

impl FailureKind {
    /// The status it answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoUpstream | Self::Overloaded | Self::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadHost | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Its stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoUpstream => "no_upstream",
            Self::BadGateway => "bad_gateway",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Overloaded => "overloaded",
            Self::TooManyConnections => "too_many_connections",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadHost => "bad_host",
            Self::UriTooLong => "uri_too_long",
            Self::HeaderTooLarge => "header_too_large",
            Self::BadRequest => "bad_request",
            Self::BodyTimeout => "body_timeout",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// An answer of the balancer's own.
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub kind: FailureKind,
    /// What happened, for people; never names an upstream.
    pub message: String,
    /// Whether the client connection closes after it.
    pub close: bool,
}

impl Failure {
    /// An answer that keeps the connection open.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            close: false,
        }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The same answer, closing the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// `Retry-After` seconds on a 503: an app server coming back, or a
    /// free connection slot, is a matter of seconds.
    fn retry_after(&self) -> Option<&'static str> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some("1")
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.kind.code(), "message": self.message}})
            .to_string()
    }

    /// The answer as a response.
    pub fn into_response(self) -> Response<ClientBody> {
        let mut response = Response::new(ClientBody::Own(Full::new(Bytes::from(self.body()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }

    /// Appends the answer as raw HTTP/1.1 bytes to `out`: closing the
    /// connection when the answer must or `keep_alive` is false, with no
    /// body after the head when `head_only` (a `HEAD` request). Returns
    /// the body bytes written.
    pub fn write_http1(&self, out: &mut Vec<u8>, keep_alive: bool, head_only: bool) -> usize {
        let body = self.body();
        let connection = if self.close || !keep_alive {
            "connection: close\r\n"
        } else {
            ""
        };
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}",
            self.status().as_u16(),
            self.status().canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(seconds) = self.retry_after() {
            let _ = write!(out, "retry-after: {seconds}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if head_only {
            return 0;
        }
        out.extend_from_slice(body.as_bytes());
        body.len()
    }
}

/// 503 `no_upstream`: no upstream to try (every one is draining or
/// removed; down ones are tried when none is up).
pub fn no_upstream() -> Failure {
    Failure::new(
        FailureKind::NoUpstream,
        "no upstream to send the request to: every app server is draining or removed",
    )
}

/// 502 `bad_gateway`: the upstream was removed (its drain ran past
/// `--drain-timeout`) while the request waited for its answer.
pub fn upstream_removed() -> Failure {
    Failure::new(
        FailureKind::BadGateway,
        "the app server was removed (drained past --drain-timeout) before it answered",
    )
}

/// 502 `bad_gateway`: the upstream failed mid-way.
pub fn bad_gateway() -> Failure {
    Failure::new(
        FailureKind::BadGateway,
        "the upstream closed the connection or sent a malformed response",
    )
}
