//! `GET /status`: one self-contained HTML page per store node that
//! refreshes itself: sessions, memory, policies, requests per second by
//! operation over the last five minutes (inline SVG sparklines), p99
//! latency, expirations and evictions, Redis, uptime and version.
//!
//! The numbers come from the node's own metrics: once a second
//! [`sample_every_second`] renders them (as `/metrics` does) and keeps the
//! totals in a [`Ring`], so the page and `/metrics` cannot disagree. Like
//! `/metrics`, the page is open: it shows counters, never a session.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use parking_lot::Mutex;
use sessiond_proto::wire::Op;
use tokio_util::sync::CancellationToken;

use super::observability::publish_stats;
use super::state::AppState;
use crate::backend::redis::ReplicationMode;
use crate::sparkline::{self, Ring};
use crate::store::WhenFull;

/// The session operations, as the binary protocol names them.
pub const OPERATIONS: &[&str] = Op::NAMES.split_at(Op::SESSION_OPS).0;

/// Seconds over which the page's "now" rates are averaged.
const RECENT: usize = 10;

/// One second's reading of the node's metrics.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Requests so far per operation of [`OPERATIONS`] (HTTP and binary).
    requests: [u64; OPERATIONS.len()],
    /// Session operations' latency histogram so far: (upper bound in
    /// seconds, requests at most that slow), ascending, `+Inf` last.
    latency: Vec<(f64, u64)>,
    expirations: u64,
    evictions: u64,
    queue_depth: Option<f64>,
    lag_seconds: Option<f64>,
}

/// What the page draws from: the ring of samples and the node's start.
#[derive(Debug)]
pub struct History {
    started: Instant,
    ring: Mutex<Ring<Sample>>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            ring: Mutex::default(),
        }
    }
}

/// Samples the node's metrics into `history` once a second until
/// `shutdown` (nothing to sample without a metrics recorder).
pub async fn sample_every_second(
    history: Arc<History>,
    state: AppState,
    shutdown: CancellationToken,
) {
    let Some(handle) = state.metrics.clone() else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        publish_stats(&state);
        let sample = read(&handle.render());
        history.ring.lock().push(Instant::now(), sample);
    }
}

/// The operation a routed HTTP request is, if it is a session operation.
fn http_operation(route: &str, method: &str) -> Option<&'static str> {
    Some(match (route, method) {
        ("/v1/sessions", "POST") => "create",
        ("/v1/sessions/{id}", "GET") => "get",
        ("/v1/sessions/{id}", "PUT") => "put",
        ("/v1/sessions/{id}", "PATCH") => "patch",
        ("/v1/sessions/{id}", "DELETE") => "delete",
        ("/v1/sessions/{id}/touch", "POST") => "touch",
        ("/v1/sessions/{id}/rotate", "POST") => "rotate",
        ("/v1/users/{user}/sessions", "GET") => "list_user",
        ("/v1/users/{user}/sessions", "DELETE") => "revoke_user",
        _ => return None,
    })
}

/// The beginnings of the HTTP routes of session operations.
const SESSION_ROUTES: &[&str] = &["/v1/sessions", "/v1/users/"];

/// Reads a [`Sample`] from the Prometheus text of the node's metrics.
fn read(text: &str) -> Sample {
    let mut sample = Sample::default();
    let count = |index: Option<usize>, sample: &mut Sample, value: f64| {
        if let Some(index) = index {
            sample.requests[index] += value as u64;
        }
    };
    let index_of = |op: &str| OPERATIONS.iter().position(|known| *known == op);
    for (name, labels, value) in series(text) {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| value.as_str())
        };
        match name {
            "sessiond_http_requests_total" => {
                let op =
                    http_operation(label("route").unwrap_or(""), label("method").unwrap_or(""));
                count(op.and_then(index_of), &mut sample, value);
            }
            "sessiond_tcp_requests_total" => {
                count(label("op").and_then(index_of), &mut sample, value);
            }
            "sessiond_http_request_duration_seconds_bucket"
            | "sessiond_tcp_request_duration_seconds_bucket" => {
                let session_operation = match label("route") {
                    // Not the event log's reads, which wait for events
                    // (up to 30 s), nor the API document.
                    Some(route) => SESSION_ROUTES.iter().any(|known| route.starts_with(known)),
                    None => label("op").and_then(index_of).is_some(),
                };
                let bound = label("le").and_then(|le| {
                    if le == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        le.parse().ok()
                    }
                });
                if let (true, Some(bound)) = (session_operation, bound) {
                    match sample.latency.iter_mut().find(|(le, _)| *le == bound) {
                        Some((_, total)) => *total += value as u64,
                        None => sample.latency.push((bound, value as u64)),
                    }
                }
            }
            "sessiond_expirations_total" => sample.expirations = value as u64,
            "sessiond_evictions_total" => sample.evictions = value as u64,
            "sessiond_redis_queue_depth" => sample.queue_depth = Some(value),
            "sessiond_redis_replication_lag_seconds" => sample.lag_seconds = Some(value),
            _ => {}
        }
    }
    sample.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    sample
}

