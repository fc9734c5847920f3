//! The admin listener: Prometheus `/metrics`, `/stats.json`, at `/` a
//! small HTML status page (like HAProxy's) with each upstream's state and
//! its requests per second over the last five minutes, and the upstreams
//! API (see [`upstreams_api`](super::upstreams_api)).

use std::fmt::Write;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};

use super::admin_state::{AdminState, Stats, stats};
use super::rates::UpstreamRates;
use super::upstreams_api;

/// The admin routes (and the sampler of the page's request rates, which
/// lives as long as they do).
pub fn router(state: AdminState) -> Router {
    let rates = UpstreamRates::start(state.membership.pool().clone());
    Router::new()
        .route("/", get(status_page))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(upstreams_api::routes(state.clone()))
        .layer(Extension(rates))
        .with_state(state)
}

async fn stats_json(State(state): State<AdminState>) -> Json<Stats> {
    Json(stats(state.membership.pool()))
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            "metrics are not enabled\n",
        )
            .into_response(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(
    State(state): State<AdminState>,
    Extension(rates): Extension<Arc<UpstreamRates>>,
) -> Html<String> {
    let stats = stats(state.membership.pool());
    let mut rows = String::new();
    for upstream in &stats.upstreams {
        let (rate, line) = rates.show(&upstream.url, &escape(&upstream.url));
        let (class, label) = match (upstream.up, upstream.state) {
            (_, "draining") => ("down", "DRAINING"),
            (true, _) => ("up", "UP"),
            (false, _) => ("down", "DOWN"),
        };
        let _ = writeln!(
            rows,
            "<tr class=\"{class}\"><td>{url}</td><td class=\"state\">{label}</td>\
             <td>{requests}</td><td class=\"rate\">{rate:.1}/s</td><td>{line}</td>\
             <td>{errors}</td><td>{in_flight}</td>\
             <td>{latency:.2} ms</td><td>{checks}</td><td>{last_error}</td></tr>",
            url = escape(&upstream.url),
            requests = upstream.requests,
            errors = upstream.errors,
            in_flight = upstream.in_flight,
            latency = upstream.mean_latency_ms,
            checks = upstream.checks,
            last_error = escape(upstream.last_error.as_deref().unwrap_or("")),
        );
    }
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>sessiond balance: {healthy}/{total} up</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #999; padding: 4px 10px; text-align: right; }}
td:first-child, td:last-child {{ text-align: left; }}
svg.spark {{ display: block; background: #f6f6f6; }}
tr.up .state {{ background: #8d8; }} tr.down .state {{ background: #e66; color: white; }}
</style></head>
<body><h1>sessiond balance</h1>
<p>{healthy} of {total} upstreams in rotation. Round-robin, no stickiness. This page refreshes every 2 s;
<a href="/stats.json">stats.json</a>, <a href="/metrics">metrics</a>.</p>
<table><tr><th>upstream</th><th>state</th><th>requests</th><th>now (10 s)</th><th>last 5 min</th><th>errors</th><th>in flight</th><th>mean latency</th><th>checks</th><th>last error</th></tr>
{rows}</table></body></html>
"#,
        healthy = stats.healthy,
        total = stats.upstreams.len(),
    ))
}
