//! End-to-end tests of Redis replication with Redis healthy: real `sessiond`
//! nodes sharing one real `redis-server`. Concurrent updates through two
//! nodes lose no increment, cross-node reads are never stale in strong mode
//! (and the cached mode's stale reads are counted), the async mode's
//! graceful shutdown leaves every acknowledged write in Redis, the key layout
//! is the documented one, and sliding expiry reaches Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sessiond_client::SessionId;
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::process::{freeze, signal};
use sessiond_e2e::redis::raw_command;
use sessiond_e2e::redis_support::*;
use sessiond_e2e::{RedisServer, Sessiond, build, builder_for};

/// The shared counter of the concurrent-update test.
#[derive(Debug, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

/// 32 updaters, half through node A and half through node B, each add 1 to
/// one counter 200 times with `Client::update`: every increment lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_nodes_lose_no_increment() {
    const UPDATERS: usize = 32;
    const INCREMENTS: u64 = 200;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let a = node_on(&http, &redis.url(), &[]).await;
    let b = node_on(&http, &redis.url(), &[]).await;
    let reader_a = client_of(&[&a], Duration::from_secs(2)).await;
    let reader_b = client_of(&[&b], Duration::from_secs(2)).await;
    let id = bounded("create", reader_a.create(&Counter { n: 0 }, None))
        .await
        .expect("create the counter")
        .id;

    let attempts = Arc::new(AtomicU64::new(0));
    let mut updaters = tokio::task::JoinSet::new();
    for updater in 0..UPDATERS {
        let node = if updater % 2 == 0 { &a } else { &b };
        let client = build(builder_for(&[node]).update_retries(2000)).await;
        let attempts = attempts.clone();
        updaters.spawn(async move {
            for increment in 0..INCREMENTS {
                client
                    .update(&id, |counter: &mut Counter| {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        counter.n += 1;
                    })
                    .await
                    .map_err(|err| format!("updater {updater}, increment {increment}: {err}"))?;
            }
            Ok::<(), String>(())
        });
    }
    let all = async {
        let mut failures = Vec::new();
        while let Some(joined) = updaters.join_next().await {
            if let Err(err) = joined.expect("an updater panicked") {
                failures.push(err);
            }
        }
        failures
    };
    let failures = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the updaters did not finish within 120 s");
    assert!(failures.is_empty(), "updates failed: {failures:?}");
    let total = UPDATERS as u64 * INCREMENTS;
    let attempts = attempts.load(Ordering::Relaxed);
    eprintln!(
        "concurrent updates: {total} increments took {attempts} attempts ({} version conflicts)",
        attempts - total
    );

    for (name, client) in [("A", &reader_a), ("B", &reader_b)] {
        let session = bounded("read the counter", client.get::<Counter>(&id))
            .await
            .expect("read the counter");
        assert_eq!(session.data.n, total, "counter read through node {name}");
        assert_eq!(
            session.version(),
            total + 1,
            "version read through node {name}"
        );
    }
    for node in [&a, &b] {
        let reply = get(&http, node, &id.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let session = reply.session();
        assert_eq!(session.data, json!({ "n": total }));
        assert_eq!(session.version, total + 1);
    }
}

/// Writes through node A and reads through node B right after, `ROUNDS`
/// times; returns how many reads returned an older version than the write
/// just acknowledged. Panics on a read newer than the write or a read of
/// the right version with other data.
async fn stale_reads_across_nodes(extra: &[&str]) -> usize {
    const ROUNDS: u64 = 1000;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let a = node_on(&http, &redis.url(), extra).await;
    let b = node_on(&http, &redis.url(), extra).await;
    let writer = client_of(&[&a], Duration::from_secs(2)).await;
    let reader = client_of(&[&b], Duration::from_secs(2)).await;
    let id = bounded("create", writer.create(&json!({ "round": 0 }), None))
        .await
        .expect("create")
        .id;
    // B caches the session now, so later reads can be served from its copy.
    let first = bounded("first read", reader.get::<Value>(&id))
        .await
        .unwrap();
    assert_eq!(first.version(), 1);

    let mut stale = 0;
    for round in 1..=ROUNDS {
        let data = json!({ "round": round });
        let written = bounded("write through A", writer.put(&id, &data, None))
            .await
            .unwrap_or_else(|err| panic!("round {round}: write through A failed: {err}"));
        assert_eq!(written.version, round + 1, "round {round}: only A writes");
        let read = bounded("read through B", reader.get::<Value>(&id))
            .await
            .unwrap_or_else(|err| panic!("round {round}: read through B failed: {err}"));
        assert!(
            read.version() <= written.version,
            "round {round}: B read version {} after A wrote {}",
            read.version(),
            written.version
        );
        if read.version() < written.version {
            stale += 1;
        } else {
            assert_eq!(
                read.data,
                data,
                "round {round}: version {} with other data",
                read.version()
            );
        }
    }
    stale
}

/// `--consistency strong`: a read through another node right after a write
/// always sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_consistency_reads_are_never_stale_across_nodes() {
    let stale = stale_reads_across_nodes(&["--consistency", "strong"]).await;
    eprintln!("strong consistency: {stale} stale reads out of 1000");
    assert_eq!(stale, 0, "strong consistency served stale reads");
}

/// Default cached mode: the reading node caches the session, and a write on
/// the other node is not acknowledged until that copy is dropped, so a
/// read right after it never returns the older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_across_nodes_are_never_older_than_an_acknowledged_write() {
    let stale = stale_reads_across_nodes(&[]).await;
    eprintln!("cached consistency: {stale} stale reads out of 1000");
    assert_eq!(stale, 0, "reads through the caching node went back in time");
}

/// Node B reads `id` through twice (caching it at `version`), is frozen
/// (SIGSTOP) while `acknowledged` runs (a write through other nodes,
/// awaited until acknowledged), then gets a read of `id` and is thawed;
/// returns what B answered.
async fn read_from_a_cacher_frozen_during<F: std::future::Future<Output = ()>>(
    http: &reqwest::Client,
    b: &Sessiond,
    id: &str,
    version: u64,
    acknowledged: F,
) -> Reply {
    for _ in 0..2 {
        let read = get(http, b, id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.session().version, version);
    }
    freeze(b.pid());
    acknowledged.await;
    let read = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/v1/sessions/{id}", b.url()));
        async move { send(http.get(url)).await }
    });
    // The read waits in B's socket beside the invalidation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    signal(b.pid(), "CONT");
    bounded("the read through the frozen cacher", read)
        .await
        .expect("the read task panicked")
}

