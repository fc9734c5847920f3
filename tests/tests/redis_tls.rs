//! `rediss://`: a store node replicating to a Redis that only speaks TLS
//! (certificate verified against a CA given by `SSL_CERT_FILE`) keeps its
//! sessions across a restart of the node.

use std::time::Duration;

use serde_json::{Value, json};
use sessiond_e2e::{RedisServer, Sessiond};

async fn ready(http: &reqwest::Client, node: &Sessiond) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = http.get(format!("{}/readyz", node.url())).send().await;
        if answer.is_ok_and(|answer| answer.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never reached Redis over TLS:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_replicated_over_tls_survive_a_node_restart() {
    let redis = tokio::task::block_in_place(RedisServer::start_with_tls);
    let http = sessiond_e2e::http_client(Duration::from_secs(10));
    let ca = redis.tls_ca().to_string_lossy().into_owned();
    let mut node = Sessiond::start_with_env(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--redis", &redis.url()],
        &[("SSL_CERT_FILE", &ca)],
    );
    ready(&http, &node).await;
    let created: Value = http
        .post(format!("{}/v1/sessions", node.url()))
        .json(&json!({"data": {"over": "tls"}, "ttl_secs": 600}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();

    tokio::task::block_in_place(|| node.restart());
    ready(&http, &node).await;
    let answer = http
        .get(format!("{}/v1/sessions/{id}", node.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(
        answer.status(),
        200,
        "the session did not survive: {}",
        node.log()
    );
    let read: Value = answer.json().await.expect("JSON");
    assert_eq!(read["data"], json!({"over": "tls"}));
    assert_eq!(read["version"], 1);
}
