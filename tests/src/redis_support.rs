//! What the Redis replication tests share: bounded steps, an HTTP client
//! with typed answers, waiting for `/readyz`, a direct Redis connection and
//! nodes started against a Redis server.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::{RedisServer, Sessiond, build, builder_for};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{Value, json};
use sessiond_client::Client;

pub use crate::time::rfc3339_ms;

/// Bound of any single step (an HTTP exchange, a Redis command, a call).
pub const STEP: Duration = Duration::from_secs(20);

/// Runs `future`, panicking with `what` if it takes longer than [`STEP`].
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {STEP:?}"),
    }
}

/// An HTTP client that ignores proxies and gives up after [`STEP`].
pub fn http() -> reqwest::Client {
    crate::http_client(STEP)
}

/// A session as the HTTP API returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HttpSession {
    /// Its id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// Its data.
    pub data: Value,
    /// RFC 3339, milliseconds, UTC.
    pub created_at: String,
    /// RFC 3339, milliseconds, UTC.
    pub updated_at: String,
    /// RFC 3339, milliseconds, UTC.
    pub expires_at: String,
    /// Idle TTL in seconds.
    pub ttl_secs: u64,
}

/// An HTTP answer read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub text: String,
    /// Its `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The body as a session, panicking (with the answer) if it is not one.
    pub fn session(&self) -> HttpSession {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not a session ({err}): {} {}", self.status, self.text))
    }

    /// `error.code` of an error body ("" if there is none).
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `error.message` of an error body ("" if there is none).
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends `request` (bounded) and reads the whole answer; a transport error
/// becomes status 0 with the error as text.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let exchange = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let text = response.text().await?;
        Ok::<_, reqwest::Error>(Reply {
            status,
            text,
            retry_after,
        })
    };
    match bounded("HTTP exchange", exchange).await {
        Ok(reply) => reply,
        Err(err) => Reply {
            status: 0,
            text: err.to_string(),
            retry_after: None,
        },
    }
}

/// `POST /v1/sessions` with `data` and an optional TTL.
pub async fn create(
    http: &reqwest::Client,
    node: &Sessiond,
    data: &Value,
    ttl: Option<u64>,
) -> Reply {
    let mut body = serde_json::json!({ "data": data });
    if let Some(ttl) = ttl {
        body["ttl_secs"] = ttl.into();
    }
    send(http.post(format!("{}/v1/sessions", node.url())).json(&body)).await
}

/// `POST /v1/sessions` for `user` (a login) with a TTL.
pub async fn login(http: &reqwest::Client, node: &Sessiond, user: &str, ttl_secs: u64) -> Reply {
    send(
        http.post(format!("{}/v1/sessions", node.url()))
            .json(&serde_json::json!({"data": {"who": user}, "ttl_secs": ttl_secs, "user": user})),
    )
    .await
}

/// `GET /v1/sessions/{id}`.
pub async fn get(http: &reqwest::Client, node: &Sessiond, id: &str) -> Reply {
    send(http.get(format!("{}/v1/sessions/{id}", node.url()))).await
}

