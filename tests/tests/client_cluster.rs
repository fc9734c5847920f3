//! End-to-end tests of the Rust client over three real `sessiond` nodes:
//! rendezvous placement (sessions spread evenly, each stored on the node
//! `owner_of` names), failover when a node is SIGKILLed mid-run, and the
//! background probe bringing a restarted node back into rotation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sessiond_client::{Client, Error, SessionId};
use sessiond_e2e::{Sessiond, build, builder_for};

/// The client's per-call timeout in these tests.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound of any single step.
const STEP: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("the step did not finish in time")
}

fn start_cluster() -> Vec<Sessiond> {
    (0..3).map(|_| Sessiond::start(&[])).collect()
}

async fn client_of(nodes: &[Sessiond]) -> Client {
    let nodes: Vec<&Sessiond> = nodes.iter().collect();
    build(
        builder_for(&nodes)
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT),
    )
    .await
}

fn http() -> reqwest::Client {
    sessiond_e2e::http_client(STEP)
}

/// HTTP status of `GET /v1/sessions/{id}` on `node`.
async fn http_status(http: &reqwest::Client, node: &Sessiond, id: &SessionId) -> u16 {
    bounded(http.get(format!("{}/v1/sessions/{id}", node.url())).send())
        .await
        .expect("HTTP request failed")
        .status()
        .as_u16()
}

