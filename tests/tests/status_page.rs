//! A store node's `/status` page in a real headless browser while a load
//! runs, and its numbers against the node's `/metrics` once it stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_e2e::browser::{attribute_of, dump_dom, text_of};
use sessiond_e2e::metrics::{Metrics, scrape};
use sessiond_e2e::{Sessiond, build, builder_for, http_client};

/// The session operations the page shows, as the binary protocol names
/// them, with the HTTP route and method of each.
const OPERATIONS: [(&str, &str, &str); 9] = [
    ("create", "/v1/sessions", "POST"),
    ("get", "/v1/sessions/{id}", "GET"),
    ("put", "/v1/sessions/{id}", "PUT"),
    ("patch", "/v1/sessions/{id}", "PATCH"),
    ("delete", "/v1/sessions/{id}", "DELETE"),
    ("touch", "/v1/sessions/{id}/touch", "POST"),
    ("rotate", "/v1/sessions/{id}/rotate", "POST"),
    ("list_user", "/v1/users/{user}/sessions", "GET"),
    ("revoke_user", "/v1/users/{user}/sessions", "DELETE"),
];

/// Requests of `op` so far, over HTTP and the binary protocol.
fn requests(metrics: &Metrics, op: &str, route: &str, method: &str) -> u64 {
    let http = metrics
        .sum(
            "sessiond_http_requests_total",
            &[("route", route), ("method", method)],
        )
        .unwrap_or(0.0);
    let binary = metrics
        .sum("sessiond_tcp_requests_total", &[("op", op)])
        .unwrap_or(0.0);
    (http + binary) as u64
}

/// The p99 bound of the session operations' latency since the start,
/// from the histograms' buckets (HTTP session routes and binary session
/// operations).
fn p99(metrics: &Metrics) -> f64 {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for sample in metrics.samples() {
        let session_operation = match sample.name.as_str() {
            "sessiond_http_request_duration_seconds_bucket" => {
                sample.label("route").is_some_and(|route| {
                    route.starts_with("/v1/sessions") || route.starts_with("/v1/users/")
                })
            }
            "sessiond_tcp_request_duration_seconds_bucket" => sample
                .label("op")
                .is_some_and(|op| OPERATIONS.iter().any(|(name, _, _)| *name == op)),
            _ => false,
        };
        if !session_operation {
            continue;
        }
        let le = match sample.label("le") {
            Some("+Inf") => f64::INFINITY,
            Some(le) => le.parse().expect("a bucket bound"),
            None => continue,
        };
        match buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, count)) => *count += sample.value,
            None => buckets.push((le, sample.value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all = buckets.last().expect("latency buckets").1;
    buckets
        .iter()
        .find(|(_, count)| count * 100.0 >= all * 99.0)
        .expect("a p99 bucket")
        .0
}

/// Runs a mixed load (binary creates, reads and touches, HTTP puts) until
/// `stop`, at most `limit`.
async fn load(node: &Sessiond, stop: Arc<AtomicBool>, limit: Duration) {
    let client = build(builder_for(&[node])).await;
    let http = http_client(Duration::from_secs(5));
    let url = node.url();
    let started = Instant::now();
    let blob = "x".repeat(1024);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let created = client
            .create(&json!({"blob": blob}), None)
            .await
            .expect("create");
        client
            .get::<serde_json::Value>(&created.id)
            .await
            .expect("get");
        client.touch(&created.id, None).await.expect("touch");
        let answer = http
            .put(format!("{url}/v1/sessions/{}", created.id))
            .json(&json!({"data": {"blob": blob, "n": 1}}))
            .send()
            .await
            .expect("put");
        assert!(answer.status().is_success() || answer.status() == 404);
    }
}

#[tokio::test]
async fn the_status_page_shows_in_a_browser_what_metrics_say() {
    let started = Instant::now();
    let node = Sessiond::start(&["--max-memory", "2MiB", "--when-full", "evict-lru"]);
    let page = format!("{}/status", node.url());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| load(&node, stop.clone(), Duration::from_secs(20)))
        .collect();
    let watch = async {
        // Let the load and the sampler run for a few seconds, and the load
        // overflow the 2 MiB (a slow machine needs longer), then look.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let overflowing = Instant::now();
        while scrape(&node.url())
            .await
            .value("sessiond_evictions_total", &[])
            .unwrap_or_default()
            == 0.0
            && overflowing.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let during = dump_dom(&page).await;
        stop.store(true, Ordering::Relaxed);
        during
    };
    let (during, ()) = tokio::join!(watch, async {
        futures_util::future::join_all(workers).await;
    });

    // While the load ran: creates, reads and touches per second.
    for op in ["create", "get", "touch", "put"] {
        let row = &during[during.find(&format!("id=\"op-{op}\"")).expect("a row")..];
        let rate: f64 = row
            .split("class=\"num\">")
            .nth(1)
            .and_then(|cell| cell.split("/s").next())
            .and_then(|rate| rate.parse().ok())
            .expect("a rate");
        assert!(rate > 0.0, "{op} at {rate}/s while the load runs");
    }
    assert!(during.contains("<svg"), "inline sparklines");
    assert!(!during.contains("src=\"http"), "no external assets");

    // Once it stopped and the sampler took a sample after it: the page and
    // /metrics agree.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = dump_dom(&page).await;
    let metrics = scrape(&node.url()).await;
    let gauge = |name: &str| metrics.value(name, &[]).expect(name) as u64;
    let number = |id: &str| -> u64 {
        text_of(&after, id)
            .parse()
            .unwrap_or_else(|err| panic!("{id}: {err}"))
    };
    assert_eq!(number("sessions"), gauge("sessiond_sessions"));
    assert_eq!(number("memory-used"), gauge("sessiond_memory_used_bytes"));
    assert_eq!(number("memory-limit"), 2 << 20);
    assert_eq!(number("memory-limit"), gauge("sessiond_memory_limit_bytes"));
    assert_eq!(number("evictions"), gauge("sessiond_evictions_total"));
    assert!(number("evictions") > 0, "the load overflowed 2 MiB");
    assert_eq!(number("expirations"), gauge("sessiond_expirations_total"));
    assert_eq!(text_of(&after, "when-full"), "evict-lru");
    assert_eq!(text_of(&after, "replication"), "memory only");
    assert_eq!(text_of(&after, "version"), env!("CARGO_PKG_VERSION"));
    let uptime: u64 = attribute_of(&after, "uptime", "data-seconds")
        .parse()
        .expect("uptime");
    assert!(uptime <= started.elapsed().as_secs() + 1, "{uptime}");
    for (op, route, method) in OPERATIONS {
        let shown: u64 = attribute_of(&after, &format!("op-{op}"), "data-total")
            .parse()
            .expect("a total");
        assert_eq!(shown, requests(&metrics, op, route, method), "{op}");
    }
    let shown_p99: f64 = attribute_of(&after, "p99", "data-seconds")
        .parse()
        .expect("a p99");
    assert_eq!(shown_p99, p99(&metrics));
}
