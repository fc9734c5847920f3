//! Extractors of JSON request bodies: [`JsonBody`] for the API's request
//! envelopes and [`MergePatch`] for RFC 7386 patches. Both refuse a declared
//! `Content-Length` over the limit without keeping any of the body, give up
//! on a body that does not arrive within `--http-body-timeout`, and check
//! the media type and that the body is not compressed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sessiond_proto::ErrorCode;
use sessiond_proto::http::{CreateRequest, PutRequest, RotateRequest, TouchRequest};

use super::error::ApiError;
use super::state::AppState;

/// The media type of an RFC 7386 merge patch.
const MERGE_PATCH: &str = "application/merge-patch+json";
/// RFC 5789's header naming the patch types a resource takes.
const ACCEPT_PATCH: HeaderName = HeaderName::from_static("accept-patch");

/// Room for the JSON envelope around the session data in a request body.
const ENVELOPE_BYTES: usize = 4096;
/// A body declared over the limit but at most this long is read and
/// dropped before the 413 answer: most HTTP/1.1 clients send their whole
/// body before they read, and a server that closes on an unread body
/// resets the connection under them (they see a broken pipe, not the
/// answer). A longer one, or one sent after `Expect: 100-continue`, is
/// answered at once.
const DRAIN_AT_MOST: u64 = 8 << 20;
/// A drained body that pauses this long is answered without the rest.
const DRAIN_PAUSE: Duration = Duration::from_secs(1);

/// A request envelope of the API: a JSON object, with or without session
/// data, for which an empty body may mean the defaults.
pub trait Envelope: DeserializeOwned + Send {
    /// Whether the envelope carries session data, and so may be as large as
    /// `--max-session-bytes` (plus the envelope) rather than the envelope
    /// alone.
    const CARRIES_DATA: bool;

    /// What an empty body (or `null`) means; `None` when a body is required.
    fn when_empty() -> Option<Self>;
}

impl Envelope for CreateRequest {
    const CARRIES_DATA: bool = true;

    fn when_empty() -> Option<Self> {
        Some(Self::default())
    }
}

impl Envelope for PutRequest {
    const CARRIES_DATA: bool = true;

    fn when_empty() -> Option<Self> {
        None
    }
}

impl Envelope for RotateRequest {
    const CARRIES_DATA: bool = false;

    fn when_empty() -> Option<Self> {
        Some(Self::default())
    }
}

impl Envelope for TouchRequest {
    const CARRIES_DATA: bool = false;

    fn when_empty() -> Option<Self> {
        Some(Self::default())
    }
}

/// An `application/json` body that must be a JSON object, parsed as `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: Envelope> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read(request, state, T::CARRIES_DATA).await?;
        // No body means the defaults where the envelope is optional, whatever
        // the `Content-Type` (`curl -d ''` sends a form's).
        if bytes.is_empty() {
            return T::when_empty().map(JsonBody).ok_or_else(body_required);
        }
        check_media_type(&headers, "application/json")?;
        // `null` is how the OpenAPI document spells an optional body.
        if bytes.trim_ascii() == b"null"
            && let Some(defaults) = T::when_empty()
        {
            return Ok(JsonBody(defaults));
        }
        // Request envelopes are objects; serde would also take an array for a struct.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                "the request body must be a JSON object",
            ));
        }
        parse(&bytes).map(JsonBody)
    }
}

/// An `application/merge-patch+json` body (RFC 7386): any JSON value, kept
/// as text.
#[derive(Debug)]
pub struct MergePatch(pub Box<RawValue>);

impl FromRequest<AppState> for MergePatch {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (headers, bytes) = read(request, state, true)
            .await
            .map_err(IntoResponse::into_response)?;
        if bytes.is_empty() {
            return Err(body_required().into_response());
        }
        // RFC 5789: a patch of a type the route does not take is answered
        // with the one it does.
        check_media_type(&headers, MERGE_PATCH).map_err(|err| {
            ([(ACCEPT_PATCH, HeaderValue::from_static(MERGE_PATCH))], err).into_response()
        })?;
        parse(&bytes)
            .map(MergePatch)
            .map_err(IntoResponse::into_response)
    }
}

