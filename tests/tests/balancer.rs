//! End-to-end tests of `sessiond balance`: the real binary in front of
//! in-process test upstreams ([`TestUpstream`]), driven over real sockets.
//! Covers the exact round-robin order, passive ejection and recovery of a
//! stopped upstream, active health checks, 502/503/504/413 with JSON
//! bodies, no replay of non-idempotent requests, one replay of idempotent
//! ones, multi-MB bodies both ways, forwarded and hop-by-hop headers,
//! protocol upgrades, the admin listener (HTML page, `/stats.json`,
//! `/metrics`), graceful drain on SIGTERM and the command line's checks.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessiond_e2e::balance::{raw_exchange, read_head};
use sessiond_e2e::upstream::{pattern, pattern_bytes};
use sessiond_e2e::{Balancer, TestUpstream, binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound of any single exchange with the balancer.
const STEP: Duration = Duration::from_secs(20);
/// Bound of waits for an upstream to go down or come back.
const HEALTH_WAIT: Duration = Duration::from_secs(10);
/// Fast health checks, for tests that wait for an upstream to go down or
/// come back. (A check times out after one interval, so `--fall 3` keeps a
/// busy test machine from ejecting a healthy upstream.)
const FAST_HEALTH: [&str; 6] = ["--health-interval", "100ms", "--rise", "2", "--fall", "3"];
/// Unhurried health checks, for tests that need every upstream to stay in
/// rotation whatever the load of the machine.
const STEADY_HEALTH: [&str; 6] = ["--health-interval", "1s", "--rise", "2", "--fall", "2"];

fn http() -> reqwest::Client {
    sessiond_e2e::http_client(STEP)
}

/// Three upstreams named a, b and c.
async fn three_upstreams() -> Vec<TestUpstream> {
    let mut upstreams = Vec::new();
    for name in ["a", "b", "c"] {
        upstreams.push(TestUpstream::start(name).await);
    }
    upstreams
}

/// A balancer over `upstreams` (comma separated in one flag), with the
/// `health` check flags and `extra` flags.
fn balancer_over(upstreams: &[TestUpstream], health: [&str; 6], extra: &[&str]) -> Balancer {
    let mut args = health.to_vec();
    args.extend(extra);
    Balancer::over(upstreams, &args)
}

/// An answer, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let exchange = async {
        let response = request.send().await.expect("the request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the body").to_vec();
        Answer {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .expect("the balancer did not answer in time")
}

/// `count` sequential `GET /`: the bodies (upstream names, or errors).
async fn names(http: &reqwest::Client, balancer: &Balancer, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let answer = send(http.get(format!("{}/", balancer.url()))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        names.push(answer.text());
    }
    names
}

fn tally(names: &[String]) -> HashMap<&str, usize> {
    let mut tally = HashMap::new();
    for name in names {
        *tally.entry(name.as_str()).or_default() += 1;
    }
    tally
}

/// The header pairs an upstream's `/headers` saw.
fn seen_headers(echo: &Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .expect("a header list")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().expect("a name").to_owned(),
                pair[1].as_str().expect("a value").to_owned(),
            )
        })
        .collect()
}

