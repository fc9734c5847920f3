//! End-to-end tests of Redis replication under faults: a store node
//! SIGKILLed and restarted, a node SIGKILLed under client load, Redis
//! SIGKILLed and restarted (AOF) in sync mode, and the async mode's
//! write-behind queue with Redis away (full queue, backlog flushed on
//! graceful shutdown), Redis out of memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use sessiond_client::{Client, Error, SessionId, SessionInfo};
use sessiond_e2e::metrics::{Metrics, scrape};
use sessiond_e2e::process::{freeze, signal};
use sessiond_e2e::proxy::SilencingProxy;
use sessiond_e2e::redis::{raw_command, raw_command_within};
use sessiond_e2e::redis_support::*;
use sessiond_e2e::{RedisServer, Sessiond};

/// ACL rules for the user `node` under which a write-behind node's queue
/// cannot ship (its session keys are read-only) while its reads and beats
/// work.
const READ_ONLY_SESSIONS: [&str; 3] = ["resetkeys", "%R~sessiond:*", "~sessiond:node:*"];

/// ACL rules for the user `node` under which a write-behind node's queue
/// cannot ship while reads through Redis work: the queue's script names
/// the session's tombstone key (`{sessiond:<id>}:gone`) and the event
/// log's keys (`{sessiond:events}...`), which the node may only read.
const QUEUE_CANNOT_SHIP: [&str; 3] = ["resetkeys", "~sessiond:*", "%R~{sessiond:*"];

/// Varied session data: objects, arrays, strings, numbers, nesting.
fn varied_data(n: u64) -> Value {
    match n % 5 {
        0 => json!(format!("plain string {n} with \"quotes\" and ünïcödé")),
        1 => json!([n, n * 2, { "deep": [true, null] }]),
        2 => json!(n as f64 + 0.5),
        3 => json!({ "user": n, "cart": { "items": vec![n; (n % 7) as usize] } }),
        _ => json!({ "n": n, "empty": {}, "list": [] }),
    }
}

/// Every session (data, version, created_at, ttl, expiry) survives a
/// SIGKILL and restart of the node that wrote them; checked over HTTP and
/// through the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_serves_every_session_unchanged() {
    let redis = RedisServer::start();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &[]).await;
    let client = client_of(&[&node], Duration::from_secs(2)).await;

    // id -> (version, data) as last acknowledged.
    let mut expected: HashMap<SessionId, (u64, Value)> = HashMap::new();
    for n in 0..50u64 {
        let ttl = Duration::from_secs(60 + (n * 97) % 3600);
        let created = bounded("create", client.create(&varied_data(n), Some(ttl)))
            .await
            .unwrap_or_else(|err| panic!("create {n}: {err}"));
        assert_eq!((created.version, created.ttl), (1, ttl));
        let mut version = created.version;
        let mut data = varied_data(n);
        for rewrite in 0..(n % 4) {
            data = json!({ "n": n, "rewrite": rewrite, "payload": varied_data(n + rewrite) });
            let written = bounded("put", client.put(&created.id, &data, Some(version)))
                .await
                .unwrap_or_else(|err| panic!("rewrite {n}/{rewrite}: {err}"));
            assert_eq!(written.version, version + 1);
            version = written.version;
        }
        expected.insert(created.id, (version, data));
    }

    let mut before_http: HashMap<SessionId, HttpSession> = HashMap::new();
    let mut before_client: HashMap<SessionId, SessionInfo> = HashMap::new();
    for (id, (version, data)) in &expected {
        let reply = get(&http, &node, &id.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let session = reply.session();
        assert_eq!((session.version, &session.data), (*version, data));
        before_http.insert(*id, session);
        let read = bounded("client get", client.get::<Value>(id))
            .await
            .unwrap();
        before_client.insert(*id, read.info);
    }

    node.kill();
    tokio::task::block_in_place(|| node.restart());
    wait_ready(&http, &node).await;

    for (id, before) in &before_http {
        let reply = get(&http, &node, &id.to_string()).await;
        assert_eq!(reply.status, 200, "{id} after the restart: {}", reply.text);
        let after = reply.session();
        assert_eq!(after.version, before.version, "{id}: version");
        assert_eq!(after.data, before.data, "{id}: data");
        assert_eq!(after.created_at, before.created_at, "{id}: created_at");
        assert_eq!(after.updated_at, before.updated_at, "{id}: updated_at");
        assert_eq!(after.ttl_secs, before.ttl_secs, "{id}: ttl_secs");
        assert!(
            rfc3339_ms(&after.expires_at) >= rfc3339_ms(&before.expires_at),
            "{id}: expires_at went back from {} to {}",
            before.expires_at,
            after.expires_at
        );
    }

    // The same client reconnects to the restarted node on its own.
    let (any, _) = expected.iter().next().expect("sessions");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = bounded("client get", client.get::<Value>(any)).await {
        assert!(
            Instant::now() < deadline,
            "the client did not reconnect: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, (version, data)) in &expected {
        let before = &before_client[id];
        let read = bounded("client get", client.get::<Value>(id))
            .await
            .unwrap_or_else(|err| panic!("{id} through the client: {err}"));
        assert_eq!((read.version(), &read.data), (*version, data), "{id}");
        assert_eq!(read.info.created_at, before.created_at, "{id}: created_at");
        assert_eq!(read.info.updated_at, before.updated_at, "{id}: updated_at");
        assert_eq!(read.info.ttl, before.ttl, "{id}: ttl");
        assert!(
            read.info.expires_at >= before.expires_at,
            "{id}: expiry went back"
        );
    }
}

/// Outcome counters of the failover test, split at the kill.
#[derive(Debug, Default)]
struct Tally {
    ok_before: AtomicU64,
    failed_before: AtomicU64,
    ok_after: AtomicU64,
    failed_after: AtomicU64,
}

/// What one writer acknowledged for one session: (version, data, counter).
type Acknowledged = Option<(u64, Value, u64)>;

/// One writer: puts increasing counters into its sessions until `stop`,
/// recording the last acknowledged write of each.
async fn write_until_stopped(
    client: Client,
    task: usize,
    sessions: Vec<SessionId>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    tally: Arc<Tally>,
    errors: Arc<Errors>,
) -> Vec<(SessionId, Acknowledged, u64)> {
    let mut last: Vec<(SessionId, Acknowledged, u64)> =
        sessions.iter().map(|id| (*id, None, 0)).collect();
    let mut counter = 0u64;
    while !stop.load(Ordering::Acquire) {
        counter += 1;
        for (slot, (id, acknowledged, attempted)) in last.iter_mut().enumerate() {
            let data = json!({ "task": task, "slot": slot, "counter": counter });
            *attempted = counter;
            let result =
                tokio::time::timeout(Duration::from_secs(10), client.put(id, &data, None)).await;
            let after_kill = killed.load(Ordering::Acquire);
            let (ok, failed) = if after_kill {
                (&tally.ok_after, &tally.failed_after)
            } else {
                (&tally.ok_before, &tally.failed_before)
            };
            match result {
                Ok(Ok(info)) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    *acknowledged = Some((info.version, data, counter));
                }
                Ok(Err(err)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.note(&err.to_string());
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.note("no answer within 10 s");
                }
            }
        }
    }
    last
}

/// Error messages (digits masked) and how often each occurred.
#[derive(Debug, Default)]
struct Errors(std::sync::Mutex<BTreeMap<String, u64>>);

impl Errors {
    /// Counts an error described by `text`.
    fn note(&self, text: &str) {
        let masked: String = text
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(masked)
            .or_default() += 1;
    }

    /// The counts so far.
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Two nodes, one Redis (sync mode), a client writing through both under
/// load; one node is SIGKILLed mid-run. Every acknowledged write is in Redis
/// afterwards, read through the surviving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_under_load_loses_no_acknowledged_write() {
    const TASKS: usize = 8;
    const SESSIONS_PER_TASK: usize = 4;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let mut victim = node_on(&http, &redis.url(), &[]).await;
    let survivor = node_on(&http, &redis.url(), &[]).await;
    let client = client_of(&[&victim, &survivor], Duration::from_millis(500)).await;