/// The request's headers and whole body, read within the body limit and
/// `--http-body-timeout`. A declared `Content-Length` over the limit is
/// refused without keeping any of the body (see [`DRAIN_AT_MOST`]).
async fn read(
    request: Request,
    state: &AppState,
    carries_data: bool,
) -> Result<(HeaderMap, Bytes), ApiError> {
    let limit = if carries_data {
        state.service.config().max_session_bytes + ENVELOPE_BYTES
    } else {
        ENVELOPE_BYTES
    };
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is over the {limit}-byte limit"),
        )
    };
    let (parts, body) = request.into_parts();
    let timeout = state.body_timeout;
    if let Some(length) = declared_length(&parts.headers).filter(|&length| length > limit as u64) {
        let expects_continue = parts.headers.contains_key(header::EXPECT);
        if length <= DRAIN_AT_MOST && !expects_continue {
            drain(body, timeout).await;
        }
        return Err(too_large());
    }
    let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            metrics::counter!("sessiond_http_timeouts_total", "phase" => "body").increment(1);
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {timeout:?} (--http-body-timeout)"),
            )
        })?
        .map_err(|err| {
            let err = err.into_inner();
            if err.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the request body could not be read (badly framed, or cut short): {err}"),
            )
        })?;
    check_not_encoded(&parts.headers)?;
    Ok((parts.headers, bytes))
}

fn body_required() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidJson,
        "the request body is empty; a JSON body is required",
    )
}

/// Reads and drops a body, for at most `timeout`, giving up when it
/// pauses for [`DRAIN_PAUSE`].
async fn drain(body: Body, timeout: Duration) {
    let mut chunks = body.into_data_stream();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DRAIN_PAUSE, chunks.next()).await {}
    })
    .await;
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("malformed JSON body: {err}"),
        )
    })
}

/// The `Content-Length` the client declared, if it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses a body sent with a `Content-Encoding` (gzip, ...) or a transfer
/// coding other than `chunked` (`Transfer-Encoding: gzip, chunked`, which
/// hyper takes, undoing only the chunking): the node reads bodies as they
/// are, so it would take compressed bytes for bad JSON.
fn check_not_encoded(headers: &HeaderMap) -> Result<(), ApiError> {
    check_codings(headers, "Content-Encoding", "identity")?;
    check_codings(headers, "Transfer-Encoding", "chunked")
}

/// Refuses any coding but `plain` listed in a `name` header.
fn check_codings(headers: &HeaderMap, name: &str, plain: &str) -> Result<(), ApiError> {
    let refused = |coding: &str| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("{name} {coding} is not supported; send the body uncompressed"),
        )
    };
    // Every line and every coding listed on it: a second line (or a list)
    // names a coding as much as the first does.
    for line in headers.get_all(name) {
        let Ok(text) = line.to_str() else {
            return Err(refused("(not text)"));
        };
        // An empty element of the list names nothing (RFC 9110, 5.6.1).
        let coded = text
            .split(',')
            .map(str::trim)
            .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(plain));
        if let Some(coding) = coded {
            return Err(refused(coding));
        }
    }
    Ok(())
}

/// Accepts a `Content-Type` whose essence is `essence` (any case, any
/// parameters).
fn check_media_type(headers: &HeaderMap, essence: &str) -> Result<(), ApiError> {
    if headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type is sent on two lines; send one, {essence}"),
        ));
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .map_or(Some(""), |value| value.to_str().ok())
        .unwrap_or("(not text)");
    let given_essence = given.split(';').next().unwrap_or("").trim();
    if given_essence.eq_ignore_ascii_case(essence) {
        Ok(())
    } else {
        let shown = if given.is_empty() { "none" } else { given };
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be {essence}, got {shown}"),
        ))
    }
}
