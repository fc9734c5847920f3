//! The OpenAPI 3.1 document of the HTTP API, generated from the code: each
//! handler's `#[utoipa::path]` (its parameters come from the extractors'
//! `IntoParams`, its bodies from the `sessiond_proto::http` types, its
//! errors from the codes it names with [`errors!`](crate::http::errors)),
//! collected by the same `OpenApiRouter` that builds the axum router, so a
//! route cannot exist without its description. [`finish`] fills in what
//! depends on the node's settings (the bearer token, `--max-ttl`), and
//! `GET /v1/openapi.json` serves the result.
//!
//! A new route: annotate its handler with `#[utoipa::path]` (an `errors!`
//! list for its failures) and register it with `.routes(routes!(handler))`
//! in `http::api`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sessiond_proto::http::{ErrorBody, ErrorDetail, SessionBody};
use sessiond_proto::{ErrorCode, SessionId, UserName};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, RefOr, Required, Tag,
};
use utoipa::{PartialSchema, ToSchema};

/// Name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// The serialized document, served by [`serve`].
#[derive(Debug, Clone)]
pub struct Document(pub Arc<str>);

/// The document's frame: info, tags, the error schemas and the bearer
/// scheme. Operations are added by the router.
pub fn base() -> OpenApi {
    let components = ComponentsBuilder::new()
        .schema(ErrorBody::name(), ErrorBody::schema())
        .schema(ErrorDetail::name(), ErrorDetail::schema())
        .schema(ErrorCode::name(), ErrorCode::schema())
        .schema(
            SessionBody::<Box<RawValue>>::name(),
            SessionBody::<Box<RawValue>>::schema(),
        )
        .schema(SessionId::name(), SessionId::schema())
        .schema(UserName::name(), UserName::schema())
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>` with the node's `--auth-token`, on every \
                     `/v1` route but this document, when the node runs with one.",
                    ))
                    .build(),
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("sessiond HTTP API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Sessions for stateless web backends: create, read, conditional \
                     writes, RFC 7386 merge patches, sliding expiry, id rotation, a \
                     user's sessions, and the log of session lifecycle events. Errors are `{\"error\": {\"code\", \"message\"}}` \
                     with a stable `code`; the `ETag` of a session is its version.",
                ))
                .license(Some(
                    LicenseBuilder::new()
                        .name("MIT OR Apache-2.0")
                        .identifier(Some("MIT OR Apache-2.0"))
                        .build(),
                ))
                .build(),
        )
        .components(Some(components))
        .tags(Some([
            tag("sessions", "One session: its data, version and expiry."),
            tag("users", "The sessions of one user."),
            tag(
                "events",
                "The log of session lifecycle events: pages, long-polls and Server-Sent Events.",
            ),
            tag(
                "operations",
                "Health, readiness, metrics, status and this document.",
            ),
        ]))
        .build()
}

fn tag(name: &str, description: &str) -> Tag {
    let mut tag = Tag::new(name);
    tag.description = Some(description.to_owned());
    tag
}

/// What the document says that depends on the node's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Whether `/v1` needs the bearer token.
    pub auth: bool,
    /// `--max-ttl`, in seconds: the largest `ttl_secs`.
    pub max_ttl_secs: u64,
}

/// The document as this node serves it: without a token its operations
/// need no security and answer no 401; `ttl_secs` is bounded by
/// `--max-ttl`.
pub fn finish(api: OpenApi, settings: Settings) -> Document {
    let mut doc = match serde_json::to_value(&api) {
        Ok(doc) => doc,
        Err(err) => {
            tracing::error!(%err, "cannot serialize the OpenAPI document");
            json!({})
        }
    };
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(Value::as_object_mut)
        {
            if !settings.auth {
                operation.remove("security");
                if let Some(responses) = operation
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                {
                    responses.remove("401");
                }
            }
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            if let Some(ttl) = schema.pointer_mut("/properties/ttl_secs")
                && ttl.get("minimum").is_some()
            {
                ttl["maximum"] = json!(settings.max_ttl_secs);
            }
        }
    }
    Document(Arc::from(doc.to_string()))
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this node's API.",
        content_type = "application/json", body = Object)),
)]
pub async fn serve(Extension(document): Extension<Document>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
}

