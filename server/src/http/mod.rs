//! HTTP/JSON API v1: the axum router, its error mapping, auth and metrics.

mod auth;
mod connection;
mod deadline;
mod error;
mod extract;
mod listener;
mod observability;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use sessiond_proto::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;

use crate::health::Readiness;
use crate::service::SessionService;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The session operations.
    pub service: SessionService,
    /// The bearer token `/v1` requires, if any.
    pub auth_token: Option<Arc<str>>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Answers `/readyz`.
    pub readiness: Readiness,
    /// Time a request body has to arrive once its head is in.
    pub body_timeout: Duration,
}

/// Limits that keep HTTP clients from holding a node's memory and
/// descriptors.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once (past it, [`RESERVE_CONNECTIONS`] more for
    /// health checks, then new connections are closed at once).
    pub max_connections: usize,
    /// Time to send a whole request head (from the connection's start, or
    /// from the first byte of the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time to send a whole request body once its head is in.
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
}

/// Connections accepted past `--max-http-connections` for `/healthz`,
/// `/readyz` and `/metrics` only.
pub const RESERVE_CONNECTIONS: usize = 16;

/// Head timeout of a reserve connection (at most `--http-header-timeout`):
/// a health checker sends its request at once.
pub const RESERVE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Smallest `--http-max-head-bytes`.
pub const MIN_HEAD_BYTES: usize = 1 << 10;

/// Largest `--http-max-head-bytes`.
pub const MAX_HEAD_BYTES: usize = 1 << 20;

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sessions", post(sessions::create))
        .route(
            "/sessions/{id}",
            get(sessions::get)
                .put(sessions::put)
                .patch(sessions::patch)
                .delete(sessions::delete),
        )
        .route("/sessions/{id}/touch", post(sessions::touch))
        .route("/sessions/{id}/rotate", post(sessions::rotate))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(observability::healthz))
        .route("/readyz", get(observability::readyz))
        .route("/metrics", get(observability::render_metrics))
        .route_layer(from_fn(observability::track))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Serves the API on `listener` within `limits` until `shutdown` fires,
/// then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    listener::serve(listener, router(state), limits, shutdown).await;
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRoute,
        "no such route; the API lives under /v1/sessions",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept this method",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error; the server logged it").into_response()
}