/// The series of a Prometheus text exposition: name, labels, value.
fn series(text: &str) -> impl Iterator<Item = (&str, Vec<(&str, String)>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
                None => (head, Vec::new()),
            };
            Some((name, labels, value))
        })
}

/// `a="x",b="y"` (values may hold escaped quotes, commas and braces).
fn labels(mut text: &str) -> Option<Vec<(&str, String)>> {
    let mut labels = Vec::new();
    while !text.is_empty() {
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (at, '"') => break at,
                (_, other) => value.push(other),
            }
        };
        labels.push((name.trim_start_matches(','), value));
        text = &rest[end + 1..];
    }
    Some(labels)
}

/// The smallest histogram bound under which 99% of the requests between
/// `before` and `after` fell; `None` without requests.
fn p99(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<f64> {
    let grown = |bound: f64, total: u64| {
        let earlier = before
            .iter()
            .find(|(le, _)| *le == bound)
            .map_or(0, |(_, count)| *count);
        total.saturating_sub(earlier)
    };
    let all = after.last().map(|(le, total)| grown(*le, *total))?;
    if all == 0 {
        return None;
    }
    after
        .iter()
        .find(|(le, total)| grown(*le, *total) * 100 >= all * 99)
        .map(|(le, _)| *le)
}

/// `GET /status`: the node's status page.
#[utoipa::path(
    get,
    path = "/status",
    operation_id = "status_page",
    tag = "operations",
    responses((status = 200, description = "The node's status page: one HTML document, no \
        external assets, refreshing itself every 2 s.", body = String, content_type = "text/html")),
)]
pub async fn page(
    State(state): State<AppState>,
    Extension(history): Extension<Arc<History>>,
) -> Html<String> {
    let stats = state.service.stats();
    let ring = history.ring.lock();
    let latest = ring.latest().cloned().unwrap_or_default();
    let mut rows = String::new();
    for (index, op) in OPERATIONS.iter().enumerate() {
        let requests = |sample: &Sample| sample.requests[index];
        let line = sparkline::svg(&ring.rates(requests), 300, 28, op);
        let _ = writeln!(
            rows,
            "<tr id=\"op-{op}\" data-total=\"{total}\"><td>{op}</td>\
             <td class=\"num\">{rate:.1}/s</td><td class=\"num\">{total}</td><td>{line}</td></tr>",
            total = latest.requests[index],
            rate = ring.recent_rate(RECENT, requests),
        );
    }
    let p99 = ring
        .ends()
        .and_then(|(oldest, newest)| p99(&oldest.latency, &newest.latency));
    let expirations_rate = ring.recent_rate(RECENT, |sample| sample.expirations);
    let evictions_rate = ring.recent_rate(RECENT, |sample| sample.evictions);
    drop(ring);

    let limit = stats.bytes_limit.unwrap_or(0);
    let percent = if limit > 0 {
        stats.bytes_used as f64 * 100.0 / limit as f64
    } else {
        0.0
    };
    let on_off = |value: Option<bool>, yes: &str, no: &str| match value {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => "none (memory only)".to_owned(),
    };
    let optional = |value: Option<f64>, unit: &str| {
        value.map_or_else(|| "none".to_owned(), |value| format!("{value}{unit}"))
    };
    let uptime = history.started.elapsed().as_secs();
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>sessiond node: {sessions} sessions</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #bbb; padding: 3px 10px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
svg.spark {{ display: block; background: #f6f6f6; }}
</style></head>
<body><h1>sessiond node</h1>
<p>Version <span id="version">{version}</span>, up <span id="uptime" data-seconds="{uptime}">{uptime_text}</span>.
This page refreshes every 2 s; the numbers are the node's <a href="/metrics">metrics</a>.</p>
<table>
<tr><th>sessions held</th><td class="num" id="sessions">{sessions}</td></tr>
<tr><th>memory used</th><td class="num"><span id="memory-used">{used}</span> of <span id="memory-limit">{limit}</span> bytes ({percent:.1}%)</td></tr>
<tr><th>when full</th><td id="when-full">{when_full}</td></tr>
<tr><th>p99 latency (session operations, last 5 min)</th><td class="num" id="p99" data-seconds="{p99_seconds}">{p99_text}</td></tr>
<tr><th>expirations</th><td class="num"><span id="expirations-rate">{expirations_rate:.1}</span>/s, <span id="expirations">{expirations}</span> in all</td></tr>
<tr><th>evictions</th><td class="num"><span id="evictions-rate">{evictions_rate:.1}</span>/s, <span id="evictions">{evictions}</span> in all</td></tr>
<tr><th>replication</th><td id="replication">{replication}</td></tr>
<tr><th>Redis link</th><td id="redis-link">{redis_link}</td></tr>
<tr><th>invalidation subscription</th><td id="subscription">{subscription}</td></tr>
<tr><th>replication queue depth</th><td class="num" id="queue-depth">{queue_depth}</td></tr>
<tr><th>replication lag</th><td class="num" id="replication-lag">{lag}</td></tr>
</table>
<h2>Requests per second by operation (HTTP and binary, last 5 min)</h2>
<table><tr><th>operation</th><th>now ({RECENT} s)</th><th>in all</th><th>last 5 min</th></tr>
{rows}</table></body></html>
"#,
        version = env!("CARGO_PKG_VERSION"),
        uptime_text = humantime::format_duration(Duration::from_secs(uptime)),
        sessions = stats.sessions,
        used = stats.bytes_used,
        when_full = match state.facts.when_full {
            WhenFull::Reject => "reject",
            WhenFull::EvictLru => "evict-lru",
        },
        p99_seconds = p99.map_or_else(String::new, |seconds| seconds.to_string()),
        p99_text = match p99 {
            Some(seconds) if seconds.is_finite() => format!("≤ {} ms", seconds * 1000.0),
            Some(_) => "over the largest bucket".to_owned(),
            None => "no requests".to_owned(),
        },
        expirations = latest.expirations,
        evictions = latest.evictions,
        replication = match state.facts.replication {
            None => "memory only",
            Some(ReplicationMode::Sync) => "Redis, sync",
            Some(ReplicationMode::Async) => "Redis, async (write-behind)",
        },
        redis_link = on_off(state.readiness.redis_up(), "up", "down"),
        subscription = on_off(state.readiness.subscribed(), "live", "down"),
        queue_depth = optional(latest.queue_depth, ""),
        lag = optional(latest.lag_seconds, " s"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_operations_latency_and_counters_from_prometheus_text() {
        let text = r#"# TYPE sessiond_http_requests_total counter
sessiond_http_requests_total{route="/v1/sessions",method="POST",status="201"} 4
sessiond_http_requests_total{route="/v1/sessions/{id}",method="GET",status="404"} 2
sessiond_http_requests_total{route="/metrics",method="GET",status="200"} 9
sessiond_tcp_requests_total{op="get",outcome="ok"} 5
sessiond_tcp_requests_total{op="ping",outcome="ok"} 7
sessiond_http_request_duration_seconds_bucket{route="/v1/sessions",le="0.001"} 3
sessiond_http_request_duration_seconds_bucket{route="/v1/sessions",le="+Inf"} 4
sessiond_http_request_duration_seconds_bucket{route="/metrics",le="+Inf"} 9
sessiond_http_request_duration_seconds_bucket{route="/v1/events",le="+Inf"} 2
sessiond_http_request_duration_seconds_bucket{route="/v1/events/stream",le="+Inf"} 1
sessiond_http_request_duration_seconds_bucket{route="/v1/users/{user}/sessions",le="0.001"} 1
sessiond_http_request_duration_seconds_bucket{route="/v1/users/{user}/sessions",le="+Inf"} 1
sessiond_tcp_request_duration_seconds_bucket{op="get",le="0.001"} 5
sessiond_tcp_request_duration_seconds_bucket{op="get",le="+Inf"} 5
sessiond_expirations_total 11
sessiond_evictions_total 3
"#;
        let sample = read(text);
        assert_eq!(sample.requests[0], 4, "create");
        assert_eq!(sample.requests[1], 7, "get: 2 over HTTP, 5 binary");
        assert_eq!(
            sample.latency,
            vec![(0.001, 9), (f64::INFINITY, 10)],
            "session operations only: not the event log's long polls"
        );
        assert_eq!((sample.expirations, sample.evictions), (11, 3));
        assert_eq!(sample.queue_depth, None);
        assert_eq!(p99(&[], &sample.latency), Some(f64::INFINITY));
        assert_eq!(
            p99(&[], &[(0.001, 99), (0.01, 100), (f64::INFINITY, 100)]),
            Some(0.001)
        );
    }

    #[test]
    fn label_values_may_hold_quotes_and_braces() {
        let parsed = labels(r#"route="/v1/sessions/{id}",note="a \"b\", c""#);
        assert_eq!(
            parsed,
            Some(vec![
                ("route", "/v1/sessions/{id}".to_owned()),
                ("note", "a \"b\", c".to_owned())
            ])
        );
    }
}
