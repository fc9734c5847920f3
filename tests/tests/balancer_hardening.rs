//! Hostile clients against `sessiond balance`, over raw sockets, with
//! recording test upstreams behind it. What nginx 1.22 (default settings)
//! answers to the same bytes, for comparison:
//!
//! | case | sessiond balance | nginx 1.22 |
//! |---|---|---|
//! | upload cut short (Content-Length 100, 1 byte, close) | closes; no upstream blamed | closes (logs 499); upstream not marked failed |
//! | malformed chunk size | 400 `bad_request`, closes; no upstream blamed | 400 |
//! | HTTP/1.1 without `Host` | 400 `bad_host` | 400 |
//! | two `Host` headers | 400 `bad_host` | 400 ("client sent duplicate host header") |
//! | `CONNECT host:443` | 405 `method_not_allowed` | 405 |
//! | a header line over 8 KiB | 431 `header_too_large` | 400 "Request Header Or Cookie Too Large" |
//! | a head over 32 KiB | 431 `header_too_large` | 400 (4 buffers of 8 KiB) |
//! | a request line over 8 KiB | 414 `uri_too_long` | 414 |
//! | no byte, or half a head, or half an `h2` preface | closed after `--header-timeout` (10 s) | closed after `client_header_timeout` (60 s) |
//! | a body that stalls, or trickles at 1 byte/s | 408 `body_timeout` after `--body-timeout` / under `--min-body-rate` | 408 after a 60 s gap (`client_body_timeout`); a trickle is never cut |
//! | past the client connection cap | 503 `too_many_connections`, closed | no answer at `worker_connections` (503 with `limit_conn`) |
//! | a client that stops reading its answer | closed after `--send-timeout` (60 s) of a write waiting | closed after `send_timeout` (60 s) |
//! | an app whose response body stalls | cut after `--response-timeout` (30 s) without a byte | cut after `proxy_read_timeout` (60 s) |
//! | error bodies | generic message and code; details in the log | nginx's generic HTML pages |
//! | a pooled upstream connection closed (or reset) as a request goes out | a GET is sent again on a new connection; no upstream blamed | the same (a failure on a cached connection is not counted) |

use std::time::Duration;

use serde_json::Value;
use sessiond_e2e::balance::{
    NO_CHECKS, RawResponse, raw_exchange, raw_upstream, read_head, read_response, read_until_closed,
};
use sessiond_e2e::process::rss_bytes;
use sessiond_e2e::upstream::echoed_header;
use sessiond_e2e::{Balancer, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn upstreams(count: usize) -> Vec<TestUpstream> {
    let mut upstreams = Vec::new();
    for index in 0..count {
        upstreams.push(TestUpstream::start(&format!("u{index}")).await);
    }
    upstreams
}

fn balancer(upstreams: &[TestUpstream], extra: &[&str]) -> Balancer {
    let mut args = NO_CHECKS.to_vec();
    args.extend(extra);
    Balancer::over(upstreams, &args)
}

fn assert_error(response: &RawResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["error"]["code"], code, "{response:?}");
}

