//! The connection to Redis, one server or a cluster: connects in the
//! background (a node starts and serves while Redis is away), reconnects on
//! its own, and tracks whether Redis answers. A cluster connection that
//! stops answering while a fresh one answers is replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use cluster::{ClusterConn, Masters, on_any_node};
use refusals::Refusals;
use stalls::Stalls;

mod cluster;
mod refusals;
mod stalls;

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one Redis command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node keeps sending Redis what it owes it at shutdown while
/// Redis fails, before giving up: queued writes while no round of them
/// gets through, slid expiries in all.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How often the link checks that Redis answers.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a health check's PING may take.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long making a new cluster connection (connecting to the seeds,
/// reading the slot map, connecting to the masters) may take.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the slot map used to fail fast is read from the cluster.
const SLOT_MAP_INTERVAL: Duration = Duration::from_secs(1);

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://` or `rediss://` URL, credentials in the URL).
    Single(String),
    /// A Redis Cluster, given by some of its nodes' URLs.
    Cluster {
        /// Some nodes' URLs.
        urls: Vec<String>,
        /// Commands in flight on the connection at most (more wait).
        max_in_flight: usize,
    },
}

/// Shows the URLs without their passwords (it goes to the log).
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&redacted(url)).finish(),
            Self::Cluster {
                urls,
                max_in_flight,
            } => f
                .debug_struct("Cluster")
                .field(
                    "urls",
                    &urls.iter().map(|url| redacted(url)).collect::<Vec<_>>(),
                )
                .field("max_in_flight", max_in_flight)
                .finish(),
        }
    }
}

