//! End-to-end tests of the HTTP listener against hostile clients: raw
//! sockets that trickle or never finish request heads, stall bodies, lie
//! about `Content-Length`, idle forever, open more connections than the
//! node has descriptors, invent methods and paths. The real `sessiond` must
//! close them at the documented deadlines, answer with the documented
//! statuses, and keep serving health checks and the binary protocol.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::process::{freeze, signal};
use sessiond_e2e::raw_http::{Received, connect, read_response, read_until_close, send};
use sessiond_e2e::{Sessiond, client_for, http_client};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Longest a test waits for the server to close a connection it must close
/// (far above the short timeouts the tests configure).
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A request head cut off before its end.
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: sessiond\r\nX-Slow: ";

fn assert_closed(what: &str, received: &Received, within: Duration) {
    let closed_after = received.closed_after.unwrap_or_else(|| {
        panic!("the server kept {what} open for {CLOSE_WAIT:?} (got {received:?})")
    });
    assert!(
        closed_after <= within,
        "{what} was closed only after {closed_after:?}"
    );
}

/// `GET /healthz` answers 200 within `within`, asked every 200 ms by a new
/// connection each time.
async fn healthz_answers(node: &Sessiond, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let answer = http_client(Duration::from_secs(2))
            .get(format!("{}/healthz", node.url()))
            .send()
            .await;
        if answer.is_ok_and(|response| response.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_request_heads_are_closed_at_the_header_timeout() {
    let node = Sessiond::start(&["--http-header-timeout", "1s"]);

    // Slowloris: one more header byte every 200 ms, never the end.
    let mut slow = send(node.http, HALF_HEAD).await;
    let (mut reader, mut writer) = slow.split();
    let trickle = async {
        for _ in 0..(CLOSE_WAIT.as_millis() / 200) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    let watch = async {
        let mut buffer = [0u8; 1024];
        let started = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(
                CLOSE_WAIT,
                tokio::io::AsyncReadExt::read(&mut reader, &mut buffer),
            )
            .await
            {
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    };
    let ((), closed_after) = tokio::join!(trickle, watch);
    let closed_after = closed_after.expect("the server kept a trickled request head open");
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );

    // A connection that never sends a byte.
    let mut silent = connect(node.http).await;
    assert_closed(
        "a silent connection",
        &read_until_close(&mut silent, CLOSE_WAIT).await,
        Duration::from_secs(5),
    );
    assert!(healthz_answers(&node, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let node = Sessiond::start(&["--http-header-timeout", "1s", "--http-idle-timeout", "3s"]);
    let request = b"GET /healthz HTTP/1.1\r\nHost: sessiond\r\n\r\n";
    let mut stream = send(node.http, request).await;
    let first = read_response(&mut stream, CLOSE_WAIT).await;
    assert_eq!((first.status, first.body.as_slice()), (200, &b"ok\n"[..]));

    // Idle for longer than the header timeout but within the idle timeout:
    // the connection is still there for the next request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(request).await.expect("send again");
    let second = read_response(&mut stream, CLOSE_WAIT).await;
    assert_eq!((second.status, second.body.as_slice()), (200, &b"ok\n"[..]));

    // Then idle for good.
    assert_closed(
        "an idle keep-alive connection",
        &read_until_close(&mut stream, CLOSE_WAIT).await,
        Duration::from_secs(8),
    );
}

/// A client that stops reading its responses is closed once no write has
/// gone through for `--http-idle-timeout` (and counted as a `send`
/// timeout), while a response it takes has no deadline at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_responses_is_closed_at_the_idle_timeout() {
    const REQUESTS: usize = 32;
    let node = Sessiond::start(&["--http-idle-timeout", "2s"]);
    let http = http_client(Duration::from_secs(5));
    let data = "x".repeat(900 << 10);
    let created = http
        .post(format!("{}/v1/sessions", node.url()))
        .json(&serde_json::json!({ "data": { "blob": data } }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // Pipelined reads of ~900 KiB each, far more than socket buffers hold.
    let request = format!("GET /v1/sessions/{id} HTTP/1.1\r\nHost: sessiond\r\n\r\n");
    let mut stream = send(node.http, request.repeat(REQUESTS).as_bytes()).await;
    let sends = || async {
        scrape(&node.url())
            .await
            .value("sessiond_http_timeouts_total", &[("phase", "send")])
    };
    let deadline = Instant::now() + CLOSE_WAIT;
    while sends().await != Some(1.0) {
        assert!(Instant::now() < deadline, "no send timeout was counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = read_until_close(&mut stream, CLOSE_WAIT).await;
    assert_closed("a client that stopped reading", &received, CLOSE_WAIT);
    assert!(
        received.bytes.len() < REQUESTS * data.len(),
        "every response went out: {} bytes",
        received.bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_get_408_at_the_body_timeout() {
    let node = Sessiond::start(&["--http-body-timeout", "1s"]);
    let stalled = [
        // A Content-Length promising more than is sent.
        "POST /v1/sessions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"data\":",
        // A chunked body that stops mid-way.
        "POST /v1/sessions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n8\r\n{\"data\":\r\n",
    ];
    for request in stalled {
        let mut stream = send(node.http, request.as_bytes()).await;
        let received = read_until_close(&mut stream, CLOSE_WAIT).await;
        assert_eq!(received.status(), Some(408), "{request:?}: {received:?}");
        assert_eq!(received.error_code(), "request_timeout");
        assert_closed("a stalled body", &received, Duration::from_secs(5));
    }
    assert!(healthz_answers(&node, Duration::from_secs(5)).await);
}

/// A body whose chunked framing is broken is the client's malformed
/// request (400 `invalid_request`), not an over-long one: it was answered
/// 413 `payload_too_large`, "over the limit", for a body of a few bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_framed_body_is_an_invalid_request_not_a_too_large_one() {
    let node = Sessiond::start(&[]);
    let request = "POST /v1/sessions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
                   Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let mut stream = send(node.http, request.as_bytes()).await;
    let received = read_until_close(&mut stream, CLOSE_WAIT).await;
    assert_eq!(received.status(), Some(400), "{received:?}");
    assert_eq!(received.error_code(), "invalid_request", "{received:?}");
    assert!(healthz_answers(&node, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_content_length_over_the_limit_is_refused_before_the_body() {
    let node = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let id = sessiond_proto::SessionId::random();
    let heads = [
        ("POST", "/v1/sessions".to_owned(), "application/json"),
        ("PUT", format!("/v1/sessions/{id}"), "application/json"),
        (
            "PATCH",
            format!("/v1/sessions/{id}"),
            "application/merge-patch+json",
        ),
        (
            "POST",
            format!("/v1/sessions/{id}/touch"),
            "application/json",
        ),
    ];
    for (method, path, media) in heads {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: s\r\nContent-Type: {media}\r\n\
             Content-Length: 999999999\r\n\r\n"
        );
        // Not one byte of the body is sent: the answer must not wait for it.
        let mut stream = send(node.http, head.as_bytes()).await;
        let received = read_until_close(&mut stream, CLOSE_WAIT).await;
        assert_eq!(
            received.status(),
            Some(413),
            "{method} {path}: {received:?}"
        );
        assert_eq!(received.error_code(), "payload_too_large");
        assert_closed("an over-long body", &received, Duration::from_secs(5));
    }
}

/// An answer given before the request's body was read (a wrong token, a
/// malformed id, an unknown route) says the connection closes, as it does:
/// the unread body is left on it. Without the header a client sent its
/// next request on the connection and got a broken pipe. An answer after
/// the whole body was read keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_was_read_says_the_connection_closes() {
    let node = Sessiond::start(&["--auth-token", "s3cret"]);
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(100 << 10));
    let request = |target: &str, token: &str| {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let id = "AAAAAAAAAAAAAAAAAAAAAA";
    for (what, target, token, status) in [
        ("a wrong token", format!("/v1/sessions/{id}"), "wrong", 401),
        (
            "a malformed id",
            "/v1/sessions/bad".to_owned(),
            "s3cret",
            400,
        ),
        ("an unknown route", "/v1/nowhere".to_owned(), "s3cret", 404),
    ] {
        let mut stream = send(node.http, request(&target, token).as_bytes()).await;
        let answer = read_response(&mut stream, CLOSE_WAIT).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
        assert_eq!(
            answer.header("connection"),
            Some("close"),
            "{what}: {answer:?}"
        );
    }
    // Read whole (a session that is not there): the connection stays.
    let mut stream = send(
        node.http,
        request(&format!("/v1/sessions/{id}"), "s3cret").as_bytes(),
    )
    .await;
    let answer = read_response(&mut stream, CLOSE_WAIT).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.header("connection"), None, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_over_long_body_before_reading_gets_the_413() {
    let node = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(2 << 20));
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    // As most HTTP/1.1 clients do: the head, then (here a moment later,
    // when the node has decided) the whole body, and only then a read.
    let mut stream = send(node.http, head.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = stream.write_all(body.as_bytes()).await;
    assert!(sent.is_ok(), "the body was cut off: {sent:?}");
    let answer = read_response(&mut stream, CLOSE_WAIT).await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.error_code(), "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_heads_get_431_and_half_sent_heads_are_freed_at_the_timeout() {
    let node = Sessiond::start(&[
        "--http-header-timeout",
        "2s",
        "--http-max-head-bytes",
        "16KiB",
    ]);

    // A head past the cap: 431 at once, not a buffer that grows.
    let mut long_head = HALF_HEAD.to_vec();
    long_head.resize(64 << 10, b'a');
    let mut stream = send(node.http, &long_head).await;
    let received = read_until_close(&mut stream, CLOSE_WAIT).await;
    assert_eq!(received.status(), Some(431), "{received:?}");
    assert_closed("a head over the cap", &received, Duration::from_secs(5));

    // 200 connections each holding 12 KiB of a head (under the cap): all
    // closed at the header timeout, and the node holds none of them.
    let mut half_head = HALF_HEAD.to_vec();
    half_head.resize(12 << 10, b'a');
    let holders: Vec<TcpStream> = futures_util::stream::iter(0..200)
        .map(|_| send(node.http, &half_head))
        .buffer_unordered(50)
        .collect()
        .await;
    // The node holds them (once its accept loop has caught up).
    let mut held = 0.0;
    for _ in 0..50 {
        held = scrape(&node.url())
            .await
            .value("sessiond_http_connections", &[])
            .unwrap_or(0.0);
        if held >= 200.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        held >= 200.0,
        "the node should hold the 200 heads for now: {held}"
    );
    let closes = futures_util::stream::iter(holders)
        .map(|mut stream| async move { read_until_close(&mut stream, CLOSE_WAIT).await })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await;
    for received in &closes {
        assert_closed("a half-sent head", received, Duration::from_secs(8));
    }
    let metrics = scrape(&node.url()).await;
    let after = metrics
        .value("sessiond_http_connections", &[])
        .unwrap_or(0.0);
    assert!(
        after <= 2.0,
        "connections still held after the timeout: {after}"
    );
    let timeouts = metrics
        .value("sessiond_http_timeouts_total", &[("phase", "head")])
        .unwrap_or(0.0);
    assert!(timeouts >= 200.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_only_health_checks_are_served() {
    let node = Sessiond::start(&[
        "--max-http-connections",
        "2",
        "--http-header-timeout",
        "30s",
    ]);
    // Two slowloris connections take both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(send(node.http, HALF_HEAD).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A reserve connection: health checks yes, the API no.
    let mut healthz = send(node.http, b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let received = read_until_close(&mut healthz, CLOSE_WAIT).await;
    assert_eq!(received.status(), Some(200), "{received:?}");
    assert!(
        received.closed_after.is_some(),
        "a reserve connection serves one request"
    );
    let mut api = send(node.http, b"GET /v1/sessions/x HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let received = read_until_close(&mut api, CLOSE_WAIT).await;
    assert_eq!(received.status(), Some(503), "{received:?}");
    assert_eq!(received.error_code(), "overloaded");
    let response = received.response().expect("a whole answer");
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
    assert_eq!(
        response.header("cache-control"),
        Some("no-store"),
        "as every answer to a /v1 path: {response:?}"
    );

    // The reserve is small and its slots are held for 2 s at most: 16 more
    // slowloris connections fill it, the next is closed at once. (A machine
    // too busy to open them well within those 2 s frees a slot before the
    // check: then the reserve empties and the check is made again.)
    let mut attempts = 0;
    let (received, reserve_holders) = loop {
        attempts += 1;
        let started = Instant::now();
        let mut reserve_holders = Vec::new();
        for _ in 0..16 {
            reserve_holders.push(send(node.http, HALF_HEAD).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut refused = send(node.http, b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n").await;
        let in_time = started.elapsed() < Duration::from_millis(1500);
        let received = read_until_close(&mut refused, CLOSE_WAIT).await;
        if in_time || attempts == 3 {
            break (received, reserve_holders);
        }
        drop(reserve_holders);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    };
    assert_eq!(received.status(), None, "{received:?}");
    assert_closed(
        "a connection past the reserve",
        &received,
        Duration::from_secs(1),
    );
    for mut stream in reserve_holders {
        assert_closed(
            "a reserve connection without a request",
            &read_until_close(&mut stream, CLOSE_WAIT).await,
            Duration::from_secs(5),
        );
    }
    assert!(healthz_answers(&node, Duration::from_secs(5)).await);
    drop(holders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_under_a_low_descriptor_limit_leaves_the_node_serving() {
    // The node may have 256 descriptors; 300 connections trickle heads
    // that would be allowed a minute.
    let node = Sessiond::start_with_nofile(256, 256, &["--http-header-timeout", "60s"]);
    let flood: Vec<TcpStream> = futures_util::stream::iter(0..300)
        .map(|_| async {
            let connect =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(node.http));
            let mut stream = connect.await.ok()?.ok()?;
            stream.write_all(HALF_HEAD).await.ok()?;
            Some(stream)
        })
        .buffer_unordered(64)
        .filter_map(|stream| async { stream })
        .collect()
        .await;
    assert!(flood.len() >= 100, "only {} flood connections", flood.len());

    assert!(
        healthz_answers(&node, Duration::from_secs(10)).await,
        "/healthz did not answer under the flood"
    );
    let client = tokio::time::timeout(Duration::from_secs(10), client_for(&[&node]))
        .await
        .expect("the binary protocol's Hello did not complete under the flood");
    let created = tokio::time::timeout(
        Duration::from_secs(10),
        client.create(&serde_json::json!({"under": "flood"}), None),
    )
    .await
    .expect("create timed out under the flood")
    .expect("create failed under the flood");
    assert_eq!(created.version, 1);
    assert!(
        node.log().contains("serving fewer connections"),
        "the node should say it lowered its caps:\n{}",
        node.log()
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let node = Sessiond::start_with_nofile(256, 4096, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/limits", node.pid()))
        .expect("the node's /proc limits");
    let open_files = status
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let soft: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(soft[3], "4096", "{open_files}");
    assert!(
        node.log().contains("raised the soft descriptor limit"),
        "{}",
        node.log()
    );
}

/// Resumes a stopped process when dropped, even if the test fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_fits_in_the_listen_backlog() {
    let node = Sessiond::start(&[]);
    // A stopped node accepts nothing: whatever connects, the kernel
    // completed from the listen backlog alone.
    freeze(node.pid());
    let resume = Resume(node.pid());
    let connected: Vec<TcpStream> = futures_util::stream::iter(0..400)
        .map(|_| async {
            tokio::time::timeout(Duration::from_millis(1500), TcpStream::connect(node.http))
                .await
                .ok()?
                .ok()
        })
        .buffer_unordered(400)
        .filter_map(|stream| async { stream })
        .collect()
        .await;
    drop(resume);
    // The kernel caps every backlog at net.core.somaxconn (4096 on current
    // kernels, 128 on old ones).
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(4096);
    let expected = 390.min(somaxconn);
    assert!(
        connected.len() >= expected,
        "only {} of 400 connects completed while the node was busy (backlog too small)",
        connected.len()
    );
    drop(connected);
    assert!(healthz_answers(&node, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_methods_and_paths_add_no_metric_series() {
    let node = Sessiond::start(&["--auth-token", "secret"]);
    let http = http_client(Duration::from_secs(10));
    let id = sessiond_proto::SessionId::random();
    let odd = |index: usize| {
        let method = reqwest::Method::from_bytes(format!("M{index}X").as_bytes())
            .expect("a valid method token");
        let path = match index % 3 {
            0 => "/v1/sessions".to_owned(),
            1 => format!("/junk/{index}"),
            _ => format!("/v1/sessions/{id}/odd{index}"),
        };
        http.request(method, format!("{}{path}", node.url()))
    };
    // One of each kind first, and a scrape, so that every label value they
    // map to exists.
    for index in 0..3 {
        odd(index).send().await.expect("warm-up request");
    }
    scrape(&node.url()).await;
    let before = scrape(&node.url()).await;
    let answers: Vec<u16> = futures_util::stream::iter(3..2003)
        .map(|index| async move {
            odd(index)
                .send()
                .await
                .expect("odd request")
                .status()
                .as_u16()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        answers
            .iter()
            .all(|status| [401, 404, 405].contains(status))
    );
    let after = scrape(&node.url()).await;
    assert_eq!(
        after.series(),
        before.series(),
        "2,000 odd requests added series:\n{after}"
    );
    assert!(
        after
            .label_values("sessiond_http_requests_total", "method")
            .contains(&"other"),
        "{after}"
    );
}
