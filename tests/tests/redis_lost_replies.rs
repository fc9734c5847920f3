//! End-to-end tests of a sync-mode node whose change ran in Redis but whose
//! answer from Redis was lost (the connection reset after the command went
//! through). The node cannot know whether the change happened, so it must
//! not go on serving the copy it held from before: the next read goes to
//! Redis and answers what Redis holds.
//!
//! The node reaches Redis through a proxy that cuts the connection carrying
//! the next command that names the session, at the answer after it.

use std::future::Future;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde_json::json;
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::proxy::SilencingProxy;
use sessiond_e2e::redis_support::*;
use sessiond_e2e::{RedisServer, Sessiond};

/// A Redis, a proxy to it, and a sync-mode node that reaches Redis only
/// through the proxy.
struct ProxiedNode {
    _redis: RedisServer,
    proxy: SilencingProxy,
    node: Sessiond,
    admin: MultiplexedConnection,
    http: reqwest::Client,
}

impl ProxiedNode {
    /// The node has written and deleted a session, so Redis knows its
    /// scripts: a script's first run is sent twice (by hash, then whole),
    /// and the lost answer is to be the one to the change.
    async fn start() -> Self {
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
        let admin = redis_conn(&redis.url()).await;
        Self {
            _redis: redis,
            proxy,
            node,
            admin,
            http,
        }
    }

    /// Runs `change` with the answer to the next command holding `marker`
    /// (a session id, say) lost, and checks that the command ran: Redis
    /// then holds version `held` of session `id` (`None`: no session),
    /// and the change was not answered `done`.
    async fn change_with_lost_answer(
        &self,
        marker: &str,
        change: impl Future<Output = Reply>,
        done: u16,
        (id, held): (&str, Option<u64>),
    ) {
        self.proxy
            .lose_answer_to_next_request_holding(marker.as_bytes());
        let answer = change.await;
        let went = self.proxy.marked_request_went_through();
        assert!(went, "the change reached Redis");
        assert_ne!(answer.status, done, "its answer was lost: {}", answer.text);
        let in_redis = version_in_redis(&self.admin, id).await;
        assert_eq!(in_redis, held, "the change ran");
    }
}

/// A write whose answer was lost ran in Redis: a read then answers the
/// written version, not the copy the node held before the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_leaves_no_stale_copy_behind() {
    let stack = ProxiedNode::start().await;
    let (http, node) = (&stack.http, &stack.node);
    let created = create(http, node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;

    let data = json!({ "n": 2 });
    let write = put(http, node, &id, &data, Some(1));
    stack
        .change_with_lost_answer(&id, write, 200, (&id, Some(2)))
        .await;
    let read = get_once_reachable(http, node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (read.session().version, read.session().data),
        (2, data),
        "the write ran in Redis; the node served its copy from before"
    );
}

/// A delete whose answer was lost ran in Redis: the session is gone, on
/// this node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_answer_was_lost_leaves_no_copy_of_the_session() {
    let stack = ProxiedNode::start().await;
    let (http, node) = (&stack.http, &stack.node);
    let created = create(http, node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;

    let deletion = delete(http, node, &id);
    stack
        .change_with_lost_answer(&id, deletion, 204, (&id, None))
        .await;
    let read = get_once_reachable(http, node, &id).await;
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
    let stack = ProxiedNode::start().await;
    let (http, node) = (&stack.http, &stack.node);
    let logged_in = login(http, node, "mallory", 600).await;
    assert_eq!(logged_in.status, 201, "{}", logged_in.text);
    let id = logged_in.session().id;
    // A read on the node that will revoke: it holds a copy.
    let read = get(http, node, &id).await;
    assert_eq!(read.status, 200, "{}", read.text);

    // The revocation reads the user's sessions (naming the id) before it
    // deletes them: the delete is the command that names the event kind.
    let path = format!("{}/v1/users/mallory/sessions", node.url());
    let revocation = send(http.delete(path));
    stack
        .change_with_lost_answer("revoked", revocation, 200, (&id, None))
        .await;
    let read = get_once_reachable(http, node, &id).await;
    assert_eq!(
        read.status, 404,
        "the revocation ran in Redis; the node served the revoked session: {}",
        read.text
    );
}