/// The ids `GET /v1/users/{user}/sessions` lists on `node`, in order.
pub async fn listed(http: &reqwest::Client, node: &Sessiond, user: &str) -> Vec<String> {
    let path = format!("{}/v1/users/{}/sessions", node.url(), encode_user(user));
    let reply = send(http.get(path)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["user"], serde_json::json!(user));
    body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|session| session["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Percent-encodes a user name for a URL path.
pub fn encode_user(user: &str) -> String {
    user.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `DELETE /v1/sessions/{id}`.
pub async fn delete(http: &reqwest::Client, node: &Sessiond, id: &str) -> Reply {
    send(http.delete(format!("{}/v1/sessions/{id}", node.url()))).await
}

/// `PUT /v1/sessions/{id}` with `data`, conditional on `if_match`.
pub async fn put(
    http: &reqwest::Client,
    node: &Sessiond,
    id: &str,
    data: &Value,
    if_match: Option<u64>,
) -> Reply {
    let mut request = http
        .put(format!("{}/v1/sessions/{id}", node.url()))
        .json(&serde_json::json!({ "data": data }));
    if let Some(version) = if_match {
        request = request.header("if-match", format!("\"{version}\""));
    }
    send(request).await
}

/// `GET <node><path>` (health endpoints, metrics).
pub async fn get_path(http: &reqwest::Client, node: &Sessiond, path: &str) -> Reply {
    send(http.get(format!("{}{path}", node.url()))).await
}

/// Polls `GET <path>` every 50 ms until it answers `status`, at most
/// `within`; returns the last answer and panics if it never did.
pub async fn wait_for_status(
    http: &reqwest::Client,
    node: &Sessiond,
    path: &str,
    status: u16,
    within: Duration,
) -> Reply {
    let what = format!("answer {status}");
    wait_for_answer(http, node, path, &what, within, |reply| {
        reply.status == status
    })
    .await
}

/// Polls `GET <path>` every 50 ms until `done` accepts the answer, at
/// most `within`; returns that answer, and panics (saying that `path` did
/// not `what`, with the last answer) if none came.
pub async fn wait_for_answer(
    http: &reqwest::Client,
    node: &Sessiond,
    path: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let reply = get_path(http, node, path).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not {what} within {within:?}; last answer: {} {}",
            reply.status,
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/sessions/{id}`, polled while it answers 503 (a node still
/// reconnecting to Redis, or holding a Redis Cluster master for down a
/// moment), at most 10 s; returns the first other answer.
pub async fn get_once_reachable(http: &reqwest::Client, node: &Sessiond, id: &str) -> Reply {
    let path = format!("/v1/sessions/{id}");
    wait_for_answer(
        http,
        node,
        &path,
        "answer other than 503",
        Duration::from_secs(10),
        |reply| reply.status != 503,
    )
    .await
}

/// Waits (bounded) until the node's Redis link is up (`/readyz` 200).
pub async fn wait_ready(http: &reqwest::Client, node: &Sessiond) {
    wait_for_status(http, node, "/readyz", 200, Duration::from_secs(15)).await;
}

/// Waits (bounded) until the node has logged a line containing `text`.
pub async fn wait_for_log(node: &Sessiond, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !node.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the node did not log {text:?} within {within:?}; its log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node replicating to `redis_url` (`--redis`), with more flags, once
/// its Redis link is up and it has subscribed to invalidations.
pub async fn node_on(http: &reqwest::Client, redis_url: &str, extra: &[&str]) -> Sessiond {
    let mut args = vec!["--redis", redis_url];
    args.extend_from_slice(extra);
    ready_node(http, &args).await
}

/// `sessiond serve` with `args` (which name a Redis), once its Redis link
/// is up and it has subscribed to invalidations.
pub async fn ready_node(http: &reqwest::Client, args: &[&str]) -> Sessiond {
    let node = Sessiond::start(args);
    wait_ready(http, &node).await;
    wait_for_log(
        &node,
        "subscribed to invalidations",
        Duration::from_secs(15),
    )
    .await;
    node
}

/// A client of `nodes` with the given per-call timeout.
pub async fn client_of(nodes: &[&Sessiond], timeout: Duration) -> Client {
    build(builder_for(nodes).timeout(timeout).connect_timeout(timeout)).await
}

/// Makes the Redis behind `admin` (started with the DEBUG command on)
/// sleep `seconds`, answering nothing meanwhile; done when it woke (the
/// command's own answer may be lost to the connection's timeout: no
/// matter).
pub fn sleep_redis(
    admin: &MultiplexedConnection,
    seconds: f64,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut admin = admin.clone();
    async move {
        let _ = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .exec_async(&mut admin)
            .await;
    }
}

/// A plain (non-cluster) connection to the Redis server at `url`.
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("bad Redis URL");
    bounded(
        "connect to Redis",
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("cannot connect to Redis")
}

/// The session keys under `prefix` on the Redis server at `url`: without
/// the claims of tagged creates and rotations (`<prefix>op:`) and the
/// nodes' heartbeats (`<prefix>node:`).
pub async fn session_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_conn(url).await;
    let keys: Vec<String> =
        redis_query(&mut conn, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
    let (claims, heartbeats) = (format!("{prefix}op:"), format!("{prefix}node:"));
    keys.into_iter()
        .filter(|key| !key.starts_with(&claims) && !key.starts_with(&heartbeats))
        .collect()
}

/// Sets `rules` on the ACL user `node` of the Redis server `admin` talks
/// to (the user is made on first use).
pub async fn set_node_user(admin: &mut MultiplexedConnection, rules: &[&str]) {
    let mut command = redis::cmd("ACL");
    command.arg("SETUSER").arg("node").arg(rules);
    redis_query::<()>(admin, &mut command).await;
}

/// `url` (a `redis://` URL) logging in as the ACL user `node`.
pub fn as_node_user(url: &str, password: &str) -> String {
    url.replace("redis://", &format!("redis://node:{password}@"))
}

/// The version Redis holds of session `id` (under the default prefix).
pub async fn version_in_redis(admin: &MultiplexedConnection, id: &str) -> Option<u64> {
    let mut admin = admin.clone();
    let mut command = redis::cmd("HGET");
    command.arg(format!("sessiond:{id}")).arg("v");
    redis_query(&mut admin, &mut command).await
}

/// Waits (at most 5 s) until Redis holds version `version` of session `id`.
pub async fn wait_for_version_in_redis(admin: &MultiplexedConnection, id: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = version_in_redis(admin, id).await;
        if held == Some(version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis holds version {held:?} of {id}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one Redis command (bounded), panicking on an error.
pub async fn redis_query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    command: &mut redis::Cmd,
) -> T {
    bounded("Redis command", command.query_async::<T>(conn))
        .await
        .unwrap_or_else(|err| panic!("Redis command failed: {err}"))
}

/// Serializes the tests of one test binary that load the machine heavily or
/// measure something load distorts (stale reads, failover errors): hold the
/// guard for the whole test.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::LazyLock<tokio::sync::Mutex<()>> =
        std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));
    tokio::time::timeout(Duration::from_secs(180), LOCK.lock())
        .await
        .expect("the other heavy tests did not finish within 180 s")
}

/// What a test expects of a session it wrote: version and data.
pub type Expected = HashMap<String, (u64, Value)>;

/// Creates `count` sessions through `node` over HTTP and rewrites every
/// third one a few times (conditionally); returns what each must hold.
pub async fn write_sessions(http: &reqwest::Client, node: &Sessiond, count: u64) -> Expected {
    let mut expected = Expected::new();
    for n in 0..count {
        let data =
            json!({ "n": n, "user": format!("user-{n}"), "tags": vec!["x"; (n % 4) as usize] });
        let reply = create(http, node, &data, Some(600 + n)).await;
        assert_eq!(reply.status, 201, "create {n}: {}", reply.text);
        let session = reply.session();
        assert_eq!(session.version, 1);
        let mut version = 1;
        let mut data = data;
        if n % 3 == 0 {
            for rewrite in 1..=(n % 4 + 1) {
                data = json!({ "n": n, "rewrite": rewrite });
                let reply = put(http, node, &session.id, &data, Some(version)).await;
                assert_eq!(reply.status, 200, "rewrite {n}/{rewrite}: {}", reply.text);
                version += 1;
                assert_eq!(reply.session().version, version);
            }
        }
        expected.insert(session.id, (version, data));
    }
    expected
}

/// Sends SIGTERM to `node` and, `after` that, starts `redis` again (it was
/// killed); returns the node's exit code (`None`: SIGKILLed after 15 s)
/// and its log once it has exited.
pub async fn terminate_then_bring_redis_back(
    mut node: Sessiond,
    redis: &mut RedisServer,
    after: Duration,
) -> (Option<i32>, String) {
    let terminated = tokio::task::spawn_blocking(move || {
        let code = node.terminate();
        (code, node.log())
    });
    tokio::time::sleep(after).await;
    tokio::task::block_in_place(|| redis.restart());
    tokio::time::timeout(Duration::from_secs(30), terminated)
        .await
        .expect("terminate() did not return")
        .expect("the terminating thread panicked")
}

/// Asserts that a new node on `redis_url` reads every session of
/// `expected` as it was written (`log`: the writing node's, for the
/// message).
pub async fn assert_all_in_redis(
    http: &reqwest::Client,
    redis_url: &str,
    expected: &Expected,
    log: &str,
) {
    let fresh = node_on(http, redis_url, &[]).await;
    for (id, (version, data)) in expected {
        let reply = get(http, &fresh, id).await;
        assert_eq!(reply.status, 200, "{id} lost; node log:\n{log}");
        let session = reply.session();
        assert_eq!((session.version, &session.data), (*version, data), "{id}");
    }
}