    let mut owned = Vec::new();
    for task in 0..TASKS {
        let mut ids = Vec::new();
        for slot in 0..SESSIONS_PER_TASK {
            let data = json!({ "task": task, "slot": slot, "counter": 0 });
            let info = bounded("create", client.create(&data, None))
                .await
                .unwrap_or_else(|err| panic!("create {task}/{slot}: {err}"));
            ids.push(info.id);
        }
        owned.push(ids);
    }
    let on_victim = owned
        .iter()
        .flatten()
        .filter(|id| client.owner_of(id) == victim.tcp.to_string())
        .count();
    assert!(
        on_victim > 0,
        "no session is owned by the node to be killed"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let errors = Arc::new(Errors::default());
    let mut writers = tokio::task::JoinSet::new();
    for (task, ids) in owned.into_iter().enumerate() {
        writers.spawn(write_until_stopped(
            client.clone(),
            task,
            ids,
            stop.clone(),
            killed.clone(),
            tally.clone(),
            errors.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Flagged first, so every error the kill causes counts as after it.
    killed.store(true, Ordering::Release);
    tokio::task::block_in_place(|| victim.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let results = tokio::time::timeout(Duration::from_secs(60), async {
        let mut results = Vec::new();
        while let Some(joined) = writers.join_next().await {
            results.extend(joined.expect("a writer panicked"));
        }
        results
    })
    .await
    .expect("the writers did not stop within 60 s");

    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (ok_before, failed_before) = (load(&tally.ok_before), load(&tally.failed_before));
    let (ok_after, failed_after) = (load(&tally.ok_after), load(&tally.failed_after));
    let rate = |failed: u64, ok: u64| 100.0 * failed as f64 / (failed + ok).max(1) as f64;
    eprintln!(
        "failover: before the kill {ok_before} ok / {failed_before} failed ({:.2}%), \
         after the kill {ok_after} ok / {failed_after} failed ({:.2}%); \
         {on_victim} of {} sessions were owned by the killed node",
        rate(failed_before, ok_before),
        rate(failed_after, ok_after),
        TASKS * SESSIONS_PER_TASK
    );
    eprintln!("failover: errors by kind: {:?}", errors.snapshot());
    assert!(
        ok_before > 0 && ok_after > 0,
        "the load did not run on both sides of the kill"
    );

    let reader = client_of(&[&survivor], Duration::from_secs(2)).await;
    let mut regressions = 0;
    for (id, acknowledged, attempted) in &results {
        let reply = get(&http, &survivor, &id.to_string()).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text);
        let stored = reply.session();
        let through_client = bounded("client get", reader.get::<Value>(id))
            .await
            .unwrap();
        assert_eq!(
            through_client.version(),
            stored.version,
            "{id}: HTTP and client disagree"
        );
        let counter = stored.data["counter"].as_u64().expect("a counter");
        assert!(
            counter <= *attempted,
            "{id}: counter {counter} was never written"
        );
        let Some((version, data, acked_counter)) = acknowledged else {
            continue;
        };
        assert!(
            stored.version >= *version,
            "{id}: version {} is below the acknowledged {version}: an acknowledged write was lost",
            stored.version
        );
        if stored.version == *version {
            assert_eq!(
                &stored.data, data,
                "{id}: the acknowledged version holds other data"
            );
        }
        if counter < *acked_counter {
            regressions += 1;
        }
    }
    eprintln!(
        "failover: {regressions} sessions hold an older counter than their last acknowledged one \
         (an unacknowledged retry applied after it)"
    );
}

/// Redis SIGKILLed under a node: readiness turns 503, writes and strong
/// reads answer 503 `unavailable` naming Redis, cached reads keep working;
/// Redis restarted (AOF): the node is ready again on its own, every
/// acknowledged session is intact and writes work. Never a 500, never a
/// crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_503_and_recovers_on_its_own() {
    let mut redis = RedisServer::start_with_aof();
    let http = http();
    let cached = node_on(&http, &redis.url(), &[]).await;
    let strong = node_on(&http, &redis.url(), &["--consistency", "strong"]).await;
    let mut seen: Vec<(&'static str, u16)> = Vec::new();
    let cached_client = client_of(&[&cached], Duration::from_secs(5)).await;
    let strong_client = client_of(&[&strong], Duration::from_secs(5)).await;

    let expected = write_sessions(&http, &cached, 20).await;
    for id in expected.keys() {
        assert_eq!(get(&http, &cached, id).await.status, 200);
    }
    let (id, (version, data)) = expected
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();

    tokio::task::block_in_place(|| redis.kill());
    for node in [&cached, &strong] {
        let reply = wait_for_status(&http, node, "/readyz", 503, Duration::from_secs(10)).await;
        assert_eq!(reply.error_code(), "unavailable", "{}", reply.text);
        assert!(reply.error_message().contains("Redis"), "{}", reply.text);
    }
    let unavailable = |what: &str, reply: &Reply| {
        assert_eq!(reply.status, 503, "{what}: {}", reply.text);
        assert_eq!(reply.error_code(), "unavailable", "{what}: {}", reply.text);
        assert_eq!(reply.retry_after.as_deref(), Some("1"), "{what}");
        assert!(
            reply.error_message().to_lowercase().contains("redis"),
            "{what}: the message does not mention Redis: {}",
            reply.text
        );
    };
    for (name, node) in [("cached", &cached), ("strong", &strong)] {
        let reply = put(&http, node, &id, &json!({ "lost": true }), Some(version)).await;
        seen.push(("PUT", reply.status));
        unavailable(&format!("PUT on the {name} node"), &reply);
        let reply = create(&http, node, &json!({ "new": true }), None).await;
        seen.push(("POST", reply.status));
        unavailable(&format!("POST on the {name} node"), &reply);
        let reply = delete(&http, node, &id).await;
        seen.push(("DELETE", reply.status));
        unavailable(&format!("DELETE on the {name} node"), &reply);
        assert_eq!(get_path(&http, node, "/healthz").await.status, 200);
    }
    let reply = get(&http, &cached, &id).await;
    seen.push(("GET cached", reply.status));
    assert_eq!(
        reply.status, 200,
        "a cached read during the outage: {}",
        reply.text
    );
    let session = reply.session();
    assert_eq!((session.version, &session.data), (version, &data));
    let reply = get(&http, &strong, &id).await;
    seen.push(("GET strong", reply.status));
    unavailable("GET on the strong node", &reply);
    // The binary protocol tells the client the same, as typed errors.
    let sid: SessionId = id.parse().expect("a session id");
    match bounded(
        "client put",
        cached_client.put(&sid, &json!({ "lost": true }), None),
    )
    .await
    {
        Err(Error::Unavailable(message)) => {
            assert!(message.contains("Redis"), "client error: {message}")
        }
        other => panic!("a client write during the outage: {other:?}"),
    }
    let read = bounded("client get", cached_client.get::<Value>(&sid)).await;
    let read = read.expect("a cached read through the client during the outage");
    assert_eq!((read.version(), &read.data), (version, &data));
    match bounded("client get", strong_client.get::<Value>(&sid)).await {
        Err(Error::Unavailable(message)) => {
            assert!(message.contains("Redis"), "client error: {message}")
        }
        other => panic!("a strong read through the client during the outage: {other:?}"),
    }

    tokio::task::block_in_place(|| redis.restart());
    for node in [&cached, &strong] {
        wait_for_status(&http, node, "/readyz", 200, Duration::from_secs(15)).await;
    }
    for (id, (version, data)) in &expected {
        for (name, node) in [("cached", &cached), ("strong", &strong)] {
            let reply = get(&http, node, id).await;
            seen.push(("GET after", reply.status));
            assert_eq!(reply.status, 200, "{id} on the {name} node: {}", reply.text);
            let session = reply.session();
            assert_eq!(
                (session.version, &session.data),
                (*version, data),
                "{id} on {name}"
            );
        }
    }
    for (id, (version, _)) in &expected {
        let reply = put(
            &http,
            &cached,
            id,
            &json!({ "after": "outage" }),
            Some(*version),
        )
        .await;
        seen.push(("PUT after", reply.status));
        assert_eq!(reply.status, 200, "write after the outage: {}", reply.text);
        assert_eq!(reply.session().version, version + 1);
        let reply = get(&http, &strong, id).await;
        assert_eq!(
            reply.session().version,
            version + 1,
            "the strong node sees the write"
        );
    }
    let reply = create(&http, &strong, &json!({ "after": "outage" }), None).await;
    seen.push(("POST after", reply.status));
    assert_eq!(reply.status, 201, "{}", reply.text);
    for node in [&cached, &strong] {
        assert_eq!(get_path(&http, node, "/healthz").await.status, 200);
        let metrics = get_path(&http, node, "/metrics").await;
        assert_eq!(metrics.status, 200);
        assert!(
            metrics.text.contains("status=\"503\""),
            "the outage's 503s are not counted:\n{}",
            metrics.text
        );
        assert!(
            !metrics.text.contains("status=\"500\""),
            "the node answered 500 at some point:\n{}",
            metrics.text
        );
    }
    assert!(
        seen.iter()
            .all(|(_, status)| *status != 500 && *status != 0),
        "a 500 or a dropped connection: {seen:?}"
    );
}

/// Sync mode with AOF: everything acknowledged survives a SIGKILL of Redis,
/// read back through a node that never cached any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sync_writes_survive_a_redis_sigkill_with_aof() {
    let mut redis = RedisServer::start_with_aof();
    let http = http();
    let writer = node_on(&http, &redis.url(), &[]).await;
    let mut expected = write_sessions(&http, &writer, 120).await;
    let deleted: Vec<String> = expected.keys().take(10).cloned().collect();
    for id in &deleted {
        let reply = delete(&http, &writer, id).await;
        assert_eq!(reply.status, 204, "{}", reply.text);
        expected.remove(id);
    }

    tokio::task::block_in_place(|| {
        redis.kill();
        redis.restart();
    });
    let fresh = node_on(&http, &redis.url(), &[]).await;
    for (id, (version, data)) in &expected {
        let reply = get(&http, &fresh, id).await;
        assert_eq!(
            reply.status, 200,
            "{id} after the Redis restart: {}",
            reply.text
        );
        let session = reply.session();
        assert_eq!((session.version, &session.data), (*version, data), "{id}");
    }
    for id in &deleted {
        assert_eq!(
            get(&http, &fresh, id).await.status,
            404,
            "deleted {id} came back"
        );
    }
    let keys = session_keys(&redis.url(), "sessiond:").await;
    assert_eq!(
        keys.len(),
        expected.len(),
        "session keys in Redis after the restart"
    );
}

/// Creates sessions of `data(n)` on `node`, n = 0, 1, ..., until one is
/// refused with 503 `unavailable` whose message names `why`, at most
/// `most`: the ones acknowledged before (id and data). Any other answer,
/// or none refused, fails the test.
async fn creates_until_refused(
    http: &reqwest::Client,
    node: &Sessiond,
    most: usize,
    data: impl Fn(usize) -> Value,
    why: &str,
) -> Vec<(String, Value)> {
    let mut acknowledged = Vec::new();
    for n in 0..most {
        let data = data(n);
        let reply = create(http, node, &data, None).await;
        match reply.status {
            201 => acknowledged.push((reply.session().id, data)),
            503 => {
                assert_eq!(reply.error_code(), "unavailable", "{}", reply.text);
                assert!(
                    reply.error_message().contains(why),
                    "the refusal does not name {why}: {}",
                    reply.text
                );
                return acknowledged;
            }
            other => panic!("create {n} answered {other}: {}", reply.text),
        }
    }
    panic!("{most} creates were all acknowledged");
}

/// Async mode with a queue of 2 and Redis away: writes are acknowledged
/// until the queue is full, then refused with 503 `unavailable` naming the
/// queue; the node stays up, and once Redis is back the queue drains and the
/// writes acknowledged during the outage are in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_full_queue_refuses_writes_with_503() {
    let mut redis = RedisServer::start_with_aof();
    let http = http();
    let node = node_on(
        &http,
        &redis.url(),
        &["--redis-mode", "async", "--redis-queue", "2"],
    )
    .await;
    let first = create(&http, &node, &json!({ "before": "outage" }), None).await;
    assert_eq!(first.status, 201, "{}", first.text);

    tokio::task::block_in_place(|| redis.kill());
    let during = |n| json!({ "during": "outage", "n": n });
    let acknowledged = creates_until_refused(&http, &node, 50, during, "queue").await;
    eprintln!(
        "async queue of 2: {} writes acknowledged with Redis down before a 503",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "no write was queued at all");
    assert_eq!(get_path(&http, &node, "/healthz").await.status, 200);
    for (id, data) in &acknowledged {
        let reply = get(&http, &node, id).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(&reply.session().data, data);
    }

    tokio::task::block_in_place(|| redis.restart());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = create(&http, &node, &json!({ "after": "outage" }), None).await;
        if reply.status == 201 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert!(
            Instant::now() < deadline,
            "the queue did not drain: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = node_on(&http, &redis.url(), &[]).await;
    let mut everything = acknowledged.clone();
    everything.push((first.session().id, json!({ "before": "outage" })));
    for (id, data) in &everything {
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            let reply = get(&http, &fresh, id).await;
            if reply.status != 404 || Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            reply.status, 200,
            "{id} never reached Redis: {}",
            reply.text
        );
        assert_eq!(&reply.session().data, data);
    }
}

/// Async mode: writes acknowledged while Redis is down wait in the queue;
/// a SIGTERM then keeps the node flushing until Redis is back, and nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_graceful_shutdown_flushes_a_backlog_once_redis_returns() {
    let mut redis = RedisServer::start_with_aof();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut expected = write_sessions(&http, &node, 10).await;
    tokio::task::block_in_place(|| redis.kill());
    expected.extend(write_sessions(&http, &node, 30).await);

    let (code, log) =
        terminate_then_bring_redis_back(node, &mut redis, Duration::from_secs(1)).await;
    assert_eq!(code, Some(0), "unclean exit; log:\n{}", log);
    assert_all_in_redis(&http, &redis.url(), &expected, &log).await;
}

/// Async mode: acknowledged writes that Redis, gone through the whole
/// shutdown flush, never took are lost, and the exit status says so (1,
/// with the count in the message), not only the log: the process exited 0,
/// a clean stop to systemd or compose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_shutdown_that_loses_queued_writes_exits_non_zero() {
    let mut redis = RedisServer::start();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    tokio::task::block_in_place(|| redis.kill());
    for n in 0..5 {
        let created = create(&http, &node, &json!({ "n": n }), None).await;
        assert_eq!(created.status, 201, "{}", created.text);
    }
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = node.terminate_within(Duration::from_secs(40));
        (code, node.log())
    })
    .await
    .expect("the terminating thread panicked");
    assert_eq!(code, Some(1), "log:\n{log}");
    assert!(
        log.contains("5 acknowledged writes could not be confirmed in Redis"),
        "{log}"
    );
}