/// Every upstream in rotation, with nothing in flight (once the last
/// requests are done).
async fn assert_all_up(balancer: &Balancer, count: u64) {
    balancer.wait_until_idle(Duration::from_secs(10)).await;
    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], count, "{stats}");
    let in_flight: u64 = stats["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| u["in_flight"].as_u64().unwrap_or(99))
        .sum();
    assert_eq!(in_flight, 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_are_the_clients_fault_and_never_eject_an_upstream() {
    let upstreams = upstreams(3).await;
    let balancer = balancer(&upstreams, &[]);
    for round in 0..3u64 {
        // An upload cut short: one byte of a hundred, then the client goes.
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream
            .write_all(b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nx")
            .await
            .expect("send");
        // Wait until the request is at an upstream, then hang up.
        balancer
            .wait_for_stats("the upload in flight", Duration::from_secs(10), |stats| {
                // Each round's chunked request reaches an upstream too.
                let sinks: u64 = upstreams.iter().map(|u| u.hits("/sink")).sum();
                sinks > 2 * round && stats["healthy"] == 3
            })
            .await;
        drop(stream);

        // A malformed chunk size.
        let response = raw_exchange(
            balancer.listen,
            b"POST /sink HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nabcd\r\nzz\r\n",
        )
        .await;
        assert_error(&response, 400, "bad_request");
        assert_eq!(response.header("connection"), Some("close"));
    }
    assert_all_up(&balancer, 3).await;
    for upstream in &upstreams {
        let entry = balancer.upstream_stats(&upstream.url()).await;
        assert_eq!(entry["errors"], 0, "{entry}");
    }
    // And every user is still served by all three.
    let http = sessiond_e2e::http_client(Duration::from_secs(20));
    for _ in 0..9 {
        let response = http
            .get(format!("{}/", balancer.url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200);
    }
    for upstream in &upstreams {
        assert_eq!(upstream.hits("/"), 3, "{}", upstream.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_no_upstream_and_no_os_error() {
    let mut upstreams = upstreams(2).await;
    let balancer = balancer(&upstreams, &["--response-timeout", "300ms"]);
    let secrets: Vec<String> = upstreams
        .iter()
        .flat_map(|u| [u.addr.to_string(), u.addr.port().to_string()])
        .chain(["refused", "os error", "http://"].map(String::from))
        .collect();
    let check = |response: &RawResponse| {
        let text = String::from_utf8_lossy(&response.body).to_lowercase();
        for secret in &secrets {
            assert!(!text.contains(secret), "{secret:?} leaked: {text}");
        }
    };
    // 504: the upstream is slow.
    let slow = raw_exchange(
        balancer.listen,
        b"GET /slow/2000 HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert_error(&slow, 504, "upstream_timeout");
    check(&slow);
    // 502: the upstream dies mid-request (a POST is not replayed).
    let died = raw_exchange(
        balancer.listen,
        b"POST /die HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_error(&died, 502, "bad_gateway");
    check(&died);
    // 503: every upstream refuses connections.
    for upstream in &mut upstreams {
        upstream.stop().await;
    }
    let refused = raw_exchange(balancer.listen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_error(&refused, 503, "no_upstream");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    check(&refused);
    // The admin listener keeps the detail, and so does the log.
    let entry = balancer.upstream_stats(&upstreams[0].url()).await;
    let why = entry["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("refused"), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_one_valid_host_and_connect_are_refused() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &[]);
    for (request, status, code) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 400, "bad_host"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "bad_host",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            400,
            "bad_host",
        ),
        (b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400, "bad_host"),
        // The target's host goes to the app in place of Host: the same
        // rules (it went through unchecked).
        (
            b"GET http://user:pw@evil.example/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            400,
            "bad_host",
        ),
        (
            b"GET http://evil.example:99999/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            400,
            "bad_host",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            405,
            "method_not_allowed",
        ),
    ] {
        let response = raw_exchange(balancer.listen, request).await;
        assert_error(&response, status, code);
        assert_eq!(response.header("connection"), Some("close"));
    }
    assert_eq!(upstreams[0].requests(), 0, "nothing reached the upstream");
    // HTTP/1.0 may leave Host out.
    let old = raw_exchange(balancer.listen, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!((old.status, old.body.as_slice()), (200, &b"u0"[..]));
    // An absolute-form target names the host the upstream sees.
    let absolute = raw_exchange(
        balancer.listen,
        b"GET http://shop.example/headers HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    let echo: Value = absolute.json();
    let hosts = echoed_header(&echo, "host");
    assert_eq!(hosts, ["shop.example"], "{echo}");
}

/// A header whose name holds an underscore is dropped on both paths, as
/// nginx does: CGI-style apps read `X_Forwarded_For` as the
/// `X-Forwarded-For` the balancer sets, so a client could name its own
/// address to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_with_an_underscore_do_not_reach_the_app() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &[]);
    for request in [
        &b"GET /headers HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"[..],
        b"POST /headers HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\n\
          Content-Length: 1\r\n\r\nx",
    ] {
        let echo: Value = raw_exchange(balancer.listen, request).await.json();
        assert!(echoed_header(&echo, "x_forwarded_for").is_empty(), "{echo}");
        assert_eq!(
            echoed_header(&echo, "x-forwarded-for"),
            ["127.0.0.1"],
            "{echo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_lines_header_lines_and_heads_are_refused() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &[]);
    let request = |target: &str, headers: &[String]| {
        let mut text = format!("GET {target} HTTP/1.1\r\nHost: h\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    // Just under the 8 KiB line limit: forwarded.
    let fits = raw_exchange(
        balancer.listen,
        &request("/", &[format!("x-big: {}", "v".repeat(8000))]),
    )
    .await;
    assert_eq!(fits.status, 200, "{fits:?}");
    // One line over 8 KiB.
    let line = raw_exchange(
        balancer.listen,
        &request("/", &[format!("x-big: {}", "v".repeat(9000))]),
    )
    .await;
    assert_error(&line, 431, "header_too_large");
    // Lines under the limit, 40 KiB together.
    let many: Vec<String> = (0..10)
        .map(|i| format!("x-part-{i}: {}", "v".repeat(4000)))
        .collect();
    let head = raw_exchange(balancer.listen, &request("/", &many)).await;
    assert_error(&head, 431, "header_too_large");
    // A request line over 8 KiB.
    let uri = raw_exchange(
        balancer.listen,
        &request(&format!("/{}", "a".repeat(9000)), &[]),
    )
    .await;
    assert_error(&uri, 414, "uri_too_long");
    // Far past any limit: refused by the parser itself, still 431.
    let huge: Vec<String> = (0..40)
        .map(|i| format!("x-part-{i}: {}", "v".repeat(4000)))
        .collect();
    let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
    let _ = stream.write_all(&request("/", &huge)).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(upstreams[0].requests(), 1, "only the request that fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_heads_are_cut_at_the_header_timeout() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--header-timeout", "300ms"]);
    for sent in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
    ] {
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream.write_all(sent).await.expect("send");
        let answer = read_until_closed(&mut stream).await;
        // Closed, without anything forwarded (an answer, if any, is an error).
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A keep-alive connection idle past the timeout is closed too, after
    // its answer.
    let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_response(&mut stream).await.status, 200);
    assert!(read_until_closed(&mut stream).await.is_empty());
    assert_eq!(upstreams[0].requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_bodies_get_408_and_free_their_upstream() {
    let upstreams = upstreams(2).await;
    let balancer = balancer(
        &upstreams,
        &["--body-timeout", "500ms", "--min-body-rate", "200"],
    );
    // A body that stops: 10 bytes of 100, then nothing.
    let mut stalled = TcpStream::connect(balancer.listen).await.expect("connect");
    stalled
        .write_all(b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("send");
    let response = read_response(&mut stalled).await;
    assert_error(&response, 408, "body_timeout");

    // A body trickled one byte every 100 ms: each gap is well within the
    // body timeout, the rate (10 bytes/s) is far under 200 bytes/s.
    let trickle = TcpStream::connect(balancer.listen).await.expect("connect");
    let (mut reader, mut writer) = trickle.into_split();
    writer
        .write_all(b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("send");
    let done = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn({
        let done = done.clone();
        async move {
            let mut sent = 0;
            while sent < 200 && !done.is_cancelled() {
                if writer.write_all(b"x").await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => answer.extend_from_slice(&chunk[..read]),
            }
        }
    });
    read.await
        .expect("the trickled connection was never closed");
    done.cancel();
    let sent = sender.await.expect("the sender");
    assert!(sent < 200, "the whole trickle was accepted");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert_all_up(&balancer, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_client_connection_cap_a_connection_is_refused_with_503() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--max-client-conns", "2"]);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("send");
        assert_eq!(read_response(&mut stream).await.status, 200);
        open.push(stream);
    }
    let mut third = TcpStream::connect(balancer.listen).await.expect("connect");
    let refused = read_response(&mut third).await;
    assert_error(&refused, 503, "too_many_connections");
    assert!(read_until_closed(&mut third).await.is_empty());
    // One closes: the next connection is served.
    drop(open.pop());
    assert!(
        served_again(&balancer).await,
        "no connection served after one closed"
    );
}

/// Whether a new connection is served within ten seconds (its place
/// under the connection cap freed: after a tunnel, once both of its sides
/// have closed).
async fn served_again(balancer: &Balancer) -> bool {
    for _ in 0..500 {
        let response = raw_exchange(balancer.listen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        if response.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// An upgraded connection (a WebSocket) keeps its place under the client
/// connection cap while its tunnel is open. The place was given back as
/// soon as the switch was answered, so tunnels escaped the cap: six of
/// them and a plain request went through a cap of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_count_against_the_client_connection_cap() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--max-client-conns", "2"]);
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream
            .write_all(
                b"GET /upgrade HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("send the upgrade request");
        let (status, headers, _) = read_head(&mut stream).await;
        assert_eq!(status, 101, "{headers:?}");
        stream.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("the echo in time")
            .expect("the echo");
        assert_eq!(&back, b"ping");
        tunnels.push(stream);
    }
    let refused = raw_exchange(balancer.listen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_error(&refused, 503, "too_many_connections");
    // A tunnel closes: its place is free again.
    drop(tunnels.pop());
    assert!(
        served_again(&balancer).await,
        "no connection served after a tunnel closed"
    );
}

/// The requests of the two paths: the fast one (no body) and hyper's (a
/// body), each on a connection of its own.
const BOTH_PATHS: [&[u8]; 2] = [
    b"GET /big/64 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /big/64 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
];

/// A client that stops reading a large answer is closed once a write to
/// it has waited `--send-timeout`, and the upstream's slot goes to the
/// next request. Nothing bounded the wait: with `--max-conns 1` every
/// other request got 503 for as long as the client stayed connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_its_upstream_after_the_send_timeout() {
    let upstreams = upstreams(1).await;
    let args = [
        "--max-conns",
        "1",
        "--send-timeout",
        "1s",
        "--queue-timeout",
        "2s",
    ];
    let balancer = balancer(&upstreams, &args);
    for request in BOTH_PATHS {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("a small receive buffer");
        let mut stalled = socket.connect(balancer.listen).await.expect("connect");
        stalled.write_all(request).await.expect("send");
        let mut begun = [0u8; 100];
        tokio::time::timeout(Duration::from_secs(10), stalled.read_exact(&mut begun))
            .await
            .expect("the answer began in time")
            .expect("the answer began");
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let response =
                raw_exchange(balancer.listen, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
            statuses.push(response.status);
            if response.status == 200 {
                break;
            }
        }
        assert_eq!(
            statuses.last(),
            Some(&200),
            "{}: the stalled client kept the slot: {statuses:?}",
            String::from_utf8_lossy(request)
        );
        drop(stalled);
    }
}

/// A response body that stalls is cut once the upstream has sent nothing
/// for `--response-timeout`, on both paths, and the upstream is blamed.
/// Only the head had a time limit: the client waited as long as the
/// upstream held its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_is_cut_after_the_response_timeout() {
    let (upstream, _task) =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", None).await;
    let url = format!("http://{upstream}");
    let mut args = NO_CHECKS.to_vec();
    args.extend(["--upstream", &url, "--response-timeout", "1s"]);
    let balancer = Balancer::start(&args);
    for request in BOTH_PATHS {
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let received = read_until_closed(&mut stream).await;
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }
    let stats = balancer.upstream_stats(&url).await;
    assert_eq!(stats["errors"], 2, "{stats}");
}

/// A request body is timed from when the balancer asks for it, not while
/// the request waits for an upstream's slot: a client that expects `100
/// Continue` is invited once the request has an upstream, and sends then.
/// The clock ran from the request head, so such a client got 408
/// `body_timeout` while its request was still queued, never invited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_timed_from_when_the_balancer_asks_for_it() {
    let upstreams = upstreams(1).await;
    let args = [
        "--max-conns",
        "1",
        "--queue-timeout",
        "10s",
        "--body-timeout",
        "1s",
    ];
    let balancer = balancer(&upstreams, &args);
    let listen = balancer.listen;
    let busy = tokio::spawn(async move {
        raw_exchange(listen, b"GET /slow/3000 HTTP/1.1\r\nHost: h\r\n\r\n").await
    });
    balancer
        .wait_for_stats("the slot taken", Duration::from_secs(10), |stats| {
            stats["upstreams"][0]["in_flight"] == 1
        })
        .await;
    let mut stream = TcpStream::connect(listen).await.expect("connect");
    stream
        .write_all(
            b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("send the head");
    let (status, headers, _) = read_head(&mut stream).await;
    assert_eq!(status, 100, "{headers:?}");
    stream.write_all(b"hello").await.expect("send the body");
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["bytes"], 5, "{response:?}");
    assert_eq!(busy.await.expect("the slow request").status, 200);
}

/// A health path that redirects (3xx) passes, as with nginx's and
/// HAProxy's checks: an app whose `/healthz` sends to a login page is up.
/// Only 2xx passed, so such an app was out of rotation for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_answered_with_a_redirect_passes() {
    let redirect = b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n";
    let (upstream, _task) = raw_upstream(redirect, None).await;
    let url = format!("http://{upstream}");
    let args = [
        "--upstream",
        &url,
        "--health-interval",
        "50ms",
        "--rise",
        "1",
        "--fall",
        "1",
    ];
    let balancer = Balancer::start(&args);
    balancer
        .wait_for_stats("three checks", Duration::from_secs(10), |stats| {
            stats["upstreams"][0]["checks"].as_u64() >= Some(3)
        })
        .await;
    let stats = balancer.upstream_stats(&url).await;
    assert_eq!(stats["up"], true, "{stats}");
    assert_eq!(stats["last_error"], Value::Null, "{stats}");
}

/// An app server that answers the first request of each connection with
/// keep-alive and closes the connection (`reset`: with a reset, as an app
/// with `SO_LINGER` 0 does), unanswered, when the second one arrives: an
/// upstream's keep-alive timeout firing just as a pooled connection is
/// reused. Each first answer waits `delay` (so that concurrent requests
/// open connections of their own).
async fn closing_upstream(
    reset: bool,
    delay: Duration,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                for answered in 0.. {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => seen.extend_from_slice(&chunk[..read]),
                        }
                    }
                    if answered == 1 {
                        if reset {
                            let _ = stream.set_zero_linger();
                        }
                        return;
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                    seen.drain(..end + 4);
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A balancer (one worker, no health checks) over a [`closing_upstream`].
async fn balancing_a_closing_upstream(
    reset: bool,
    delay: Duration,
) -> (Balancer, tokio::task::JoinHandle<()>) {
    let (upstream, task) = closing_upstream(reset, delay).await;
    let url = format!("http://{upstream}");
    let mut args = vec!["--upstream", url.as_str(), "--workers", "1"];
    args.extend(NO_CHECKS);
    (Balancer::start(&args), task)
}

/// A plain GET, which the fast path serves, and one whose `Connection`
/// header names a header, which goes to hyper's path.
const GET_ON_BOTH_PATHS: [(&str, &[u8]); 2] = [
    ("fast", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    (
        "hyper",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_under_a_request_is_not_the_upstreams_fault() {
    let (balancer, task) = balancing_a_closing_upstream(false, Duration::ZERO).await;
    let get = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    for round in 0..3 {
        // The first request opens a connection that goes back to the pool;
        // the second finds it closed under it and goes again on a new one.
        for request in 0..2 {
            let response = raw_exchange(balancer.listen, get).await;
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..]),
                "round {round}, request {request}"
            );
        }
    }
    // A POST is not sent twice: 502, and still the upstream stays in.
    let first = raw_exchange(balancer.listen, get).await;
    assert_eq!(first.status, 200);
    let post = raw_exchange(
        balancer.listen,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_error(&post, 502, "bad_gateway");
    assert_eq!(balancer.stats().await["healthy"], 1);
    task.abort();
}

/// The same race with the pooled connection reset rather than closed, on
/// both paths (a plain GET on the fast path; one whose `Connection` header
/// names a header, on hyper's): the GET goes again on a new connection
/// and the upstream stays in, its error count untouched. On hyper's path
/// a reset ejected it; on both, each race counted as an upstream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_reset_under_a_request_is_not_the_upstreams_fault() {
    let (balancer, task) = balancing_a_closing_upstream(true, Duration::ZERO).await;
    for (path, get) in GET_ON_BOTH_PATHS {
        for request in 0..4 {
            let response = raw_exchange(balancer.listen, get).await;
            assert_eq!(
                (response.status, response.body.as_slice()),
                (200, &b"ok"[..]),
                "{path} path, request {request}"
            );
        }
        let stats = balancer.stats().await;
        assert_eq!(stats["healthy"], 1, "{path} path");
        // Nor counted as its error: every request was answered 200.
        assert_eq!(stats["upstreams"][0]["errors"], 0, "{path} path: {stats}");
    }
    task.abort();
}

/// Connections pooled after one burst reach the app's keep-alive timeout
/// together: a GET that finds one closed goes again on a new connection,
/// not on the next pooled one (which was closed too: 502 from a healthy
/// upstream), on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_stale_pooled_connection_opens_a_new_one() {
    let (balancer, task) = balancing_a_closing_upstream(false, Duration::from_millis(300)).await;
    for (path, get) in GET_ON_BOTH_PATHS {
        // A burst: three connections, each answered once and pooled.
        let burst = (0..3).map(|_| raw_exchange(balancer.listen, get));
        for response in futures_util::future::join_all(burst).await {
            assert_eq!(response.status, 200, "{path} path, the burst");
        }
        let response = raw_exchange(balancer.listen, get).await;
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"ok"[..]),
            "{path} path, after the burst"
        );
    }
    assert_eq!(balancer.stats().await["healthy"], 1);
    task.abort();
}

/// An upload over `--max-body-bytes` is answered 413 and read to its end
/// (so the client sees the answer, not a reset) without being kept: the
/// drain collected the body, so every byte sent after the 413, up to
/// 256 MiB an upload, was held in the balancer's memory until the upload
/// ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_drained_without_being_kept() {
    const MIB: usize = 1 << 20;
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--max-body-bytes", "1KiB"]);
    let before = rss_bytes(balancer.pid());
    let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
    let head = format!(
        "POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        200 * MIB
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let chunk = vec![b'x'; MIB];
    for _ in 0..150 {
        stream.write_all(&chunk).await.expect("the upload");
    }
    // Time to read what the socket holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_bytes(balancer.pid()).saturating_sub(before);
    for _ in 0..50 {
        stream.write_all(&chunk).await.expect("the upload's end");
    }
    let response = read_response(&mut stream).await;
    assert_error(&response, 413, "payload_too_large");
    assert!(
        grown < 32 * MIB as u64,
        "150 MiB of a refused upload grew the balancer by {} MiB",
        grown >> 20
    );
}

/// A pooled upstream connection whose last request's upload is still
/// going (the app answered before it had the body) is not lent to the next
/// request: that one waited, with no timeout, until the other client's
/// upload was through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_does_not_wait_behind_another_clients_upload_on_a_pooled_connection() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--workers", "1"]);
    let mut uploader = TcpStream::connect(balancer.listen).await.expect("connect");
    uploader
        .write_all(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .expect("send");
    uploader.write_all(&[b'x'; 2_000]).await.expect("send");
    let response = read_response(&mut uploader).await;
    assert_eq!(response.status, 200, "{response:?}");
    // The rest of the upload trickles on, 2 KB every 100 ms (50 s in all).
    let trickle = tokio::spawn(async move {
        for _ in 0..499 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if uploader.write_all(&[b'x'; 2_000]).await.is_err() {
                break;
            }
        }
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let answer = http
        .post(format!("{}/echo", balancer.url()))
        .body("abc")
        .send()
        .await
        .expect("an answer while the other upload goes on");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("the body"), "abc");
    assert!(!trickle.is_finished(), "the other upload was still going");
    trickle.abort();
}

/// An upload the client stops sending while the app streams its answer
/// (here `/echo`, which sends the body back as it arrives) is the client's
/// fault: the balancer cuts it at `--body-timeout`, and the answer's
/// broken end does not take the upstream out of rotation. The upstream was
/// ejected for "breaking off a response body" that the balancer itself had
/// cut, so one client could eject the upstreams one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_client_stalls_under_a_streamed_answer_ejects_no_upstream() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &["--body-timeout", "500ms"]);
    let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .expect("send");
    let (status, _, _) = read_head(&mut stream).await;
    assert_eq!(status, 200);
    // The client sends nothing more; the balancer gives up on the upload
    // and the answer ends short.
    let _ = read_until_closed(&mut stream).await;
    assert_all_up(&balancer, 1).await;
    let entry = balancer.upstream_stats(&upstreams[0].url()).await;
    assert_eq!(entry["errors"], 0, "{entry}");
}

/// A GET whose body comes chunked (a search API that takes a JSON body)
/// reaches the app with its body. The framing header is hop-by-hop and
/// was dropped, and without a length the upstream connection sent a GET
/// with no body at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_get_body_reaches_the_upstream() {
    let upstreams = upstreams(1).await;
    let balancer = balancer(&upstreams, &[]);
    let response = raw_exchange(
        balancer.listen,
        b"GET /sink HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["bytes"], 11, "{response:?}");
}