fn values_of<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_order_is_exact_and_stats_count_every_request() {
    let upstreams = three_upstreams().await;
    // Two upstreams comma separated, the third in a repeated flag.
    let first_two = format!("{},{}", upstreams[0].url(), upstreams[1].url());
    let third = upstreams[2].url();
    let mut args = vec![
        "--upstream",
        first_two.as_str(),
        "--upstream",
        third.as_str(),
    ];
    args.extend(STEADY_HEALTH);
    let balancer = Balancer::start(&args);
    let http = http();

    let seen = names(&http, &balancer, 30).await;
    let order = ["a", "b", "c"];
    let start = order
        .iter()
        .position(|name| *name == seen[0])
        .unwrap_or_else(|| panic!("unknown upstream {:?}", seen[0]));
    let expected: Vec<&str> = (0..30).map(|i| order[(start + i) % 3]).collect();
    assert_eq!(seen, expected, "round-robin in the configured order");

    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], 3, "{stats}");
    for upstream in &upstreams {
        let entry = balancer.upstream_stats(&upstream.url()).await;
        assert_eq!(entry["up"], true, "{entry}");
        assert_eq!(entry["requests"], 10, "{entry}");
        assert_eq!(entry["errors"], 0, "{entry}");
        assert_eq!(entry["in_flight"], 0, "{entry}");
        assert_eq!(upstream.hits("/"), 10, "{} saw", upstream.name());
        assert_eq!(upstream.requests(), 10, "{} saw", upstream.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_file_with_comments_is_read() {
    let upstreams = three_upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("upstreams.txt");
    std::fs::write(
        &path,
        format!(
            "# the app servers\n{}\n\n   {}   # the second\n{}\n",
            upstreams[0].url(),
            upstreams[1].url(),
            upstreams[2].url()
        ),
    )
    .expect("write the upstreams file");
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["--upstreams-file", path.as_str()];
    args.extend(STEADY_HEALTH);
    let balancer = Balancer::start(&args);
    let seen = names(&http(), &balancer, 9).await;
    assert_eq!(tally(&seen), HashMap::from([("a", 3), ("b", 3), ("c", 3)]));
    let stats = balancer.stats().await;
    let urls: Vec<&str> = stats["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| u["url"].as_str().expect("url"))
        .collect();
    let expected: Vec<String> = upstreams.iter().map(TestUpstream::url).collect();
    assert_eq!(urls, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_upstream_fails_no_request_is_ejected_and_comes_back() {
    let mut upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    let http = http();
    let stopped_url = upstreams[1].url();

    let mut failures = Vec::new();
    let mut seen = Vec::new();
    let mut b_before_stop = 0;
    for i in 0..200 {
        if i == 60 {
            b_before_stop = upstreams[1].requests();
            upstreams[1].stop().await;
        }
        let answer = send(http.get(format!("{}/", balancer.url()))).await;
        if answer.status == 200 {
            seen.push((i, answer.text()));
        } else {
            failures.push((i, answer.status, answer.text()));
        }
    }
    assert_eq!(failures, [], "no GET may fail while an upstream stops");
    assert_eq!(b_before_stop, 20, "b served its third of the first 60");
    let late_b: Vec<_> = seen
        .iter()
        .filter(|(i, name)| *i >= 60 && name == "b")
        .collect();
    assert_eq!(late_b, Vec::<&(usize, String)>::new());

    // Ejected: down in /stats.json, and its request count is what it served.
    balancer
        .wait_until_up(&stopped_url, false, HEALTH_WAIT)
        .await;
    let entry = balancer.upstream_stats(&stopped_url).await;
    assert_eq!(entry["requests"], 20, "{entry}");
    assert_eq!(balancer.stats().await["healthy"], 2);
    let answered_by_others = seen.iter().filter(|(_, name)| name != "b").count() as u64;
    assert_eq!(
        upstreams[0].requests() + upstreams[2].requests(),
        answered_by_others,
        "every other answer came from a or c, each request once"
    );

    // Back on the same port: up again after `rise` good checks, and served.
    upstreams[1].restart().await;
    balancer
        .wait_until_up(&stopped_url, true, HEALTH_WAIT)
        .await;
    let after = names(&http, &balancer, 30).await;
    assert_eq!(
        tally(&after),
        HashMap::from([("a", 10), ("b", 10), ("c", 10)])
    );
    assert_eq!(upstreams[1].requests(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_an_upstream_refuses_goes_to_the_next_one_body_and_all() {
    let mut upstreams = three_upstreams().await;
    // b refuses connections from the start. With an hour between checks,
    // the one check at start-up is under --fall 2: b stays in rotation until
    // a request finds it refusing.
    upstreams[1].stop().await;
    let refused = upstreams[1].url();
    let slow_checks = ["--health-interval", "1h", "--rise", "2", "--fall", "2"];
    let balancer = balancer_over(&upstreams, slow_checks, &[]);
    assert_eq!(balancer.upstream_stats(&refused).await["up"], true);
    let http = http();
    for i in 0..6 {
        // A streamed body (no Content-Length): it cannot be buffered, so it
        // is replayed only because nothing of it was sent to b.
        let payload: Vec<u8> = format!("order {i}: ")
            .into_bytes()
            .into_iter()
            .chain(pattern_bytes(200_000))
            .collect();
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = payload
            .chunks(10_007)
            .map(|piece| Ok(piece.to_vec()))
            .collect();
        let answer = send(http.post(format!("{}/echo", balancer.url())).body(
            reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)),
        ))
        .await;
        assert_eq!(answer.status, 200, "POST {i}: {}", answer.text());
        assert!(answer.body == payload, "POST {i}: the echoed body differs");
    }
    let echoed: Vec<u64> = upstreams.iter().map(|u| u.hits("/echo")).collect();
    assert_eq!(echoed[0] + echoed[2], 6, "{echoed:?}");
    let entry = balancer.upstream_stats(&refused).await;
    assert_eq!(entry["up"], false, "{entry}");
    assert_eq!(entry["requests"], 0, "{entry}");
    assert_eq!(entry["errors"], 1, "{entry}");
    let why = entry["last_error"].as_str().expect("last_error");
    assert!(why.contains("Connection refused"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_upstream_down_the_others_share_its_load_evenly() {
    let mut upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    upstreams[1].stop().await;
    balancer
        .wait_until_up(&upstreams[1].url(), false, HEALTH_WAIT)
        .await;
    let seen = names(&http(), &balancer, 60).await;
    assert_eq!(tally(&seen), HashMap::from([("a", 30), ("c", 30)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_upstream_out_and_passing_ones_bring_it_back() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    let http = http();
    let sick = &upstreams[2];

    sick.set_healthy(false);
    balancer
        .wait_until_up(&sick.url(), false, HEALTH_WAIT)
        .await;
    let entry = balancer.upstream_stats(&sick.url()).await;
    assert_eq!(
        entry["last_error"], "health check answered 503 Service Unavailable",
        "{entry}"
    );
    let before = sick.requests();
    let seen = names(&http, &balancer, 20).await;
    assert!(!seen.iter().any(|name| name == "c"), "{seen:?}");
    assert_eq!(
        sick.requests(),
        before,
        "no request reaches a down upstream"
    );

    sick.set_healthy(true);
    balancer.wait_until_up(&sick.url(), true, HEALTH_WAIT).await;
    let seen = names(&http, &balancer, 30).await;
    assert_eq!(
        tally(&seen),
        HashMap::from([("a", 10), ("b", 10), ("c", 10)])
    );
}

/// When no upstream is up, the ones out of rotation are tried anyway (as
/// nginx, which never takes a lone server out, and Envoy's panic mode):
/// health checks failing everywhere at once (a shared dependency, a wrong
/// `--health-path`) leave the app servers answering what they can, where
/// every request used to be a 503 `no_upstream`; one that refuses its
/// connection is ejected and the request goes to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_upstream_up_the_ones_out_of_rotation_are_still_tried() {
    let mut upstreams = vec![
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    ];
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    for upstream in &upstreams {
        upstream.set_healthy(false);
    }
    for upstream in &upstreams {
        balancer
            .wait_until_up(&upstream.url(), false, HEALTH_WAIT)
            .await;
    }
    let http = http();
    let seen = names(&http, &balancer, 10).await;
    assert_eq!(tally(&seen), HashMap::from([("a", 5), ("b", 5)]));
    upstreams[0].stop().await;
    let seen = names(&http, &balancer, 6).await;
    assert_eq!(tally(&seen), HashMap::from([("b", 6)]));
    let metrics = send(http.get(format!("{}/metrics", balancer.admin_url()))).await;
    let picks = metrics
        .text()
        .lines()
        .find_map(|line| line.strip_prefix("sessiond_balance_panic_picks_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert!(
        picks.is_some_and(|picks| picks >= 16.0),
        "{picks:?}: {}",
        metrics.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_up_gives_503_with_a_json_error() {
    let mut upstreams = three_upstreams().await;
    for upstream in &mut upstreams {
        upstream.stop().await;
    }
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    balancer.wait_until_healthy(0, HEALTH_WAIT).await;
    for _ in 0..3 {
        let answer = send(http().get(format!("{}/anything", balancer.url()))).await;
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert_eq!(
            answer.headers["content-type"], "application/json",
            "{:?}",
            answer.headers
        );
        assert_eq!(answer.headers["retry-after"], "1", "{:?}", answer.headers);
        assert_eq!(
            answer.json(),
            json!({"error": {
                "code": "no_upstream",
                "message": "no upstream accepted the connection",
            }})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gives_504_and_is_not_retried() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &["--response-timeout", "300ms"]);
    let answer = send(http().get(format!("{}/slow/2000", balancer.url()))).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.ends_with("sent no response headers within 300ms"),
        "{message}"
    );
    let hits: u64 = upstreams.iter().map(|u| u.hits("/slow/2000")).sum();
    assert_eq!(hits, 1, "a timed-out request is sent once");

    // A fast answer on the same balancer is still fine.
    let fast = send(http().get(format!("{}/slow/10", balancer.url()))).await;
    assert_eq!(fast.status, 200);
    assert!(fast.text().starts_with("slow "), "{}", fast.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_does_not_count_the_clients_upload_time() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &["--response-timeout", "300ms"]);
    // Ten pieces at least 60 ms apart: the upload alone outlasts 300 ms; the
    // upstream answers as soon as the body is in.
    let pieces = futures_util::stream::unfold(0, |piece| async move {
        if piece == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        Some((Ok::<_, std::io::Error>(vec![1u8; 1000]), piece + 1))
    });
    let answer = send(
        http()
            .post(format!("{}/sink", balancer.url()))
            .body(reqwest::Body::wrap_stream(pieces)),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"bytes": 10_000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_upstream_dies_mid_way_is_not_replayed_and_gets_502() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let answer = send(
        http()
            .post(format!("{}/die", balancer.url()))
            .body("order #42: one apple"),
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.json()["error"]["code"], "bad_gateway");
    let hits: Vec<u64> = upstreams.iter().map(|u| u.hits("/die")).collect();
    assert_eq!(hits.iter().sum::<u64>(), 1, "the POST reached: {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_upstream_dies_mid_way_is_replayed_exactly_once() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let answer = send(http().get(format!("{}/die", balancer.url()))).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "bad_gateway");
    let hits: Vec<u64> = upstreams.iter().map(|u| u.hits("/die")).collect();
    assert_eq!(
        hits.iter().sum::<u64>(),
        2,
        "one try and one replay: {hits:?}"
    );
    assert_eq!(
        hits.iter().filter(|&&h| h == 1).count(),
        2,
        "on two upstreams: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_bodies_stream_through_intact() {
    const SIZE: usize = 8 << 20;
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let http = http();
    let payload = pattern_bytes(SIZE);

    // Request body with a Content-Length, echoed back.
    let echoed = send(
        http.post(format!("{}/echo", balancer.url()))
            .body(payload.clone()),
    )
    .await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body.len(), SIZE);
    assert!(echoed.body == payload, "the echoed body differs");

    // A chunked request body (no Content-Length), in uneven pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = payload
        .chunks(100_003)
        .map(|piece| Ok(piece.to_vec()))
        .collect();
    let streamed = send(http.post(format!("{}/echo", balancer.url())).body(
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)),
    ))
    .await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.body.len(), SIZE);
    assert!(streamed.body == payload, "the streamed echo differs");

    // A big response body.
    let big = send(http.get(format!("{}/big/8", balancer.url()))).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), SIZE);
    let first_bad = big
        .body
        .iter()
        .enumerate()
        .position(|(index, byte)| *byte != pattern(index));
    assert_eq!(first_bad, None, "the big body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_gets_413() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &["--max-body-bytes", "64KiB"]);
    let expected = json!({"error": {
        "code": "payload_too_large",
        "message": "the request body is over the 65536-byte limit (--max-body-bytes)",
    }});

    // Declared too big: refused on the headers alone (no body is sent here,
    // so the answer cannot be lost to a reset), before any upstream sees it.
    let declared = raw_exchange(
        balancer.listen,
        b"POST /sink HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n",
    )
    .await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&declared.body).expect("JSON");
    assert_eq!(body, expected);
    let hits: u64 = upstreams.iter().map(|u| u.hits("/sink")).sum();
    assert_eq!(hits, 0);

    // Exactly at the limit: passes, declared or chunked.
    let http = http();
    let at_limit = send(
        http.post(format!("{}/sink", balancer.url()))
            .body(vec![7u8; 64 << 10]),
    )
    .await;
    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(at_limit.json(), json!({"bytes": 64 << 10}));
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..16).map(|_| Ok(vec![7u8; 4 << 10])).collect();
    let chunked_at_limit = send(http.post(format!("{}/sink", balancer.url())).body(
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)),
    ))
    .await;
    assert_eq!(chunked_at_limit.status, 200, "{}", chunked_at_limit.text());
    assert_eq!(chunked_at_limit.json(), json!({"bytes": 64 << 10}));

    // Chunked, no length declared: cut off one byte past the limit (the
    // chunk's closing CRLF is never sent, so nothing is left unread).
    let chunked = raw_exchange(
        balancer.listen,
        &format!(
            "POST /sink HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}",
            65537,
            "x".repeat(65537)
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(chunked.status, 413);
    let body: Value = serde_json::from_slice(&chunked.body).expect("JSON");
    assert_eq!(body, expected);

    // Too big a body is the client's fault: every upstream stays in rotation.
    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_over_limit_body_gets_the_413() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &["--max-body-bytes", "1MiB"]);
    let http = http();
    let mut outcomes = HashMap::new();
    for _ in 0..20 {
        let outcome = tokio::time::timeout(
            STEP,
            http.post(format!("{}/sink", balancer.url()))
                .body(vec![7u8; 8 << 20])
                .send(),
        )
        .await
        .expect("an answer in time");
        let outcome = match outcome {
            Ok(response) => response.status().to_string(),
            Err(err) => format!("error: {err:?}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(
        outcomes,
        HashMap::from([("413 Payload Too Large".to_owned(), 20)])
    );
}

/// `Connection` may not name the request id away: the app gets the id the
/// access log records (it got none, while the log showed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_named_in_connection_still_reaches_the_app() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let heads: [&[u8]; 2] = [
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: x-request-id\r\n\
          X-Request-Id: client-id-7\r\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: X-Request-Id\r\n\r\n",
    ];
    for (head, expected) in heads.into_iter().zip([Some("client-id-7"), None]) {
        let response = raw_exchange(balancer.listen, head).await;
        assert_eq!(response.status, 200);
        let echo: Value = serde_json::from_slice(&response.body).expect("JSON");
        let seen = seen_headers(&echo);
        let ids = values_of(&seen, "x-request-id");
        assert_eq!(ids.len(), 1, "{seen:?}");
        if let Some(expected) = expected {
            assert_eq!(ids[0], expected, "{seen:?}");
        }
    }
}

/// What the balancer answers itself stays with it: an `Expect:
/// 100-continue` (the balancer sends the client its `100 Continue` and the
/// body at once; an upstream told to expect would take that body, sent
/// unasked, for its next request, a request the balancer never saw) and
/// an `h2c` upgrade (a tunnel of unparsed bytes to the upstream) reach the
/// upstream as plain requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_and_an_h2c_upgrade_stop_at_the_balancer() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let expecting = http()
        .post(format!("http://{}/headers", balancer.listen))
        .header("expect", "100-continue")
        .body("hi")
        .send()
        .await
        .expect("the POST");
    assert_eq!(expecting.status(), 200);
    let echo: Value = expecting.json().await.expect("JSON");
    assert_eq!(echo["method"], "POST");
    let seen = seen_headers(&echo);
    assert_eq!(values_of(&seen, "expect"), Vec::<&str>::new(), "{seen:?}");

    let h2c = raw_exchange(
        balancer.listen,
        b"GET /headers HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(h2c.status, 200);
    let echo: Value = serde_json::from_slice(&h2c.body).expect("JSON");
    let seen = seen_headers(&echo);
    for dropped in ["upgrade", "connection", "http2-settings"] {
        assert_eq!(values_of(&seen, dropped), Vec::<&str>::new(), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_added_host_is_kept_and_hop_by_hop_headers_are_dropped() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let response = raw_exchange(
        balancer.listen,
        b"GET /headers?x=1 HTTP/1.1\r\n\
         Host: shop.example:8443\r\n\
         Connection: keep-alive, X-Drop-Me\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Drop-Me: secret\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Custom: kept\r\n\
         X-Request-Id: abc-123\r\n\
         Authorization: Bearer end-to-end\r\n\
         \r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let echo: Value = serde_json::from_slice(&response.body).expect("JSON");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/headers?x=1");
    let seen = seen_headers(&echo);
    let one = |name: &str| values_of(&seen, name);
    assert_eq!(one("host"), ["shop.example:8443"], "{seen:?}");
    assert_eq!(one("x-forwarded-host"), ["shop.example:8443"], "{seen:?}");
    assert_eq!(one("x-forwarded-proto"), ["http"], "{seen:?}");
    assert_eq!(
        one("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "{seen:?}"
    );
    assert_eq!(one("x-custom"), ["kept"], "{seen:?}");
    assert_eq!(one("x-request-id"), ["abc-123"], "{seen:?}");
    assert_eq!(one("authorization"), ["Bearer end-to-end"], "{seen:?}");
    for dropped in [
        "connection",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "x-drop-me",
    ] {
        assert_eq!(one(dropped), Vec::<&str>::new(), "{dropped} was forwarded");
    }

    // Without X-Forwarded-For, it is the client's address alone.
    let plain = raw_exchange(
        balancer.listen,
        b"GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    let echo: Value = serde_json::from_slice(&plain.body).expect("JSON");
    assert_eq!(
        values_of(&seen_headers(&echo), "x-forwarded-host"),
        ["127.0.0.1"]
    );
    assert_eq!(
        values_of(&seen_headers(&echo), "x-forwarded-for"),
        ["127.0.0.1"]
    );

    // A request that names no host (HTTP/1.0 without Host) cannot pass
    // its own X-Forwarded-Host off as the balancer's (it reached the app,
    // which builds links from it).
    let hostless = raw_exchange(
        balancer.listen,
        b"GET /headers HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(hostless.status, 200);
    let echo: Value = serde_json::from_slice(&hostless.body).expect("JSON");
    assert_eq!(
        values_of(&seen_headers(&echo), "x-forwarded-host"),
        Vec::<&str>::new()
    );

    // Hop-by-hop headers of the response are dropped too (the upstream
    // does send them).
    let request = b"GET /hop HTTP/1.1\r\nHost: h\r\n\r\n";
    let direct = raw_exchange(upstreams[0].addr, request).await;
    assert_eq!(direct.header("x-upstream-secret"), Some("1"));
    assert_eq!(direct.header("connection"), Some("x-upstream-secret"));
    let hop = raw_exchange(balancer.listen, request).await;
    assert_eq!(hop.status, 200);
    assert_eq!(hop.header("x-kept"), Some("yes"), "{:?}", hop.headers);
    for dropped in [
        "x-upstream-secret",
        "keep-alive",
        "proxy-authenticate",
        "connection",
    ] {
        assert_eq!(hop.header(dropped), None, "{dropped}: {:?}", hop.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_incoming_x_forwarded_for_line_is_kept() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let response = raw_exchange(
        balancer.listen,
        b"GET /headers HTTP/1.1\r\nHost: h\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-For: 198.51.100.7\r\n\r\n",
    )
    .await;
    let echo: Value = serde_json::from_slice(&response.body).expect("JSON");
    let seen = seen_headers(&echo);
    assert_eq!(
        values_of(&seen, "x-forwarded-for").join(", "),
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );
}

/// On a dual-stack listener (`[::]`) an IPv4 client is named by its IPv4
/// address to the app, with or without a request body (both of the
/// balancer's paths): it was `::ffff:127.0.0.1`, which allow-lists and rate
/// limits keyed on `X-Forwarded-For` do not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_client_of_a_dual_stack_listener_is_forwarded_as_ipv4() {
    if let Err(err) = std::net::TcpListener::bind("[::]:0") {
        eprintln!("skipped: this machine has no IPv6 listener ({err})");
        return;
    }
    let upstreams = three_upstreams().await;
    let list = sessiond_e2e::upstream::url_list(&upstreams);
    let mut args = vec!["--upstream", list.as_str()];
    args.extend(STEADY_HEALTH);
    let balancer = Balancer::start_on("[::]:0", "127.0.0.1:0", &args);
    let over_ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], balancer.listen.port()));
    let requests: [&[u8]; 2] = [
        b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /headers HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody",
    ];
    for request in requests {
        let response = raw_exchange(over_ipv4, request).await;
        assert_eq!(
            response.status,
            200,
            "{:?}",
            String::from_utf8_lossy(request)
        );
        let echo: Value = serde_json::from_slice(&response.body).expect("JSON");
        assert_eq!(
            values_of(&seen_headers(&echo), "x-forwarded-for"),
            ["127.0.0.1"],
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_tunnels_bytes_both_ways() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let tunnel = async {
        let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
        stream
            .write_all(
                b"GET /upgrade HTTP/1.1\r\nHost: h\r\n\
                  Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("send the upgrade request");
        let (status, headers, early) = read_head(&mut stream).await;
        assert_eq!(status, 101, "{headers:?}");
        assert!(early.is_empty(), "bytes before any were sent: {early:?}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.to_ascii_lowercase())
        };
        assert_eq!(header("upgrade").as_deref(), Some("echo"), "{headers:?}");
        assert_eq!(header("connection").as_deref(), Some("upgrade"));

        // Small messages, one at a time, then a big one.
        for message in ["ping", "hello over the tunnel", "\0\u{1}binary\u{ff}"] {
            stream.write_all(message.as_bytes()).await.expect("write");
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).await.expect("read the echo");
            assert_eq!(back, message.as_bytes());
        }
        let big = pattern_bytes(1 << 20);
        let (mut reader, mut writer) = stream.into_split();
        let sent = big.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.expect("write 1 MiB");
            writer.shutdown().await.expect("half-close");
        });
        let mut back = Vec::new();
        reader
            .read_to_end(&mut back)
            .await
            .expect("read until the upstream closes");
        writing.await.expect("the writer");
        assert_eq!(back.len(), big.len());
        assert!(back == big, "the echoed megabyte differs");
    };
    tokio::time::timeout(STEP, tunnel)
        .await
        .expect("the tunnel test did not finish in time");
    let hits: u64 = upstreams.iter().map(|u| u.hits("/upgrade")).sum();
    assert_eq!(hits, 1);
}

/// Prometheus samples of `metric`: labels and value.
fn samples(text: &str, metric: &str) -> Vec<(HashMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
                .collect();
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, metric)
        .into_iter()
        .find(|(found, _)| {
            found.len() == labels.len()
                && labels
                    .iter()
                    .all(|(key, value)| found.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, value)| value)
}

/// An upstream's 5xx is an error alike on the status page and in
/// Prometheus: `sessiond_balance_upstream_errors_total` left 5xx out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_5xx_counts_as_an_error_in_stats_and_metrics_alike() {
    let upstreams = [TestUpstream::start("a").await];
    let no_checks = ["--health-interval", "1h", "--rise", "1", "--fall", "9"];
    let balancer = balancer_over(&upstreams, no_checks, &[]);
    upstreams[0].set_healthy(false);
    let http = http();
    let answer = send(http.get(format!("{}/healthz", balancer.url()))).await;
    assert_eq!(answer.status, 503);
    let stats = balancer.stats().await;
    assert_eq!(stats["upstreams"][0]["errors"], 1, "{stats}");
    let metrics = send(http.get(format!("{}/metrics", balancer.admin_url()))).await;
    let url = upstreams[0].url();
    let errors = sample(
        &metrics.text(),
        "sessiond_balance_upstream_errors_total",
        &[("upstream", &url)],
    );
    assert_eq!(errors, Some(1.0), "{}", metrics.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_shows_every_upstream_with_its_state_and_counts() {
    let mut upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    let http = http();
    names(&http, &balancer, 30).await;
    upstreams[1].stop().await;
    balancer
        .wait_until_up(&upstreams[1].url(), false, HEALTH_WAIT)
        .await;

    // The HTML status page.
    let page = send(http.get(format!("{}/", balancer.admin_url()))).await;
    assert_eq!(page.status, 200);
    let content_type = page.headers["content-type"].to_str().expect("ASCII");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text();
    assert!(
        html.contains("<title>sessiond balance: 2/3 up</title>"),
        "{html}"
    );
    for (upstream, state) in upstreams.iter().zip(["UP", "DOWN", "UP"]) {
        let url = upstream.url();
        let rows: Vec<&str> = html
            .lines()
            .filter(|line| line.contains(&format!(">{url}<")))
            .collect();
        assert_eq!(rows.len(), 1, "one row for {url}: {html}");
        assert!(
            rows[0].contains(&format!(">{state}<")),
            "{url} must be {state}: {}",
            rows[0]
        );
        assert!(
            rows[0].contains("<td>10</td>"),
            "{url} served 10: {}",
            rows[0]
        );
    }

    // /stats.json.
    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], 2);
    let states: Vec<(&str, bool, u64)> = stats["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| {
            (
                u["url"].as_str().expect("url"),
                u["up"].as_bool().expect("up"),
                u["requests"].as_u64().expect("requests"),
            )
        })
        .collect();
    let urls: Vec<String> = upstreams.iter().map(TestUpstream::url).collect();
    assert_eq!(
        states,
        [
            (urls[0].as_str(), true, 10),
            (urls[1].as_str(), false, 10),
            (urls[2].as_str(), true, 10),
        ]
    );

    // /metrics.
    let metrics = send(http.get(format!("{}/metrics", balancer.admin_url()))).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for (url, up) in urls.iter().zip([1.0, 0.0, 1.0]) {
        assert_eq!(
            sample(
                &text,
                "sessiond_balance_requests_total",
                &[("upstream", url), ("class", "2xx")]
            ),
            Some(10.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "sessiond_balance_upstream_up", &[("upstream", url)]),
            Some(up),
            "{text}"
        );
    }

    // The admin listener's own liveness.
    let alive = send(http.get(format!("{}/healthz", balancer.admin_url()))).await;
    assert_eq!((alive.status, alive.text().as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_draws_each_upstreams_requests_per_second_in_a_browser() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, FAST_HEALTH, &[]);
    let http = http();
    // Three seconds of requests (bounded), so the sampler sees them.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) && sent < 30_000 {
        names(&http, &balancer, 30).await;
        sent += 30;
    }
    let dom = sessiond_e2e::browser::dump_dom(&format!("{}/", balancer.admin_url())).await;
    for upstream in &upstreams {
        let url = upstream.url();
        let row = dom
            .split("<tr")
            .find(|row| row.contains(&format!(">{url}<")))
            .unwrap_or_else(|| panic!("no row for {url}: {dom}"));
        let rate: f64 = row
            .split("class=\"rate\">")
            .nth(1)
            .and_then(|cell| cell.split("/s").next())
            .and_then(|rate| rate.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {row}"));
        assert!(rate > 0.0, "{url} served requests: {row}");
        assert!(row.contains("<svg") && row.contains("<polyline"), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let upstreams = three_upstreams().await;
    let mut balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let url = format!("{}/slow/2500", balancer.url());
    let in_flight = tokio::spawn(async move { send(http().get(url)).await });
    wait_until_one_request_is_at_an_upstream(&balancer).await;

    let (balancer, code) = tokio::task::spawn_blocking(move || {
        let code = balancer.terminate();
        (balancer, code)
    })
    .await
    .expect("terminate");
    let answer = in_flight.await.expect("the in-flight request");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().starts_with("slow "), "{}", answer.text());
    assert_eq!(code, Some(0), "exit code; log:\n{}", balancer.log());
    assert!(
        balancer
            .log()
            .contains("balancer draining in-flight requests"),
        "{}",
        balancer.log()
    );
}

/// New connections during a drain are refused at once, with or without
/// a handover socket. The balancer kept a copy of its listening socket
/// open through the drain, so the kernel took them into a backlog nobody
/// accepted: they hung until the process exited, then were reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_balancer_refuses_new_connections_at_once() {
    let upstreams = three_upstreams().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("handover.sock");
    let handover = ["--handover-socket", socket.to_str().expect("a UTF-8 path")];
    for extra in [&[][..], &handover[..]] {
        refuses_new_connections_while_draining(&upstreams, extra).await;
    }
}

async fn refuses_new_connections_while_draining(upstreams: &[TestUpstream], extra: &[&str]) {
    let balancer = balancer_over(upstreams, STEADY_HEALTH, extra);
    let url = format!("{}/slow/2500", balancer.url());
    let in_flight = tokio::spawn(async move { send(http().get(url)).await });
    wait_until_one_request_is_at_an_upstream(&balancer).await;
    sessiond_e2e::process::signal(balancer.pid(), "TERM");
    wait_for_drain(&balancer).await;
    // The workers stop accepting as the drain starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let connected =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(balancer.listen))
            .await
            .expect("a connect answered at once");
    assert!(
        matches!(&connected, Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused),
        "with {extra:?}: {connected:?}"
    );
    let answer = in_flight.await.expect("the in-flight request");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// A protocol switch asked for during a drain keeps its `Connection:
/// upgrade`. The drain's `Connection: close` replaced it on the 101, which
/// told the client the switch had not happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_answered_during_a_drain_keeps_its_connection_upgrade() {
    let upstreams = three_upstreams().await;
    let balancer = balancer_over(&upstreams, STEADY_HEALTH, &[]);
    let url = format!("{}/slow/2500", balancer.url());
    let in_flight = tokio::spawn(async move { send(http().get(url)).await });
    wait_until_one_request_is_at_an_upstream(&balancer).await;
    // Half a head before the drain, the rest during it.
    let mut stream = TcpStream::connect(balancer.listen).await.expect("connect");
    let head = b"GET /upgrade HTTP/1.1\r\nHost: h\r\n";
    stream.write_all(head).await.expect("write");
    sessiond_e2e::process::signal(balancer.pid(), "TERM");
    wait_for_drain(&balancer).await;
    let rest = b"Connection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    stream.write_all(rest).await.expect("write");
    let (status, headers, _) = tokio::time::timeout(STEP, read_head(&mut stream))
        .await
        .expect("an answer in time");
    assert_eq!(status, 101, "{headers:?}");
    let connection = headers.iter().find(|(name, _)| name == "connection");
    let connection = connection.map(|(_, value)| value.to_ascii_lowercase());
    assert_eq!(connection.as_deref(), Some("upgrade"), "{headers:?}");
    stream.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("the echo");
    assert_eq!(&back, b"ping");
    let answer = in_flight.await.expect("the in-flight request");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// Waits (bounded) until the balancer says it drains.
async fn wait_for_drain(balancer: &Balancer) {
    let deadline = Instant::now() + HEALTH_WAIT;
    while !balancer
        .log()
        .contains("balancer draining in-flight requests")
    {
        assert!(Instant::now() < deadline, "no drain: {}", balancer.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the balancer's upstreams have one request in
/// flight between them.
async fn wait_until_one_request_is_at_an_upstream(balancer: &Balancer) {
    let deadline = Instant::now() + HEALTH_WAIT;
    loop {
        let stats = balancer.stats().await;
        let busy: u64 = stats["upstreams"]
            .as_array()
            .expect("upstreams")
            .iter()
            .map(|u| u["in_flight"].as_u64().expect("in_flight"))
            .sum();
        if busy == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the request never started: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `sessiond balance <args>` (bounded to 10 s): exit code, stdout,
/// stderr.
fn run_balance(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(binary("sessiond:sessiond"))
        .arg("balance")
        .args(args)
        .env_remove("SESSIOND_UPSTREAMS")
        .env_remove("SESSIOND_UPSTREAMS_FILE")
        .env("SESSIOND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sessiond balance");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sessiond balance {args:?} did not exit (it should not serve)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status.code(), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_is_checked_before_serving() {
    let listen = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let with = |extra: &[&'static str]| {
        let mut args = listen.to_vec();
        args.extend(extra);
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (with(&[]), "no upstreams: give --upstream http://host:port"),
        (
            with(&["--upstream", "https://app:3000"]),
            "must start with http://",
        ),
        (
            with(&["--upstream", "http://app:3000/shop"]),
            "without a path",
        ),
        (with(&["--upstream", "http://app"]), "needs a port"),
        (
            with(&["--upstream", "http://app:1", "--health-path", "healthz"]),
            "--health-path must start with /",
        ),
        (
            with(&["--upstreams-file", "/nonexistent/upstreams.txt"]),
            "cannot read /nonexistent/upstreams.txt",
        ),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            move || run_balance(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .expect("run");
        assert!(
            code.is_some_and(|code| code != 0),
            "{args:?} exited {code:?}"
        );
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    let (code, stdout, stderr) = tokio::task::spawn_blocking(|| {
        run_balance(&[
            "--upstream",
            "http://app-1:3000,http://app-2:3000",
            "--check-config",
        ])
    })
    .await
    .expect("run");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("configuration ok"), "{stdout}");
}
