//! Running a node: health endpoints, Prometheus metrics of the HTTP
//! listener, and a graceful stop on SIGTERM.

use std::time::Duration;

use serde_json::json;
use sessiond_e2e::Sessiond;
use sessiond_e2e::api::{Api, unknown_id};
use sessiond_e2e::http::{EXCHANGE_TIMEOUT, call, http_client};
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::process::signal;
use sessiond_e2e::raw_http::{read_response, send};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let client = http_client(EXCHANGE_TIMEOUT);
    let health = call(client.get(format!("{url}/healthz"))).await;
    assert_eq!((health.status, health.text.as_str()), (200, "ok\n"));
    let ready = call(client.get(format!("{url}/readyz"))).await;
    assert_eq!((ready.status, ready.text.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_show_sessions_memory_and_latency() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let api = Api::remote(&url);
    let (id, _) = api.create_session(json!({"a": 1})).await;
    api.create_session(json!({"b": 2})).await;
    assert_eq!(api.get(&id).await.status, 200);
    assert_eq!(api.get(&unknown_id()).await.status, 404);
    for path in ["/v1/nope", "/nonexistent"] {
        let unknown = call(http_client(EXCHANGE_TIMEOUT).get(format!("{url}{path}"))).await;
        assert_eq!(unknown.status, 404, "{path}");
    }

    let answer = call(http_client(EXCHANGE_TIMEOUT).get(format!("{url}/metrics"))).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let metrics = scrape(&url).await;

    let requests = |route, method, status| {
        metrics.sum(
            "sessiond_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(
        requests("/v1/sessions", "POST", "201"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        requests("/v1/sessions/{id}", "GET", "200"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        requests("/v1/sessions/{id}", "GET", "404"),
        Some(1.0),
        "{metrics}"
    );
    // Requests no route takes count too, under one label.
    assert_eq!(requests("unmatched", "GET", "404"), Some(2.0), "{metrics}");
    assert_eq!(
        metrics.value("sessiond_sessions", &[]),
        Some(2.0),
        "{metrics}"
    );
    let used = metrics
        .value("sessiond_memory_used_bytes", &[])
        .unwrap_or(0.0);
    assert!(used > 0.0, "{metrics}");
    let all_creations = metrics.sum(
        "sessiond_http_request_duration_seconds_bucket",
        &[("route", "/v1/sessions"), ("le", "+Inf")],
    );
    assert_eq!(all_creations, Some(2.0), "{metrics}");
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_with_code_0() {
    const IN_FLIGHT: usize = 3;
    let mut server = Sessiond::start(&[]);
    let mut connections = Vec::new();
    for n in 0..IN_FLIGHT {
        // One whole exchange first, so the server has surely accepted the connection.
        let mut stream = send(
            server.http,
            b"GET /healthz HTTP/1.1\r\nHost: sessiond\r\n\r\n",
        )
        .await;
        assert_eq!(
            read_response(&mut stream, EXCHANGE_TIMEOUT).await.status,
            200
        );
        // Then a creation whose body is only half sent.
        let body = json!({"data": {"in_flight": n}}).to_string();
        let (first_half, second_half) = body.split_at(body.len() / 2);
        let head = format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: sessiond\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first_half}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        connections.push((stream, second_half.to_owned(), n));
    }
    // Give the server time to start reading those bodies, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(server.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (stream, second_half, n) in &mut connections {
        stream
            .write_all(second_half.as_bytes())
            .await
            .expect("write");
        let response = read_response(stream, EXCHANGE_TIMEOUT).await;
        assert_eq!(
            response.status,
            201,
            "request {n} in flight: {}",
            response.text()
        );
        assert_eq!(response.json()["data"], json!({"in_flight": n}));
    }
    assert_eq!(server.terminate(), Some(0));
}

/// SIGTERM ends what waits on the event log: a long-poll answers at once
/// with what there is (no event), an event stream ends (its client
/// resumes elsewhere with `Last-Event-ID`), and the node exits 0 instead
/// of draining for as long as they would have waited (a stream: forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_event_long_polls_and_streams() {
    let mut server = Sessiond::start(&[]);
    let url = server.url();
    let client = http_client(Duration::from_secs(60));
    let stream = client
        .get(format!("{url}/v1/events/stream"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), 200);
    let long_poll = tokio::spawn(call(
        client.get(format!("{url}/v1/events?after=now&wait_secs=30")),
    ));
    // Both are waiting on the log (bounded: 10 s).
    for _ in 0..200 {
        let consumers = scrape(&url).await.value("sessiond_event_consumers", &[]);
        if consumers == Some(2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = tokio::task::spawn_blocking(move || server.terminate());

    let answer = long_poll.await.expect("the long-poll task");
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body: serde_json::Value = serde_json::from_str(&answer.text).expect("JSON");
    assert_eq!(body["events"], json!([]), "{}", answer.text);
    let streamed = stream.text().await.expect("the stream ends cleanly");
    assert!(streamed.starts_with("id: "), "{streamed:?}");
    assert_eq!(exit.await.expect("the terminate task"), Some(0));
}
