//! Sessions that know their user, through the real binary and real Redis:
//! listing a user's live sessions (never an expired, deleted, evicted or
//! rotated-away one), "sign out other devices", the per-user cap, logins
//! racing on two nodes, churn, Redis Cluster and write-behind mode.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond_e2e::redis_support::{
    Reply, bounded, client_of, encode_user, http, listed, login, node_on, redis_conn, redis_query,
    send,
};
use sessiond_e2e::{RedisCluster, RedisServer, Sessiond};

/// Two tests of `$body`: on a memory-only node, and with Redis (a
/// `redis-server` of its own).
macro_rules! in_memory_and_with_redis {
    ($in_memory:ident, $with_redis:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_memory() {
            $body(None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $with_redis() {
            let redis = RedisServer::start();
            $body(Some(&redis)).await;
        }
    };
}

async fn logged_in(http: &reqwest::Client, node: &Sessiond, user: &str, ttl_secs: u64) -> String {
    let reply = login(http, node, user, ttl_secs).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.json()["user"], json!(user));
    reply.session().id
}

/// The ids of `user`'s sessions, in no order.
async fn listed_set(http: &reqwest::Client, node: &Sessiond, user: &str) -> BTreeSet<String> {
    listed(http, node, user).await.into_iter().collect()
}

/// Creates a session of no user; its id.
async fn anonymous_session(http: &reqwest::Client, node: &Sessiond) -> String {
    let made = send(
        http.post(format!("{}/v1/sessions", node.url()))
            .json(&json!({ "data": {} })),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    made.session().id
}

async fn status_of(http: &reqwest::Client, node: &Sessiond, id: &str) -> u16 {
    send(http.get(format!("{}/v1/sessions/{id}", node.url())))
        .await
        .status
}

async fn rotate(http: &reqwest::Client, node: &Sessiond, id: &str, user: Option<&str>) -> Reply {
    let request = http.post(format!("{}/v1/sessions/{id}/rotate", node.url()));
    let request = match user {
        Some(user) => request.json(&json!({ "user": user })),
        None => request,
    };
    send(request).await
}

async fn revoke(http: &reqwest::Client, node: &Sessiond, user: &str, except: Option<&str>) -> u64 {
    let mut path = format!("{}/v1/users/{}/sessions", node.url(), encode_user(user));
    if let Some(except) = except {
        path.push_str(&format!("?except={except}"));
    }
    let reply = send(http.delete(path)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["revoked"].as_u64().expect("revoked")
}

/// Five logins, two of them short-lived, one rotated: after the short ones
/// expire, every node lists exactly the three live ids (the rotated one
/// under its new id), oldest first.
async fn lists_only_live_sessions(nodes: &[&Sessiond]) {
    let http = http();
    let user = "alice@example.com";
    let mut ids = Vec::new();
    for ttl in [60, 2, 60, 2, 60] {
        ids.push(logged_in(&http, nodes[0], user, ttl).await);
    }
    let rotated = rotate(&http, nodes[0], &ids[2], None).await;
    assert_eq!(rotated.status, 201, "{}", rotated.text);
    assert_eq!(
        rotated.json()["user"],
        json!(user),
        "rotation keeps the user"
    );
    let rotated = rotated.session().id;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for node in nodes {
        assert_eq!(
            listed(&http, node, user).await,
            [ids[0].clone(), rotated.clone(), ids[4].clone()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_holds_only_live_sessions_in_memory() {
    let node = Sessiond::start(&[]);
    lists_only_live_sessions(&[&node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_holds_only_live_sessions_on_every_node_with_redis() {
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    lists_only_live_sessions(&[&nodes[0], &nodes[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_other_devices_kills_them_on_every_node_at_once() {
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    let user = "bob";
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(logged_in(&http, &nodes[n % 2], user, 600).await);
    }
    // Both nodes cache every session (each reads each once).
    for id in &ids {
        for node in &nodes {
            assert_eq!(status_of(&http, node, id).await, 200);
        }
    }
    assert_eq!(revoke(&http, &nodes[1], user, Some(&ids[2])).await, 4);
    for (n, id) in ids.iter().enumerate() {
        for node in &nodes {
            let expected = if n == 2 { 200 } else { 404 };
            assert_eq!(status_of(&http, node, id).await, expected, "session {n}");
        }
    }
    assert_eq!(listed(&http, &nodes[0], user).await, [ids[2].clone()]);
}

/// A node with `args`, on `redis` if given.
async fn start_node(
    http: &reqwest::Client,
    redis: Option<&RedisServer>,
    args: &[&str],
) -> Sessiond {
    match redis {
        Some(redis) => node_on(http, &redis.url(), args).await,
        None => Sessiond::start(args),
    }
}

/// Cap 3: a fourth login evicts the least recently used session; with
/// reject, a fourth login is 409 and nothing changes.
async fn the_cap_holds(redis: Option<&RedisServer>) {
    let http = http();
    let start = |args: &'static [&'static str]| start_node(&http, redis, args);
    let evicting = start(&["--max-sessions-per-user", "3"]).await;
    let user = "carol";
    // Use is known to the millisecond: each login (and the reuse) a few
    // milliseconds after the last, so that no two tie.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(logged_in(&http, &evicting, user, 600).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        status_of(&http, &evicting, &ids[0]).await,
        200,
        "used again"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fourth = logged_in(&http, &evicting, user, 600).await;
    assert_eq!(
        status_of(&http, &evicting, &ids[1]).await,
        404,
        "least recently used"
    );
    let now: BTreeSet<String> = listed(&http, &evicting, user).await.into_iter().collect();
    let expected: BTreeSet<String> = [ids[0].clone(), ids[2].clone(), fourth].into();
    assert_eq!(now, expected);
    drop(evicting);

    let rejecting = start(&["--max-sessions-per-user", "3", "--when-user-full", "reject"]).await;
    let user = "dave";
    for _ in 0..3 {
        logged_in(&http, &rejecting, user, 600).await;
    }
    let before = listed(&http, &rejecting, user).await;
    let refused = login(&http, &rejecting, user, 600).await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (409, "too_many_sessions"),
        "{}",
        refused.text
    );
    assert_eq!(
        listed(&http, &rejecting, user).await,
        before,
        "nothing changed"
    );
}

in_memory_and_with_redis!(
    the_cap_evicts_the_oldest_or_rejects_in_memory,
    the_cap_evicts_the_oldest_or_rejects_with_redis,
    the_cap_holds
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_logins_on_two_nodes_leave_exactly_the_cap() {
    let redis = RedisServer::start();
    let http = http();
    let args = ["--max-sessions-per-user", "3"];
    let nodes = [
        node_on(&http, &redis.url(), &args).await,
        node_on(&http, &redis.url(), &args).await,
    ];
    let user = "erin";
    let logins = (0..32).map(|n| {
        let (http, url) = (http.clone(), nodes[n % 2].url());
        tokio::spawn(async move {
            // Half log in fresh, half bind an anonymous session.
            let anonymous = send(http.post(format!("{url}/v1/sessions")).json(&json!({})))
                .await
                .session()
                .id;
            let reply = if n % 4 < 2 {
                send(
                    http.post(format!("{url}/v1/sessions"))
                        .json(&json!({"user": "erin", "ttl_secs": 600})),
                )
                .await
            } else {
                send(
                    http.post(format!("{url}/v1/sessions/{anonymous}/rotate"))
                        .json(&json!({"user": "erin"})),
                )
                .await
            };
            assert_eq!(reply.status, 201, "login {n}: {}", reply.text);
            reply.session().id
        })
    });
    let mut ids = Vec::new();
    for login in logins.collect::<Vec<_>>() {
        ids.push(bounded("a login", login).await.expect("a login task"));
    }
    let mut live = Vec::new();
    for id in &ids {
        if status_of(&http, &nodes[0], id).await == 200 {
            live.push(id.clone());
        }
    }
    assert_eq!(live.len(), 3, "live sessions of the user");
    for node in &nodes {
        let listing: BTreeSet<String> = listed(&http, node, user).await.into_iter().collect();
        assert_eq!(listing, live.iter().cloned().collect::<BTreeSet<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_the_index_and_memory_as_they_were() {
    const SESSIONS: usize = 2_000;
    let node = Sessiond::start(&["--sweep-interval", "50ms"]);
    let http = http();
    let client = client_of(&[&node], Duration::from_secs(10)).await;
    let stats = |client: sessiond_client::Client, address: String| async move {
        bounded("stats", client.stats(&address))
            .await
            .expect("stats")
    };
    let address = node.tcp.to_string();
    let before = stats(client.clone(), address.clone()).await;
    let creates = (0..SESSIONS).map(|n| {
        let client = client.clone();
        async move {
            client
                .create_for_user(&json!({"n": n}), Some(Duration::from_secs(1)), "frank")
                .await
        }
    });
    for created in futures_util::future::join_all(creates).await {
        created.expect("a create");
    }
    let during = stats(client.clone(), address.clone()).await;
    assert_eq!(during.user_index_entries, SESSIONS as u64);
    let mut after = during;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = stats(client.clone(), address.clone()).await;
        if after.sessions == before.sessions {
            break;
        }
    }
    assert_eq!(
        (after.user_index_users, after.user_index_entries),
        (0, 0),
        "{after:?}"
    );
    assert_eq!(after.bytes_used, before.bytes_used, "{after:?}");
    assert!(listed(&http, &node, "frank").await.is_empty());
    let metrics = send(http.get(format!("{}/metrics", node.url()))).await.text;
    assert!(
        metrics.contains("sessiond_user_index_entries 0"),
        "{metrics}"
    );
}

/// The document's `UserName` says its limit is bytes, which its
/// `maxLength` (characters) only bounds, and the node counts bytes: 86
/// times `€` is within `maxLength` and refused, 85 times is taken (the
/// description said bytes without saying that `maxLength` does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_user_name_limit_is_the_bytes_the_node_counts() {
    let node = Sessiond::start(&[]);
    let http = http();
    let document = send(http.get(format!("{}/v1/openapi.json", node.url()))).await;
    assert_eq!(document.status, 200, "{}", document.text);
    let schema = &document.json()["components"]["schemas"]["UserName"];
    assert_eq!(schema["maxLength"], 256, "{schema}");
    let description = schema["description"].as_str().expect("a description");
    for told in [
        "256 bytes",
        "`maxLength` (a count of characters)",
        "400 `invalid_user`",
    ] {
        assert!(description.contains(told), "{told:?} in {description:?}");
    }
    let over = "€".repeat(86);
    let reply = login(&http, &node, &over, 60).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_user"),
        "{}",
        reply.text
    );
    logged_in(&http, &node, &"€".repeat(85), 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_names_are_invalid_user() {
    let node = Sessiond::start(&[]);
    let http = http();
    let long = "x".repeat(257);
    for user in ["", long.as_str(), "tab\tname"] {
        let reply = login(&http, &node, user, 60).await;
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, "invalid_user"),
            "{user:?}: {}",
            reply.text
        );
    }
    let path = format!(
        "{}/v1/users/{}/sessions",
        node.url(),
        encode_user("a\u{7}b")
    );
    let reply = send(http.get(path)).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "invalid_user")
    );
    // A name with spaces and non-ASCII letters round-trips percent-encoded.
    let id = logged_in(&http, &node, "Zoë Smith", 60).await;
    assert_eq!(listed(&http, &node, "Zoë Smith").await, [id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_listing_never_returns_a_dead_session_under_churn() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let http = http();
    let node =
        sessiond_e2e::redis_support::ready_node(&http, &["--redis-cluster", &cluster.urls()]).await;
    let user = "grace";
    let churn = {
        let (http, url) = (http.clone(), node.url());
        tokio::spawn(async move {
            let mut dead = Vec::new();
            for round in 0..60 {
                let id = send(
                    http.post(format!("{url}/v1/sessions"))
                        .json(&json!({"user": "grace", "ttl_secs": 600})),
                )
                .await
                .session()
                .id;
                if round % 2 == 0 {
                    let rotated = send(http.post(format!("{url}/v1/sessions/{id}/rotate")))
                        .await
                        .session()
                        .id;
                    dead.push(id);
                    send(http.delete(format!("{url}/v1/sessions/{rotated}"))).await;
                    dead.push(rotated);
                }
            }
            dead
        })
    };
    let mut listings = 0;
    let mut seen = BTreeSet::new();
    while !churn.is_finished() {
        for id in listed(&http, &node, user).await {
            seen.insert(id);
        }
        listings += 1;
    }
    let dead: BTreeSet<String> = churn.await.expect("the churn").into_iter().collect();
    let final_listing: BTreeSet<String> = listed(&http, &node, user).await.into_iter().collect();
    assert!(
        final_listing.is_disjoint(&dead),
        "a dead session listed at the end"
    );
    assert_eq!(final_listing.len(), 30, "the live sessions");
    for id in &final_listing {
        assert_eq!(status_of(&http, &node, id).await, 200);
    }
    eprintln!("{listings} listings during the churn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_nodes_list_and_revoke_through_redis() {
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &["--redis-mode", "async"]).await,
        node_on(&http, &redis.url(), &["--redis-mode", "async"]).await,
    ];
    let user = "heidi";
    let a = logged_in(&http, &nodes[0], user, 600).await;
    let b = logged_in(&http, &nodes[1], user, 600).await;
    // Writes to a user's session stay write-behind; the index does not.
    let write = send(
        http.put(format!("{}/v1/sessions/{a}", nodes[0].url()))
            .json(&json!({"data": {"cart": [1]}})),
    )
    .await;
    assert_eq!(write.status, 200, "{}", write.text);
    for node in &nodes {
        let listing: BTreeSet<String> = listed(&http, node, user).await.into_iter().collect();
        assert_eq!(listing, [a.clone(), b.clone()].into());
    }
    assert_eq!(revoke(&http, &nodes[1], user, None).await, 2);
    for node in &nodes {
        for id in [&a, &b] {
            assert_eq!(status_of(&http, node, id).await, 404);
        }
        assert!(listed(&http, node, user).await.is_empty());
    }
}

/// A write-behind node's delete (a logout) takes the session's entry out
/// of the user's index in Redis, as a sync node's does: it was left there
/// (pruned only by that user's next listing, revocation or login, so a
/// user who never came back left the key in Redis for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_logout_takes_the_session_out_of_the_users_index() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &["--redis-mode", "async"]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let id = logged_in(&http, &node, "leaver", 600).await;
    let mut entries = redis::cmd("ZCARD");
    entries.arg("sessiond:user:leaver");
    assert_eq!(redis_query::<u64>(&mut admin, &mut entries).await, 1);
    let deleted = send(http.delete(format!("{}/v1/sessions/{id}", node.url()))).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_query::<u64>(&mut admin, &mut entries).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the user's index still lists the deleted session 5 s after its delete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session that expires in Redis leaves its user's index with the
/// reaper's `expired`: the index key of a user who never comes back was
/// left in Redis for good (only that user's next listing, revocation or
/// login pruned it). The session logged in later stays listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_leaves_its_users_index_in_redis() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    logged_in(&http, &node, "gone", 1).await;
    let stays = logged_in(&http, &node, "stays", 600).await;
    let mut exists = redis::cmd("EXISTS");
    exists.arg("sessiond:user:gone");
    let deadline = Instant::now() + Duration::from_secs(25);
    while redis_query::<u64>(&mut admin, &mut exists).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the index of a user whose only session expired is still in Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut left = redis::cmd("ZRANGE");
    left.arg("sessiond:user:stays").arg(0).arg(-1);
    assert_eq!(
        redis_query::<Vec<String>>(&mut admin, &mut left).await,
        [stays]
    );
}

/// Stands in for other nodes while a rotation of the session under `key`
/// runs: bumps its version (a write elsewhere: the rotation's delete of the
/// old id fails and it copies again) until a new session key appears (the
/// rotation's copy; `known` is how many there were before), then deletes
/// the old key (a logout elsewhere). Answers 2 when it deleted, 0 when the
/// old key was gone already (the rotation finished first), else 1.
const MEDDLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #redis.call('KEYS', ARGV[1]) > tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
return 1
";

/// The session keys (not tombstones, indexes, claims or heartbeats).
const SESSION_KEYS: &str = "sessiond:??????????????????????";

async fn session_key_set(admin: &mut redis::aio::MultiplexedConnection) -> BTreeSet<String> {
    redis_query(admin, redis::cmd("KEYS").arg(SESSION_KEYS)).await
}

/// Runs [`MEDDLE`] until the rotation finished or the old key was deleted
/// (bounded): whether it deleted it.
async fn meddle(mut admin: redis::aio::MultiplexedConnection, key: String, known: usize) -> bool {
    let script = redis::Script::new(MEDDLE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let mut invocation = script.key(&key);
        invocation.arg(SESSION_KEYS).arg(known);
        match bounded("meddle", invocation.invoke_async::<i64>(&mut admin)).await {
            Ok(1) => continue,
            Ok(done) => return done == 2,
            Err(err) => panic!("meddling failed: {err}"),
        }
    }
    panic!("the rotation neither finished nor copied within 10 s");
}

/// Sync mode: a rotation whose session changes under it (a write on
/// another node makes it copy again) and is then deleted (a logout on
/// another node) answers 404 and leaves nothing under the new id: no key,
/// nothing listed for the user, no expiry to report. The copy it had made
/// stayed (listed for the user, later reported `expired` though never
/// `created`), and with an `Idempotency-Key` it was answered as the rotated
/// session: the logged-out session back under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_session_is_logged_out_midway_leaves_nothing_under_the_new_id() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    for idempotent in [false, true] {
        let mut raced = 0;
        for round in 0..20 {
            let user = format!("racer-{idempotent}-{round}");
            let id = logged_in(&http, &node, &user, 600).await;
            let before = session_key_set(&mut admin).await;
            let meddler = tokio::spawn(meddle(
                admin.clone(),
                format!("sessiond:{id}"),
                before.len(),
            ));
            let mut request = http.post(format!("{}/v1/sessions/{id}/rotate", node.url()));
            if idempotent {
                request = request.header("idempotency-key", format!("rotation-{round}"));
            }
            let reply = send(request).await;
            if !meddler.await.expect("the meddler") {
                assert_eq!(reply.status, 201, "{}", reply.text);
                continue;
            }
            raced += 1;
            let case = format!("idempotent {idempotent}, round {round}");
            assert_eq!(reply.status, 404, "{case}: {}", reply.text);
            let mut left = before.clone();
            left.remove(&format!("sessiond:{id}"));
            assert_eq!(
                session_key_set(&mut admin).await,
                left,
                "{case}: session keys"
            );
            assert_eq!(
                listed(&http, &node, &user).await,
                Vec::<String>::new(),
                "{case}"
            );
            let expiries: Vec<String> = redis_query(
                &mut admin,
                redis::cmd("ZRANGE")
                    .arg("{sessiond:events}:expiries")
                    .arg(0)
                    .arg(-1),
            )
            .await;
            let copies: Vec<&String> = expiries
                .iter()
                .filter(|entry| entry.ends_with(&format!(":{user}")) && !entry.starts_with(&id))
                .collect();
            assert!(copies.is_empty(), "{case}: expiries of a copy: {copies:?}");
            if raced == 3 {
                break;
            }
        }
        assert_eq!(raced, 3, "idempotent {idempotent}: the race never happened");
    }
}

/// A revocation that takes longer than the user's lock lives (5 s) keeps
/// the lock: each of the user's 30 sessions is recorded as cached by a
/// node that never acks (its heartbeat key is there), so each delete waits
/// 250 ms for it. A rotation of one of the user's sessions on another
/// node, sent once the revocation has run past 5 s, waits for the lock
/// (and gives up, 503) or finds the session revoked (404); it never moves
/// the session out of the revocation's reach. The lock was not renewed: the
/// rotation took it once it expired and answered 201 with a new id that
/// outlived "sign out everywhere".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_longer_than_the_users_lock_keeps_it() {
    const SESSIONS: usize = 30;
    let redis = RedisServer::start();
    let http = http();
    let revoker = node_on(&http, &redis.url(), &[]).await;
    let rotator = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        ids.push(logged_in(&http, &revoker, "mallory", 600).await);
    }
    for id in &ids {
        let key = format!("sessiond:{id}");
        let cachers: Option<String> =
            redis_query(&mut admin, redis::cmd("HGET").arg(&key).arg("o")).await;
        let cachers = match cachers.unwrap_or_default() {
            none if none.is_empty() => "feed".to_owned(),
            some => format!("{some},feed"),
        };
        redis_query::<()>(
            &mut admin,
            redis::cmd("HSET").arg(&key).arg("o").arg(cachers),
        )
        .await;
    }
    redis_query::<()>(
        &mut admin,
        redis::cmd("SET").arg("sessiond:node:feed").arg(1),
    )
    .await;

    let revocation = tokio::spawn(send(
        http.delete(format!("{}/v1/users/mallory/sessions", revoker.url())),
    ));
    // 21 deletes of 250 ms each: the revocation has held the lock > 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: usize =
            redis_query(&mut admin, redis::cmd("ZCARD").arg("sessiond:user:mallory")).await;
        if left <= SESSIONS - 21 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation is stuck at {left}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newest = ids.last().expect("sessions");
    let rotated = rotate(&http, &rotator, newest, None).await;
    let revoked = revocation.await.expect("the revocation");
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert!(
        [404, 503].contains(&rotated.status),
        "a rotation during the revocation answered {}: {}",
        rotated.status,
        rotated.text
    );
    assert_eq!(revoked.json()["revoked"], json!(SESSIONS));
    assert_eq!(
        listed(&http, &rotator, "mallory").await,
        Vec::<String>::new()
    );
}

/// A login (a create, or a rotation binding the user) repeated with its
/// `Idempotency-Key` does not count the session its first attempt made
/// against the user's cap, so it evicts nobody: in memory and with Redis.
async fn a_repeated_login_evicts_no_other_session(redis: Option<&RedisServer>) {
    let http = http();
    let node = start_node(&http, redis, &["--max-sessions-per-user", "2"]).await;
    let user = "erin";
    let first = logged_in(&http, &node, user, 600).await;
    // Least recently used by a clear margin (uses are stamped in ms).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let create = || {
        http.post(format!("{}/v1/sessions", node.url()))
            .header("idempotency-key", "login-1")
            .json(&json!({ "data": {}, "user": user }))
    };
    let made = send(create()).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let again = send(create()).await;
    assert_eq!(
        (again.status, again.session().id),
        (201, made.session().id),
        "{}",
        again.text
    );
    let mut expected: BTreeSet<String> = [first.clone(), made.session().id].into();
    let now = listed_set(&http, &node, user).await;
    assert_eq!(now, expected, "after the repeated create");

    // An anonymous session logs in by rotation, twice with one key.
    let anonymous = anonymous_session(&http, &node).await;
    let rotate = || {
        http.post(format!("{}/v1/sessions/{anonymous}/rotate", node.url()))
            .header("idempotency-key", "login-2")
            .json(&json!({ "user": user }))
    };
    let moved = send(rotate()).await;
    assert_eq!(moved.status, 201, "{}", moved.text);
    let again = send(rotate()).await;
    assert_eq!(
        (again.status, again.session().id),
        (201, moved.session().id),
        "{}",
        again.text
    );
    // The login itself made way for one session (the least recently used).
    expected.remove(&first);
    expected.insert(moved.session().id);
    let now = listed_set(&http, &node, user).await;
    assert_eq!(now, expected, "after the repeated rotation");
}

/// A login whose session is gone (a create repeated after the session it
/// made was deleted, a rotation of a deleted session) answers 404 and
/// evicts no session of the user to make way for it.
async fn a_login_that_finds_its_session_gone_evicts_nobody(redis: Option<&RedisServer>) {
    let http = http();
    let node = start_node(&http, redis, &["--max-sessions-per-user", "2"]).await;
    let user = "fay";
    let create = || {
        http.post(format!("{}/v1/sessions", node.url()))
            .header("idempotency-key", "login-gone")
            .json(&json!({ "data": {}, "user": user }))
    };
    let made = send(create()).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let made = made.session().id;
    let deleted = send(http.delete(format!("{}/v1/sessions/{made}", node.url()))).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let kept: BTreeSet<String> = [
        logged_in(&http, &node, user, 600).await,
        logged_in(&http, &node, user, 600).await,
    ]
    .into();

    let again = send(create()).await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (404, "not_found"),
        "{}",
        again.text
    );
    let now = listed_set(&http, &node, user).await;
    assert_eq!(now, kept, "after the repeated create");

    let anonymous = anonymous_session(&http, &node).await;
    let deleted = send(http.delete(format!("{}/v1/sessions/{anonymous}", node.url()))).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let rotated = rotate(&http, &node, &anonymous, Some(user)).await;
    assert_eq!(rotated.status, 404, "{}", rotated.text);
    let now = listed_set(&http, &node, user).await;
    assert_eq!(now, kept, "after the rotation of a deleted session");
}

in_memory_and_with_redis!(
    a_login_that_finds_its_session_gone_evicts_nobody_in_memory,
    a_login_that_finds_its_session_gone_evicts_nobody_with_redis,
    a_login_that_finds_its_session_gone_evicts_nobody
);

in_memory_and_with_redis!(
    a_repeated_login_evicts_no_other_session_in_memory,
    a_repeated_login_evicts_no_other_session_with_redis,
    a_repeated_login_evicts_no_other_session
);

/// A login prunes the dead among its user's oldest index entries (past the
/// index's 10 s grace), by reading only whose each session is: the three
/// expired sessions' entries go, the live one's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_prunes_the_users_dead_index_entries_and_keeps_the_live_ones() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let live = logged_in(&http, &node, "pruned", 600).await;
    for _ in 0..3 {
        logged_in(&http, &node, "pruned", 1).await;
    }
    let index = || {
        redis::cmd("ZRANGE")
            .arg("sessiond:user:pruned")
            .arg(0)
            .arg(-1)
            .clone()
    };
    let entries: Vec<String> = redis_query(&mut admin, &mut index()).await;
    assert_eq!(entries.len(), 4);
    tokio::time::sleep(Duration::from_millis(11_500)).await;
    let latest = logged_in(&http, &node, "pruned", 600).await;
    let left: BTreeSet<String> = redis_query(&mut admin, &mut index()).await;
    assert_eq!(left, BTreeSet::from([live, latest]));
}

/// A listing prunes a dead index entry only if it was not added again
/// while the listing read: a retried create or login re-adds its id (with
/// a new time) before it writes the session's key, and the listing, which
/// had found no session under the id, removed the entry anyway, leaving a
/// live session out of the user's listings and revocations. Thousands of
/// dead entries make the listing long enough to re-add one in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_keeps_a_dead_entry_added_again_while_it_read() {
    const DEAD: usize = 20_000;
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let index = "sessiond:user:dora";
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis() as u64
    };
    let retried = sessiond_proto::SessionId::random().to_string();
    let long_ago = now_ms() - 60_000;
    redis_query::<()>(
        &mut admin,
        redis::cmd("ZADD").arg(index).arg(long_ago).arg(&retried),
    )
    .await;
    for _ in 0..DEAD / 1_000 {
        let mut add = redis::cmd("ZADD");
        add.arg(index);
        for _ in 0..1_000 {
            add.arg(long_ago + 1)
                .arg(sessiond_proto::SessionId::random().to_string());
        }
        redis_query::<()>(&mut admin, &mut add).await;
    }
    let listing = tokio::spawn(send(
        http.get(format!("{}/v1/users/dora/sessions", node.url())),
    ));
    // The listing read the retried id first (the oldest) and found nothing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let added_again = now_ms();
    redis_query::<()>(
        &mut admin,
        redis::cmd("ZADD").arg(index).arg(added_again).arg(&retried),
    )
    .await;
    assert!(
        !listing.is_finished(),
        "the listing ended before the id was added again: no race was staged"
    );
    let listed = listing.await.expect("the listing");
    assert_eq!(listed.status, 200, "{}", listed.text);
    let score: Option<u64> =
        redis_query(&mut admin, redis::cmd("ZSCORE").arg(index).arg(&retried)).await;
    assert_eq!(score, Some(added_again), "the entry added again was pruned");
    let left: usize = redis_query(&mut admin, redis::cmd("ZCARD").arg(index)).await;
    assert_eq!(left, 1, "the dead entries are pruned");
}

/// A login by rotation (a change of a user's sessions) runs to its end even
/// when its client hung up and the node is told to stop meanwhile: the
/// node waits for it before it exits, rather than dropping it wherever it
/// was (the session then under two ids, or the user's lock held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_client_hung_up_finishes_before_the_node_exits() {
    let redis = RedisServer::start();
    let http = http();
    let mut node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let id = anonymous_session(&http, &node).await;
    // Another node's change of alice's sessions holds her lock 1.5 s: the
    // login waits for it.
    redis_query::<()>(
        &mut admin,
        redis::cmd("SET")
            .arg("sessiond:ulock:alice")
            .arg("another node")
            .arg("PX")
            .arg(1500),
    )
    .await;
    let impatient = sessiond_e2e::http_client(Duration::from_millis(200));
    let hung_up = impatient
        .post(format!("{}/v1/sessions/{id}/rotate", node.url()))
        .json(&json!({ "user": "alice" }))
        .send()
        .await;
    assert!(
        hung_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client hung up while the login waited: {hung_up:?}"
    );
    let code = tokio::task::block_in_place(|| node.terminate());
    assert_eq!(code, Some(0), "{}", node.log());
    let indexed: Vec<String> = redis_query(
        &mut admin,
        redis::cmd("ZRANGE")
            .arg("sessiond:user:alice")
            .arg(0)
            .arg(-1),
    )
    .await;
    assert_eq!(
        indexed.len(),
        1,
        "alice's index after the login: {indexed:?}"
    );
    assert_ne!(indexed[0], id, "the login rotated the session");
    let old: bool = redis_query(
        &mut admin,
        redis::cmd("EXISTS").arg(format!("sessiond:{id}")),
    )
    .await;
    let new: bool = redis_query(
        &mut admin,
        redis::cmd("EXISTS").arg(format!("sessiond:{}", indexed[0])),
    )
    .await;
    assert_eq!((old, new), (false, true), "the session moved whole");
    let lock: bool =
        redis_query(&mut admin, redis::cmd("EXISTS").arg("sessiond:ulock:alice")).await;
    assert!(!lock, "the login released alice's lock");
}

