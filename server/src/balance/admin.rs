//! The admin listener: Prometheus `/metrics`, `/stats.json`, and at `/` a
//! small HTML status page (like HAProxy's) with each upstream's state and
//! its requests per second over the last five minutes.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use super::pool::Pool;
use super::rates::UpstreamRates;
use super::upstream::UpstreamStats;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The upstreams.
    pub pool: Arc<Pool>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
}

/// The balancer's state as `/stats.json` shows it.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Upstreams in rotation.
    pub healthy: usize,
    /// Every upstream.
    pub upstreams: Vec<UpstreamStats>,
}

fn stats(pool: &Pool) -> Stats {
    let upstreams: Vec<UpstreamStats> = pool.upstreams().iter().map(|u| u.stats()).collect();
    Stats {
        healthy: upstreams.iter().filter(|u| u.up).count(),
        upstreams,
    }
}

/// The admin routes (and the sampler of the page's request rates, which
/// lives as long as they do).
pub fn router(state: AdminState) -> Router {
    let rates = UpstreamRates::start(state.pool.clone());
    Router::new()
        .route("/", get(status_page))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(Extension(rates))
        .with_state(state)
}

async fn stats_json(State(state): State<AdminState>) -> Json<Stats> {
    Json(stats(&state.pool))
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
    let stats = stats(&state.pool);
    let mut rows = String::new();
    for (index, upstream) in stats.upstreams.iter().enumerate() {
        let (rate, line) = rates.show(index, &escape(&upstream.url));
        let (class, label) = if upstream.up {
            ("up", "UP")
        } else {
            ("down", "DOWN")
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