/// Stalls Redis for `secs` seconds (`DEBUG SLEEP`); returns when it ends.
fn stall(port: u16, secs: f64) {
    let limit = Duration::from_secs_f64(secs + 5.0);
    let reply = raw_command_within(port, &format!("DEBUG SLEEP {secs}"), limit);
    assert_eq!(reply.expect("DEBUG SLEEP"), "+OK\r\n");
}

/// Async mode: the shutdown flush gives up only once Redis has failed for
/// the whole deadline (10 s) without a round of writes getting through. A
/// Redis that fails at SIGTERM and again 10 s later, having taken writes
/// in between, loses no acknowledged write. The deadline used to run from
/// the first failure after SIGTERM and never start again, so the second
/// failure dropped the rest of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_shutdown_flush_that_redis_interrupts_twice_loses_nothing() {
    const SESSIONS: u64 = 6_000;
    let redis = RedisServer::start_with_debug();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    freeze(redis.pid());
    let created: Vec<(u64, Reply)> = futures_util::stream::iter(0..SESSIONS)
        .map(|n| {
            let (http, node) = (&http, &node);
            async move { (n, create(http, node, &json!({ "n": n }), None).await) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut expected = Expected::new();
    for (n, reply) in created {
        assert_eq!(reply.status, 201, "create {n}: {}", reply.text);
        expected.insert(reply.session().id, (1, json!({ "n": n })));
    }

    let terminated = tokio::task::spawn_blocking(move || {
        let code = node.terminate_within(Duration::from_secs(60));
        (code, node.log())
    });
    // The flush fails against the frozen Redis (a try times out after 2
    // s): its deadline runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(redis.pid(), "CONT");
    let port = redis.port;
    tokio::task::spawn_blocking(move || {
        // Redis takes writes again, slowly: it holds every command for
        // half a second at a time (reading them meanwhile), so the flush
        // gets a round or two through per pause, and the node's health
        // checks answer within their timeout.
        let slow_until = Instant::now() + Duration::from_secs(9);
        while Instant::now() < slow_until {
            let paused = raw_command(port, "CLIENT PAUSE 500 ALL").expect("CLIENT PAUSE");
            assert_eq!(paused, "+OK\r\n");
            std::thread::sleep(Duration::from_millis(550));
        }
        // Then fails for a moment, more than 10 s after the first failure.
        stall(port, 3.0);
    })
    .await
    .expect("the stalling thread");
    let (code, log) = tokio::time::timeout(Duration::from_secs(60), terminated)
        .await
        .expect("terminate_within did not return")
        .expect("the terminating thread");
    assert_eq!(code, Some(0), "unclean exit; log:\n{log}");
    assert!(!log.contains("queued writes lost"), "{log}");
    assert_all_in_redis(&http, &redis.url(), &expected, &log).await;
}

/// Redis gone at shutdown: a node whose reads slid many sessions' expiries
/// past what Redis holds exits cleanly within the test's 15 s and says
/// what it could not push. It used to try each of them against the absent
/// Redis, about 150 ms a try and 8 at a time: 1,500 sessions held it
/// half a minute (SIGKILLed at 15 s here), 10,000 held a benchmark's nodes
/// for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_gone_at_shutdown_exits_without_pushing_slid_expiries() {
    const SESSIONS: usize = 1_500;
    let mut redis = RedisServer::start();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &[]).await;
    let client = Arc::new(client_of(&[&node], Duration::from_secs(5)).await);
    let created = futures_util::stream::iter(0..SESSIONS)
        .map(|n| {
            let client = client.clone();
            async move { client.create(&json!({ "n": n }), None).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let ids: Vec<SessionId> = created
        .into_iter()
        .map(|made| made.expect("create").id)
        .collect();
    // Each read slides the session's expiry past the one Redis holds,
    // within the drift allowance: only a flush at shutdown would push it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let read = futures_util::stream::iter(&ids)
        .map(|id| client.get::<Value>(id))
        .buffer_unordered(32)
        .filter(|read| std::future::ready(read.is_ok()))
        .count()
        .await;
    assert_eq!(read, SESSIONS);

    tokio::task::block_in_place(|| redis.kill());
    let (code, log) = tokio::task::spawn_blocking(move || (node.terminate(), node.log()))
        .await
        .expect("the terminating thread panicked");
    assert_eq!(code, Some(0), "not a clean exit; log:\n{log}");
    assert!(
        log.contains("Redis unreachable at shutdown; slid expiries not pushed"),
        "{log}"
    );
}

/// Sets Redis's `maxmemory` (0: no limit); 1 byte makes it full at once.
async fn set_maxmemory(admin: &mut redis::aio::MultiplexedConnection, bytes: u64) {
    let mut config = redis::cmd("CONFIG");
    config.arg("SET").arg("maxmemory").arg(bytes);
    redis_query::<()>(admin, &mut config).await;
}

/// Redis at its `maxmemory` with nothing to evict (the default
/// `noeviction` policy): a write through a node is refused as `unavailable`
/// with a message that says Redis is out of memory (it used to say Redis
/// was unreachable), nothing of it is written, the node stays ready,
/// serves its sessions and deletes; once Redis has room the same writes go
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_as_out_of_memory_and_takes_them_with_room() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let node = node_on(&http, &redis.url(), &[]).await;
    let created = create(&http, &node, &json!({ "n": 0 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    let doomed = create(&http, &node, &json!({ "n": -1 }), None).await;
    assert_eq!(doomed.status, 201, "{}", doomed.text);
    let doomed = doomed.session().id;

    set_maxmemory(&mut admin, 1).await;
    let out_of_memory = |what: &str, reply: &Reply| {
        assert_eq!(reply.status, 503, "{what}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], json!("unavailable"));
        assert!(
            reply.error_message().starts_with("Redis is out of memory"),
            "{what}: {}",
            reply.text
        );
    };
    let refused = create(&http, &node, &json!({ "n": 1 }), None).await;
    out_of_memory("create", &refused);
    let refused = put(&http, &node, &id, &json!({ "n": 2 }), Some(1)).await;
    out_of_memory("put", &refused);
    assert_eq!(version_in_redis(&admin, &id).await, Some(1), "written");
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (1, json!({ "n": 0 }))
    );
    assert_eq!(get_path(&http, &node, "/readyz").await.status, 200);
    let deleted = delete(&http, &node, &doomed).await;
    assert_eq!(
        deleted.status, 204,
        "a delete frees memory: {}",
        deleted.text
    );
    assert_eq!(version_in_redis(&admin, &doomed).await, None);

    let metrics = scrape(&node.url()).await;
    assert_eq!(
        metrics.value("sessiond_redis_command_errors_total", &[]),
        Some(0.0),
        "a full Redis is told apart from one that refuses a command"
    );

    set_maxmemory(&mut admin, 0).await;
    let written = put(&http, &node, &id, &json!({ "n": 2 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    assert_eq!(written.session().version, 2);
    let created = create(&http, &node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
}

/// Redis full: a node that does not hold a session still serves a read
/// of it (before, 503: reading it through lists the node as a cacher, a
/// write Redis refused), and keeps no copy, since writes would not tell
/// it: once Redis has room, another node's write reads back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_still_serves_reads_through_and_nothing_stale_is_kept() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let writer = node_on(&http, &redis.url(), &[]).await;
    let reader = node_on(&http, &redis.url(), &[]).await;
    let created = create(&http, &writer, &json!({ "n": 0 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;

    set_maxmemory(&mut admin, 1).await;
    for round in 0..2 {
        let read = get(&http, &reader, &id).await;
        assert_eq!(
            read.status, 200,
            "read {round} with Redis full: {}",
            read.text
        );
        assert_eq!(
            (read.session().version, read.session().data),
            (1, json!({ "n": 0 }))
        );
    }

    set_maxmemory(&mut admin, 0).await;
    let written = put(&http, &writer, &id, &json!({ "n": 1 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    let read = get(&http, &reader, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, json!({ "n": 1 })),
        "the reader kept a copy no write told it about"
    );
}

/// A node whose invalidation subscription silently stops delivering (its
/// connection half-open: no error, no close) makes a new one: its own
/// beats stop coming back, and while Redis answers its commands that means
/// the subscription is dead. Without that the node would read every
/// session through and keep writers waiting for its acks for good. The
/// node reaches Redis through a proxy that silences every connection open
/// at one moment; the status page must show the subscription live again,
/// and a write through another node must reach a read through this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_subscription_is_made_again() {
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port).await;
    let http = http();
    let proxied = node_on(&http, &format!("redis://127.0.0.1:{}", proxy.port()), &[]).await;
    let direct = node_on(&http, &redis.url(), &[]).await;
    let created = create(&http, &direct, &json!({ "round": 0 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    wait_for_live_subscription(&http, &proxied, &proxy, 0).await;
    let before = proxy.accepted();
    proxy.silence_open_connections();
    // The node's commands time out and reconnect; its subscription, silent
    // but open, must be made again too.
    wait_for_live_subscription(&http, &proxied, &proxy, before + 2).await;
    for round in 1..=3u64 {
        let read = get(&http, &proxied, &id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.session().version, round);
        let written = put(&http, &direct, &id, &json!({ "round": round }), None).await;
        assert_eq!(written.status, 200, "{}", written.text);
        let read = get(&http, &proxied, &id).await;
        assert_eq!(read.session().version, round + 1, "round {round}");
    }
}

/// Polls `node`'s status page until its invalidation subscription shows
/// live and `proxy` has accepted at least `connections` connections, at
/// most 20 s.
async fn wait_for_live_subscription(
    http: &reqwest::Client,
    node: &Sessiond,
    proxy: &SilencingProxy,
    connections: u64,
) {
    let what = format!("show the subscription live after {connections} proxied connections");
    wait_for_answer(
        http,
        node,
        "/status",
        &what,
        Duration::from_secs(20),
        |status| {
            let row = status.text.split("id=\"subscription\">").nth(1);
            row.is_some_and(|rest| rest.starts_with("live<")) && proxy.accepted() >= connections
        },
    )
    .await;
}

/// Async mode: a write acknowledged from memory and still queued for Redis
/// is what the node answers, also after its invalidation subscription is
/// made again (which clears the copies that may have missed an
/// invalidation meanwhile) and before the queue has reached Redis. The node
/// logs in as an ACL user whose session keys the test makes read-only: its
/// queue cannot ship, while its reads and heartbeats still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_queued_write_outlives_the_cache_clear_of_a_new_subscription() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    set_node_user(&mut admin, &["on", ">secret", "~*", "&*", "+@all"]).await;
    let url = as_node_user(&redis.url(), "secret");
    let node = node_on(&http, &url, &["--redis-mode", "async"]).await;
    let created = create(&http, &node, &json!({ "written": "first" }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    wait_for_version_in_redis(&admin, &id, 1).await;

    set_node_user(&mut admin, &READ_ONLY_SESSIONS).await;
    let written = put(&http, &node, &id, &json!({ "written": "second" }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    assert_eq!(written.session().version, 2);
    let killed: u64 = redis_query(
        &mut admin,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    assert_eq!(killed, 1, "the node's subscription");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.log().matches("subscribed to invalidations").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no new subscription: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its beats come back again, so its memory is trusted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        version_in_redis(&admin, &id).await,
        Some(1),
        "the queue shipped"
    );

    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, json!({ "written": "second" })),
        "the node answered what Redis holds instead of its acknowledged write"
    );
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, &id, 2).await;
}

/// A node's flags that bound its memory to 64 KiB, evicting the least
/// recently used sessions.
const BOUNDED_MEMORY: [&str; 4] = ["--max-memory", "64KiB", "--when-full", "evict-lru"];

/// Creates small sessions on `node` (started with [`BOUNDED_MEMORY`]) until
/// at least 40 sessions were evicted, the older ones first. Small: a node
/// whose queue cannot ship holds their writes, and the queue holds no more
/// bytes of data than `--max-memory`, while memory counts each session's
/// overhead too.
async fn push_out_older_sessions(http: &reqwest::Client, node: &Sessiond) {
    for round in 0..40 {
        for n in 0..50 {
            let made = create(http, node, &json!({}), None).await;
            assert_eq!(
                made.status, 201,
                "filler {n} of round {round}: {}",
                made.text
            );
        }
        let evictions = scrape(&node.url())
            .await
            .value("sessiond_evictions_total", &[])
            .unwrap_or(0.0);
        if evictions >= 40.0 {
            return;
        }
    }
    panic!("2,000 small sessions evicted fewer than 40 under a bound of 64 KiB");
}

/// With Redis, a node's full memory drops its least recently used copies
/// rather than refuse a write, in async mode as in sync mode, whatever
/// `--when-full` says (it applies to memory-only nodes): an async node
/// answered 507 `store_full` once its memory was full, though Redis or its
/// queue held every session. Every session stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_memory_evicts_copies_in_both_redis_modes() {
    let redis = RedisServer::start();
    let http = http();
    for mode in ["sync", "async"] {
        let node = node_on(
            &http,
            &redis.url(),
            &[
                "--redis-mode",
                mode,
                "--max-memory",
                "64KiB",
                "--when-full",
                "reject",
            ],
        )
        .await;
        let filler = "x".repeat(4096);
        let mut made = Vec::new();
        for n in 0..40 {
            let created = create(&http, &node, &json!({ "n": n, "filler": filler }), None).await;
            assert_eq!(created.status, 201, "{mode}, create {n}: {}", created.text);
            made.push((n, created.session().id));
        }
        for (n, id) in made {
            let read = get(&http, &node, &id).await;
            assert_eq!(read.status, 200, "{mode}, read {n}: {}", read.text);
            assert_eq!(read.session().data["n"], json!(n), "{mode}");
        }
    }
}

/// Write-behind mode under memory pressure: a session evicted from memory
/// while its acknowledged write is still queued is answered as written,
/// not as the older copy Redis holds (which the node used to keep: the
/// invalidation its own write publishes does not reach itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_session_evicted_while_its_write_is_queued_is_answered_as_written() {
    let mut acl = AclWriter::start(&BOUNDED_MEMORY).await;
    let id = acl.with_a_queued_write(None).await;
    let AclWriter {
        redis: _redis,
        http,
        mut admin,
        writer: node,
    } = acl;
    push_out_older_sessions(&http, &node).await;
    assert_eq!(
        version_in_redis(&admin, &id).await,
        Some(1),
        "the queue shipped"
    );

    let answered = |reply: &Reply| (reply.session().version, reply.session().data);
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        answered(&read),
        (2, json!({ "written": "second" })),
        "the node answered the older copy Redis holds instead of its acknowledged write"
    );
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, &id, 2).await;
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(answered(&read), (2, json!({ "written": "second" })));
}

/// Waits (at most 10 s) until `node`'s metric `name` is `value`; returns
/// the metrics then.
async fn wait_for_metric(node: &Sessiond, name: &str, value: f64) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(&node.url()).await;
        if metrics.value(name, &[]) == Some(value) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {value}:\n{metrics}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis, an HTTP client, an admin connection to the Redis, and a
/// write-behind node logged in as the ACL user `node` (allowed everything
/// until the test says otherwise).
struct AclWriter {
    redis: RedisServer,
    http: reqwest::Client,
    admin: redis::aio::MultiplexedConnection,
    writer: Sessiond,
}

impl AclWriter {
    /// The node runs with `extra` flags too.
    async fn start(extra: &[&str]) -> Self {
        let redis = RedisServer::start();
        let http = http();
        let mut admin = redis_conn(&redis.url()).await;
        set_node_user(&mut admin, &["on", ">secret", "~*", "&*", "+@all"]).await;
        let url = as_node_user(&redis.url(), "secret");
        let mut args = vec!["--redis-mode", "async"];
        args.extend_from_slice(extra);
        let writer = node_on(&http, &url, &args).await;
        Self {
            redis,
            http,
            admin,
            writer,
        }
    }
}

impl AclWriter {
    /// Creates a session (`{"written": "first"}`, idle TTL `ttl_secs` or
    /// the default), waits until Redis holds it, stops the queue from
    /// shipping ([`QUEUE_CANNOT_SHIP`]) and writes `{"written": "second"}`:
    /// acknowledged as version 2, queued. Returns the session's id.
    async fn with_a_queued_write(&mut self, ttl_secs: Option<u64>) -> String {
        let Self {
            http,
            admin,
            writer,
            ..
        } = self;
        let created = create(http, writer, &json!({ "written": "first" }), ttl_secs).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.session().id;
        wait_for_version_in_redis(admin, &id, 1).await;
        Self::queue_a_write(http, admin, writer, &id).await;
        id
    }

    /// Stops the queue from shipping and writes version 2 of `id`.
    async fn queue_a_write(
        http: &reqwest::Client,
        admin: &mut redis::aio::MultiplexedConnection,
        writer: &Sessiond,
        id: &str,
    ) {
        set_node_user(admin, &QUEUE_CANNOT_SHIP).await;
        let written = put(http, writer, id, &json!({ "written": "second" }), Some(1)).await;
        assert_eq!(written.status, 200, "{}", written.text);
        assert_eq!(written.session().version, 2);
    }
}

/// Creates a session of `data` on `node` and waits until Redis holds it.
async fn created_in_redis(
    http: &reqwest::Client,
    node: &Sessiond,
    admin: &redis::aio::MultiplexedConnection,
    data: &Value,
) -> String {
    let created = create(http, node, data, None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    wait_for_version_in_redis(admin, &id, 1).await;
    id
}

/// Once Redis has refused `writer`'s queued write of `id` (another node
/// deleted the session): Redis holds no copy, and the writer answers
/// `not_found`. Waits for the refusal itself: the count of shipped changes
/// says nothing of which change it counted.
async fn refused_and_gone(
    http: &reqwest::Client,
    admin: &redis::aio::MultiplexedConnection,
    writer: &Sessiond,
    id: &str,
) {
    wait_for_metric(writer, "sessiond_redis_refused_writes_total", 1.0).await;
    assert_eq!(version_in_redis(admin, id).await, None, "in Redis");
    let read = get(http, writer, id).await;
    assert_eq!(
        read.status, 404,
        "the writer serves a session deleted everywhere else: {}",
        read.text
    );
}

/// Write-behind mode: while Redis takes no write, the queue holds at most
/// `--max-memory` of session data, then writes are refused (503 naming the
/// bound) rather than grow the node past its memory bound (400 creates of
/// 256 KiB took 278 MB of RSS under a bound of 16 MiB); once Redis takes
/// writes again, every acknowledged one is in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_the_queue_holds_no_more_data_than_the_memory_bound() {
    const DATA: usize = 100 * 1024;
    let AclWriter {
        redis: _redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&["--max-memory", "2MiB", "--max-session-bytes", "128KiB"]).await;
    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    let padded = |n| json!({ "n": n, "pad": "x".repeat(DATA) });
    let acknowledged = creates_until_refused(&http, &writer, 100, padded, "--max-memory").await;
    // 2 MiB of 100 KiB writes: 20, and the one that took the last place.
    assert!(
        (15..=21).contains(&acknowledged.len()),
        "{} creates of 100 KiB queued under a bound of 2 MiB",
        acknowledged.len()
    );

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    for (id, _) in &acknowledged {
        wait_for_version_in_redis(&admin, id, 1).await;
    }
    // The queue gives its bytes back once the worker settled the round.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = create(&http, &writer, &json!({ "after": true }), None).await;
        if after.status == 201 {
            break;
        }
        assert_eq!(after.status, 503, "{}", after.text);
        assert!(Instant::now() < deadline, "still refused: {}", after.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Write-behind mode: a write made on the node while a rotation of the
/// same session waits for the session's lock is in the rotated session.
/// The rotation had waited for the node's queue before the write came, so
/// it moved the session as Redis held it and the write, acknowledged, was
/// refused when it shipped to the old id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_write_made_while_a_rotation_waits_is_in_the_rotated_session() {
    let redis = RedisServer::start_with_debug();
    let http = http();
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let other = node_on(&http, &redis.url(), &[]).await;
    let admin = redis_conn(&redis.url()).await;
    // A write of another session that keeps failing (its key is no hash)
    // paces the writer's queue at one round per 100 ms, as a failing
    // Redis Cluster master would.
    let failing = created_in_redis(&http, &writer, &admin, &json!({})).await;
    let mut meddler = admin.clone();
    let key = format!("sessiond:{failing}");
    redis_query::<()>(&mut meddler, redis::cmd("DEL").arg(&key)).await;
    redis_query::<()>(&mut meddler, redis::cmd("SET").arg(&key).arg("no hash")).await;
    let stuck = put(&http, &writer, &failing, &json!({ "stuck": true }), None).await;
    assert_eq!(stuck.status, 200, "{}", stuck.text);

    // On a loaded machine the rotation may take the lock first (the write
    // then finds the id gone: 404, as it should): try again.
    for _ in 0..5 {
        let id = created_in_redis(&http, &writer, &admin, &json!({ "cart": [] })).await;
        // Another node's write drops the writer's copy: its next read goes
        // through to Redis, under the session's lock.
        let elsewhere = put(&http, &other, &id, &json!({ "cart": ["b"] }), Some(1)).await;
        assert_eq!(elsewhere.status, 200, "{}", elsewhere.text);
        // Redis sleeps: the read holds the lock, the rotation's read of
        // the session's user waits behind it, and the write queues for the
        // lock before the rotation does.
        let sleep = sleep_redis(&admin, 0.5);
        let after = |ms| tokio::time::sleep(Duration::from_millis(ms));
        let read = async {
            after(50).await;
            get(&http, &writer, &id).await
        };
        let rotation = async {
            after(100).await;
            let path = format!("{}/v1/sessions/{id}/rotate", writer.url());
            send(http.post(path)).await
        };
        let write = async {
            after(150).await;
            put(&http, &writer, &id, &json!({ "cart": ["b", "c"] }), None).await
        };
        let ((), read, rotation, write) = tokio::join!(sleep, read, rotation, write);
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(rotation.status, 201, "{}", rotation.text);
        if write.status == 404 {
            continue;
        }
        assert_eq!(write.status, 200, "{}", write.text);
        let new_id = rotation.session().id;
        let rotated = get(&http, &other, &new_id).await;
        assert_eq!(rotated.status, 200, "{}", rotated.text);
        assert_eq!(
            rotated.session().data,
            json!({ "cart": ["b", "c"] }),
            "the acknowledged write is in the rotated session"
        );
        let metrics = scrape(&writer.url()).await;
        let refused = metrics.value("sessiond_redis_refused_writes_total", &[]);
        assert_eq!(refused.unwrap_or(0.0), 0.0, "no queued write was refused");
        return;
    }
    panic!("in five tries the rotation always took the session's lock before the write");
}

/// Write-behind mode: a session deleted on another node while its create
/// is still queued stays deleted. The delete of a key Redis does not hold
/// yet leaves a tombstone, which refuses the create when it ships (the
/// create shipped and brought the logged-out session back on every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_delete_elsewhere_of_a_session_whose_create_is_queued_holds() {
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let deleter = node_on(&http, &redis.url(), &[]).await;
    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    let created = create(&http, &writer, &json!({ "cart": "alice's" }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    let deleted = delete(&http, &deleter, &id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    refused_and_gone(&http, &admin, &writer, &id).await;
    let read = get(&http, &deleter, &id).await;
    assert_eq!(read.status, 404, "the logout was undone: {}", read.text);
}

/// Write-behind mode: a user's session whose key Redis no longer holds
/// (expired while the node could not push its slid expiry, or lost with
/// Redis's data) is not brought back by a queued write: the write is
/// refused and the node drops its copy. It was recreated without its
/// user-index entry, so a revocation of the user missed it (`revoked: 0`,
/// the session still 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_queued_write_never_brings_back_a_users_session_redis_lost() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let login = login(&http, &node, "dave", 600).await;
    assert_eq!(login.status, 201, "{}", login.text);
    let id = login.session().id;
    let before = put(&http, &node, &id, &json!({"before": "flush"}), None).await;
    assert_eq!(before.status, 200, "{}", before.text);
    wait_for_version_in_redis(&admin, &id, 2).await;
    let _: () = redis_query(&mut admin, &mut redis::cmd("FLUSHALL")).await;
    let written = put(&http, &node, &id, &json!({"after": "flush"}), None).await;
    assert_eq!(written.status, 200, "{}", written.text);
    let metrics = wait_for_metric(&node, "sessiond_redis_refused_writes_total", 1.0).await;
    assert_eq!(
        metrics.value("sessiond_redis_replicated_total", &[]),
        Some(1.0),
        "the write before the flush replicated, the refused one not: {metrics}"
    );
    assert_eq!(version_in_redis(&admin, &id).await, None, "brought back");
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 404, "{}", read.text);
    let url = format!("{}/v1/users/dave/sessions", node.url());
    let revoked = send(http.delete(url)).await;
    assert_eq!(revoked.json()["revoked"], json!(0), "{}", revoked.text);
}

/// Write-behind mode, a session written on one node and then deleted (a
/// logout, a revocation) on another: the writer answers `not_found` at
/// once, though its write is still queued; Redis refuses the write when it
/// arrives (the session was deleted lately), so the session stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_session_deleted_elsewhere_is_gone_on_a_node_still_queueing_its_write() {
    let mut acl = AclWriter::start(&[]).await;
    let id = acl.with_a_queued_write(None).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = acl;
    let deleter = node_on(&http, &redis.url(), &[]).await;
    let deleted = delete(&http, &deleter, &id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    // The delete's invalidation drops the writer's copy; its queue still
    // holds version 2.
    let path = format!("/v1/sessions/{id}");
    let gone = |reply: &Reply| reply.status == 404;
    let within = Duration::from_secs(2);
    wait_for_answer(&http, &writer, &path, "answer 404", within, gone).await;

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    refused_and_gone(&http, &admin, &writer, &id).await;
}

/// A deletion is remembered (its tombstone lives) as long as the session's
/// idle TTL, and at least 2 minutes: a write of the session made before the
/// delete and held in another node's write-behind queue (Redis away from
/// that node for longer than 2 minutes) is still refused when it arrives,
/// as long as that write could have kept the session alive. It was 2
/// minutes whatever the TTL, after which such a write brought the deleted
/// session back. Revocations and rotations delete with the same script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sessions_tombstone_lives_as_long_as_the_session_could_have() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let node = node_on(&http, &redis.url(), &[]).await;
    for (ttl_secs, lives_secs) in [(10, 120), (3_600, 3_600), (86_400, 86_400)] {
        let created = create(&http, &node, &json!({ "ttl": ttl_secs }), Some(ttl_secs)).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.session().id;
        let deleted = delete(&http, &node, &id).await;
        assert_eq!(deleted.status, 204, "{}", deleted.text);
        let mut lifetime = redis::cmd("PTTL");
        lifetime.arg(format!("{{sessiond:{id}}}:gone"));
        let left_ms: i64 = redis_query(&mut admin, &mut lifetime).await;
        let lives_ms = lives_secs * 1_000;
        assert!(
            (lives_ms - 5_000..=lives_ms).contains(&left_ms),
            "TTL {ttl_secs} s: the tombstone lives {left_ms} ms more, not about {lives_ms}"
        );
    }
}

/// Write-behind mode: the read that drops stopped nodes from a full cacher
/// list tells every node to drop its copy; a node whose write of the
/// session is still queued answers that write afterwards, not the older
/// version in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_read_dropping_stopped_cachers_never_hides_a_queued_write() {
    let mut acl = AclWriter::start(&[]).await;
    let id = acl.with_a_queued_write(None).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = acl;
    let async_mode = ["--redis-mode", "async"];
    // Eight listed cachers without heartbeat keys (stopped nodes).
    let stopped: Vec<String> = (1..=8).map(|n| format!("{n:016x}")).collect();
    let mut list = redis::cmd("HSET");
    list.arg(format!("sessiond:{id}"))
        .arg("o")
        .arg(stopped.join(","));
    redis_query::<()>(&mut admin, &mut list).await;
    let reader = node_on(&http, &redis.url(), &async_mode).await;
    let read = get(&http, &reader, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.session().version, 1, "Redis holds version 1");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let read = get(&http, &writer, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, json!({ "written": "second" })),
        "the writer answered what Redis holds instead of its queued write"
    );
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, &id, 2).await;
    let path = format!("/v1/sessions/{id}");
    for node in [&writer, &reader] {
        let answers_version_2 = |reply: &Reply| reply.status == 200 && reply.session().version == 2;
        wait_for_answer(
            &http,
            node,
            &path,
            "answer version 2",
            Duration::from_secs(5),
            answers_version_2,
        )
        .await;
    }
}

/// Write-behind mode: a node whose subscription was down while another
/// node deleted a session keeps its copy through the cache clear (its
/// write of it is still queued), so it answers the session until that
/// write reaches Redis, which refuses it (the session was deleted lately);
/// the node then drops its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_copy_that_missed_a_delete_goes_when_redis_refuses_its_queued_write() {
    let mut acl = AclWriter::start(&[]).await;
    let id = acl.with_a_queued_write(None).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = acl;
    let deleter = node_on(&http, &redis.url(), &[]).await;

    // The writer loses its subscription (Redis drops a subscriber whose
    // channels are no longer allowed) and cannot make it again.
    set_node_user(&mut admin, &["resetchannels"]).await;
    wait_for_log(
        &writer,
        "invalidation subscription failed",
        Duration::from_secs(10),
    )
    .await;
    let deleted = delete(&http, &deleter, &id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(version_in_redis(&admin, &id).await, None, "not deleted");
    set_node_user(&mut admin, &["allchannels"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer.log().matches("subscribed to invalidations").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no new subscription: {}",
            writer.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = get(&http, &writer, &id).await;
    assert_eq!(
        read.status, 200,
        "the copy missed the delete: {}",
        read.text
    );
    assert_eq!(read.session().version, 2);

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    refused_and_gone(&http, &admin, &writer, &id).await;
}

/// Write-behind mode: when some writes of a batch reach Redis and others
/// fail, only the failed ones are sent again. Resending the ones that
/// landed would undo what other nodes wrote on them since. The writer's
/// queue is held up by a write of C while it queues writes of A and B;
/// then its writes of A (and C) may land but not B's; another node writes
/// A on top; the writer's retries of B must leave that write standing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_retried_batch_never_resends_a_write_that_landed() {
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let other = node_on(&http, &redis.url(), &[]).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(created_in_redis(&http, &writer, &admin, &json!({ name: 1 })).await);
    }
    let [a, b, c] = [&ids[0], &ids[1], &ids[2]];

    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    for id in [c, a, b] {
        let written = put(&http, &writer, id, &json!({ "by": "writer" }), Some(1)).await;
        assert_eq!(written.status, 200, "{}", written.text);
    }
    let (a_gone, c_gone) = (
        format!("~{{sessiond:{a}}}:gone"),
        format!("~{{sessiond:{c}}}:gone"),
    );
    let mut some_can_ship = QUEUE_CANNOT_SHIP.to_vec();
    some_can_ship.extend(["~{sessiond:events}*", a_gone.as_str(), c_gone.as_str()]);
    set_node_user(&mut admin, &some_can_ship).await;
    wait_for_version_in_redis(&admin, a, 2).await;
    let on_top = put(&http, &other, a, &json!({ "by": "other" }), Some(2)).await;
    assert_eq!(on_top.status, 200, "{}", on_top.text);
    // Several retries of B's write (one per 100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        version_in_redis(&admin, a).await,
        Some(3),
        "the other node's write of A was undone by a resent one"
    );
    assert_eq!(
        version_in_redis(&admin, b).await,
        Some(1),
        "B's write landed"
    );

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, b, 2).await;
    let path = format!("/v1/sessions/{a}");
    let by_other = |reply: &Reply| reply.status == 200 && reply.session().version == 3;
    let within = Duration::from_secs(2);
    wait_for_answer(
        &http,
        &writer,
        &path,
        "answer the other's write",
        within,
        by_other,
    )
    .await;
}

/// Write-behind mode: a write that keeps failing (here a permission; in
/// production a Redis Cluster master down) holds up no other session's
/// write queued after it, and the session's further writes take no more
/// places in the queue (the latest is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_failing_write_holds_up_no_other_sessions_write() {
    let AclWriter {
        redis: _redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let mut ids = Vec::new();
    for name in ["failing", "flowing"] {
        ids.push(created_in_redis(&http, &writer, &admin, &json!({ name: 1 })).await);
    }
    let [failing, flowing] = [&ids[0], &ids[1]];
    let flowing_gone = format!("~{{sessiond:{flowing}}}:gone");
    let mut only_flowing = QUEUE_CANNOT_SHIP.to_vec();
    only_flowing.extend(["~{sessiond:events}*", flowing_gone.as_str()]);
    set_node_user(&mut admin, &only_flowing).await;

    let written = put(&http, &writer, failing, &json!({ "n": 2 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    // Its first send fails; then the other session's write is queued.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let written = put(&http, &writer, flowing, &json!({ "n": 2 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    wait_for_version_in_redis(&admin, flowing, 2).await;
    assert_eq!(version_in_redis(&admin, failing).await, Some(1));
    // More writes of the failing session take no more places in the queue.
    for version in 2..6 {
        let written = put(
            &http,
            &writer,
            failing,
            &json!({ "n": version + 1 }),
            Some(version),
        )
        .await;
        assert_eq!(written.status, 200, "{}", written.text);
    }
    wait_for_metric(&writer, "sessiond_redis_queue_depth", 1.0).await;

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, failing, 6).await;
}

/// Write-behind mode: `sessiond_redis_queue_depth` is the queue as it is
/// when scraped. Writes to ids that do not exist (404) hold a place while
/// they look, and give it back; the gauge was set only by the queue's
/// worker after each round, so a round that counted those places left it
/// above 0 for as long as nothing more shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_the_queue_depth_is_zero_once_the_queue_is_empty() {
    let redis = RedisServer::start();
    let http = http();
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let created = create(&http, &writer, &json!({ "n": 0 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    let missing = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(2);
    let lookups: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, missing) = (http.clone(), writer.url(), missing.clone());
            tokio::spawn(async move {
                // The lookups go on a little after the last real write.
                while Instant::now() < until + Duration::from_millis(300) {
                    let id = SessionId::random();
                    let path = format!("{url}/v1/sessions/{id}");
                    let reply = send(http.put(path).json(&json!({ "data": 1 }))).await;
                    assert_eq!(reply.status, 404, "{}", reply.text);
                    missing.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut version = 1;
    while Instant::now() < until {
        let written = put(&http, &writer, &id, &json!({ "n": version }), Some(version)).await;
        assert_eq!(written.status, 200, "{}", written.text);
        version += 1;
    }
    for lookup in lookups {
        lookup.await.expect("a lookup task");
    }
    assert!(missing.load(Ordering::Relaxed) > 32, "the lookups ran");
    wait_for_version_in_redis(&redis_conn(&redis.url()).await, &id, version).await;
    wait_for_metric(&writer, "sessiond_redis_queue_depth", 0.0).await;
}

/// Write-behind mode: `sessiond_redis_replication_lag_seconds` is how long
/// the oldest change of the last round waited until it reached Redis. It
/// was measured over the changes a round left unsent, so it read 0
/// whenever every send got through, however long they had waited (here,
/// behind a Redis whose clients' writes are paused for 0.8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_the_replication_lag_counts_a_wait_that_ended_in_redis() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let id = created_in_redis(&http, &writer, &admin, &json!({ "n": 0 })).await;
    // Paused once Redis answers (a `DEBUG SLEEP` detected by a PING's
    // silence started late, or not at all, on a loaded machine); reads,
    // this test's own, go on.
    let mut pause = redis::cmd("CLIENT");
    pause.arg("PAUSE").arg(800).arg("WRITE");
    redis_query::<()>(&mut admin, &mut pause).await;
    let written = put(&http, &writer, &id, &json!({ "n": 1 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    wait_for_version_in_redis(&admin, &id, 2).await;
    let metrics = scrape(&writer.url()).await;
    let lag = metrics
        .value("sessiond_redis_replication_lag_seconds", &[])
        .expect("the lag gauge");
    assert!(
        lag >= 0.4,
        "the write waited most of 0.8 s; the lag says {lag} s"
    );
}

/// Write-behind mode: a write sent again after a failed send never
/// overwrites a later version. (A send that timed out may have stored it,
/// and another node may have written on it since; here the first sends
/// fail outright, and another node writes the session twice meanwhile.)
/// The writer then drops its copy and answers what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_resent_write_never_overwrites_a_later_version() {
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let other = node_on(&http, &redis.url(), &[]).await;
    let created = create(&http, &writer, &json!({ "by": "writer" }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    wait_for_version_in_redis(&admin, &id, 1).await;

    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    let written = put(&http, &writer, &id, &json!({ "by": "writer" }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);
    tokio::time::sleep(Duration::from_millis(150)).await;
    for version in [1, 2] {
        let on_top = put(&http, &other, &id, &json!({ "by": "other" }), Some(version)).await;
        assert_eq!(on_top.status, 200, "{}", on_top.text);
    }
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_metric(&writer, "sessiond_redis_replicated_total", 2.0).await;
    let path = format!("/v1/sessions/{id}");
    let others = |reply: &Reply| {
        reply.status == 200
            && reply.session().version == 3
            && reply.session().data == json!({ "by": "other" })
    };
    let within = Duration::from_secs(5);
    wait_for_answer(
        &http,
        &writer,
        &path,
        "answer the other's write",
        within,
        others,
    )
    .await;
    assert_eq!(version_in_redis(&admin, &id).await, Some(3));
    let read = get(&http, &other, &id).await;
    assert_eq!(
        read.session().data,
        json!({ "by": "other" }),
        "{}",
        read.text
    );
}

/// Write-behind mode: a rotation waits for this node's queued writes of
/// the session it moves, not for another session's write that keeps
/// failing (here its key holds a string, so the queue's script fails with
/// WRONGTYPE until the key is freed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_rotation_waits_for_its_own_session_not_for_a_failing_one() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut ids = Vec::new();
    for name in ["failing", "rotated"] {
        ids.push(created_in_redis(&http, &writer, &admin, &json!({ name: 1 })).await);
    }
    let [failing, rotated] = [&ids[0], &ids[1]];
    let failing_key = format!("sessiond:{failing}");
    redis_query::<()>(
        &mut admin,
        redis::cmd("SET").arg(&failing_key).arg("not a hash"),
    )
    .await;
    let written = put(&http, &writer, failing, &json!({ "n": 2 }), None).await;
    assert_eq!(written.status, 200, "{}", written.text);
    let written = put(&http, &writer, rotated, &json!({ "n": 2 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);

    let url = format!("{}/v1/sessions/{rotated}/rotate", writer.url());
    let moved = send(http.post(url)).await;
    assert_eq!(moved.status, 201, "{}", moved.text);
    let new_id = moved.session().id;
    assert_ne!(&new_id, rotated);
    assert_eq!(
        (moved.session().version, moved.session().data),
        (2, json!({ "n": 2 })),
        "the rotation moved the session as this node last wrote it"
    );
    redis_query::<()>(&mut admin, redis::cmd("DEL").arg(&failing_key)).await;
    wait_for_version_in_redis(&admin, failing, 2).await;
}

/// Write-behind mode: a write held in the queue longer than its session's
/// idle TTL, while reads keep the session alive, ships with the expiry the
/// reads slid it to, not the one it had when written (which has passed:
/// Redis would drop the session in use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_write_held_past_its_ttl_ships_with_the_slid_expiry() {
    in_use_past_its_ttl_while_its_write_is_held(&[], false).await;
}

/// The same once memory pressure evicted the session's copy (its reads are
/// answered from the queued write): they keep it alive all the same. They
/// slid only the copy they answered, so the session was not found once the
/// write's expiry passed, and the write, shipped with it, was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_reads_of_an_evicted_session_keep_its_held_write_alive() {
    in_use_past_its_ttl_while_its_write_is_held(&BOUNDED_MEMORY, true).await;
}

/// A session of 2 s idle TTL whose second write is held in the queue (the
/// node has `extra` flags; with `evict`, sessions made after it push its
/// copy out of memory), read every 250 ms for 3 s: each read finds it; once
/// the write ships, another node reads it at version 2.
async fn in_use_past_its_ttl_while_its_write_is_held(extra: &[&str], evict: bool) {
    let mut acl = AclWriter::start(extra).await;
    let id = acl.with_a_queued_write(Some(2)).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = acl;
    if evict {
        push_out_older_sessions(&http, &writer).await;
    }
    // In use for 3 s, past the 2 s idle TTL the write was made with.
    let in_use_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < in_use_until {
        let read = get(&http, &writer, &id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, &id, 2).await;
    let elsewhere = node_on(&http, &redis.url(), &[]).await;
    let read = get(&http, &elsewhere, &id).await;
    assert_eq!(
        read.status, 200,
        "the session in use was dropped: {}",
        read.text
    );
    assert_eq!(read.session().version, 2);
}

/// Write-behind mode: a write held in the queue until its session's expiry
/// has passed (this node cut off from Redis for longer than the idle TTL,
/// and nobody read the session here since) is not shipped: its expiry
/// would end the session in Redis, where another node kept it in use
/// meanwhile, and it would put this node's older data over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_write_held_past_its_expiry_never_ends_a_session_in_use_elsewhere() {
    let mut acl = AclWriter::start(&[]).await;
    let id = acl.with_a_queued_write(Some(2)).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = acl;
    // In use on another node for 3.5 s, past the writer's copy's expiry.
    let elsewhere = node_on(&http, &redis.url(), &[]).await;
    let in_use_until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < in_use_until {
        let read = get(&http, &elsewhere, &id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.session().version, 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_metric(&writer, "sessiond_redis_expired_writes_total", 1.0).await;
    assert_eq!(version_in_redis(&admin, &id).await, Some(1), "in Redis");
    let read = get(&http, &elsewhere, &id).await;
    assert_eq!(
        read.status, 200,
        "the session in use elsewhere was ended: {}",
        read.text
    );
    assert_eq!(read.session().version, 1);
}

/// A password in the Redis URL (an ACL user's) never reaches the node's
/// log: not when it connects, nor when its subscription fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_in_the_url_never_reaches_the_log() {
    const PASSWORD: &str = "s3cret-of-the-url";
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let login = format!(">{PASSWORD}");
    set_node_user(&mut admin, &["on", &login, "~*", "&*", "+@all"]).await;
    let with = |password: &str| as_node_user(&redis.url(), password);

    let node = node_on(&http, &with(PASSWORD), &[]).await;
    assert!(
        !node.log().contains(PASSWORD),
        "the log holds the password:\n{}",
        node.log()
    );
    let wrong = format!("wrong-{PASSWORD}");
    let refused = Sessiond::start(&["--redis", &with(&wrong)]);
    wait_for_log(
        &refused,
        "invalidation subscription failed",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        !refused.log().contains(&wrong),
        "the log holds the password:\n{}",
        refused.log()
    );
}

/// Async mode: a read sent right behind a delete on the same connection
/// (one batch for the node) answers `not_found`: the delete is applied to
/// memory and only queued for Redis, which still holds the session, so the
/// read must not read it through; and no copy of it is kept once the
/// delete has reached Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_read_right_behind_a_delete_never_answers_the_session() {
    const ROUNDS: usize = 50;
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let client = client_of(&[&node], Duration::from_secs(2)).await;
    let mut answered = Vec::new();
    for round in 0..ROUNDS {
        let info = bounded("create", client.create(&json!({ "round": round }), None))
            .await
            .expect("create");
        let deadline = Instant::now() + Duration::from_secs(5);
        while session_keys(&redis.url(), "sessiond:").await.is_empty() {
            assert!(Instant::now() < deadline, "the create never reached Redis");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (deleted, read) = tokio::join!(client.delete(&info.id), client.get::<Value>(&info.id));
        deleted.expect("delete");
        if let Ok(session) = read {
            answered.push((round, session.version()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !session_keys(&redis.url(), "sessiond:").await.is_empty() {
            assert!(Instant::now() < deadline, "the delete never reached Redis");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Ok(session) = client.get::<Value>(&info.id).await {
            answered.push((round, session.version()));
        }
    }
    assert_eq!(
        answered,
        [],
        "(round, version) answered for a deleted session"
    );
}

/// Write-behind mode: a queue of 4 takes at most 4 writes, however many
/// arrive at once. Each write below first reads its session from Redis
/// (another node created it), so all of them are in flight together; the
/// queue cannot ship meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_full_queue_refuses_concurrent_writes_beyond_its_capacity() {
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&["--redis-queue", "4"]).await;
    let other = node_on(&http, &redis.url(), &[]).await;
    let mut ids = Vec::new();
    for n in 0..32 {
        let made = create(&http, &other, &json!({ "n": n }), None).await;
        assert_eq!(made.status, 201, "{}", made.text);
        ids.push(made.session().id);
    }
    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;

    let writes = ids.iter().map(|id| {
        let (http, writer) = (&http, &writer);
        async move { put(http, writer, id, &json!({ "written": true }), Some(1)).await }
    });
    let replies = futures_util::future::join_all(writes).await;
    let mut accepted = 0;
    for reply in &replies {
        match reply.status {
            200 => accepted += 1,
            503 => assert_eq!(reply.error_code(), "unavailable", "{}", reply.text),
            other => panic!("a write answered {other}: {}", reply.text),
        }
    }
    assert!(
        (1..=4).contains(&accepted),
        "a queue of 4 took {accepted} of 32 concurrent writes"
    );
    eprintln!("a queue of 4 took {accepted} of 32 concurrent writes");
    wait_for_metric(&writer, "sessiond_redis_queue_depth", f64::from(accepted)).await;
}

/// Write-behind mode with one session per user: a login or revocation for
/// one user waits for this node's queued writes of that user's sessions
/// only. Alice's logout keeps failing (her key holds a string): her next
/// login, by create or by rotating an anonymous session to her, waits for
/// it (judged against her old session it would be refused as one too
/// many) and answers 503 until it lands; Bob's revocation and login go
/// ahead meanwhile. A login by rotation did not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_login_waits_for_its_users_queued_writes_not_for_another_users() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let cap = ["--max-sessions-per-user", "1", "--when-user-full", "reject"];
    let mut args = vec!["--redis-mode", "async"];
    args.extend_from_slice(&cap);
    let writer = node_on(&http, &redis.url(), &args).await;
    let mut ids = Vec::new();
    for user in ["alice", "bob"] {
        let reply = login(&http, &writer, user, 600).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        ids.push(reply.session().id);
    }
    let anonymous = created_in_redis(&http, &writer, &admin, &json!({})).await;
    let alices_key = format!("sessiond:{}", ids[0]);
    redis_query::<()>(
        &mut admin,
        redis::cmd("SET").arg(&alices_key).arg("not a hash"),
    )
    .await;
    let logged_out = delete(&http, &writer, &ids[0]).await;
    assert_eq!(logged_out.status, 204, "{}", logged_out.text);

    let url = format!("{}/v1/users/bob/sessions", writer.url());
    let revoked = send(http.delete(url)).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.json()["revoked"], json!(1));
    let again = login(&http, &writer, "bob", 600).await;
    assert_eq!(again.status, 201, "{}", again.text);

    let by_create = login(&http, &writer, "alice", 600).await;
    let by_rotation = send(
        http.post(format!("{}/v1/sessions/{anonymous}/rotate", writer.url()))
            .json(&json!({ "user": "alice" })),
    )
    .await;
    for waited in [by_create, by_rotation] {
        assert_eq!(waited.status, 503, "{}", waited.text);
        assert!(
            waited.error_message().contains("queued writes"),
            "{}",
            waited.text
        );
    }
    redis_query::<()>(&mut admin, redis::cmd("DEL").arg(&alices_key)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = login(&http, &writer, "alice", 600).await;
        if reply.status == 201 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert!(Instant::now() < deadline, "{}", reply.text);
    }
}

/// Write-behind mode: listing a user's sessions waits for this node's
/// changes of that user queued before it, as a login or revocation does.
/// Here Redis holds writes for a second (`CLIENT PAUSE ... WRITE`) while
/// alice logs out of one of her two sessions: the logout is acknowledged,
/// queued, and the listing right after must not show the session gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_listing_waits_for_its_users_queued_logout() {
    let redis = RedisServer::start();
    let http = http();
    let mut admin = redis_conn(&redis.url()).await;
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = login(&http, &writer, "alice", 600).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        ids.push(reply.session().id);
    }
    redis_query::<()>(
        &mut admin,
        redis::cmd("CLIENT").arg("PAUSE").arg(1000).arg("WRITE"),
    )
    .await;
    let logged_out = delete(&http, &writer, &ids[0]).await;
    assert_eq!(logged_out.status, 204, "{}", logged_out.text);

    assert_eq!(listed(&http, &writer, "alice").await, [ids[1].clone()]);
}

/// Lists `user`'s sessions through `node` on a task of its own: the answer
/// and how long it took.
fn spawn_listing(
    http: &reqwest::Client,
    node: &Sessiond,
    user: &str,
) -> tokio::task::JoinHandle<(Reply, Duration)> {
    let path = format!("{}/v1/users/{user}/sessions", node.url());
    let http = http.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        (send(http.get(path)).await, started.elapsed())
    })
}

/// Write-behind mode: a logout on a node that does not hold the session
/// (logged in on another node) is waited for by the user's listing on that
/// node too: the node reads the session's user from Redis before queueing
/// the delete. The delete counted for nobody, so the listing right after
/// showed the session the node had just acknowledged as deleted (and a
/// capped login counted it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_listing_waits_for_a_queued_logout_of_a_session_made_elsewhere() {
    let AclWriter {
        redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let elsewhere = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = login(&http, &elsewhere, "alice", 600).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        ids.push(reply.session().id);
    }
    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    let logged_out = delete(&http, &writer, &ids[0]).await;
    assert_eq!(logged_out.status, 204, "{}", logged_out.text);

    let listing = spawn_listing(&http, &writer, "alice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    let (reply, took) = listing.await.expect("the listing");
    assert_eq!(reply.status, 200, "{}", reply.text);
    let listed: Vec<String> = reply.json()["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|session| session["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(listed, [ids[1].clone()], "answered after {took:?}");
}

/// Write-behind mode: a listing waits for a queued write of the user's
/// session that keeps failing, also once a later write of the session took
/// its place in the retry. The later write's place was kept and the
/// earlier one's counted as shipped, so a listing that began between the
/// two went ahead and showed version 1 while versions 2 and 3, both
/// acknowledged, were still on their way to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_listing_waits_for_a_failing_write_that_a_later_one_replaced() {
    let AclWriter {
        redis: _redis,
        http,
        mut admin,
        writer,
    } = AclWriter::start(&[]).await;
    let logged_in = login(&http, &writer, "alice", 600).await;
    assert_eq!(logged_in.status, 201, "{}", logged_in.text);
    let id = logged_in.session().id;
    wait_for_version_in_redis(&admin, &id, 1).await;
    set_node_user(&mut admin, &QUEUE_CANNOT_SHIP).await;
    let second = put(
        &http,
        &writer,
        &id,
        &json!({ "written": "second" }),
        Some(1),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text);

    let listing = spawn_listing(&http, &writer, "alice");
    // The second write fails a few rounds, then the third joins it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = put(&http, &writer, &id, &json!({ "written": "third" }), Some(2)).await;
    assert_eq!(third.status, 200, "{}", third.text);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if listing.is_finished() {
        let (reply, took) = listing.await.expect("the listing");
        panic!(
            "the listing answered {} after {took:?}, the writes unshipped: {}",
            reply.status, reply.text
        );
    }
    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    let (reply, took) = listing.await.expect("the listing");
    assert_eq!(reply.status, 200, "{}", reply.text);
    let sessions = reply.json()["sessions"].clone();
    assert_eq!(sessions[0]["id"], json!(id), "{sessions} after {took:?}");
    assert_eq!(
        sessions[0]["version"],
        json!(3),
        "{sessions} after {took:?}"
    );
}

/// Write-behind mode: a revocation and a rotation wait for the changes
/// this node queued before them, not for the ones queued meanwhile. Here
/// the user's session is written without a pause while she is revoked
/// (another of her sessions) and while that session is rotated: waiting
/// until none of her changes is queued could go on for as long as the
/// writes do, and answer 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_steady_writes_of_a_users_session_hold_up_no_revocation_or_rotation() {
    const WRITERS: usize = 8;
    let redis = RedisServer::start();
    let http = http();
    let admin = redis_conn(&redis.url()).await;
    let writer = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let busy = login(&http, &writer, "alice", 600).await;
    assert_eq!(busy.status, 201, "{}", busy.text);
    let busy = busy.session().id;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    // Several writers at once: some write of the session is queued at
    // almost every moment.
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (http, url) = (http.clone(), writer.url());
            let (stop, writes, busy) = (stop.clone(), writes.clone(), busy.clone());
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Acquire) && Instant::now() < until {
                    let n = writes.load(Ordering::Relaxed);
                    let request = http
                        .put(format!("{url}/v1/sessions/{busy}"))
                        .json(&json!({ "data": { "n": n } }));
                    let reply = send(request).await;
                    if reply.status != 200 {
                        return reply.status;
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                200
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while writes.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "the writes do not flow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for round in 0..5 {
        let other = login(&http, &writer, "alice", 600).await;
        assert_eq!(other.status, 201, "login {round}: {}", other.text);
        let url = format!("{}/v1/users/alice/sessions?except={busy}", writer.url());
        let revoked = send(http.delete(url)).await;
        assert_eq!(revoked.status, 200, "revocation {round}: {}", revoked.text);
        assert_eq!(revoked.json()["revoked"], json!(1), "{}", revoked.text);
        let gone = other.session().id;
        assert_eq!(version_in_redis(&admin, &gone).await, None, "{gone}");
    }
    let url = format!("{}/v1/sessions/{busy}/rotate", writer.url());
    let moved = send(http.post(url)).await;
    assert_eq!(moved.status, 201, "the rotation: {}", moved.text);
    stop.store(true, Ordering::Release);
    for writer in writers {
        let last = writer.await.expect("a writer");
        assert!(
            [200, 404].contains(&last),
            "after the rotation a write of the old id answers 404, not {last}"
        );
    }
    eprintln!(
        "{} writes of the busy session",
        writes.load(Ordering::Relaxed)
    );
}

/// Write-behind mode: a queued write that reaches Redis after another node
/// slid the session's expiry (a touch, a read pushed to Redis) keeps the
/// later expiry: the session was in use after the write. The write set its
/// own, earlier expiry, so a session in use on one node expired in Redis
/// (for every node) up to the queue's delay early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_a_queued_write_never_moves_a_later_expiry_back() {
    let mut acl = AclWriter::start(&[]).await;
    let id = acl.with_a_queued_write(Some(60)).await;
    let AclWriter {
        redis,
        http,
        mut admin,
        writer: _writer,
    } = acl;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let other = node_on(&http, &redis.url(), &[]).await;
    let touched = send(
        http.post(format!("{}/v1/sessions/{id}/touch", other.url()))
            .json(&json!({})),
    )
    .await;
    assert_eq!(touched.status, 200, "{}", touched.text);
    let touched_until = rfc3339_ms(&touched.session().expires_at);

    set_node_user(&mut admin, &["resetkeys", "~*"]).await;
    wait_for_version_in_redis(&admin, &id, 2).await;
    let mut expiry = redis::cmd("PEXPIRETIME");
    expiry.arg(format!("sessiond:{id}"));
    let expires_ms: i64 = redis_query(&mut admin, &mut expiry).await;
    assert!(
        expires_ms >= touched_until as i64,
        "the queued write moved the expiry back {} ms, from the touch's {touched_until} to {expires_ms}",
        touched_until as i64 - expires_ms
    );
}
