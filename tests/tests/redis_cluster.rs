//! End-to-end test of replication to a real 3-master Redis Cluster: the
//! sessions spread over the masters, each master's keys are sessions any
//! node can read by id, and two nodes on one cluster share them.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sessiond_e2e::RedisCluster;
use sessiond_e2e::redis_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_cluster_and_every_node_reads_them() {
    const SESSIONS: u64 = 300;
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let urls = cluster.urls();
    let http = http();
    let first = ready_node(&http, &["--redis-cluster", &urls]).await;
    let client = client_of(&[&first], Duration::from_secs(2)).await;

    let mut written: HashMap<String, Value> = HashMap::new();
    for n in 0..SESSIONS {
        let data = json!({ "n": n, "name": format!("session {n}") });
        let info = bounded(
            "create",
            client.create(&data, Some(Duration::from_secs(600))),
        )
        .await
        .unwrap_or_else(|err| panic!("create {n}: {err}"));
        written.insert(info.id.to_string(), data);
    }

    let mut total = 0;
    let mut per_master = Vec::new();
    for node in &cluster.nodes {
        let size = session_keys(&node.url(), "sessiond:").await.len() as u64;
        per_master.push(size);
        total += size;
    }
    eprintln!("cluster: sessions per master {per_master:?}");
    assert!(
        per_master.iter().all(|&size| size >= 50),
        "uneven spread over the masters: {per_master:?}"
    );
    assert_eq!(total, SESSIONS, "keys in the whole cluster");

    let second = ready_node(&http, &["--redis-cluster", &urls]).await;
    let keys = session_keys(&cluster.nodes[1].url(), "sessiond:").await;
    assert_eq!(keys.len() as u64, per_master[1], "the same keys twice");
    for key in &keys {
        let id = key.strip_prefix("sessiond:").expect("the key prefix");
        let data = written
            .get(id)
            .unwrap_or_else(|| panic!("{key} is not a session this test wrote"));
        for (name, node) in [("first", &first), ("second", &second)] {
            let reply = get(&http, node, id).await;
            assert_eq!(
                reply.status, 200,
                "{key} through the {name} node: {}",
                reply.text
            );
            let session = reply.session();
            assert_eq!(
                (&session.data, session.version),
                (data, 1),
                "{key} on {name}"
            );
        }
    }
    // The shared state also carries writes: a write through the second node
    // reaches the first node's cached copy (an invalidation through the
    // cluster bus) within a bounded time.
    let key = keys.first().expect("the master holds keys");
    let id = key.strip_prefix("sessiond:").expect("the key prefix");
    let reply = put(&http, &second, id, &json!({ "rewritten": true }), Some(1)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut reply = get(&http, &first, id).await;
    while reply.session().version != 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        reply = get(&http, &first, id).await;
    }
    let session = reply.session();
    assert_eq!(
        (session.version, session.data),
        (2, json!({ "rewritten": true }))
    );
}
