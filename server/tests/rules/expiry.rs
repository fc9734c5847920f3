//! Time rules, on a manual clock: the idle TTL and its bounds, sliding
//! expiry on use, and the absolute lifetime cap.

use std::time::Duration;

use serde_json::json;
use sessiond::service::ServiceConfig;
use sessiond::store::StoreConfig;

use super::{Node, START_MS};

#[tokio::test]
async fn a_session_is_gone_once_its_idle_ttl_has_passed() {
    let node = Node::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = node
            .create(&json!({"data": {"short": true}, "ttl_secs": 1}))
            .await;
        answer.assert_session(201);
        assert_eq!(answer.body["ttl_secs"], json!(1));
        assert_eq!(answer.stamp("expires_at"), START_MS + 1_000);
        ids.push(answer.id());
    }
    let (used, idle) = (&ids[0], &ids[1]);

    node.advance(Duration::from_millis(999));
    node.get(used).await.assert_session(200);
    node.advance(Duration::from_millis(1));
    node.get(idle).await.assert_error(404, "not_found");
    node.put(idle, &json!({"data": {}}), None)
        .await
        .assert_error(404, "not_found");
    node.get(used).await.assert_session(200);
}

#[tokio::test]
async fn reads_slide_the_expiry_and_keep_a_session_alive() {
    let node = Node::new();
    let answer = node.create(&json!({"data": {"n": 1}, "ttl_secs": 2})).await;
    answer.assert_session(201);
    let id = answer.id();
    // Four reads one second apart: the session lives twice its TTL, each
    // read pushing its expiry to now + 2 s.
    for round in 1..=4u64 {
        node.advance(Duration::from_secs(1));
        let read = node.get(&id).await;
        assert_eq!(read.status, 200, "read {round}: {}", read.text);
        assert_eq!(
            read.stamp("expires_at"),
            START_MS + round * 1_000 + 2_000,
            "read {round}"
        );
        assert_eq!(read.version(), 1, "a read is not a write");
    }
    // Left alone for its whole TTL, it expires.
    node.advance(Duration::from_secs(2));
    node.get(&id).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn max_lifetime_caps_a_session_however_often_it_is_read() {
    let node = Node::with(
        StoreConfig {
            max_lifetime_ms: Some(2_000),
            ..StoreConfig::default()
        },
        ServiceConfig::default(),
    );
    let answer = node.create(&json!({"data": {}, "ttl_secs": 60})).await;
    answer.assert_session(201);
    let id = answer.id();
    assert_eq!(
        answer.stamp("expires_at") - answer.stamp("created_at"),
        2_000,
        "the cap, not the 60 s TTL, sets expires_at"
    );
    node.advance(Duration::from_secs(1));
    let read = node.get(&id).await;
    read.assert_session(200);
    assert_eq!(
        read.stamp("expires_at") - read.stamp("created_at"),
        2_000,
        "a read does not move the cap"
    );
    let touched = node.post_action(&id, "touch", None).await;
    touched.assert_session(200);
    assert_eq!(touched.stamp("expires_at"), START_MS + 2_000, "nor a touch");
    node.advance(Duration::from_secs(1));
    node.get(&id).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn create_refuses_a_zero_ttl_and_a_ttl_above_max_ttl_as_invalid_ttl() {
    let node = Node::with(
        StoreConfig::default(),
        ServiceConfig {
            default_ttl_secs: 60,
            max_ttl_secs: 3600,
            ..ServiceConfig::default()
        },
    );
    for ttl in [0, 3601, u64::MAX] {
        node.create(&json!({"data": {}, "ttl_secs": ttl}))
            .await
            .assert_error(400, "invalid_ttl");
    }
    let at_the_limit = node.create(&json!({"data": {}, "ttl_secs": 3600})).await;
    at_the_limit.assert_session(201);
    assert_eq!(at_the_limit.body["ttl_secs"], json!(3600));
    assert_eq!(at_the_limit.stamp("expires_at"), START_MS + 3_600_000);
    let by_default = node.create(&json!({})).await;
    assert_eq!(by_default.body["ttl_secs"], json!(60));
    node.assert_sessions_held(2, "refusals store nothing");
}
