//! HTTP/JSON API v1: the axum router, its error mapping, auth and metrics.

mod auth;
mod body;
mod connection;
mod deadline;
mod error;
mod events;
mod extract;
mod limits;
mod listener;
mod observability;
mod openapi;
mod read_whole;
mod response;
mod sessions;
mod state;
mod status;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use sessiond_proto::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use limits::{HttpLimits, MAX_HEAD_BYTES, MIN_HEAD_BYTES, RESERVE_CONNECTIONS};
pub use state::{AppParts, AppState, NodeFacts};

/// The whole HTTP API, its routes and its OpenAPI document built together
/// (served at `/v1/openapi.json`), with a status page that nothing samples
/// (see [`serve`]).
pub fn router(state: AppState) -> Router {
    app(state, Arc::default())
}

fn app(state: AppState, history: Arc<status::History>) -> Router {
    let (router, api) = api(&state).split_for_parts();
    let document = openapi::finish(
        api,
        openapi::Settings {
            auth: state.auth_token.is_some(),
            max_ttl_secs: state.service.config().max_ttl_secs,
        },
    );
    // The 405 answers of the routes are set before the metrics layer, so
    // that it counts them too (as `method="other"` for unknown methods),
    // and so are the answers of no route; a handler's panic is answered
    // inside it, so it counts the 500 (not a request dropped unanswered).
    router
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(CatchPanicLayer::custom(panic_response))
        .route_layer(from_fn(observability::track))
        // Counted too, as `route="unmatched"`.
        .fallback_service(axum::routing::any(unknown_route).layer(from_fn(observability::track)))
        .layer(Extension(document))
        .layer(Extension(history))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Every route with its description: `/v1` behind the bearer token (but
/// the document), the operational routes open. A route registered any
/// other way would be missing from the document. No cache may keep a
/// `/v1` answer: a session is a user's credentials and state.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::default()
        .routes(routes!(sessions::create))
        .routes(routes!(
            sessions::get,
            sessions::put,
            sessions::patch,
            sessions::delete
        ))
        .routes(routes!(sessions::touch))
        .routes(routes!(sessions::rotate))
        .routes(routes!(users::list, users::revoke))
        .routes(routes!(events::page))
        .routes(routes!(events::stream))
        .route_layer(auth::RequireToken::layer(state.auth_token))
        .route_layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(v1)
        .routes(routes!(openapi::serve))
        .routes(routes!(observability::healthz))
        .routes(routes!(observability::readyz))
        .routes(routes!(observability::render_metrics))
        .routes(routes!(status::page))
}

/// Serves the API on `listener` within `limits` until `shutdown` fires,
/// then lets in-flight requests finish (for at most `drain_timeout`).
/// Meanwhile the node's metrics are sampled once a second for its status
/// page.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: HttpLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let history = Arc::new(status::History::default());
    let sampler = tokio::spawn(status::sample_every_second(
        history.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    listener::serve(
        listener,
        app(state, history),
        limits,
        shutdown,
        drain_timeout,
    )
    .await;
    if let Err(err) = sampler.await {
        tracing::error!(%err, "the status page's sampler failed");
    }
}

/// No cache may keep any answer to a `/v1` path, the ones no route takes
/// too.
const NO_STORE: [(header::HeaderName, &str); 1] = [(header::CACHE_CONTROL, "no-store")];

async fn unknown_route() -> impl IntoResponse {
    let error = ApiError::new(
        ErrorCode::UnknownRoute,
        "no such route; the API lives under /v1/sessions",
    );
    (NO_STORE, error)
}

async fn method_not_allowed() -> impl IntoResponse {
    let error = ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept this method",
    );
    (NO_STORE, error)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error; the server logged it").into_response()
}