/// `url` with its password, if it has one, shown as `***` (for the log):
/// the URL's own, or a Unix socket URL's `pass` query parameter
/// (`redis+unix:///run/redis.sock?pass=...`).
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(a URL that does not parse)".to_owned();
    };
    if parsed.password().is_some() {
        // A URL with a password has a host, so it takes another one.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "pass") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "pass" { "***".into() } else { value };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// A Redis connection of either kind; cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster (routes every key to its master).
    Cluster(ClusterConn),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The node's link to Redis.
pub struct RedisLink {
    target: RedisTarget,
    cluster: Option<ClusterSetup>,
    /// One server only: how to make a new connection to it.
    single: Option<redis::Client>,
    conn: RwLock<Option<RedisConn>>,
    up: AtomicBool,
    last_error: Mutex<String>,
    /// Cluster only: slot map and failing masters.
    masters: Arc<Masters>,
    /// Whether this node's runtime stalled lately: a timeout across a
    /// stall is no verdict on Redis.
    stalls: Stalls,
    /// Commands Redis refused: counted, and logged once a kind.
    refusals: Refusals,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("target", &self.target)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// How a cluster link makes its connections.
struct ClusterSetup {
    client: ClusterClient,
    max_in_flight: usize,
}

fn config_error(err: redis::RedisError) -> ReplicationError {
    ReplicationError::Config(err.to_string())
}

impl RedisLink {
    /// Checks the target's URLs; connects later, in the background.
    pub fn new(target: RedisTarget) -> Result<Arc<Self>, ReplicationError> {
        // `rediss://` URLs need a TLS crypto provider; installing it twice
        // (another link of the same process) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (cluster, single, conn) = match &target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(config_error)?;
                let manager = single_connection(&client).map_err(config_error)?;
                (None, Some(client), Some(RedisConn::Single(manager)))
            }
            RedisTarget::Cluster {
                urls,
                max_in_flight,
            } => {
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()
                    .map_err(config_error)?;
                let setup = ClusterSetup {
                    client,
                    max_in_flight: *max_in_flight,
                };
                (Some(setup), None, None)
            }
        };
        Ok(Arc::new(Self {
            target,
            cluster,
            single,
            conn: RwLock::new(conn),
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".to_owned()),
            masters: Arc::default(),
            stalls: Stalls::default(),
            refusals: Refusals::default(),
        }))
    }

    /// Whether Redis answered the last command or health check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// `Ok` when Redis answers, otherwise why not.
    pub fn status(&self) -> Result<(), String> {
        if self.is_up() {
            Ok(())
        } else {
            Err(format!("Redis is unreachable: {}", self.last_error.lock()))
        }
    }

    /// A connection, or an error when none could be made yet.
    pub fn conn(&self) -> Result<RedisConn, ReplicationError> {
        self.conn
            .read()
            .clone()
            .ok_or_else(|| ReplicationError::Unavailable(self.last_error.lock().clone()))
    }

    /// Notes what a command's result says about Redis's health, and turns
    /// its error into ours. With a cluster, one command's failure says
    /// something about one master only: the health check decides whether
    /// the cluster is reachable.
    pub fn observe<T>(&self, result: RedisResult<T>) -> Result<T, ReplicationError> {
        match result {
            Ok(value) => {
                if self.cluster.is_none() {
                    self.up.store(true, Ordering::Release);
                }
                Ok(value)
            }
            Err(err) => {
                // A command that timed out across a stall of this node's
                // own runtime (frozen, starved of CPU) may have its answer
                // unread in the socket: no verdict on Redis.
                let stalled =
                    err.is_timeout() && self.stalls.within(RESPONSE_TIMEOUT + HEALTH_INTERVAL);
                if (err.is_io_error() || err.is_timeout() || err.is_connection_dropped())
                    && !stalled
                {
                    if self.cluster.is_none() {
                        self.mark_down(&err.to_string());
                    } else if self.note_error(&err.to_string()) {
                        tracing::warn!(error = %err, "a Redis Cluster command failed");
                    }
                }
                if (err.is_timeout() || err.is_connection_dropped()) && !err.is_connection_refusal()
                {
                    // The command may have run in Redis all the same (not
                    // when no connection could be made).
                    return Err(ReplicationError::Uncertain(err.to_string()));
                }
                self.refusals.note(&err);
                if err.code() == Some("OOM") {
                    return Err(ReplicationError::OutOfMemory(err.to_string()));
                }
                Err(ReplicationError::Unavailable(err.to_string()))
            }
        }
    }

    /// Records `why` as the last error; `true` when it differs from the
    /// one before.
    fn note_error(&self, why: &str) -> bool {
        let mut last = self.last_error.lock();
        let changed = *last != why;
        if changed {
            *last = why.to_owned();
        }
        changed
    }

    /// Marks Redis unreachable; logs when it was up or the reason changed
    /// (a wrong URL or certificate shows in the log at once, an outage
    /// once, not on every retry).
    fn mark_down(&self, why: &str) {
        let changed = self.note_error(why);
        if self.up.swap(false, Ordering::AcqRel) || changed {
            tracing::warn!(error = why, "Redis is unreachable");
        }
    }

    /// Marks Redis reachable; logs when it was not.
    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(target = ?self.target, "Redis is reachable");
        }
    }

    /// Runs a keyless command (`what`, for its timeout error) on the
    /// server, or on any one reachable node of the cluster, bounded in
    /// time like a health check's PING.
    pub async fn on_any_server(&self, what: &str, cmd: Cmd) -> RedisResult<Value> {
        let conn = self.conn().map_err(|err| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, err.to_string())
        })?;
        match conn {
            RedisConn::Single(mut conn) => {
                within(PING_TIMEOUT, what, cmd.query_async::<Value>(&mut conn)).await
            }
            RedisConn::Cluster(conn) => {
                within(PING_TIMEOUT, what, on_any_node(&conn.inner, cmd)).await
            }
        }
    }

    /// Whether new data should go under `key`: `false` when it lives on a
    /// cluster master that failed lately.
    pub fn serves(&self, key: &str) -> bool {
        self.cluster.is_none()
            || !self
                .masters
                .failed_lately(cluster::key_slot(key.as_bytes()))
    }

    /// URLs of servers to subscribe to for invalidations (any cluster node
    /// sees every publish).
    pub fn pubsub_urls(&self) -> Vec<String> {
        match &self.target {
            RedisTarget::Single(url) => vec![url.clone()],
            RedisTarget::Cluster { urls, .. } => urls.clone(),
        }
    }

    /// Keeps the link connected and its health current until `shutdown`.
    /// Also takes the runtime's pulse, for [`Stalls`].
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let checks = async {
            let mut slot_map_read: Option<std::time::Instant> = None;
            loop {
                match &self.cluster {
                    Some(setup) => self.check_cluster(setup, &mut slot_map_read).await,
                    None => self.check_single().await,
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                }
            }
        };
        tokio::join!(checks, self.stalls.run(shutdown.clone()));
    }

    /// Whether a health check's PING that timed out may have done so for
    /// a stall of this node's runtime alone: the next check decides.
    fn ping_stalled(&self) -> bool {
        self.stalls.within(PING_TIMEOUT + HEALTH_INTERVAL)
    }

    /// PINGs Redis. A connection that stops answering without failing
    /// (half-open: its server or the path to it gone silent) is never
    /// made again by the connection manager, so when a PING times out a
    /// new connection decides: if it answers, it replaces the wedged one.
    async fn check_single(&self) {
        let Ok(conn) = self.conn() else {
            return;
        };
        let why = match ping_single(conn).await {
            Ok(()) => return self.mark_up(),
            Err(err) if !err.is_timeout() => return self.mark_down(&err.to_string()),
            Err(_) if self.ping_stalled() => return,
            Err(err) => err.to_string(),
        };
        let Some(client) = &self.single else {
            return;
        };
        let fresh = match single_connection(client) {
            Ok(fresh) => fresh,
            Err(err) => return self.mark_down(&err.to_string()),
        };
        match ping_single(RedisConn::Single(fresh.clone())).await {
            Ok(()) => {
                *self.conn.write() = Some(RedisConn::Single(fresh));
                tracing::warn!(
                    error = why,
                    "replaced a Redis connection that stopped answering (a new connection answers)"
                );
                self.mark_up();
            }
            Err(_) => self.mark_down(&why),
        }
    }

    /// The cluster is up while some node answers a PING through the
    /// connection. When none does, a fresh connection decides: if it
    /// answers, the old one was wedged (the `redis` crate's cluster client
    /// can get stuck for good in a slot refresh) and is replaced; if not,
    /// the cluster is unreachable.
    async fn check_cluster(
        &self,
        setup: &ClusterSetup,
        slot_map_read: &mut Option<std::time::Instant>,
    ) {
        let current = match self.conn.read().clone() {
            Some(RedisConn::Cluster(conn)) => Some(conn.inner),
            _ => None,
        };
        let failure = match &current {
            Some(conn) => match ping(conn).await {
                Ok(()) => {
                    self.mark_up();
                    if slot_map_read.is_none_or(|at| at.elapsed() >= SLOT_MAP_INTERVAL) {
                        self.read_slot_map(conn).await;
                        *slot_map_read = Some(std::time::Instant::now());
                    }
                    return;
                }
                Err(_) if self.ping_stalled() => return,
                Err(why) => Some(why),
            },
            None => None,
        };
        match fresh_cluster_connection(&setup.client).await {
            Ok(fresh) => {
                self.read_slot_map(&fresh).await;
                *slot_map_read = Some(std::time::Instant::now());
                self.masters.reset();
                *self.conn.write() = Some(RedisConn::Cluster(ClusterConn::new(
                    fresh,
                    self.masters.clone(),
                    setup.max_in_flight,
                )));
                if let Some(why) = failure {
                    tracing::warn!(
                        error = why,
                        "replaced a Redis Cluster connection that stopped answering \
                         (a new connection answers)"
                    );
                }
                self.mark_up();
            }
            Err(err) => self.mark_down(&failure.unwrap_or(err)),
        }
    }

    /// Reads the slot map (which master serves which slot) through `conn`.
    async fn read_slot_map(&self, conn: &ClusterConnection) {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        if let Ok(Ok(reply)) = tokio::time::timeout(PING_TIMEOUT, on_any_node(conn, cmd)).await {
            self.masters.update(&reply);
            let failing = self.masters.failing();
            if !failing.is_empty() {
                tracing::debug!(?failing, "Redis Cluster masters failing");
            }
        }
    }
}

