//! End-to-end tests of a node on a Redis Cluster whose client re-sends a
//! command after its connection dropped (the cluster client retries): a
//! change that ran before the drop runs into itself on the re-send, and
//! must be answered as done, never as a conflict or undone.
//!
//! Each master announces a proxy's port to the cluster, so the node reaches
//! every master through a proxy that can cut the connection carrying the
//! next command that holds a marker, at the answer after it.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use sessiond_e2e::proxy::SilencingProxy;
use sessiond_e2e::redis::raw_command;
use sessiond_e2e::redis_support::*;
use sessiond_e2e::{RedisCluster, Sessiond};

/// A cluster whose masters announce the ports of proxies to them, the
/// proxies, and a node on the cluster through them.
struct ProxiedCluster {
    cluster: RedisCluster,
    proxies: Vec<SilencingProxy>,
    node: Sessiond,
}

impl ProxiedCluster {
    async fn start() -> Self {
        let cluster = tokio::task::block_in_place(RedisCluster::start);
        let mut proxies = Vec::new();
        for master in &cluster.nodes {
            let proxy = SilencingProxy::start(master.port).await;
            let set = format!("CONFIG SET cluster-announce-port {}", proxy.port());
            let reply = raw_command(master.port, &set).expect("CONFIG SET");
            assert!(reply.starts_with("+OK"), "{set}: {reply}");
            proxies.push(proxy);
        }
        let ports: Vec<String> = proxies.iter().map(|p| p.port().to_string()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|master| {
            raw_command(master.port, "CLUSTER SLOTS")
                .is_ok_and(|slots| ports.iter().all(|port| slots.contains(port.as_str())))
        }) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the masters announce the proxies' ports"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        let node = ready_node(&http(), &["--redis-cluster", &urls.join(",")]).await;
        Self {
            cluster,
            proxies,
            node,
        }
    }

    /// Arms every proxy to cut the connection carrying the next command
    /// holding `marker` (only the master that gets it sees it) at the
    /// answer after it.
    async fn lose_next_answer_about(&self, marker: &str) {
        for proxy in &self.proxies {
            proxy.lose_answer_to_next_request_holding(marker.as_bytes());
        }
    }

    /// Whether some proxy saw the marked command go through.
    fn marked_request_went_through(&self) -> bool {
        self.proxies
            .iter()
            .any(SilencingProxy::marked_request_went_through)
    }