/// The read of round `round` (a 200), as (round, version, data) when it
/// is older than the round's write (version `round + 1`).
fn older_than_written(read: &Reply, round: u64) -> Option<(u64, u64, Value)> {
    assert_eq!(read.status, 200, "round {round}: {}", read.text);
    let session = read.session();
    (session.version != round + 1).then_some((round, session.version, session.data))
}

/// `count` nodes on `redis` and the id of a session (`{"round": 0}`)
/// created through the first.
async fn nodes_with_a_session(
    http: &reqwest::Client,
    redis: &RedisServer,
    count: usize,
) -> (Vec<Sessiond>, String) {
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(node_on(http, &redis.url(), &[]).await);
    }
    let created = create(http, &nodes[0], &json!({ "round": 0 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    (nodes, created.session().id)
}

/// [`read_from_a_cacher_frozen_during`] a first run of `first` (a
/// request through a node that will wait for the frozen B) and, 50 ms
/// later, when that run is in Redis and its node still waits, `then`;
/// returns B's answer and the first run's.
async fn read_from_a_frozen_cacher_while_a_first_run_waits<F>(
    http: &reqwest::Client,
    b: &Sessiond,
    id: &str,
    version: u64,
    first: reqwest::RequestBuilder,
    then: F,
) -> (Reply, Reply)
where
    F: std::future::Future<Output = ()>,
{
    let mut sent = None;
    let both = async {
        sent = Some(tokio::spawn(send(first)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        then.await;
    };
    let read = read_from_a_cacher_frozen_during(http, b, id, version, both).await;
    let first = sent.expect("the first run was sent");
    let first = bounded("the first run", first)
        .await
        .expect("the first run panicked");
    (read, first)
}

/// A caching node too slow to ack an invalidation (frozen past the
/// writer's wait) must not answer its older copy once it runs again: it
/// trusts its cache only while its own heartbeat comes back through its
/// subscription, so by the time the writer gives up waiting, the frozen
/// node no longer trusts the copy it was never told to drop. Node B caches
/// the session, is frozen, node A writes, a read is sent to B, and B is
/// thawed: the read must show A's write, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacher_frozen_past_the_ack_wait_never_answers_the_older_copy() {
    const ROUNDS: u64 = 10;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let write = async {
            let written = put(&http, a, &id, &json!({ "round": round }), None).await;
            assert_eq!(written.status, 200, "round {round}: {}", written.text);
            assert_eq!(written.session().version, round + 1, "round {round}");
        };
        let read = read_from_a_cacher_frozen_during(&http, b, &id, round, write).await;
        stale.extend(older_than_written(&read, round));
    }
    assert_eq!(
        stale,
        [],
        "(round, version, data) B answered after A acknowledged version round + 1"
    );
}

/// A caching node frozen longer than a Redis command may take, with a
/// command in flight, must not answer its older copy once it runs again.
/// The command timed out the moment the node was thawed, which marked
/// Redis unreachable, and a node that cannot reach Redis serves its memory
/// (availability first): B answered the version A's acknowledged write had
/// replaced (helper-86's chaos run: also a rotated-away id, a deleted
/// session). A timeout across a stall of the node's own runtime says
/// nothing about Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacher_frozen_past_a_commands_timeout_never_answers_the_older_copy() {
    const ROUNDS: u64 = 4;
    let _alone = exclusive().await;
    let redis = RedisServer::start_with_debug();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let admin = redis_conn(&redis.url()).await;
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        for _ in 0..2 {
            let read = get(&http, b, &id).await;
            assert_eq!(
                read.session().version,
                round,
                "round {round}: {}",
                read.text
            );
        }
        // Redis sleeps: B's beat, sent every 50 ms, waits for it when B
        // is frozen.
        let sleep = tokio::spawn(sleep_redis(&admin, 0.3));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let frozen_at = Instant::now();
        tokio::task::block_in_place(|| freeze(b.pid()));
        let written = put(&http, a, &id, &json!({ "round": round }), None).await;
        assert_eq!(written.status, 200, "round {round}: {}", written.text);
        sleep.await.expect("the stall");
        // Frozen past the command's 2 s timeout.
        tokio::time::sleep(
            (frozen_at + Duration::from_millis(2500)).saturating_duration_since(Instant::now()),
        )
        .await;
        let read = tokio::spawn({
            let (http, url) = (http.clone(), format!("{}/v1/sessions/{id}", b.url()));
            async move { send(http.get(url)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        signal(b.pid(), "CONT");
        let read = bounded("the read through the thawed cacher", read)
            .await
            .expect("the read task panicked");
        stale.extend(older_than_written(&read, round));
    }
    assert_eq!(
        stale,
        [],
        "(round, version, data) B answered after A acknowledged version round + 1"
    );
}

/// Every node that keeps a copy must be waited for by the next write: a
/// session is recorded as cached by at most 8 nodes (Redis's `o` field),
/// and a node read through beyond them must not keep a copy no writer
/// waits for. Node 0 caches the session and is frozen; the nine other
/// nodes read it through (more than are recorded); one of them writes it;
/// a read is sent to node 0 and it is thawed: it must answer the write, in
/// every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_by_more_nodes_than_are_recorded_is_never_served_stale() {
    const NODES: usize = 10;
    const ROUNDS: u64 = 10;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, NODES).await;
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let read_everywhere_then_write = async {
            for node in &nodes[1..] {
                let read = get(&http, node, &id).await;
                assert_eq!(read.status, 200, "round {round}: {}", read.text);
                assert_eq!(read.session().version, round, "round {round}");
            }
            let written = put(&http, &nodes[1], &id, &json!({ "round": round }), None).await;
            assert_eq!(written.status, 200, "round {round}: {}", written.text);
            assert_eq!(written.session().version, round + 1, "round {round}");
        };
        let read = read_from_a_cacher_frozen_during(
            &http,
            &nodes[0],
            &id,
            round,
            read_everywhere_then_write,
        )
        .await;
        stale.extend(older_than_written(&read, round));
    }
    assert_eq!(
        stale,
        [],
        "(round, version, data) node 0 answered after version round + 1 was acknowledged"
    );
}

/// The nodes listed in a session's `o` field (its cachers).
async fn cachers_of(redis: &RedisServer, id: &str) -> Vec<String> {
    let mut conn = redis_conn(&redis.url()).await;
    let listed: Option<String> = redis_query(
        &mut conn,
        redis::cmd("HGET").arg(format!("sessiond:{id}")).arg("o"),
    )
    .await;
    listed
        .unwrap_or_default()
        .split(',')
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits (up to 5 s) until no node's heartbeat key is left in `redis`:
/// every node is stopped, frozen or cut off.
async fn wait_until_no_heartbeat(redis: &RedisServer) {
    let mut conn = redis_conn(&redis.url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let beating: Vec<String> =
            redis_query(&mut conn, redis::cmd("KEYS").arg("sessiond:node:*")).await;
        if beating.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "heartbeat keys still alive after 5 s: {beating:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nodes` (the first of which created the session) read it, so that all
/// of them are listed as its cachers: as many as are recorded.
async fn fill_the_cacher_list(
    http: &reqwest::Client,
    redis: &RedisServer,
    nodes: &[Sessiond],
    id: &str,
) {
    for node in nodes {
        let read = get(http, node, id).await;
        assert_eq!(read.status, 200, "{}", read.text);
    }
    assert_eq!(
        cachers_of(redis, id).await.len(),
        nodes.len(),
        "listed cachers"
    );
}

/// A node's id is new at each start, so the cacher list of a session only
/// read fills with the ids of nodes restarted (or gone) since. A read that
/// finds the list full drops the nodes whose heartbeat key is gone, so a
/// live node is listed, and caches, again. Eight nodes read the session
/// and stop; a new node reads it: it alone is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cacher_list_of_stopped_nodes_makes_room_for_a_live_one() {
    a_full_cacher_list_makes_room_for(&[]).await;
}

/// The same for a write-behind node: it reads through Redis too, and keeps
/// a copy only when listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cacher_list_of_stopped_nodes_makes_room_for_a_live_async_node() {
    a_full_cacher_list_makes_room_for(&["--redis-mode", "async"]).await;
}

/// Eight nodes read a session and stop; a new node started with
/// `fresh_args` reads it: it alone is listed.
async fn a_full_cacher_list_makes_room_for(fresh_args: &[&str]) {
    const RECORDED: usize = 8;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, RECORDED).await;
    fill_the_cacher_list(&http, &redis, &nodes, &id).await;
    drop(nodes);
    wait_until_no_heartbeat(&redis).await;

    let fresh = node_on(&http, &redis.url(), fresh_args).await;
    let read = get(&http, &fresh, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        cachers_of(&redis, &id).await.len(),
        1,
        "the stopped nodes are dropped and the live one listed"
    );
}

/// A node dropped from a cacher list while its heartbeat key had lapsed
/// (frozen longer than the key lives) is not told of the next write, so
/// the read that drops it tells it to drop its copy. X caches the session
/// beside seven nodes that then stop; X is frozen until its key is gone; a
/// new node Z reads the session (dropping X and the stopped nodes from the
/// list) and, a moment later, writes it; X is thawed and, once its beats
/// come back, read: it must answer Z's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacher_dropped_while_its_heartbeat_lapsed_never_serves_the_older_copy() {
    const RECORDED: usize = 8;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (mut nodes, id) = nodes_with_a_session(&http, &redis, RECORDED).await;
    fill_the_cacher_list(&http, &redis, &nodes, &id).await;
    let x = nodes.remove(0);
    drop(nodes);
    let cached = get(&http, &x, &id).await;
    assert_eq!(cached.session().version, 1, "{}", cached.text);
    freeze(x.pid());
    wait_until_no_heartbeat(&redis).await;

    let z = node_on(&http, &redis.url(), &[]).await;
    let read = get(&http, &z, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(cachers_of(&redis, &id).await.len(), 1, "Z alone is listed");
    // Past the 500 ms in which a write also tells the nodes the read told.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let written = put(&http, &z, &id, &json!({ "by": "z" }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);

    signal(x.pid(), "CONT");
    // X's beats come back again (it trusts copies only then).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = get(&http, &x, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, json!({ "by": "z" })),
        "X answered a copy older than Z's acknowledged write"
    );
}

