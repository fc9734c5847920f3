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
mod response;
mod sessions;
mod state;
mod users;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sessiond_proto::ErrorCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;
pub use limits::{HttpLimits, MAX_HEAD_BYTES, MIN_HEAD_BYTES, RESERVE_CONNECTIONS};
pub use state::AppState;

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
        .route(
            "/users/{user}/sessions",
            get(users::list).delete(users::revoke),
        )
        .route("/events", get(events::page))
        .route("/events/stream", get(events::stream))
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