/// A connection manager to one server (it connects on first use and
/// again after the connection fails).
fn single_connection(client: &redis::Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// `step`'s result, or a timeout error naming `what` once `limit` has
/// passed (for the steps the `redis` crate sets no timeout on).
pub async fn within<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(limit, step).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no answer within {limit:?}"),
        )
    })?
}

/// PINGs one server through `conn`, allowed as long as any command (a
/// timeout error after that).
async fn ping_single(mut conn: RedisConn) -> RedisResult<()> {
    let ping = redis::cmd("PING");
    within(
        RESPONSE_TIMEOUT,
        "PING",
        ping.query_async::<String>(&mut conn),
    )
    .await
    .map(drop)
}

/// PINGs one node of the cluster through `conn`, bounded in time.
async fn ping(conn: &ClusterConnection) -> Result<(), String> {
    let ping = on_any_node(conn, redis::cmd("PING"));
    within(PING_TIMEOUT, "PING through the cluster connection", ping)
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// A new cluster connection that has answered a PING, bounded in time.
async fn fresh_cluster_connection(client: &ClusterClient) -> Result<ClusterConnection, String> {
    let connect = async {
        let conn = client
            .get_async_connection()
            .await
            .map_err(|err| err.to_string())?;
        ping(&conn).await.map(|()| conn)
    };
    tokio::time::timeout(CLUSTER_CONNECT_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "connecting to the cluster took over {CLUSTER_CONNECT_TIMEOUT:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redacted("redis://node:pa55@10.0.0.5:6379/2"),
            "redis://node:***@10.0.0.5:6379/2"
        );
        assert_eq!(redacted("rediss://:pa55@cache"), "rediss://:***@cache");
        assert_eq!(redacted("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
        assert!(!redacted("redis://node:pa55@[::1:6379").contains("pa55"));
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=2&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=2&pass=***"
        );
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=2"),
            "redis+unix:///run/redis.sock?db=2"
        );
        let cluster = RedisTarget::Cluster {
            urls: vec!["redis://a:pa55@h1:7000".into(), "redis://h2:7000".into()],
            max_in_flight: 24,
        };
        let shown = format!("{cluster:?}");
        assert!(!shown.contains("pa55"), "{shown}");
        assert!(shown.contains("h2:7000"), "{shown}");
    }
}