/// A write answered as a replay (its Idempotency-Key's earlier run did
/// it) waits as the earlier run's writer does: that writer may not have
/// answered yet, or died, while a caching node still trusts its older
/// copy. Node B caches the session and is frozen; node A runs a keyed
/// write (and waits for B's ack); the same keyed write sent to node C is
/// answered from A's run; a read is sent to B and B is thawed: the read
/// must show the write, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_is_answered_only_once_no_cacher_trusts_the_older_copy() {
    const ROUNDS: u64 = 10;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let keyed_put = |node: &Sessiond, round: u64| {
        http.put(format!("{}/v1/sessions/{id}", node.url()))
            .header("idempotency-key", format!("round-{round}"))
            .json(&json!({ "data": { "round": round } }))
    };
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let replay = async {
            let replayed = send(keyed_put(c, round)).await;
            assert_eq!(replayed.status, 200, "round {round}: {}", replayed.text);
            assert_eq!(replayed.session().version, round + 1, "round {round}");
        };
        let (read, first) = read_from_a_frozen_cacher_while_a_first_run_waits(
            &http,
            b,
            &id,
            round,
            keyed_put(a, round),
            replay,
        )
        .await;
        assert_eq!(first.status, 200, "round {round}: {}", first.text);
        assert_eq!(first.session().version, round + 1, "round {round}");
        stale.extend(older_than_written(&read, round));
    }
    assert_eq!(
        stale,
        [],
        "(round, version, data) B answered after C acknowledged version round + 1"
    );
}

