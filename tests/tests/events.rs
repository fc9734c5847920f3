//! The event log through the real binary and real Redis: every session
//! change logged once, in commit order; consumers that stop and resume
//! (over HTTP pages, Server-Sent Events, and the Rust client's stream) see
//! each event exactly once; sessions that expire silently in Redis are
//! reported `expired` exactly once, however many nodes reap and whichever
//! dies; retention refuses a stale cursor; the log survives a Redis restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::raw_http;
use sessiond_e2e::redis_support::{
    Reply, bounded, client_of, http, node_on, redis_conn, redis_query, send,
};
use sessiond_e2e::time::rfc3339_ms;
use sessiond_e2e::{RedisServer, Sessiond};

/// `GET /v1/events` with the given query.
async fn page(http: &reqwest::Client, node: &Sessiond, query: &str) -> Reply {
    send(http.get(format!("{}/v1/events?{query}", node.url()))).await
}

/// Every event after `cursor` until `until` says enough, reading pages
/// (long-polling) from `nodes` in turn; returns the events and the cursor.
async fn read_until(
    http: &reqwest::Client,
    nodes: &[&Sessiond],
    mut cursor: String,
    until: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, String) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut turn = 0;
    while !until(&seen) {
        assert!(Instant::now() < deadline, "events so far: {seen:#?}");
        let node = nodes[turn % nodes.len()];
        turn += 1;
        let reply = page(http, node, &format!("after={cursor}&limit=50&wait_secs=1")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let body = reply.json();
        seen.extend(body["events"].as_array().cloned().unwrap_or_default());
        cursor = body["next"].as_str().expect("next").to_owned();
    }
    (seen, cursor)
}

async fn create(http: &reqwest::Client, node: &Sessiond, body: Value) -> String {
    let reply = send(http.post(format!("{}/v1/sessions", node.url())).json(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.session().id
}

/// The oldest cursor a 410 `cursor_expired` answer names.
fn oldest_after_expiry(gone: Reply) -> String {
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (410, "cursor_expired"),
        "{}",
        gone.text
    );
    gone.json()["error"]["oldest"]
        .as_str()
        .expect("the oldest cursor")
        .to_owned()
}

/// Asserts that `reply` is 400 `invalid_cursor` (`what` names the case).
fn assert_invalid_cursor(reply: &Reply, what: &str) {
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_cursor"),
        "{what}: {}",
        reply.text
    );
}

fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event["kind"].as_str().unwrap_or_default().to_owned(),
                event["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The scenario: A and B created, A rotated, B deleted, C created
/// with a 2 s TTL and never read; the consumer stops, 100 more operations
/// happen, it resumes from its cursor: every event once, in commit order,
/// and C's `expired` within 4 s.
async fn every_change_once_in_order(nodes: &[&Sessiond]) {
    let http = http();
    let start = page(&http, nodes[0], "after=now").await.json()["next"]
        .as_str()
        .expect("next")
        .to_owned();
    let a = create(&http, nodes[0], json!({"user": "ann"})).await;
    let b = create(&http, nodes[1 % nodes.len()], json!({})).await;
    let rotated = send(http.post(format!("{}/v1/sessions/{a}/rotate", nodes[0].url()))).await;
    let a2 = rotated.session().id;
    assert_eq!(
        send(http.delete(format!("{}/v1/sessions/{b}", nodes[0].url())))
            .await
            .status,
        204
    );
    let c = create(&http, nodes[0], json!({"ttl_secs": 2})).await;
    let created_c = Instant::now();
    let (first, cursor) = read_until(&http, nodes, start, |seen| seen.len() >= 5).await;
    assert_eq!(
        kinds(&first),
        [
            ("created".into(), a.clone()),
            ("created".into(), b.clone()),
            ("rotated".into(), a2.clone()),
            ("deleted".into(), b.clone()),
            ("created".into(), c.clone()),
        ]
    );
    assert_eq!(first[0]["user"], "ann");
    assert_eq!(first[2]["old_id"], json!(a));
    assert_eq!(first[2]["user"], "ann");
    // The consumer is away while 100 more operations happen.
    let mut made = Vec::new();
    for n in 0..50 {
        let id = create(&http, nodes[n % nodes.len()], json!({"data": {"n": n}})).await;
        send(http.delete(format!("{}/v1/sessions/{id}", nodes[0].url()))).await;
        made.push(id);
    }
    let (rest, _) = read_until(&http, nodes, cursor, |seen| {
        seen.len() >= 101 && seen.iter().any(|event| event["kind"] == "expired")
    })
    .await;
    let expired_at = Instant::now();
    let mut expected: Vec<(String, String)> = Vec::new();
    for id in &made {
        expected.push(("created".into(), id.clone()));
        expected.push(("deleted".into(), id.clone()));
    }
    let (others, expiries): (Vec<_>, Vec<_>) = kinds(&rest)
        .into_iter()
        .partition(|(kind, _)| kind != "expired");
    assert_eq!(others, expected, "the 100 operations, each once, in order");
    assert_eq!(expiries, [("expired".to_owned(), c)]);
    assert!(
        expired_at - created_c < Duration::from_secs(5),
        "C expired {:?} after its creation",
        expired_at - created_c
    );
    let cursors: BTreeSet<&str> = first
        .iter()
        .chain(&rest)
        .filter_map(|event| event["cursor"].as_str())
        .collect();
    assert_eq!(cursors.len(), first.len() + rest.len(), "no event twice");
    // Each node counts the events it logged: together, each event once.
    let mut counted = BTreeMap::new();
    for node in nodes {
        let metrics = scrape(&node.url()).await;
        for kind in ["created", "rotated", "deleted", "expired"] {
            *counted.entry(kind).or_insert(0.0) += metrics
                .value("sessiond_events_total", &[("kind", kind)])
                .unwrap_or_default();
        }
        assert!(
            metrics.value("sessiond_events_retained", &[]) >= Some(1.0),
            "{}",
            metrics.text()
        );
    }
    assert_eq!(
        counted,
        BTreeMap::from([
            ("created", 53.0),
            ("rotated", 1.0),
            ("deleted", 51.0),
            ("expired", 1.0)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_logs_every_change_once_in_order() {
    let node = Sessiond::start(&["--sweep-interval", "50ms"]);
    every_change_once_in_order(&[&node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_logs_every_change_once_in_order_read_on_any_node() {
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    every_change_once_in_order(&[&nodes[0], &nodes[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_expiring_in_redis_is_reported_once_while_a_node_dies() {
    const SESSIONS: usize = 1000;
    let redis = RedisServer::start();
    let http = http();
    let mut nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    let start = page(&http, &nodes[0], "after=now").await.json()["next"]
        .as_str()
        .expect("next")
        .to_owned();
    let clients = [
        client_of(&[&nodes[0]], Duration::from_secs(5)).await,
        client_of(&[&nodes[1]], Duration::from_secs(5)).await,
    ];
    let mut ids = BTreeSet::new();
    for n in 0..SESSIONS {
        let info = bounded(
            "create",
            // Once node 1 is dead, every create goes through node 0.
            clients[if n <= SESSIONS / 2 { n % 2 } else { 0 }]
                .create(&json!({"n": n}), Some(Duration::from_secs(1))),
        )
        .await
        .expect("a create");
        ids.insert(info.id.to_string());
        if n == SESSIONS / 2 {
            nodes[1].kill();
        }
    }
    let survivor = [&nodes[0]];
    let (events, _) = read_until(&http, &survivor, start, |seen| {
        seen.iter()
            .filter(|event| event["kind"] == "expired")
            .count()
            >= SESSIONS
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = page(&http, &nodes[0], "after=0-0&limit=1000").await;
    // `late` re-reads the start of the log: count each cursor once.
    let mut by_cursor: BTreeMap<String, String> = BTreeMap::new();
    for event in late.json()["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(&events)
    {
        if event["kind"] == "expired" {
            by_cursor.insert(
                event["cursor"].as_str().unwrap_or_default().to_owned(),
                event["id"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    let reported: Vec<&String> = by_cursor.values().collect();
    let distinct: BTreeSet<&String> = reported.iter().copied().collect();
    assert_eq!(reported.len(), distinct.len(), "a session reported twice");
    assert_eq!(
        distinct
            .iter()
            .map(|id| (*id).clone())
            .collect::<BTreeSet<_>>(),
        ids,
        "every session reported once"
    );
    assert!(!by_cursor.is_empty());
}

/// A write that keeps a session's TTL moves its expiry later without
/// rescoring the expiry index, so the index comes due while the session
/// still lives: the reaper must find it alive and rescore it, and report
/// it only once it has really expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_kept_alive_by_writes_is_reported_expired_only_after_it_expires() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let start = page(&http, &node, "after=now").await.json()["next"]
        .as_str()
        .expect("next")
        .to_owned();
    let id = create(&http, &node, json!({"ttl_secs": 2})).await;
    let url = format!("{}/v1/sessions/{id}", node.url());
    // Twice its TTL, written every 300 ms: it never expires.
    let writing = Instant::now();
    let mut writes = 0;
    while writing.elapsed() < Duration::from_secs(4) {
        let put = send(http.put(&url).json(&json!({"data": {"n": writes}}))).await;
        assert_eq!(put.status, 200, "write {writes}: {}", put.text);
        writes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let so_far = page(&http, &node, &format!("after={start}&limit=50")).await;
    assert_eq!(
        kinds(so_far.json()["events"].as_array().expect("events")),
        [("created".to_owned(), id.clone())],
        "reported before it expired"
    );
    let (events, _) = read_until(&http, &[&node], start, |seen| {
        seen.iter().any(|event| event["kind"] == "expired")
    })
    .await;
    assert_eq!(
        kinds(&events),
        [
            ("created".to_owned(), id.clone()),
            ("expired".to_owned(), id.clone())
        ]
    );
    assert_eq!(send(http.get(&url)).await.status, 404);
}

/// The stream's text up to the end of its first message.
async fn first_message(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) -> String {
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = bounded("an event", body.next())
            .await
            .expect("more")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The first event of the stream resumed after `last_id`, and the text it
/// came in.
async fn resumed(http: &reqwest::Client, node: &Sessiond, last_id: &str) -> (Value, String) {
    let response = bounded(
        "resume the stream",
        http.get(format!("{}/v1/events/stream", node.url()))
            .header("last-event-id", last_id)
            .send(),
    )
    .await
    .expect("the stream");
    let mut body = response.bytes_stream();
    let text = first_message(&mut body).await;
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data:"))
        .and_then(|data| serde_json::from_str(data.trim()).ok())
        .unwrap_or_else(|| panic!("no event in {text:?}"));
    (data, text)
}

/// The body of the event stream opened `after=now`.
async fn stream_after_now(
    http: &reqwest::Client,
    node: &Sessiond,
) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin {
    let response = bounded(
        "open the stream",
        http.get(format!("{}/v1/events/stream?after=now", node.url()))
            .send(),
    )
    .await
    .expect("the stream");
    assert_eq!(response.status(), 200);
    response.bytes_stream()
}

/// A stream opened `after=now` sends its place at once, as an id without
/// data: a client that loses it before the first event resumes from there
/// and misses nothing. It sent nothing but keep-alive comments until the
/// first event, so such a client could only open it `after=now` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_after_now_tells_its_place_before_any_event() {
    let node = Sessiond::start(&[]);
    let http = http();
    create(&http, &node, json!({})).await;
    let mut body = stream_after_now(&http, &node).await;
    let text = first_message(&mut body).await;
    drop(body);
    let place = text
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .unwrap_or_else(|| panic!("no id line in {text:?}"))
        .trim()
        .to_owned();
    assert!(!text.contains("data:"), "{text}");
    let made_meanwhile = create(&http, &node, json!({})).await;
    let (data, _) = resumed(&http, &node, &place).await;
    assert_eq!(
        (data["kind"].as_str(), data["id"].as_str()),
        (Some("created"), Some(made_meanwhile.as_str()))
    );
}

/// A stream its client reads lasts past `--http-idle-timeout`: that
/// timeout is for connections idle between requests and clients that stop
/// reading. The connection's clock counted the stream as idle once its
/// response began, and cut it at the idle timeout (75 s by default), so
/// every consumer had to reconnect, and simple ones just ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_the_http_idle_timeout() {
    let node = Sessiond::start(&["--http-idle-timeout", "1s"]);
    let http = http();
    let mut body = stream_after_now(&http, &node).await;
    let place = first_message(&mut body).await;
    assert!(!place.contains("data:"), "{place}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let made = create(&http, &node, json!({})).await;
    let text = first_message(&mut body).await;
    assert!(text.contains(&made), "{text}");
    let timeouts = scrape(&node.url())
        .await
        .value("sessiond_http_timeouts_total", &[("phase", "idle")]);
    assert_eq!(timeouts.unwrap_or(0.0), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sent_event_stream_resumes_from_its_last_event_id() {
    let node = Sessiond::start(&[]);
    let http = http();
    let first = create(&http, &node, json!({})).await;
    // Read the stream until the first event, then cut it.
    let response = bounded(
        "open the stream",
        http.get(format!("{}/v1/events/stream", node.url())).send(),
    )
    .await
    .expect("the stream");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let text = first_message(&mut body).await;
    let consumers =
        |metrics: sessiond_e2e::metrics::Metrics| metrics.value("sessiond_event_consumers", &[]);
    assert_eq!(consumers(scrape(&node.url()).await), Some(1.0));
    drop(body);
    let last_id = text
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .expect("an id line")
        .trim()
        .to_owned();
    assert!(text.contains(&first), "{text}");
    // While no one listens, another session is made; resuming from the
    // Last-Event-ID gives exactly it.
    let second = create(&http, &node, json!({})).await;
    let (data, text) = resumed(&http, &node, &last_id).await;
    assert_eq!(
        (data["kind"].as_str(), data["id"].as_str()),
        (Some("created"), Some(second.as_str()))
    );
    assert!(!text.contains(&first), "the first event came again: {text}");
    // The server notices the consumers that left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumers(scrape(&node.url()).await) != Some(0.0) {
        assert!(Instant::now() < deadline, "consumers still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_retention_is_gone_with_the_oldest() {
    for redis in [None, Some(RedisServer::start())] {
        let http = http();
        let args = ["--events-retention", "10"];
        let node = match &redis {
            Some(redis) => node_on(&http, &redis.url(), &args).await,
            None => Sessiond::start(&args),
        };
        let start = page(&http, &node, "after=now").await.json()["next"]
            .as_str()
            .expect("next")
            .to_owned();
        for _ in 0..300 {
            create(&http, &node, json!({})).await;
        }
        let oldest = oldest_after_expiry(page(&http, &node, &format!("after={start}")).await);
        let resumed = page(&http, &node, &format!("after={oldest}&limit=1000")).await;
        assert_eq!(resumed.status, 200, "{}", resumed.text);
        assert!(
            !resumed.json()["events"]
                .as_array()
                .expect("events")
                .is_empty()
        );
        assert_invalid_cursor(
            &page(&http, &node, "after=not-a-cursor").await,
            "not-a-cursor",
        );
        // No cursor: from the oldest event kept, whatever was dropped.
        let from_oldest = page(&http, &node, "limit=1000").await;
        assert_eq!(from_oldest.status, 200, "{}", from_oldest.text);
        assert_eq!(
            from_oldest.json()["events"],
            resumed.json()["events"],
            "redis: {}",
            redis.is_some()
        );
    }
}

/// `next` of a page read with `query`.
async fn next_cursor(http: &reqwest::Client, node: &Sessiond, query: &str) -> String {
    let reply = page(http, node, query).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text);
    reply.json()["next"].as_str().expect("next").to_owned()
}

/// Redis: a log that age trimmed down to nothing (a quiet spell longer
/// than `--events-max-age`) still refuses a cursor from before what it
/// dropped (it answered 200 with no events, a silent gap), hands out the
/// newest id it generated as `now` (it handed out `0-0`, which the next
/// event made a 410), and refuses cursors it never handed out: one past
/// its newest id with 410 and that id (it was answered 200 and skipped
/// what came), the largest id with 400 (it was 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trimmed_to_nothing_still_tells_stale_now_and_foreign_cursors() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--events-max-age", "1s"]).await;
    let stale = next_cursor(&http, &node, "after=now").await;
    for _ in 0..250 {
        create(&http, &node, json!({})).await;
    }
    let mut admin = redis_conn(&redis.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut length = redis::cmd("XLEN");
        length.arg("{sessiond:events}");
        if redis_query::<u64>(&mut admin, &mut length).await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was never trimmed to nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let oldest = oldest_after_expiry(page(&http, &node, &format!("after={stale}")).await);
    let now = next_cursor(&http, &node, "after=now").await;
    assert_eq!(
        oldest, now,
        "the oldest cursor of an emptied log is its newest id"
    );
    assert_eq!(
        next_cursor(&http, &node, "").await,
        now,
        "a read from the oldest event kept goes on after the newest id"
    );
    let made = create(&http, &node, json!({})).await;
    let after_now = page(&http, &node, &format!("after={now}")).await;
    assert_eq!(after_now.status, 200, "{}", after_now.text);
    assert_eq!(
        kinds(after_now.json()["events"].as_array().expect("events")),
        [("created".to_owned(), made)]
    );
    let ahead = page(&http, &node, "after=99999999999999-0").await;
    assert_eq!(oldest_after_expiry(ahead), now);
    let largest = format!("{}-{}", u64::MAX, u64::MAX);
    assert_invalid_cursor(
        &page(&http, &node, &format!("after={largest}")).await,
        &largest,
    );
}

/// Redis: events older than `--events-max-age` are gone while newer ones
/// keep coming (the trim was approximate, `MINID ~`: Redis kept a whole
/// node of the stream, up to ~100 events, until its newest entry was too
/// old, so a log written slowly kept events far past the age).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_max_age_are_dropped_while_new_ones_come() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--events-max-age", "1s"]).await;
    for _ in 0..12 {
        create(&http, &node, json!({})).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reply = page(&http, &node, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let stamps: Vec<u64> = reply.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| rfc3339_ms(event["at"].as_str().expect("at")))
        .collect();
    let (Some(oldest), Some(newest)) = (stamps.iter().min(), stamps.iter().max()) else {
        panic!("no event in the last second: {}", reply.text);
    };
    // One second of age, the reaper's quarter second and ample slack.
    assert!(
        newest - oldest <= 2_500,
        "the log kept events {} ms older than its newest ({} events of 12)",
        newest - oldest,
        stamps.len()
    );
}

/// Redis: a max age longer than the time since 1970 (`--events-max-age`
/// takes up to 100 years) keeps every event and the reaper still counts
/// what it logs: the trim asked Redis for a negative stream id, the
/// reaper's script failed every round, `expired` went uncounted and the
/// retained gauge was never set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_age_longer_than_the_epoch_keeps_the_reaper_counting() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--events-max-age", "60y"]).await;
    let made = send(
        http.post(format!("{}/v1/sessions", node.url()))
            .json(&json!({ "data": {}, "ttl_secs": 1 })),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(&node.url()).await;
        let expired = metrics.value("sessiond_events_total", &[("kind", "expired")]);
        let retained = metrics.value("sessiond_events_retained", &[]);
        if (expired, retained) == (Some(1.0), Some(2.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired {expired:?}, retained {retained:?}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis: a command Redis refuses, not for an outage but for good (here the
/// event reaper's: another program wrote the expiry index as a string, so
/// its script fails with `WRONGTYPE` every round), is counted in
/// `sessiond_redis_command_errors_total` and logged once as a warning. It
/// was logged at debug level only: a reaper failing every round, as the
/// one fixed in `bcd785c` did, showed nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redis_refuses_is_counted_and_logged_once() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let before = scrape(&node.url()).await;
    assert_eq!(
        before.value("sessiond_redis_command_errors_total", &[]),
        Some(0.0)
    );
    let mut overwrite = redis::cmd("SET");
    overwrite
        .arg("{sessiond:events}:expiries")
        .arg("another program's");
    let () = overwrite
        .query_async(&mut admin)
        .await
        .expect("SET the expiry index");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(&node.url()).await;
        let refused = metrics
            .value("sessiond_redis_command_errors_total", &[])
            .unwrap_or_default();
        // The reaper runs four times a second.
        if refused >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused {refused}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_one_wrongtype_warning(&node.log());
}

/// Redis: refusals of one kind whose texts differ, taking turns (the event
/// reaper's `WRONGTYPE` on the expiry index, a read's on a session key
/// another program overwrote), are logged once a kind, not at every turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_taking_turns_are_logged_once_a_kind() {
    let redis = RedisServer::start();
    let http = http();
    let writer = node_on(&http, &redis.url(), &[]).await;
    let id = create(&http, &writer, json!({})).await;
    // A node of its own reads from Redis: nothing cached.
    let reader = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let mut overwrite = redis::pipe();
    overwrite
        .cmd("SET")
        .arg("{sessiond:events}:expiries")
        .arg("another program's")
        .ignore()
        .cmd("DEL")
        .arg(format!("sessiond:{id}"))
        .ignore()
        .cmd("RPUSH")
        .arg(format!("sessiond:{id}"))
        .arg("another program's")
        .ignore();
    let () = overwrite
        .query_async(&mut admin)
        .await
        .expect("overwrite the expiry index and the session");
    let url = format!("{}/v1/sessions/{id}", reader.url());
    for _ in 0..6 {
        let reply = send(http.get(&url)).await;
        assert_ne!(reply.status, 200, "{}", reply.text);
        // The reaper runs four times a second: its refusal comes between.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let refused = scrape(&reader.url())
        .await
        .value("sessiond_redis_command_errors_total", &[])
        .unwrap_or_default();
    assert!(refused >= 10.0, "refused {refused}\n{}", reader.log());
    assert_one_wrongtype_warning(&reader.log());
}

/// Asserts that `log` warns of a refused command once, a `WRONGTYPE`.
fn assert_one_wrongtype_warning(log: &str) {
    let warnings = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("Redis refused a command"))
        .collect::<Vec<_>>();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WRONGTYPE"), "{}", warnings[0]);
}

/// Redis: a consumer's cursor of a stream Redis lost (`FLUSHALL` here; a
/// restart without persistence is the same) is 410 with the cursor to
/// resume after, whether the new stream is still empty (it was 400
/// `invalid_cursor`) or has events already (it was 200 with only those
/// after the cursor: a silent gap), and resuming there loses nothing of
/// the new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_of_a_stream_redis_lost_is_gone_not_a_silent_gap() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let mut flush = redis::cmd("FLUSHALL");
    create(&http, &node, json!({})).await;
    let lost = next_cursor(&http, &node, "").await;
    redis_query::<()>(&mut admin, &mut flush).await;
    let made = create(&http, &node, json!({})).await;
    let oldest = oldest_after_expiry(page(&http, &node, &format!("after={lost}")).await);
    let resumed = page(&http, &node, &format!("after={oldest}")).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(
        kinds(resumed.json()["events"].as_array().expect("events")),
        [("created".to_owned(), made)]
    );
    // Lost again, before any new event: the cursor is ahead of the new
    // stream, still not one of its own.
    let lost = next_cursor(&http, &node, &format!("after={oldest}")).await;
    redis_query::<()>(&mut admin, &mut flush).await;
    assert_eq!(
        oldest_after_expiry(page(&http, &node, &format!("after={lost}")).await),
        next_cursor(&http, &node, "after=now").await
    );
}

/// Redis: a consumer's cursor of a stream Redis lost, where the new
/// stream's first entry has the cursor's own id (a new Redis whose clock is
/// behind the old one's, or a loss and new events within one millisecond;
/// the test writes that entry itself, as the node's script did before the
/// loss), is 410 with the new stream's resume point, from which both new
/// events are read (it was 200 with only the event after the cursor: the
/// entry at its id was skipped). Cursors carry the stream's epoch, which
/// Redis lost with the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_reusing_a_lost_cursors_id_is_not_read_after_it() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let first = create(&http, &node, json!({})).await;
    let lost = next_cursor(&http, &node, "").await;
    let entry_id = lost.split('-').take(2).collect::<Vec<_>>().join("-");
    let mut entry = redis::cmd("XRANGE");
    entry.arg("{sessiond:events}").arg(&entry_id).arg(&entry_id);
    let logged: Vec<(String, Vec<(String, String)>)> = redis_query(&mut admin, &mut entry).await;
    let [(_, fields)] = logged.as_slice() else {
        panic!("the entry at {entry_id}: {logged:?}");
    };
    redis_query::<()>(&mut admin, &mut redis::cmd("FLUSHALL")).await;
    let mut again = redis::cmd("XADD");
    again.arg("{sessiond:events}").arg(&entry_id);
    for (name, value) in fields {
        again.arg(name).arg(value);
    }
    redis_query::<String>(&mut admin, &mut again).await;
    let made = create(&http, &node, json!({})).await;
    let oldest = oldest_after_expiry(page(&http, &node, &format!("after={lost}")).await);
    let resumed = page(&http, &node, &format!("after={oldest}")).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(
        kinds(resumed.json()["events"].as_array().expect("events")),
        [("created".to_owned(), first), ("created".to_owned(), made)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_a_redis_restart_and_the_client_stream_resumes() {
    let mut redis = RedisServer::start_with_aof();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let client = client_of(&[&node], Duration::from_secs(2)).await;
    let mut events = Box::pin(client.events(None));
    let before = bounded("create", client.create(&json!({}), None))
        .await
        .expect("create");
    let event = bounded("an event", events.next())
        .await
        .expect("more")
        .expect("an event");
    assert_eq!((event.id, event.kind.as_str()), (before.id, "created"));
    tokio::task::block_in_place(|| redis.restart());
    // The stream rides out the outage and resumes on its own.
    let after = loop {
        if let Ok(Ok(info)) =
            tokio::time::timeout(Duration::from_secs(2), client.create(&json!({}), None)).await
        {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let event = bounded("the next event", events.next())
        .await
        .expect("more")
        .expect("an event");
    assert_eq!((event.id, event.kind.as_str()), (after.id, "created"));
    // The log from before the restart is still there.
    let all = page(&http, &node, "limit=1000").await.json();
    let ids: Vec<&str> = all["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["id"].as_str())
        .collect();
    assert!(ids.contains(&before.id.to_string().as_str()), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cursor_is_none_and_the_stream_takes_only_after() {
    let node = Sessiond::start(&[]);
    let http = http();
    let made = create(&http, &node, json!({})).await;
    for query in ["after=", ""] {
        let from_oldest = page(&http, &node, query).await;
        assert_eq!(from_oldest.status, 200, "{query}: {}", from_oldest.text);
        assert_eq!(
            kinds(from_oldest.json()["events"].as_array().expect("events")),
            [("created".to_owned(), made.clone())],
            "{query}"
        );
    }
    // Paging is the stream's own business: a page's parameters are refused
    // there, not silently ignored.
    let stream = format!("{}/v1/events/stream?limit=5", node.url());
    let refused = send(http.get(stream)).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (400, "invalid_request"),
        "{}",
        refused.text
    );
}

/// A cursor the log never handed out is 400 `invalid_cursor` in every
/// spelling: a sign or a leading zero before a real cursor was read as
/// that cursor (200), and `+5` was taken for a cursor older than the log
/// (410 `cursor_expired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_spelled_otherwise_than_the_log_hands_out_is_invalid() {
    let node = Sessiond::start(&[]);
    let http = http();
    create(&http, &node, json!({})).await;
    let real = next_cursor(&http, &node, "").await;
    assert_eq!(
        page(&http, &node, &format!("after={real}")).await.status,
        200
    );
    for foreign in [format!("%2B{real}"), format!("0{real}"), "%2B5".to_owned()] {
        assert_invalid_cursor(
            &page(&http, &node, &format!("after={foreign}")).await,
            &foreign,
        );
    }
    let stream = http
        .get(format!("{}/v1/events/stream", node.url()))
        .header("last-event-id", format!("+{real}"));
    assert_invalid_cursor(&send(stream).await, "Last-Event-ID");
}

/// A `Last-Event-ID` that is not text is 400 `invalid_cursor`, as
/// `?after=%FF` is, and one sent on two lines is 400 `invalid_request`, as
/// `If-Match` is: the first was taken for none and the stream replayed the
/// whole log, the second line was ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_not_text_or_sent_twice_is_refused() {
    let node = Sessiond::start(&[]);
    let http = http();
    create(&http, &node, json!({})).await;
    let real = next_cursor(&http, &node, "").await;
    // The answer (an open stream is read for at most 5 s).
    let stream = async |last_event_id: &[u8]| {
        let mut request = b"GET /v1/events/stream HTTP/1.1\r\nHost: sessiond\r\n".to_vec();
        request.extend_from_slice(last_event_id);
        request.extend_from_slice(b"Connection: close\r\n\r\n");
        let mut connection = raw_http::send(node.http, &request).await;
        raw_http::read_until_close(&mut connection, Duration::from_secs(5))
            .await
            .response()
            .expect("a response")
    };
    let twice = format!("Last-Event-ID: {real}\r\nLast-Event-ID: {real}\r\n");
    for (last_event_id, code) in [
        (&b"Last-Event-ID: \xff\xfe\r\n"[..], "invalid_cursor"),
        (twice.as_bytes(), "invalid_request"),
    ] {
        let refused = stream(last_event_id).await;
        assert_eq!(refused.status, 400, "{code}: {}", refused.text());
        assert_eq!(refused.error_code(), code, "{}", refused.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_node_restarted_refuses_the_cursor_of_the_log_it_lost() {
    let mut node = Sessiond::start(&[]);
    let http = http();
    create(&http, &node, json!({})).await;
    let cursor = page(&http, &node, "").await.json()["next"]
        .as_str()
        .expect("next")
        .to_owned();
    create(&http, &node, json!({})).await;
    node.restart();
    // The event after the cursor died with the node: the consumer is told,
    // not handed the new log's events as if nothing was missed.
    let made = create(&http, &node, json!({})).await;
    let oldest = oldest_after_expiry(page(&http, &node, &format!("after={cursor}")).await);
    let resumed = page(&http, &node, &format!("after={oldest}")).await;
    assert_eq!(
        kinds(
            &resumed.json()["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        ),
        [("created".to_owned(), made)]
    );
    // A cursor this log never handed out is refused.
    let foreign = format!("{}", u64::MAX);
    assert_invalid_cursor(
        &page(&http, &node, &format!("after={foreign}")).await,
        &foreign,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_writes_are_updated_events_when_asked_in_every_mode() {
    let redis = RedisServer::start();
    let http = http();
    let updates = ["--events-include-updates"];
    let nodes = [
        Sessiond::start(&updates),
        node_on(&http, &redis.url(), &updates).await,
        node_on(
            &http,
            &redis.url(),
            &[
                "--events-include-updates",
                "--redis-mode",
                "async",
                "--redis-prefix",
                "async:",
            ],
        )
        .await,
    ];
    for node in &nodes {
        let start = page(&http, node, "after=now").await.json()["next"]
            .as_str()
            .expect("next")
            .to_owned();
        let id = create(&http, node, json!({})).await;
        let (seen, cursor) = read_until(&http, &[node], start, |seen| !seen.is_empty()).await;
        assert_eq!(kinds(&seen), [("created".to_owned(), id.clone())]);
        let url = format!("{}/v1/sessions/{id}", node.url());
        let put = send(http.put(&url).json(&json!({"data": {"n": 1}}))).await;
        assert_eq!(put.status, 200, "{}", put.text);
        // A read or a touch is not an update.
        assert_eq!(send(http.get(&url)).await.status, 200);
        let touched = send(http.post(format!("{url}/touch"))).await;
        assert_eq!(touched.status, 200, "{}", touched.text);
        let (seen, cursor) = read_until(&http, &[node], cursor, |seen| !seen.is_empty()).await;
        assert_eq!(kinds(&seen), [("updated".to_owned(), id.clone())]);
        assert_eq!(send(http.delete(&url)).await.status, 204);
        let (seen, _) = read_until(&http, &[node], cursor, |seen| !seen.is_empty()).await;
        assert_eq!(kinds(&seen), [("deleted".to_owned(), id)], "{}", node.url());
    }
}

/// `calls` of `command` in Redis's command statistics.
async fn redis_calls(url: &str, command: &str) -> u64 {
    let mut conn = redis_conn(url).await;
    let info: String = redis_query(&mut conn, redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_readers_share_one_look_at_the_stream() {
    const READERS: u64 = 20;
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let before = redis_calls(&redis.url(), "xrange").await;
    let waits = (0..READERS).map(|_| page(&http, &node, "after=now&wait_secs=3"));
    let pages = futures_util::future::join_all(waits).await;
    assert!(pages.iter().all(|page| page.status == 200));
    let reads = redis_calls(&redis.url(), "xrange").await - before;
    // Each reader reads the stream when it starts and about once a second
    // after (4 each); one reading every 50 ms would be 60 each.
    assert!(
        reads <= READERS * 6,
        "{reads} XRANGE calls for {READERS} readers waiting 3 s"
    );
}

/// Following the log of a node that keeps none ends at once with
/// `Error::EventsOff`, not a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_node_without_a_log_is_events_off() {
    let node = Sessiond::start(&["--events", "off"]);
    let client = sessiond_e2e::client_for(&[&node]).await;
    let mut events = Box::pin(client.events(None));
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream ended in time");
    assert!(
        matches!(first, Some(Err(sessiond_client::Error::EventsOff(_)))),
        "{first:?}"
    );
    assert!(events.next().await.is_none(), "the stream ends there");
}