    /// Sends `request` until the marked command went through, at most 50
    /// times: right after a cut the node may take a master for down a
    /// moment and refuse a change (503) before sending it.
    async fn until_marked_went_through<F: Future<Output = Reply>>(
        &self,
        mut request: impl FnMut() -> F,
    ) -> Reply {
        for _ in 0..50 {
            let reply = request().await;
            if self.marked_request_went_through() {
                return reply;
            }
            assert_eq!(reply.status, 503, "refused before it went: {}", reply.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the marked command never went through");
    }

    /// The version of session `id` its master holds.
    async fn version_in_redis(&self, id: &str) -> Option<u64> {
        let mut versions = Vec::new();
        for master in &self.cluster.nodes {
            let admin = redis_conn(&master.url()).await;
            let mut command = redis::cmd("HGET");
            command.arg(format!("sessiond:{id}")).arg("v");
            let mut admin = admin.clone();
            let reply: redis::RedisResult<Option<u64>> = command.query_async(&mut admin).await;
            versions.push(reply.ok().flatten());
        }
        versions.into_iter().flatten().next()
    }
}

/// How many times each test loses an answer: the cluster client re-sends
/// a command whose connection dropped only when it has a connection again
/// in time (else the node answers `indeterminate`), so a test tries a few.
const ROUNDS: u64 = 4;

/// The answer of a change whose Redis answer was lost: the change's own
/// (`true`, the cluster client re-sent it), or `false` when the client
/// gave up: `indeterminate`, or `unavailable` when its last re-send found
/// no connection (the node knows only the client's last error); never a
/// conflict, a loss or a refusal of what ran.
fn resent(reply: &Reply, done: u16, what: &str) -> bool {
    let redis_down = reply.error_message().starts_with("Redis is unreachable");
    let gave_up = match (reply.status, reply.error_code().as_str()) {
        (409, "indeterminate") => true,
        (503, "unavailable") => redis_down,
        _ => false,
    };
    if gave_up {
        return false;
    }
    assert_eq!(reply.status, done, "{what}: {}", reply.text);
    true
}

/// A conditional write re-sent after its answer was lost finds the version
/// it made itself: it is answered as written, not as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_conditional_write_is_answered_as_written() {
    let stack = ProxiedCluster::start().await;
    let (http, node) = (http(), &stack.node);
    let created = create(&http, node, &json!({ "n": 1 }), None).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.session().id;
    // Its master knows the write script: the lost answer is the write's.
    let written = put(&http, node, &id, &json!({ "n": 2 }), Some(1)).await;
    assert_eq!(written.status, 200, "{}", written.text);

    let mut resends = 0;
    for version in 2..2 + ROUNDS {
        stack.lose_next_answer_about(&id).await;
        let data = json!({ "n": version + 1 });
        let written = stack
            .until_marked_went_through(|| put(&http, node, &id, &data, Some(version)))
            .await;
        let what = format!("the write to version {}, which ran", version + 1);
        assert_eq!(
            stack.version_in_redis(&id).await,
            Some(version + 1),
            "{what}"
        );
        if resent(&written, 200, &what) {
            resends += 1;
            assert_eq!(written.session().version, version + 1);
        }
        let read = get_once_reachable(&http, node, &id).await;
        assert_eq!(
            (read.session().version, read.session().data),
            (version + 1, data)
        );
    }
    eprintln!("{resends} of {ROUNDS} writes were re-sent by the cluster client");
}

/// Sessions on every master, each rotated once: every master knows the
/// create, copy and delete scripts.
async fn warm_up(http: &reqwest::Client, node: &Sessiond) {
    for n in 0..30 {
        let created = create(http, node, &json!({ "warm": n }), None).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.session().id;
        let rotated = send(http.post(format!("{}/v1/sessions/{id}/rotate", node.url()))).await;
        assert_eq!(rotated.status, 201, "{}", rotated.text);
    }
}

/// A rotation whose delete of the old id is re-sent after its answer was
/// lost finds the old id gone by its own hand: the session lives on under
/// the new id, it is not taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_delete_is_resent_keeps_the_session() {
    let stack = ProxiedCluster::start().await;
    let (http, node) = (http(), &stack.node);
    warm_up(&http, node).await;

    let mut resends = 0;
    for round in 0..ROUNDS {
        let created = create(&http, node, &json!({ "round": round }), None).await;
        assert_eq!(created.status, 201, "{}", created.text);
        let id = created.session().id;
        // The rotation's delete of the old id names the event kind.
        stack.lose_next_answer_about("rotated").await;
        let path = format!("{}/v1/sessions/{id}/rotate", node.url());
        let rotated = stack
            .until_marked_went_through(|| send(http.post(&path)))
            .await;
        assert_eq!(stack.version_in_redis(&id).await, None, "the delete ran");
        if resent(&rotated, 201, "a rotation whose delete ran") {
            resends += 1;
            let new_id = rotated.session().id;
            let read = get_once_reachable(&http, node, &new_id).await;
            assert_eq!(read.status, 200, "the rotated session: {}", read.text);
            assert_eq!(read.session().data, json!({ "round": round }));
        }
        let old = get_once_reachable(&http, node, &id).await;
        assert_eq!(old.status, 404, "the old id: {}", old.text);
    }
    eprintln!("{resends} of {ROUNDS} deletes were re-sent by the cluster client");
}

/// A create re-sent after its answer was lost finds the session it made
/// itself: it is answered as created, not as an id taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_create_is_answered_as_created() {
    let stack = ProxiedCluster::start().await;
    let (http, node) = (http(), &stack.node);
    warm_up(&http, node).await;

    let mut resends = 0;
    for round in 0..ROUNDS {
        let marker = format!("the-marked-create-{round}");
        stack.lose_next_answer_about(&marker).await;
        let data = json!({ "who": marker });
        let created = stack
            .until_marked_went_through(|| create(&http, node, &data, None))
            .await;
        if resent(&created, 201, "a create that ran") {
            resends += 1;
            let id = created.session().id;
            assert_eq!(stack.version_in_redis(&id).await, Some(1));
            let read = get_once_reachable(&http, node, &id).await;
            assert_eq!(read.status, 200, "{}", read.text);
            assert_eq!(read.session().data, json!({ "who": marker }));
        }
    }
    eprintln!("{resends} of {ROUNDS} creates were re-sent by the cluster client");
}
