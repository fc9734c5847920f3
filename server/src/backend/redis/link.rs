//! The connection to Redis, one server or a cluster: connects in the
//! background (a node starts and serves while Redis is away), reconnects on
//! its own, and tracks whether Redis answers.

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

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one Redis command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the link checks that Redis answers.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://` or `rediss://` URL, credentials in the URL).
    Single(String),
    /// A Redis Cluster, given by some of its nodes' URLs.
    Cluster(Vec<String>),
}

/// A Redis connection of either kind; cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster (routes every key to its master).
    Cluster(ClusterConnection),
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
    cluster: Option<ClusterClient>,
    conn: RwLock<Option<RedisConn>>,
    up: AtomicBool,
    last_error: Mutex<String>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("target", &self.target)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
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
        let (cluster, conn) = match &target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(config_error)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(config_error)?;
                (None, Some(RedisConn::Single(manager)))
            }
            RedisTarget::Cluster(urls) => {
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()
                    .map_err(config_error)?;
                (Some(client), None)
            }
        };
        Ok(Arc::new(Self {
            target,
            cluster,
            conn: RwLock::new(conn),
            up: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".to_owned()),
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
    /// its error into ours.
    pub fn observe<T>(&self, result: RedisResult<T>) -> Result<T, ReplicationError> {
        match result {
            Ok(value) => {
                self.up.store(true, Ordering::Release);
                Ok(value)
            }
            Err(err) => {
                if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
                    self.mark_down(&err.to_string());
                }
                if (err.is_timeout() || err.is_connection_dropped()) && !err.is_connection_refusal()
                {
                    // The command may have run in Redis all the same.
                    return Err(ReplicationError::Uncertain(err.to_string()));
                }
                Err(ReplicationError::Unavailable(err.to_string()))
            }
        }
    }

    /// Marks Redis unreachable; logs when it was up or the reason changed
    /// (a wrong URL or certificate shows in the log at once, an outage
    /// once, not on every retry).
    fn mark_down(&self, why: &str) {
        let changed = {
            let mut last = self.last_error.lock();
            let changed = *last != why;
            *last = why.to_owned();
            changed
        };
        if self.up.swap(false, Ordering::AcqRel) || changed {
            tracing::warn!(error = why, "Redis is unreachable");
        }
    }

    /// URLs of servers to subscribe to for invalidations (any cluster node
    /// sees every publish).
    pub fn pubsub_urls(&self) -> Vec<String> {
        match &self.target {
            RedisTarget::Single(url) => vec![url.clone()],
            RedisTarget::Cluster(urls) => urls.clone(),
        }
    }

    /// Keeps the link connected and its health current until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.check().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }

    async fn check(&self) {
        if self.conn.read().is_none()
            && let Some(cluster) = &self.cluster
        {
            match cluster.get_async_connection().await {
                Ok(conn) => *self.conn.write() = Some(RedisConn::Cluster(conn)),
                Err(err) => return self.mark_down(&err.to_string()),
            }
        }
        let Ok(mut conn) = self.conn() else {
            return;
        };
        let ping = redis::cmd("PING");
        let pong = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(RESPONSE_TIMEOUT, pong).await {
            Ok(Ok(_)) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(target = ?self.target, "Redis is reachable");
                }
            }
            Ok(Err(err)) => self.mark_down(&err.to_string()),
            Err(_) => self.mark_down("PING timed out"),
        }
    }
}