/// The error answers for `codes`, one response per status, each listing
/// its codes and showing an example of each.
pub fn error_responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for &code in codes {
        by_status.entry(code.http_status()).or_default().push(code);
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let listed = codes
                .iter()
                .map(|code| format!("`{code}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let examples = codes.iter().map(|&code| {
                let mut detail = json!({"code": code, "message": example_message(code)});
                if code == ErrorCode::VersionMismatch {
                    detail["current_version"] = json!(2);
                }
                if code == ErrorCode::CursorExpired {
                    detail["oldest"] = json!("1796529528416-0-2406849938060285720");
                }
                (
                    code.as_str(),
                    ExampleBuilder::new()
                        .value(Some(json!({ "error": detail })))
                        .build(),
                )
            });
            let content = ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .examples_from_iter(examples)
                .build();
            let mut response = ResponseBuilder::new()
                .description(format!("An error: {listed}."))
                .content("application/json", content);
            if codes.contains(&ErrorCode::VersionMismatch) {
                response = response.header(
                    "ETag",
                    text_header("The session's current version, quoted."),
                );
            }
            if codes.contains(&ErrorCode::Unauthorized) {
                response = response.header("WWW-Authenticate", text_header("`Bearer`."));
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// A response header with a text value.
pub fn text_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(String::schema()))
        .description(Some(description))
        .build()
}

/// A parameter of an operation, for the extractors' `IntoParams`.
pub fn parameter(
    name: &str,
    location: ParameterIn,
    required: bool,
    schema: RefOr<Schema>,
    description: &str,
) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

/// A string schema matching `pattern`.
pub fn string_matching(pattern: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

/// A message like the server's for `code`, for the examples.
fn example_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidJson => "malformed JSON body: expected value at line 1 column 1",
        ErrorCode::InvalidId => "malformed session id: a session id has exactly 22 characters",
        ErrorCode::InvalidTtl => "ttl_secs must be between 1 and 86400 (--max-ttl), got 0",
        ErrorCode::InvalidRequest => {
            "If-Match must be one session version as a strong ETag, like \"3\""
        }
        ErrorCode::InvalidUser => "invalid user name: a user name has no control characters",
        ErrorCode::Unauthorized => "the bearer token is wrong",
        ErrorCode::NotFound => {
            "no live session has this id (it never existed, was deleted or expired)"
        }
        ErrorCode::RequestTimeout => {
            "the request body did not arrive within 30s (--http-body-timeout)"
        }
        ErrorCode::TooManySessions => {
            "the user already has 5 sessions (--max-sessions-per-user); sign one out first"
        }
        ErrorCode::Indeterminate => {
            "Redis did not answer: the write may or may not have been applied"
        }
        ErrorCode::VersionMismatch => "the session is at version 2, not the expected 1",
        ErrorCode::PayloadTooLarge => "the request body is over the 1052672-byte limit",
        ErrorCode::UnsupportedMediaType => "Content-Type must be application/json, got text/plain",
        ErrorCode::Unavailable => "Redis is unreachable: connection refused",
        ErrorCode::Overloaded => "the node serves at most 1024 HTTP connections",
        ErrorCode::StoreFull => "the store is full",
        ErrorCode::CursorExpired => {
            "events after this cursor are no longer kept; resume after the oldest cursor, 1796529528416-0-2406849938060285720"
        }
        ErrorCode::InvalidCursor => "not an event cursor of this log: \"x\"",
        ErrorCode::EventsOff => "the event log is off (--events off, or Redis Cluster)",
        ErrorCode::KeyReused => {
            "this write's Idempotency-Key was sent with another write; nothing was changed"
        }
        ErrorCode::UnknownRoute
        | ErrorCode::MethodNotAllowed
        | ErrorCode::ProtocolError
        | ErrorCode::UnsupportedVersion
        | ErrorCode::Internal => "see the code",
    }
}

/// Declares `$name`, the error answers of an operation, for its
/// `#[utoipa::path(responses(...))]`: `errors!(GetErrors: InvalidId, NotFound);`
macro_rules! errors {
    ($(#[$doc:meta])* $name:ident: $($code:ident),+ $(,)?) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::http::openapi::error_responses(&[
                    $(sessiond_proto::ErrorCode::$code),+
                ])
            }
        }
    };
}
pub(crate) use errors;