/// Creates `count` sessions and checks that they are spread within
/// `even` per node, that each node holds exactly the sessions `owner_of`
/// gives it, and that every session reads back; `http_sample` of them are
/// also looked up over each node's HTTP API (200 on the owner only).
async fn check_placement(
    nodes: &[Sessiond],
    count: usize,
    even: std::ops::RangeInclusive<usize>,
    http_sample: usize,
) {
    let client = client_of(nodes).await;
    let mut sessions = Vec::with_capacity(count);
    for n in 0..count {
        let info = bounded(client.create(&json!({"n": n}), None))
            .await
            .unwrap_or_else(|err| panic!("create {n} failed: {err}"));
        sessions.push((info.id, n));
    }
    let mut per_owner: HashMap<String, usize> = HashMap::new();
    for (id, _) in &sessions {
        *per_owner.entry(client.owner_of(id).to_owned()).or_default() += 1;
    }
    let mut total = 0;
    for node in nodes {
        let address = node.tcp.to_string();
        let owned = per_owner.get(&address).copied().unwrap_or(0);
        assert!(even.contains(&owned), "uneven spread {per_owner:?}");
        let stats = bounded(client.stats(&address)).await.unwrap();
        assert_eq!(
            stats.sessions, owned as u64,
            "node {address} holds other sessions than it owns"
        );
        total += stats.sessions;
    }
    assert_eq!(total, count as u64);

    for (id, n) in &sessions {
        let session = bounded(client.get::<Value>(id)).await.unwrap();
        assert_eq!(session.data, json!({"n": n}));
    }

    let http = http();
    for (id, _) in sessions.iter().take(http_sample) {
        let owner = client.owner_of(id);
        for node in nodes {
            let expected = if node.tcp.to_string() == owner {
                200
            } else {
                404
            };
            assert_eq!(
                http_status(&http, node, id).await,
                expected,
                "{id} on {}",
                node.tcp
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_sessions_spread_evenly_and_live_on_their_owner() {
    let nodes = start_cluster();
    check_placement(&nodes, 3000, 700..=1300, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_sessions_live_on_their_owner() {
    // Small enough to stay under the ~8 KiB per connection where the codec
    // bug above strikes, so placement stays covered meanwhile. Binomial(90,
    // 1/3) leaves a node outside 10..=50 with odds of about 1 in 10^5.
    let nodes = start_cluster();
    check_placement(&nodes, 90, 10..=50, 90).await;
}

/// The shape of a kill-and-restart run.
struct Scenario {
    /// Sessions created before the loop.
    seed: usize,
    /// Loop iterations (each a create and a get), the kill in the middle.
    iterations: usize,
    /// Pause between iterations.
    pace: Duration,
}

/// Seeds sessions, runs creates + gets in a loop that SIGKILLs one node
/// halfway, checks errors stay within a short window after the kill and
/// the dead node's sessions are reported gone, then restarts the node and
/// waits (bounded) until the client places new sessions on it again.
async fn kill_and_restart(scenario: Scenario) {
    let mut nodes = start_cluster();
    let client = client_of(&nodes).await;
    let victim = 1;
    let victim_address = nodes[victim].tcp.to_string();

    let mut live: Vec<(SessionId, Value)> = Vec::new();
    let mut doomed: Vec<SessionId> = Vec::new();
    // At least `seed` sessions, and more until some live on the victim
    // and some elsewhere (15 random ids all miss it once in ~440 runs).
    for n in 0..scenario.seed * 20 {
        if n >= scenario.seed && !doomed.is_empty() && !live.is_empty() {
            break;
        }
        let data = json!({"seed": n});
        let info = bounded(client.create(&data, None)).await.unwrap();
        if client.owner_of(&info.id) == victim_address {
            doomed.push(info.id);
        } else {
            live.push((info.id, data));
        }
    }
    assert!(!doomed.is_empty() && !live.is_empty(), "seed too small");

    // Bounded in count (iterations) and time (the deadline).
    let deadline = Instant::now() + Duration::from_secs(40);
    let kill_at = scenario.iterations / 2;
    let mut killed_at: Option<Instant> = None;
    let mut errors: Vec<(Duration, String)> = Vec::new();
    let mut doomed_answers = (0usize, 0usize);
    for i in 0..scenario.iterations {
        assert!(Instant::now() < deadline, "the loop ran out of time at {i}");
        if i == kill_at {
            nodes[victim].kill();
            killed_at = Some(Instant::now());
        }
        let since_kill = killed_at.map(|at| at.elapsed());
        let mut failed = |err: Error| {
            let Some(since) = since_kill else {
                panic!("an error before the kill at iteration {i}: {err}");
            };
            errors.push((since, err.to_string()));
        };

        let data = json!({"loop": i});
        match client.create(&data, None).await {
            Ok(info) => {
                if killed_at.is_some() {
                    assert_ne!(
                        client.owner_of(&info.id),
                        victim_address,
                        "a session was placed on the dead node"
                    );
                }
                if client.owner_of(&info.id) == victim_address {
                    doomed.push(info.id);
                } else {
                    live.push((info.id, data));
                }
            }
            Err(err) => failed(err),
        }

        let (id, expected) = &live[fastrand::usize(..live.len())];
        match client.get::<Value>(id).await {
            Ok(session) => assert_eq!(&session.data, expected, "iteration {i}"),
            Err(err) => failed(err),
        }

        if i % 5 == 0 {
            let id = &doomed[fastrand::usize(..doomed.len())];
            match client.get::<Value>(id).await {
                Ok(_) if killed_at.is_none() => doomed_answers.0 += 1,
                Ok(session) => panic!("a dead node's session was served: {session:?}"),
                // Documented outcome: without replication the dead node's
                // sessions are lost. Today the client fails over to the next
                // node of the session's order, which answers NotFound (it
                // never had the session), so NotFound is what callers see;
                // Unavailable is accepted too, as the more truthful answer a
                // fix of `a_slow_owner_is_not_reported_as_session_not_found`
                // may give. A session of the dead node is never served.
                Err(Error::NotFound | Error::Unavailable(_)) if killed_at.is_some() => {
                    doomed_answers.1 += 1
                }
                Err(err) if killed_at.is_none() => panic!("before the kill: {err}"),
                Err(err) => panic!("a dead node's session gave {err:?}, not NotFound"),
            }
        }
        tokio::time::sleep(scenario.pace).await;
    }
    let killed_at = killed_at.expect("the kill happened");
    assert!(
        killed_at.elapsed() > Duration::from_secs(3),
        "the loop must run past the error window; slow it down"
    );
    assert!(
        errors.len() <= 5,
        "too many errors after the kill: {errors:?}"
    );
    let late: Vec<_> = errors
        .iter()
        .filter(|(since, _)| *since > Duration::from_secs(3))
        .collect();
    assert!(
        late.is_empty(),
        "errors after the failover window: {late:?}"
    );
    assert!(
        doomed_answers.0 > 0 && doomed_answers.1 > 0,
        "{doomed_answers:?}"
    );

    // Every session of the live nodes survived.
    for (id, expected) in &live {
        let session = bounded(client.get::<Value>(id)).await.unwrap();
        assert_eq!(&session.data, expected);
    }

    // The node comes back on the same address, empty; the client's probe
    // reconnects and new sessions land on it again.
    nodes[victim].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut placed = None;
    while placed.is_none() {
        assert!(
            Instant::now() < deadline,
            "no session was placed on the restarted node within 10 s"
        );
        // Creates may fail while the probe has not noticed the node yet.
        let created = client.create(&json!({"back": true}), None).await;
        placed = created
            .ok()
            .map(|info| info.id)
            .filter(|id| client.owner_of(id) == victim_address);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = bounded(client.stats(&victim_address)).await.unwrap();
    assert!(stats.sessions > 0, "{stats:?}");
    let placed = placed.expect("placed");
    let session = bounded(client.get::<Value>(&placed)).await.unwrap();
    assert_eq!(session.data, json!({"back": true}));
    let pings = bounded(client.ping_all()).await;
    assert!(pings.iter().all(|(_, result)| result.is_ok()), "{pings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_fails_over_and_comes_back_after_restart() {
    kill_and_restart(Scenario {
        seed: 300,
        iterations: 400,
        pace: Duration::from_millis(15),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_fails_over_and_comes_back_short_run() {
    // The run above, short enough that no connection carries the ~8 KiB
    // where the codec bug strikes: under 80 calls per connection.
    kill_and_restart(Scenario {
        seed: 15,
        iterations: 40,
        pace: Duration::from_millis(180),
    })
    .await;
}

/// Resumes a SIGSTOPped process when dropped, even if the test panics.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        sessiond_e2e::process::freeze(pid);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        sessiond_e2e::process::signal(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_is_not_reported_as_session_not_found() {
    let nodes = start_cluster();
    let client = client_of(&nodes).await;
    let slow = nodes[0].tcp.to_string();
    let mut owned = None;
    for _ in 0..200 {
        let info = bounded(client.create(&json!({"mine": true}), None))
            .await
            .unwrap();
        if client.owner_of(&info.id) == slow {
            owned = Some(info.id);
            break;
        }
    }
    let id = owned.expect("no session landed on node 0 in 200 creates");

    // The owner is alive but frozen for longer than the client's timeout.
    let frozen = Stopped::new(nodes[0].pid());
    let during = bounded(client.get::<Value>(&id)).await;
    drop(frozen);
    // Right after it thaws, before the probe has reconnected.
    let after = bounded(client.get::<Value>(&id)).await;

    // The session is alive: a timeout (or "unavailable") is the truth,
    // NotFound tells the app the user has no session any more.
    assert!(
        matches!(during, Err(Error::Timeout(_) | Error::Unavailable(_))),
        "while the owner is frozen: {during:?}"
    );
    assert!(
        matches!(
            after,
            Ok(_) | Err(Error::Timeout(_) | Error::Unavailable(_))
        ),
        "after the owner thawed: {after:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get::<Value>(&id).await {
            Ok(session) => {
                assert_eq!(session.data, json!({"mine": true}));
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "never readable again: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Without Redis each node holds its own share of a user's sessions: a
/// revocation ("sign out everywhere") with one node down revokes the
/// sessions on the others and then reports the node it could not reach
/// (it stopped at the first node it asked, so with that node down the
/// sessions on the live nodes stayed valid). A listing with that node down
/// is an error (it cannot be whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_with_a_node_down_revokes_on_every_other_node() {
    let mut nodes = start_cluster();
    let client = client_of(&nodes).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let made = bounded(client.create_for_user(&json!({}), None, "ann")).await;
        ids.push(made.expect("create").id);
    }
    // The node every user-wide call asks first.
    let first = client.nodes()[0].clone();
    let elsewhere: Vec<SessionId> = ids
        .iter()
        .copied()
        .filter(|id| client.owner_of(id) != first)
        .collect();
    assert!(elsewhere.len() >= 10, "{} of 30", elsewhere.len());
    nodes
        .iter_mut()
        .find(|node| node.tcp.to_string() == first)
        .expect("the first node")
        .kill();
    let revoked = bounded(client.revoke_user_sessions("ann", None)).await;
    assert!(revoked.is_err(), "{revoked:?}");
    let listed = bounded(client.list_user_sessions("ann")).await;
    assert!(listed.is_err(), "{listed:?}");
    let mut valid = 0;
    for id in &elsewhere {
        match bounded(client.get::<Value>(id)).await {
            Err(Error::NotFound) => {}
            other => {
                valid += 1;
                eprintln!("{id}: {other:?}");
            }
        }
    }
    assert_eq!(
        valid, 0,
        "sessions on the live nodes still valid after the revocation"
    );
}
