//! Health endpoints and Prometheus metrics of the HTTP listener.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sessiond_proto::ErrorCode;

use super::error::ApiError;
use super::openapi::errors;
use super::state::AppState;

/// Methods that get their own label value; any other is `other`.
const KNOWN_METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Counts every routed request by route, method and status, and records
/// its latency. Every label comes from a closed set (route templates,
/// [`KNOWN_METHODS`] or `other`, statuses the server sends), so no client
/// can add series.
///
/// A request whose client hung up before its answer (the server drops its
/// future) is counted too, with status `499`, as nginx logs it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let mut tracked = Tracked {
        route: Some(route),
        method: method_label(request.method()),
        started: Instant::now(),
    };
    let response = next.run(request).await;
    tracked.record(response.status().as_u16());
    response
}

/// A request being answered, recorded once: with its answer's status, or
/// `499` when it is dropped unanswered.
struct Tracked {
    /// Taken when recorded.
    route: Option<String>,
    method: &'static str,
    started: Instant,
}

impl Tracked {
    fn record(&mut self, status: u16) {
        let Some(route) = self.route.take() else {
            return;
        };
        metrics::histogram!("sessiond_http_request_duration_seconds", "route" => route.clone())
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!(
            "sessiond_http_requests_total",
            "route" => route,
            "method" => self.method,
            "status" => status.to_string()
        )
        .increment(1);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED);
    }
}

/// nginx's status for a request whose client closed the connection first.
const CLIENT_CLOSED: u16 = 499;

fn method_label(method: &Method) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// `GET /healthz`: the process is alive and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process serves.", body = String,
        content_type = "text/plain", example = "ok\n")),
)]
pub async fn healthz() -> &'static str {
    "ok\n"
}

errors!(
    /// Why a node is not ready.
    NotReady: Unavailable
);

/// `GET /readyz`: 200 when this node should get traffic, 503 with the reason
/// otherwise (shutting down, Redis unreachable).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The node takes traffic.", body = String,
            content_type = "text/plain", example = "ready\n"),
        NotReady,
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .readiness
        .check()
        .map(|()| "ready\n")
        .map_err(|reason| ApiError::new(ErrorCode::Unavailable, reason))
}

errors!(
    /// A node without a metrics recorder (only in tests).
    NoMetrics: UnknownRoute
);

/// Sets the gauges and counters that mirror the store's own counters (and
/// the Redis link's state), so that a render shows them as they are now.
pub fn publish_stats(state: &AppState) {
    let stats = state.service.stats();
    metrics::gauge!("sessiond_sessions").set(stats.sessions as f64);
    metrics::gauge!("sessiond_memory_used_bytes").set(stats.bytes_used as f64);
    if let Some(limit) = stats.bytes_limit {
        metrics::gauge!("sessiond_memory_limit_bytes").set(limit as f64);
    }
    metrics::counter!("sessiond_expirations_total").absolute(stats.expirations);
    metrics::counter!("sessiond_evictions_total").absolute(stats.evictions);
    metrics::counter!("sessiond_rejections_total").absolute(stats.rejections);
    metrics::gauge!("sessiond_user_index_users").set(stats.user_index_users as f64);
    metrics::gauge!("sessiond_user_index_entries").set(stats.user_index_entries as f64);
    metrics::counter!("sessiond_user_revocations_total").increment(0);
    if let Some(depth) = state.service.replication_queue_depth() {
        metrics::gauge!("sessiond_redis_queue_depth").set(depth as f64);
    }
    if let Some(up) = state.readiness.redis_up() {
        metrics::gauge!("sessiond_redis_up").set(if up { 1.0 } else { 0.0 });
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric of the node, in Prometheus' text format.",
            body = String, content_type = "text/plain"),
        NoMetrics,
    ),
)]
pub async fn render_metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.as_ref() else {
        return ApiError::new(ErrorCode::UnknownRoute, "metrics are not enabled").into_response();
    };
    publish_stats(&state);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