/// A write must wait for every node an earlier write told and that may
/// not have acked it yet, not only for the nodes listed since: node B
/// caches the session and is frozen; node A writes it (and waits for B);
/// node D reads it and writes it again while A still waits; a read is
/// sent to B and B is thawed: it must answer D's write, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_for_the_cachers_an_unacknowledged_write_told() {
    const ROUNDS: u64 = 10;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, 3).await;
    let (a, b, d) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let version = 2 * round - 1;
        let a_write = http
            .put(format!("{}/v1/sessions/{id}", a.url()))
            .json(&json!({ "data": { "round": round, "by": "a" } }));
        let d_reads_and_writes = async {
            let read = get(&http, d, &id).await;
            assert_eq!(read.session().version, version + 1, "round {round}");
            let written = put(&http, d, &id, &json!({ "round": round }), None).await;
            assert_eq!(written.status, 200, "round {round}: {}", written.text);
            assert_eq!(written.session().version, version + 2, "round {round}");
        };
        let (read, first) = read_from_a_frozen_cacher_while_a_first_run_waits(
            &http,
            b,
            &id,
            version,
            a_write,
            d_reads_and_writes,
        )
        .await;
        assert_eq!(first.status, 200, "round {round}: {}", first.text);
        assert_eq!(read.status, 200, "round {round}: {}", read.text);
        if read.session().version != version + 2 {
            stale.push((round, read.session().version));
        }
    }
    assert_eq!(
        stale,
        [],
        "(round, version) B answered after D's write was acknowledged"
    );
}

/// A replay on a node that was itself told of the run it replays does not
/// wait for its own ack: node B caches the session, node A runs a keyed
/// write (B acks it), and the same keyed write sent to B at once is a
/// replay; B must count no ack timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_waits_for_its_own_node() {
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let (nodes, id) = nodes_with_a_session(&http, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    for round in 1..=5u64 {
        for _ in 0..2 {
            assert_eq!(get(&http, b, &id).await.session().version, round);
        }
        for node in [a, b] {
            let request = http
                .put(format!("{}/v1/sessions/{id}", node.url()))
                .header("idempotency-key", format!("round-{round}"))
                .json(&json!({ "data": { "round": round } }));
            let written = send(request).await;
            assert_eq!(written.status, 200, "round {round}: {}", written.text);
            assert_eq!(written.session().version, round + 1, "round {round}");
        }
    }
    let timeouts = scrape(&b.url())
        .await
        .value("sessiond_invalidation_ack_timeouts_total", &[])
        .unwrap_or(0.0);
    assert_eq!(timeouts, 0.0, "B waited for its own ack of its replays");
}

/// A delete repeated on another node (its first node died, or its caller
/// gave up, while that node waited for a cacher's ack) must not be
/// answered while a frozen cacher still trusts its copy: one delete through
/// node A that waits for the frozen cacher B, then the same delete through
/// node C, which finds the session deleted moments ago; B, thawed, must
/// answer 404, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_repeated_on_another_node_is_answered_only_once_no_cacher_trusts_the_copy() {
    const ROUNDS: u64 = 10;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let a = node_on(&http, &redis.url(), &[]).await;
    let b = node_on(&http, &redis.url(), &[]).await;
    let c = node_on(&http, &redis.url(), &[]).await;
    let delete =
        |node: &Sessiond, id: &str| http.delete(format!("{}/v1/sessions/{id}", node.url()));
    let mut served = Vec::new();
    for round in 1..=ROUNDS {
        let created = create(&http, &a, &json!({ "round": round }), None).await;
        assert_eq!(created.status, 201, "round {round}: {}", created.text);
        let id = created.session().id;
        let repeated = async {
            let again = send(delete(&c, &id)).await;
            assert_eq!(again.status, 204, "round {round}: {}", again.text);
        };
        let (read, first) = read_from_a_frozen_cacher_while_a_first_run_waits(
            &http,
            &b,
            &id,
            1,
            delete(&a, &id),
            repeated,
        )
        .await;
        assert_eq!(first.status, 204, "round {round}: {}", first.text);
        if read.status != 404 {
            served.push((round, read.status, read.text));
        }
    }
    assert_eq!(
        served,
        [],
        "(round, status, body) B answered after C acknowledged the delete"
    );
}

/// The documented layout: hash `<prefix><id>` with v, d, c, u, t, the write
/// log (w, h), the nodes that may cache it (o), its user (p) and the
/// session's expiry as the key's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_stored_as_documented_hashes_under_the_prefix() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--redis-prefix", "test:"]).await;
    let request = r#"{"data":{"user":"ann","cart":[1,2,3]},"ttl_secs":60}"#;
    let reply = send(
        http.post(format!("{}/v1/sessions", node.url()))
            .header("content-type", "application/json")
            .body(request),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let session = reply.session();

    let mut conn = redis_conn(&redis.url()).await;
    let key = format!("test:{}", session.id);
    let kind: String = redis_query(&mut conn, redis::cmd("TYPE").arg(&key)).await;
    assert_eq!(kind, "hash");
    let fields: HashMap<String, String> =
        redis_query(&mut conn, redis::cmd("HGETALL").arg(&key)).await;
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["c", "d", "f", "h", "o", "p", "t", "u", "v", "w"],
        "fields of {key}: {fields:?}"
    );
    assert_eq!(fields["v"], "1");
    // Created without an Idempotency-Key: one untagged write, nothing fell
    // out of the log, no re-sent write applied, and only the creating node
    // caches it.
    assert_eq!(
        (
            fields["w"].as_str(),
            fields["h"].as_str(),
            fields["f"].as_str()
        ),
        ("0", "0", "0")
    );
    assert_eq!(fields["p"], "", "no user");
    assert!(
        u64::from_str_radix(&fields["o"], 16).is_ok(),
        "one node id in o: {fields:?}"
    );
    assert_eq!(
        fields["d"], r#"{"user":"ann","cart":[1,2,3]}"#,
        "the data as sent"
    );
    assert_eq!(fields["t"], "60000");
    let created = rfc3339_ms(&session.created_at);
    assert_eq!(fields["c"], created.to_string(), "c is created_at in ms");
    assert_eq!(fields["u"], created.to_string(), "u is updated_at in ms");
    let pttl: i64 = redis_query(&mut conn, redis::cmd("PTTL").arg(&key)).await;
    assert!((55_000..=60_000).contains(&pttl), "PTTL of {key} is {pttl}");
    let expires: i64 = redis_query(&mut conn, redis::cmd("PEXPIRETIME").arg(&key)).await;
    assert_eq!(
        expires as u64,
        rfc3339_ms(&session.expires_at),
        "the key expires when the session does"
    );
    let default_key: bool = redis_query(
        &mut conn,
        redis::cmd("EXISTS").arg(format!("sessiond:{}", session.id)),
    )
    .await;
    assert!(
        !default_key,
        "the default prefix was used despite --redis-prefix"
    );
    let mut keys: Vec<String> = redis_query(&mut conn, redis::cmd("KEYS").arg("*")).await;
    keys.sort();
    let mut expected = [
        format!("test:node:{}", fields["o"]),
        key,
        "{test:events}".to_owned(),
        "{test:events}:expiries".to_owned(),
    ];
    expected.sort();
    assert_eq!(
        keys, expected,
        "Redis holds exactly the node's heartbeat, the session's key and the event log"
    );
}