/// The Rust client treats a revocation whose node could not tell how far
/// it got (its Redis answer was lost: `indeterminate`) as it would a
/// refusal: it asks again, and what it cannot finish ends as a retryable
/// error (a revocation is safe to repeat), never as `Indeterminate`, which
/// tells an app not to repeat the call: "sign out everywhere" must not
/// stop halfway with a session still live. The app here repeats a
/// retryable error, as the client's docs say it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_repeats_a_revocation_whose_answer_was_lost() {
    let stack = ProxiedNode::start().await;
    let (http, node) = (&stack.http, &stack.node);
    for _ in 0..2 {
        let logged_in = login(http, node, "mallory", 600).await;
        assert_eq!(logged_in.status, 201, "{}", logged_in.text);
    }
    let client = client_of(&[node], std::time::Duration::from_secs(5)).await;

    let proxy = &stack.proxy;
    proxy.lose_answer_to_next_request_holding(b"revoked");
    let revoke = || bounded("revoke", client.revoke_user_sessions("mallory", None));
    let mut revoked = revoke().await;
    let went = proxy.marked_request_went_through();
    assert!(went, "a delete's answer was lost");
    for _ in 0..50 {
        match &revoked {
            Err(err) if err.is_retryable() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                revoked = revoke().await;
            }
            _ => break,
        }
    }
    let revoked = revoked.expect("the revocation, repeated while retryable");
    assert!(revoked >= 1, "the repeat revoked what was left: {revoked}");
    assert_eq!(listed(http, node, "mallory").await, Vec::<String>::new());
}

/// A node whose Redis the test can stall, and a session on it at version 2
/// (the node has written and deleted, so Redis knows those scripts and a
/// change is one command).
struct StallableNode {
    _redis: RedisServer,
    node: Sessiond,
    admin: MultiplexedConnection,
    http: reqwest::Client,
    id: String,
}

impl StallableNode {
    async fn start() -> Self {
        let redis = RedisServer::start_with_debug();
        let http = http();
        let node = node_on(&http, &redis.url(), &[]).await;
        let admin = redis_conn(&redis.url()).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let created = create(&http, &node, &json!({ "n": 1 }), None).await;
            assert_eq!(created.status, 201, "{}", created.text);
            ids.push(created.session().id);
        }
        assert_eq!(delete(&http, &node, &ids[1]).await.status, 204);
        let id = ids.swap_remove(0);
        let warm = put(&http, &node, &id, &json!({ "n": 1 }), Some(1)).await;
        assert_eq!(warm.session().version, 2, "{}", warm.text);
        Self {
            _redis: redis,
            node,
            admin,
            http,
            id,
        }
    }

    /// Sends the request `change` makes while Redis sleeps 0.5 s and hangs
    /// up after 0.2 s, until a try whose client hung up ran in Redis (`ran`,
    /// given the session's version there before and after): on a loaded
    /// machine the node may not have sent its command before the hang-up,
    /// or Redis may start its sleep late.
    async fn hang_up_until_it_ran(
        &self,
        change: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
        ran: impl Fn(Option<u64>, Option<u64>) -> bool,
    ) {
        let impatient = sessiond_e2e::http_client(Duration::from_millis(200));
        let url = format!("{}/v1/sessions/{}", self.node.url(), self.id);
        for _ in 0..5 {
            let before = version_in_redis(&self.admin, &self.id).await;
            let sleep = sleep_redis(&self.admin, 0.5);
            let hung_up = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                change(&impatient, url.clone()).send().await
            };
            let ((), hung_up) = tokio::join!(sleep, hung_up);
            let after = version_in_redis(&self.admin, &self.id).await;
            if hung_up.is_err_and(|err| err.is_timeout()) && ran(before, after) {
                return;
            }
        }
        panic!("no try of five hung up after its change reached Redis");
    }
}

/// A client that hangs up while its write waits for Redis does not stop
/// the write (Redis has the command), and the node must then not go on
/// serving the copy it held from before: the next read answers the
/// written version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_hung_up_leaves_no_stale_copy_behind() {
    let stack = StallableNode::start().await;
    stack
        .hang_up_until_it_ran(
            |http, url| http.put(url).json(&json!({ "data": { "n": 2 } })),
            |before, after| after > before,
        )
        .await;
    let id = &stack.id;
    let in_redis = version_in_redis(&stack.admin, id).await;
    let read = get(&stack.http, &stack.node, id).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(
        (Some(read.session().version), read.session().data),
        (in_redis, json!({ "n": 2 })),
        "the write ran in Redis; the node served its copy from before"
    );
    let metrics = scrape(&stack.node.url()).await;
    let labels = [
        ("route", "/v1/sessions/{id}"),
        ("method", "PUT"),
        ("status", "499"),
    ];
    let hung_up = metrics.value("sessiond_http_requests_total", &labels);
    assert!(
        hung_up.is_some_and(|count| count >= 1.0),
        "the request whose client hung up is counted as 499: {hung_up:?}"
    );
}

/// A delete (a logout) whose client hung up ran in Redis: the node must
/// not go on serving the deleted session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_client_hung_up_leaves_no_copy_of_the_session() {
    let stack = StallableNode::start().await;
    stack
        .hang_up_until_it_ran(|http, url| http.delete(url), |_, after| after.is_none())
        .await;
    let id = &stack.id;
    let read = get(&stack.http, &stack.node, id).await;
    assert_eq!(
        read.status, 404,
        "the delete ran in Redis; the node served its copy: {}",
        read.text
    );
}
