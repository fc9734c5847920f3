//! Extractors of a request's path, query and headers: the session id, the
//! query parameters, `If-Match` and `Idempotency-Key`, each refused with
//! the API's own error, and the rule that a header these take is sent once.

use axum::extract::rejection::{QueryRejection, RawPathParamsRejection};
use axum::extract::{FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{ErrorCode, SessionId};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::{IntoParams, PartialSchema};

use super::error::ApiError;
use super::openapi::{parameter, string_matching};

/// The session id of the route, parsed before any lookup.
#[derive(Debug, Clone, Copy)]
pub struct IdParam(pub SessionId);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The route's `id`, percent-decoded, parsed where it lies.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection: RawPathParamsRejection| {
                ApiError::new(ErrorCode::InvalidId, rejection.body_text())
            })?;
        let text = params
            .iter()
            .find_map(|(name, value)| (name == "id").then_some(value))
            .unwrap_or("");
        text.parse().map(IdParam).map_err(|err| {
            ApiError::new(ErrorCode::InvalidId, format!("malformed session id: {err}"))
        })
    }
}

impl IntoParams for IdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "id",
            ParameterIn::Path,
            true,
            SessionId::schema(),
            "The session id (checked before any lookup: 400 `invalid_id` when malformed).",
        )]
    }
}

/// A route's query parameters, `T` (a type that denies unknown fields):
/// one unknown, malformed or of the wrong type is 400 `invalid_request`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(query) = Query::<T>::from_request_parts(parts, state).await.map_err(
            |rejection: QueryRejection| {
                ApiError::new(ErrorCode::InvalidRequest, rejection.body_text())
            },
        )?;
        Ok(Self(query))
    }
}

/// The query of an API route that takes no parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// The query extractor of an API route that takes no parameter: any is
/// refused (`?bogus=1` is 400 `invalid_request`), not silently ignored. A
/// request without a query, nearly every one, skips the query parser.
#[derive(Debug)]
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(|query| !query.is_empty()) {
            ApiQuery::<NoParams>::from_request_parts(parts, state).await?;
        }
        Ok(Self)
    }
}

/// The version an `If-Match` header demands: `"3"` (or `3`) is version 3,
/// `*` or no header is any version (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if_match(&parts.headers).map(IfMatch)
    }
}

impl IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "If-Match",
            ParameterIn::Header,
            false,
            string_matching(r#"^(\*|[0-9]{1,19}|"[0-9]{1,19}")$"#, r#""1""#),
            "Write only if the session is at this version (its ETag, like \"3\"): \
             412 `version_mismatch` with the current version otherwise. `*` or no \
             header: any version.",
        )]
    }
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = single_header(headers, "If-Match")? else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "If-Match must be one session version as a strong ETag, like \"3\"",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(text);
    // `u64`'s parser would also take a sign: `+3`.
    if unquoted.is_empty() || !unquoted.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(malformed());
    }
    unquoted.parse().map(Some).map_err(|_| malformed())
}

/// The one value of header `name`, if any: two field lines are a list
/// (RFC 9110, 5.3), which these headers do not take, so they are refused
/// as a list on one line is, whether or not a proxy joined them.
pub(super) fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{name} must be sent once: a request has more than one {name} header"),
        ));
    }
    Ok(first)
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The write identity an `Idempotency-Key` header gives (`None` without
/// one): the same key always gives the same tag, on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<WriteTag>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![parameter(
            "Idempotency-Key",
            ParameterIn::Header,
            false,
            string_matching("^[!-~]{1,255}$", "order-7-checkout"),
            "The write's identity: the same write sent again with the same key \
             (after its answer was lost) is applied at most once. 1 to 255 visible \
             ASCII characters.",
        )]
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<WriteTag>, ApiError> {
    let Some(value) = single_header(headers, "Idempotency-Key")? else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.iter().all(u8::is_ascii_graphic)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        ));
    }
    Ok(Some(WriteTag {
        id: fnv1a(key).max(1),
        resent_after_ms: None,
        // Unknown: the node's time when it judges the write stands in.
        sent_at_ms: 0,
    }))
}

/// 64-bit FNV-1a: a hash that is the same in every build and on every node.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;

    fn with_if_match(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(if_match(&with_if_match("\"7\"")).ok(), Some(Some(7)));
        assert_eq!(if_match(&with_if_match("7")).ok(), Some(Some(7)));
        assert_eq!(if_match(&with_if_match("*")).ok(), Some(None));
        assert!(if_match(&with_if_match("W/\"7\"")).is_err());
        assert!(if_match(&with_if_match("\"seven\"")).is_err());
        assert!(if_match(&with_if_match("+7")).is_err());
        assert!(if_match(&with_if_match("\"\"")).is_err());
        assert!(if_match(&with_if_match("\"1\", \"2\"")).is_err());
        let mut twice = with_if_match("\"2\"");
        twice.append(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert!(if_match(&twice).is_err());
    }

    #[test]
    fn idempotency_keys_map_to_stable_tags() {
        let with_key = |key: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_static(key));
            idempotency_key(&headers).ok().flatten().map(|tag| tag.id)
        };
        assert_eq!(with_key("order-1"), with_key("order-1"));
        assert_ne!(with_key("order-1"), with_key("order-2"));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(idempotency_key(&HeaderMap::new()).ok(), Some(None));
        let mut spaced = HeaderMap::new();
        spaced.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert!(idempotency_key(&spaced).is_err());
        let mut twice = HeaderMap::new();
        twice.append("idempotency-key", HeaderValue::from_static("a"));
        twice.append("idempotency-key", HeaderValue::from_static("b"));
        assert!(idempotency_key(&twice).is_err());
    }
}