/// Reads through a node keep pushing the key's expiry in Redis: a session
/// with a 3 s TTL read every second for 6 s is still in Redis and readable
/// through a fresh node; an unread one expires there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_expiry_reaches_redis() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let used = create(&http, &node, &json!({ "used": true }), Some(3))
        .await
        .session();
    let idle = create(&http, &node, &json!({ "used": false }), Some(3))
        .await
        .session();
    for second in 1..=6 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let reply = get(&http, &node, &used.id).await;
        assert_eq!(reply.status, 200, "read at {second} s: {}", reply.text);
    }
    let mut conn = redis_conn(&redis.url()).await;
    let pttl: i64 = redis_query(
        &mut conn,
        redis::cmd("PTTL").arg(format!("sessiond:{}", used.id)),
    )
    .await;
    assert!(pttl > 0, "the used session's key has PTTL {pttl} in Redis");
    let idle_exists: bool = redis_query(
        &mut conn,
        redis::cmd("EXISTS").arg(format!("sessiond:{}", idle.id)),
    )
    .await;
    assert!(!idle_exists, "the unused session did not expire in Redis");

    let fresh = node_on(&http, &redis.url(), &[]).await;
    let reply = get(&http, &fresh, &used.id).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let session = reply.session();
    assert_eq!(
        (session.version, session.data),
        (1, json!({ "used": true }))
    );
    assert_eq!(get(&http, &fresh, &idle.id).await.status, 404);

    // The same through the client, for the record.
    let client = client_of(&[&fresh], Duration::from_secs(2)).await;
    let id: SessionId = used.id.parse().expect("a session id");
    let read = bounded("client read", client.get::<Value>(&id))
        .await
        .unwrap();
    assert_eq!(read.version(), 1);
}

/// The key of `id` in Redis: its PTTL in ms (-2 when gone).
async fn pttl_of(conn: &mut redis::aio::MultiplexedConnection, id: &str) -> i64 {
    redis_query(conn, redis::cmd("PTTL").arg(format!("sessiond:{id}"))).await
}

/// Shortens the idle TTL of `id` to `ttl_secs` through `node`.
async fn touch_with_ttl(http: &reqwest::Client, node: &Sessiond, id: &str, ttl_secs: u64) {
    let path = format!("{}/v1/sessions/{id}/touch", node.url());
    let reply = send(http.post(path).json(&json!({ "ttl_secs": ttl_secs }))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// A session whose TTL a write shortened on the node that reads it stays
/// in Redis while that node's reads keep it in use, in both replication
/// modes. The node's refresher kept what its reads had slid before the
/// write (a ten-minute expiry it took Redis to hold), so it never pushed
/// the short one: Redis expired the key while the node went on serving
/// the session from memory, and other nodes answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_ttl_is_kept_alive_in_redis_by_the_reads_that_use_it() {
    for mode in ["sync", "async"] {
        let redis = RedisServer::start();
        let http = http();
        let node = node_on(&http, &redis.url(), &["--redis-mode", mode]).await;
        let id = create(&http, &node, &json!({ "n": 1 }), Some(600))
            .await
            .session()
            .id;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(&http, &node, &id).await.status, 200);
        touch_with_ttl(&http, &node, &id, 3).await;
        for half_second in 1..=10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let reply = get(&http, &node, &id).await;
            assert_eq!(
                reply.status, 200,
                "{mode}: read at {half_second}: {}",
                reply.text
            );
        }
        let mut conn = redis_conn(&redis.url()).await;
        let pttl = pttl_of(&mut conn, &id).await;
        assert!(
            (1..=3_000).contains(&pttl),
            "{mode}: the session read every half second has PTTL {pttl} in Redis"
        );
        let other = node_on(&http, &redis.url(), &["--redis-mode", mode]).await;
        assert_eq!(get(&http, &other, &id).await.status, 200, "{mode}");
    }
}

/// A TTL another node shortened is not undone by this node's reads: it
/// had slid the expiry of its older copy (ten minutes), and the first read
/// after the other node's write, from Redis, queued that old expiry for
/// Redis, which pushed the key back to ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_shortened_on_another_node_is_not_pushed_back_by_old_reads() {
    let redis = RedisServer::start();
    let http = http();
    let reader = node_on(&http, &redis.url(), &[]).await;
    let writer = node_on(&http, &redis.url(), &[]).await;
    let id = create(&http, &reader, &json!({ "n": 1 }), Some(600))
        .await
        .session()
        .id;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&http, &reader, &id).await.status, 200);
    touch_with_ttl(&http, &writer, &id, 3).await;
    // The reader's copy was dropped (the write waited for its ack): this
    // read is from Redis.
    assert_eq!(get(&http, &reader, &id).await.status, 200);
    // Past the refresher's next flush.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut conn = redis_conn(&redis.url()).await;
    let pttl = pttl_of(&mut conn, &id).await;
    assert!(
        (1..=3_000).contains(&pttl),
        "the key's PTTL is {pttl} ms after its TTL was shortened to 3 s"
    );
}