/// The entries of `user`'s index in Redis, as stored (a listing verifies
/// them; this does not).
async fn indexed(admin: &mut redis::aio::MultiplexedConnection, user: &str) -> Vec<String> {
    let key = format!("sessiond:user:{user}");
    redis_query(admin, redis::cmd("ZRANGE").arg(key).arg(0).arg(-1)).await
}

/// A rotation (plain, and a login) whose session is logged out while it
/// waits for the user's lock answers 404 and leaves no entry for the new
/// id in the user's index: it had added one before it found the session
/// gone, with no session and no expiry behind it, so nothing reaped it and
/// the index key stayed in Redis for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_finds_its_session_gone_leaves_no_index_entry() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    for login in [false, true] {
        let id = logged_in(&http, &node, "carol", 600).await;
        // Another node's change of carol's sessions holds her lock.
        redis_query::<()>(
            &mut admin,
            redis::cmd("SET")
                .arg("sessiond:ulock:carol")
                .arg("another node")
                .arg("PX")
                .arg(1000),
        )
        .await;
        let rotation = tokio::spawn({
            let (http, url, id) = (http.clone(), node.url(), id.clone());
            async move {
                let request = http.post(format!("{url}/v1/sessions/{id}/rotate"));
                let request = match login {
                    true => request.json(&json!({ "user": "carol" })),
                    false => request,
                };
                send(request).await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logout = send(http.delete(format!("{}/v1/sessions/{id}", node.url()))).await;
        assert_eq!(logout.status, 204, "{}", logout.text);
        let rotated = rotation.await.expect("the rotation");
        assert_eq!(rotated.status, 404, "login {login}: {}", rotated.text);
        assert_eq!(
            indexed(&mut admin, "carol").await,
            Vec::<String>::new(),
            "login {login}: carol's index"
        );
    }
}

/// Bytes Redis has sent its clients so far.
async fn redis_output_bytes(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis_query(admin, redis::cmd("INFO").arg("stats")).await;
    info.lines()
        .find_map(|line| line.strip_prefix("total_net_output_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("total_net_output_bytes in INFO stats")
}

/// A listing of a user's sessions reads from Redis what a summary holds,
/// not each session's data: listing ten sessions of 64 KiB made Redis send
/// the node all 640 KiB (a copy of every session's data in the node's
/// memory, outside `--max-memory`, for each listing, revocation and
/// capped login at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_reads_no_sessions_data_from_redis() {
    let redis = RedisServer::start();
    let http = http();
    let node = node_on(&http, &redis.url(), &[]).await;
    let mut admin = redis_conn(&redis.url()).await;
    let data = "x".repeat(64 * 1024);
    for _ in 0..10 {
        let made = send(
            http.post(format!("{}/v1/sessions", node.url()))
                .json(&json!({ "data": { "blob": data }, "user": "big" })),
        )
        .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    let before = redis_output_bytes(&mut admin).await;
    assert_eq!(listed(&http, &node, "big").await.len(), 10);
    let sent = redis_output_bytes(&mut admin).await - before;
    assert!(
        sent < 16 * 1024,
        "Redis sent {sent} bytes for one listing of ten sessions"
    );
}
