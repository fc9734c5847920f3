//! End-to-end tests of a sync-mode node whose change ran in Redis but whose
//! answer from Redis was lost (the connection reset after the command went
//! through). The node cannot know whether the change happened, so it must
//! not go on serving the copy it held from before: the next read goes to
//! Redis and answers what Redis holds.
//!
//! The node reaches Redis through a proxy that cuts the connection carrying
//! the next command that names the session, at the answer after it.

use std::time::Duration;

use serde_json::json;
use sessiond_e2e::proxy::{AnswerFault, SilencingProxy};
use sessiond_e2e::redis_support::*;
use sessiond_e2e::{RedisServer, Sessiond};

/// A Redis, a proxy to it, and a sync-mode node that reaches Redis only
/// through the proxy. The node has written and deleted a session, so
/// Redis knows its scripts: a script's first run is sent twice (by hash,
/// then whole), and the lost answer is to be the one to the change.
async fn proxied_node() -> (RedisServer, SilencingProxy, Sessiond) {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port).await;
    let http = http();
    let node = node_on(&http, &format!("redis://127.0.0.1:{}", proxy.port()), &[]).await;
    let created = create(&http, &node, &json!({ "warm": true }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    let written = put(&http, &node, &id, &json!({ "warm": false }), None).await;
    assert_eq!(written.status, 200, "{}", written.text);
    assert_eq!(delete(&http, &node, &id).await.status, 204);
    (redis, proxy, node)
}

/// Arms the proxy to lose the answer to the next command that holds
/// `marker` (a session id, say).
fn lose_next_answer_about(proxy: &SilencingProxy, marker: &str) {
    proxy.lose_answer_to_next_request_holding(marker.as_bytes(), AnswerFault::Cut);
}

/// Reads `id` through `node` until it answers something other than 503
/// (the node may still be reconnecting to Redis), at most 10 s.
async fn read_once_redis_answers(http: &reqwest::Client, node: &Sessiond, id: &str) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = get(http, node, id).await;
        if read.status != 503 || tokio::time::Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write whose answer was lost ran in Redis: a read then answers the
/// written version, not the copy the node held before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_leaves_no_stale_copy_behind() {
    let (redis, proxy, node) = proxied_node().await;
    let admin = redis_conn(&redis.url()).await;
    let http = http();
    let created = create(&http, &node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;

    lose_next_answer_about(&proxy, &id);
    let written = put(&http, &node, &id, &json!({ "n": 2 }), Some(1)).await;
    assert!(
        proxy.marked_request_went_through(),
        "the write reached Redis"
    );
    assert_ne!(written.status, 200, "its answer was lost: {}", written.text);
    assert_eq!(
        version_in_redis(&admin, &id).await,
        Some(2),
        "the write ran"
    );

    let read = read_once_redis_answers(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, json!({ "n": 2 })),
        "the write ran in Redis; the node served its copy from before"
    );
}

/// A delete whose answer was lost ran in Redis: the session is gone, on
/// this node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_answer_was_lost_leaves_no_copy_of_the_session() {
    let (redis, proxy, node) = proxied_node().await;
    let admin = redis_conn(&redis.url()).await;
    let http = http();
    let created = create(&http, &node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;

    lose_next_answer_about(&proxy, &id);
    let deleted = delete(&http, &node, &id).await;
    assert!(
        proxy.marked_request_went_through(),
        "the delete reached Redis"
    );
    assert_ne!(deleted.status, 204, "its answer was lost: {}", deleted.text);
    assert_eq!(version_in_redis(&admin, &id).await, None, "the delete ran");

    let read = read_once_redis_answers(&http, &node, &id).await;
    assert_eq!(
        read.status, 404,
        "the delete ran in Redis; the node served its copy: {}",
        read.text
    );
}

/// A revocation whose answer from Redis was lost ran: the revoked session
/// is gone on the revoking node too (a revoked login must never be served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_answer_was_lost_leaves_no_copy_of_the_session() {
    let (redis, proxy, node) = proxied_node().await;
    let admin = redis_conn(&redis.url()).await;
    let http = http();
    let logged_in = login(&http, &node, "mallory", 600).await;
    assert_eq!(logged_in.status, 201, "{}", logged_in.text);
    let id = logged_in.session().id;
    // A read on the node that will revoke: it holds a copy.
    let read = get(&http, &node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);

    // The revocation reads the user's sessions (naming the id) before it
    // deletes them: the delete is the command that names the event kind.
    lose_next_answer_about(&proxy, "revoked");
    let path = format!("{}/v1/users/mallory/sessions", node.url());
    let revoked = send(http.delete(path)).await;
    assert!(
        proxy.marked_request_went_through(),
        "the revocation reached Redis"
    );
    assert_ne!(revoked.status, 200, "its answer was lost: {}", revoked.text);
    assert_eq!(
        version_in_redis(&admin, &id).await,
        None,
        "the revocation ran"
    );

    let read = read_once_redis_answers(&http, &node, &id).await;
    assert_eq!(
        read.status, 404,
        "the revocation ran in Redis; the node served the revoked session: {}",
        read.text
    );
}