/// A slide this node queued for Redis just before another node shortened
/// the session's TTL does not push the key back to the old, longer expiry
/// when the queue is flushed (up to 100 ms later): Redis's expiry moved
/// later only, whatever TTL the session had by then. Several sessions, so
/// that some write lands before the flush that carries their slide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slide_queued_before_another_nodes_ttl_shortening_does_not_undo_it() {
    const SESSIONS: usize = 6;
    let redis = RedisServer::start();
    let http = http();
    let reader = node_on(&http, &redis.url(), &[]).await;
    let writer = node_on(&http, &redis.url(), &[]).await;
    let mut ids = Vec::new();
    for n in 0..SESSIONS {
        let created = create(&http, &reader, &json!({ "n": n }), Some(8)).await;
        ids.push(created.session().id);
    }
    // Past the drift allowance of an 8 s TTL (an eighth): each read queues
    // its slide for the refresher's next flush.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for id in &ids {
        assert_eq!(get(&http, &reader, id).await.status, 200);
        touch_with_ttl(&http, &writer, id, 3).await;
    }
    // Past the refresher's next flushes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut conn = redis_conn(&redis.url()).await;
    for id in &ids {
        let pttl = pttl_of(&mut conn, id).await;
        assert!(
            (1..=3_000).contains(&pttl),
            "the key's PTTL is {pttl} ms after its TTL was shortened to 3 s"
        );
    }
}

/// A login (a rotation that binds the session to a user) whose HTTP
/// client hangs up midway runs to its end: the user's lock is released and
/// the session is under its new id, indexed for the user. The request's
/// future was dropped with the client, mid-change: here while Redis held
/// back its writes (`CLIENT PAUSE ... WRITE`), so the lock it was taking
/// was left to expire (five seconds of logins and revocations of the user
/// failing on every node), and a drop after the copy left the session
/// under two ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_client_hangs_up_midway_runs_to_its_end() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let id = create(&http, &node, &json!({ "cart": [] }), None)
        .await
        .session()
        .id;
    let mut admin = redis_conn(&redis.url()).await;
    let _: () = redis_query(
        &mut admin,
        redis::cmd("CLIENT").arg("PAUSE").arg(1_000).arg("WRITE"),
    )
    .await;
    let body = r#"{"user": "alice"}"#;
    let request = format!(
        "POST /v1/sessions/{id}/rotate HTTP/1.1\r\nHost: h\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes())
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    // The pause ends at 1 s; the change's steps follow.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lock: i64 = redis_query(&mut admin, redis::cmd("PTTL").arg("sessiond:ulock:alice")).await;
    assert_eq!(lock, -2, "the user's lock is still held");
    let listed = listed(&http, &node, "alice").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_ne!(listed[0], id, "the session moved to a new id");
    assert_eq!(get(&http, &node, &id).await.status, 404);
}

/// A read's slide of the expiry that is still within the drift allowance
/// (an eighth of the TTL, at most a minute: not pushed yet) reaches Redis
/// when the node stops gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_pushes_the_expiries_reads_slid() {
    let redis = RedisServer::start();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &[]).await;
    let session = create(&http, &node, &json!({ "n": 1 }), Some(3_600))
        .await
        .session();
    let mut conn = redis_conn(&redis.url()).await;
    let key = format!("sessiond:{}", session.id);
    let created_expiry: i64 = redis_query(&mut conn, redis::cmd("PEXPIRETIME").arg(&key)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let read = get(&http, &node, &session.id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let slid = rfc3339_ms(&read.session().expires_at) as i64;
    assert!(slid >= created_expiry + 1_400, "{slid} vs {created_expiry}");
    let held: i64 = redis_query(&mut conn, redis::cmd("PEXPIRETIME").arg(&key)).await;
    assert_eq!(held, created_expiry, "pushed before the drift allowance");

    let code = tokio::task::block_in_place(|| node.terminate());
    assert_eq!(code, Some(0), "{}", node.log());
    let held: i64 = redis_query(&mut conn, redis::cmd("PEXPIRETIME").arg(&key)).await;
    assert_eq!(held, slid, "the slid expiry in Redis after the shutdown");
}

/// Counts, over `rounds`, how often a node keeps serving an older state of
/// a session after it acknowledged a newer one itself: each round node B
/// writes the session (so node A's copy is invalidated), then node A gets a
/// read and `op` at the same time, then A is read again.
async fn own_write_races(
    http: &reqwest::Client,
    a: &sessiond_e2e::Sessiond,
    b: &sessiond_e2e::Sessiond,
    rounds: u64,
    op: &str,
) -> u64 {
    let mut stale = 0;
    for round in 1..=rounds {
        let id = create(http, b, &json!({ "round": round }), Some(2))
            .await
            .session()
            .id;
        let reply = put(http, b, &id, &json!({ "round": round, "by": "B" }), Some(1)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        // Let the invalidation reach A: its copy is gone, a read loads.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let session_url = format!("{}/v1/sessions/{id}", a.url());
        let write = async {
            match op {
                "put" => put(http, a, &id, &json!({ "round": round, "by": "A" }), None).await,
                "delete" => send(http.delete(&session_url)).await,
                _ => send(http.post(format!("{session_url}/rotate"))).await,
            }
        };
        let (read, written) = tokio::join!(get(http, a, &id), write);
        // The concurrent read may come after a delete or rotate: 404 then.
        let read_ok = read.status == 200 || (op != "put" && read.status == 404);
        assert!(read_ok, "read during {op}: {} {}", read.status, read.text);
        assert!(
            matches!(written.status, 200 | 201 | 204),
            "{op}: {}",
            written.text
        );
        let after = get(http, a, &id).await;
        let is_stale = match op {
            "put" => after.status != 200 || after.session().version < written.session().version,
            _ => after.status != 404,
        };
        if is_stale {
            stale += 1;
        }
    }
    stale
}

/// A read-through (cache miss) racing a write, delete or rotate of the
/// same session on the same node must not leave the older state in that
/// node's cache: after the write is acknowledged, the node serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_through_racing_a_local_write_never_caches_the_older_copy() {
    const ROUNDS: u64 = 40;
    let _alone = exclusive().await;
    let redis = RedisServer::start();
    let http = http();
    let a = node_on(&http, &redis.url(), &[]).await;
    let b = node_on(&http, &redis.url(), &[]).await;
    let after_put = own_write_races(&http, &a, &b, ROUNDS, "put").await;
    let after_delete = own_write_races(&http, &a, &b, ROUNDS, "delete").await;
    let after_rotate = own_write_races(&http, &a, &b, ROUNDS, "rotate").await;
    eprintln!(
        "read-through racing a local write, out of {ROUNDS} rounds each: an older version served \
         after a PUT {after_put}, a deleted session served {after_delete}, a rotated-away id \
         served {after_rotate}"
    );
    assert_eq!(
        (after_put, after_delete, after_rotate),
        (0, 0, 0),
        "the node kept serving state older than its own acknowledged write"
    );
}

/// Async mode, two nodes writing one session at once: every write is
/// acknowledged (none answers 404 for a session that exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_writes_through_two_nodes_never_answer_not_found() {
    const ROUNDS: u64 = 150;
    let redis = RedisServer::start();
    let http = http();
    let async_mode = ["--redis-mode", "async"];
    let a = node_on(&http, &redis.url(), &async_mode).await;
    let b = node_on(&http, &redis.url(), &async_mode).await;
    let id = create(&http, &a, &json!({ "n": 0 }), None)
        .await
        .session()
        .id;
    // Wait until the create reached Redis (B reads it through).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&http, &b, &id).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the create never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for round in 1..=ROUNDS {
        let data = json!({ "n": round });
        let (through_a, through_b) = tokio::join!(
            put(&http, &a, &id, &data, None),
            put(&http, &b, &id, &data, None)
        );
        for reply in [through_a, through_b] {
            *statuses.entry(reply.status).or_default() += 1;
        }
    }
    eprintln!("async mode, concurrent writes through two nodes: statuses {statuses:?}");
    assert_eq!(
        statuses.get(&200).copied(),
        Some(2 * ROUNDS),
        "writes to a live session were refused: {statuses:?}"
    );
}

/// Every sync write that reached Redis is timed in
/// `sessiond_redis_write_duration_seconds`; reads of a cached session are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_writes_are_timed_in_the_redis_write_histogram() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let session = create(&http, &node, &json!({ "n": 0 }), None)
        .await
        .session();
    for n in 1..=3 {
        let reply = put(&http, &node, &session.id, &json!({ "n": n }), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    assert_eq!(get(&http, &node, &session.id).await.status, 200);
    let metrics = scrape(&node.url()).await;
    assert_eq!(
        metrics.value("sessiond_redis_write_duration_seconds_count", &[]),
        Some(3.0),
        "{metrics}"
    );
    let waited = metrics
        .value("sessiond_redis_write_duration_seconds_sum", &[])
        .expect("the histogram's sum");
    assert!(waited > 0.0, "{metrics}");
}

/// The encoding Redis keeps session `id`'s hash in (`OBJECT ENCODING`).
fn encoding_in_redis(redis: &RedisServer, id: &str) -> String {
    let reply = raw_command(redis.port, &format!("OBJECT ENCODING sessiond:{id}"))
        .expect("OBJECT ENCODING");
    reply.lines().last().unwrap_or_default().to_owned()
}

/// At Redis's default `hash-max-listpack-value` (64 bytes) a session is
/// kept in the large hash encoding: the node's log warns and gives the
/// fix; once the limit is raised, a node logs it without a warning and
/// the session is kept compact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_when_redis_keeps_sessions_in_its_large_hash_encoding() {
    let redis = RedisServer::start();
    let http = http();
    let data = json!({ "cart": "x".repeat(512) });
    let node = node_on(&http, &redis.url(), &[]).await;
    let advice = "`CONFIG SET hash-max-listpack-value 8192` on the Redis server";
    wait_for_log(&node, advice, Duration::from_secs(10)).await;
    let large = create(&http, &node, &data, None).await.session();
    assert_eq!(encoding_in_redis(&redis, &large.id), "hashtable");

    let set = raw_command(redis.port, "CONFIG SET hash-max-listpack-value 8192");
    assert_eq!(set.expect("CONFIG SET"), "+OK\r\n");
    let tuned = node_on(&http, &redis.url(), &[]).await;
    wait_for_log(
        &tuned,
        "Redis keeps sessions of up to 8192 bytes in its compact hash encoding",
        Duration::from_secs(10),
    )
    .await;
    assert!(!tuned.log().contains(advice), "{}", tuned.log());
    let compact = create(&http, &tuned, &data, None).await.session();
    assert_eq!(encoding_in_redis(&redis, &compact.id), "listpack");
}

/// Async mode: a write-behind write is announced on the invalidation
/// channel only when it makes a new key (nobody can tell who held the one
/// before) or another node may hold a copy. One node writing its own
/// session 20 times announces nothing; once a second node has read the
/// session through (it is listed as a cacher), the next write is
/// announced and that node serves it. (Every write-behind write used to
/// be announced, a message per write that every node received.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_announces_a_write_only_where_another_node_may_hold_a_copy() {
    let redis = RedisServer::start();
    let http = http();
    let async_mode = ["--redis-mode", "async"];
    let writer = node_on(&http, &redis.url(), &async_mode).await;
    let mut pubsub = redis::Client::open(redis.url())
        .expect("the Redis URL")
        .get_async_pubsub()
        .await
        .expect("a subscriber");
    pubsub
        .subscribe("sessiond:invalidations")
        .await
        .expect("SUBSCRIBE");
    let mut messages = pubsub.into_on_message();
    let admin = redis_conn(&redis.url()).await;

    let id = create(&http, &writer, &json!({ "n": 0 }), None)
        .await
        .session()
        .id;
    for n in 1..=20 {
        let reply = put(&http, &writer, &id, &json!({ "n": n }), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    wait_for_version_in_redis(&admin, &id, 21).await;
    let cacher = node_on(&http, &redis.url(), &async_mode).await;
    let read = get(&http, &cacher, &id).await;
    assert_eq!(read.session().data, json!({ "n": 20 }));
    let last = json!({ "n": "last" });
    assert_eq!(put(&http, &writer, &id, &last, None).await.status, 200);
    wait_for_version_in_redis(&admin, &id, 22).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&http, &cacher, &id).await.session().data != last {
        assert!(Instant::now() < deadline, "the cacher kept the older copy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What the channel carried (the nodes' beats go on meanwhile).
    let mut invalidations = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, messages.next()).await {
        if message.get_payload_bytes().first() == Some(&b'I') {
            invalidations += 1;
        }
    }
    assert_eq!(
        invalidations, 2,
        "one for the new key, one for the write the cacher had to hear of"
    );
}

/// Async mode with `--consistency strong` reads Redis on every read, as the
/// README says of strong consistency (it served its memory copy: a change
/// made in Redis by another writer stayed unseen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_with_strong_consistency_reads_redis() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(
        &http,
        &redis.url(),
        &["--redis-mode", "async", "--consistency", "strong"],
    )
    .await;
    let created = create(&http, &node, &json!({"v": "one"}), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    let key = format!("sessiond:{id}");
    let mut conn = redis_conn(&redis.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_query::<u64>(&mut conn, redis::cmd("EXISTS").arg(&key)).await == 0 {
        assert!(Instant::now() < deadline, "the create never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = get(&http, &node, &id).await;
    assert_eq!(read.session().data, json!({"v": "one"}), "{}", read.text);
    // Another writer's change, straight into Redis.
    let mut change = redis::cmd("HSET");
    change
        .arg(&key)
        .arg("d")
        .arg(r#"{"v":"two"}"#)
        .arg("v")
        .arg(2);
    redis_query::<u64>(&mut conn, &mut change).await;
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let session = read.session();
    assert_eq!(
        (session.version, session.data),
        (2, json!({"v": "two"})),
        "{}",
        read.text
    );
}

/// A node without a cap and one with `--max-lifetime 1s` on `redis`, and a
/// session `{"n": 1}` the uncapped one made, now past the other's cap.
async fn past_the_capped_nodes_max_lifetime(
    http: &reqwest::Client,
    redis: &RedisServer,
) -> (Sessiond, Sessiond, String) {
    let uncapped = node_on(http, &redis.url(), &[]).await;
    let capped = node_on(http, &redis.url(), &["--max-lifetime", "1s"]).await;
    let created = create(http, &uncapped, &json!({"n": 1}), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    (uncapped, capped, id)
}

/// A rotation on a node past whose `--max-lifetime` the session is (a node
/// without the cap kept it alive in Redis) finds it gone there, as a read
/// does, and leaves it to the other nodes: it answered 201 with an id that
/// was never stored (Redis refused the copy, past its expiry) and deleted
/// the old one, so the session was lost on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_past_the_nodes_max_lifetime_loses_nothing() {
    let redis = RedisServer::start();
    let http = http();
    let (uncapped, capped, id) = past_the_capped_nodes_max_lifetime(&http, &redis).await;
    let url = format!("{}/v1/sessions/{id}/rotate", capped.url());
    let rotated = send(http.post(url)).await;
    assert_eq!(rotated.status, 404, "{}", rotated.text);
    let read = get(&http, &uncapped, &id).await;
    assert_eq!(read.status, 200, "the session was lost: {}", read.text);
    assert_eq!(read.session().data, json!({"n": 1}));
}

/// A write on a node past whose `--max-lifetime` the session is finds it
/// gone, as a read or a rotation does, and leaves it to the nodes without
/// the cap: it deleted the key in Redis without telling the nodes that
/// cache the session, so one of them went on serving it while the others
/// answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_nodes_max_lifetime_leaves_the_session_to_the_others() {
    let redis = RedisServer::start();
    let http = http();
    let (uncapped, capped, id) = past_the_capped_nodes_max_lifetime(&http, &redis).await;
    // The uncapped node caches the session.
    assert_eq!(get(&http, &uncapped, &id).await.status, 200);
    let url = format!("{}/v1/sessions/{id}", capped.url());
    let written = send(http.put(url).json(&json!({"data": {"n": 2}}))).await;
    assert_eq!(written.status, 404, "{}", written.text);
    // Another node without the cap reads it from Redis: the same session
    // as the one cached.
    let other = node_on(&http, &redis.url(), &[]).await;
    for node in [&uncapped, &other] {
        let read = get(&http, node, &id).await;
        assert_eq!(read.status, 200, "{}: {}", node.url(), read.text);
        let session = read.session();
        assert_eq!((session.version, session.data), (1, json!({"n": 1})));
    }
}

/// A node never serves a session past its own `--max-lifetime`, though
/// Redis keeps it longer (another node without the cap, or with a longer
/// one, slid it there): it answered 200 with an `expires_at` already past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_the_nodes_max_lifetime_is_not_served_though_redis_keeps_it() {
    let redis = RedisServer::start();
    let http = http();
    let capped = node_on(&http, &redis.url(), &["--max-lifetime", "2s"]).await;
    let created = create(&http, &capped, &json!({"n": 1}), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    // What a node without the cap does when a read slides the session.
    let mut conn = redis_conn(&redis.url()).await;
    let kept: u64 = redis_query(
        &mut conn,
        redis::cmd("PEXPIRE")
            .arg(format!("sessiond:{id}"))
            .arg(60_000),
    )
    .await;
    assert_eq!(kept, 1);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let read = get(&http, &capped, &id).await;
    assert_eq!(read.status, 404, "{}", read.text);

    // Still a session for a node without the cap: a revocation of its
    // user from the capped node ends it too (the capped node took it for
    // no longer the user's, and left it alive on the other node).
    let uncapped = node_on(&http, &redis.url(), &[]).await;
    let login = login(&http, &uncapped, "alice", 600).await;
    assert_eq!(login.status, 201, "{}", login.text);
    let alices = login.session().id;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let url = format!("{}/v1/users/alice/sessions", capped.url());
    let revoked = send(http.delete(url)).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(revoked.json()["revoked"], json!(1), "{}", revoked.text);
    let read = get(&http, &uncapped, &alices).await;
    assert_eq!(read.status, 404, "{}", read.text);
}
