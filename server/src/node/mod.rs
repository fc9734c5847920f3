//! A store node: builds the store and service from its configuration,
//! binds the listeners, runs the background tasks and shuts down cleanly.

mod sweeper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::prometheus::MetricsHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::AnyBackend;
use crate::backend::redis::{RedisConfig, ReplicationError};
use crate::descriptors::{self, Caps};
use crate::http::{self, AppParts, AppState, HttpLimits, NodeFacts, RESERVE_CONNECTIONS};
use crate::net::{NetError, bind};
use crate::readiness::Readiness;
use crate::secret::{ExpectedToken, Secret};
use crate::service::{ServiceConfig, SessionService};
use crate::store::{Clock, Store, StoreConfig};
use crate::tcp::{self, TcpContext, TcpLimits};

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener could not run.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The Redis settings are unusable.
    #[error(transparent)]
    Redis(ReplicationError),
    /// Write-behind writes that were acknowledged could not be confirmed in
    /// Redis before the shutdown's flush gave up (Redis unreachable, or
    /// refusing them, for its whole deadline).
    #[error(
        "{lost} acknowledged writes could not be confirmed in Redis before the shutdown's flush \
         gave up: they may be lost"
    )]
    WritesLost {
        /// How many.
        lost: u64,
    },
}

/// Everything a store node needs, checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// HTTP API address.
    pub http: SocketAddr,
    /// HTTP listener limits.
    pub http_limits: HttpLimits,
    /// Binary protocol address.
    pub tcp: SocketAddr,
    /// Binary protocol limits.
    pub tcp_limits: TcpLimits,
    /// Bearer token for /v1 and the binary handshake.
    pub auth_token: Option<Secret>,
    /// Store settings.
    pub store: StoreConfig,
    /// API policies.
    pub service: ServiceConfig,
    /// Longest wait at shutdown for open connections to finish their
    /// requests (then they are closed and the write-behind queue flushed).
    pub drain_timeout: Duration,
    /// Sweeper period.
    pub sweep_interval: Duration,
    /// Sweeper work bound per shard and pass.
    pub sweep_batch: usize,
    /// Redis replication, if any.
    pub redis: Option<RedisConfig>,
}

/// Lowers the connection caps of both listeners to what `limit`
/// descriptors allow, and says so.
fn fit_connection_caps(config: &mut NodeConfig, limit: Option<u64>) {
    let asked = Caps {
        http: config.http_limits.max_connections,
        tcp: config.tcp_limits.max_connections,
    };
    let fitted = asked.fit(limit, RESERVE_CONNECTIONS);
    if fitted != asked {
        tracing::warn!(
            ?limit,
            max_http_connections = fitted.http,
            max_connections = fitted.tcp,
            "the descriptor limit is too low for --max-http-connections and --max-connections; \
             serving fewer connections (raise the hard RLIMIT_NOFILE to serve more)"
        );
    }
    config.http_limits.max_connections = fitted.http;
    config.tcp_limits.max_connections = fitted.tcp;
}

/// Runs a store node whose sessions live by `clock` (the system's wall
/// clock outside tests) until `shutdown` fires, then drains in-flight
/// requests and stops the background tasks.
pub async fn run(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let mut config = config;
    fit_connection_caps(&mut config, descriptors::raise_limit());
    let store = Arc::new(Store::new(config.store.clone(), clock));
    let http_listener = bind("HTTP API", config.http).await?;
    let tcp_listener = bind("binary protocol", config.tcp).await?;
    let auth_token = config.auth_token.as_ref().map(ExpectedToken::new);

    let tasks = TaskTracker::new();
    let drained = CancellationToken::new();
    let (backend, readiness) = match config.redis.clone() {
        Some(redis) => {
            tracing::info!(target = ?redis.target, mode = ?redis.mode, consistency = ?redis.consistency, "replicating to Redis");
            let (backend, link, invalidations) = AnyBackend::redis(
                redis,
                store.clone(),
                config.store.max_lifetime_ms,
                &tasks,
                &shutdown,
                &drained,
            )
            .map_err(NodeError::Redis)?;
            (backend, Readiness::with_redis(link, invalidations))
        }
        None => (AnyBackend::memory(store.clone()), Readiness::default()),
    };
    let service = SessionService::new(backend, config.service.clone(), shutdown.clone());
    tasks.spawn(sweeper::run(
        store,
        config.sweep_interval,
        config.sweep_batch,
        shutdown.clone(),
    ));
    let tcp_done = tokio::spawn(tcp::serve(
        tcp_listener,
        Arc::new(TcpContext {
            service: service.clone(),
            auth_token,
            limits: config.tcp_limits.clone(),
        }),
        shutdown.clone(),
        config.drain_timeout,
    ));
    tasks.spawn({
        let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            readiness.start_draining();
            tracing::info!("shutting down: finishing in-flight requests");
        }
    });
    tasks.close();

    let queue = service.clone();
    let state = AppState::new(AppParts {
        service,
        auth_token,
        metrics,
        readiness,
        body_timeout: config.http_limits.body_timeout,
        facts: NodeFacts {
            when_full: config.store.when_full,
            replication: config.redis.as_ref().map(|redis| redis.mode),
        },
    });
    http::serve(
        http_listener,
        state,
        config.http_limits,
        shutdown.clone(),
        config.drain_timeout,
    )
    .await;
    shutdown.cancel();
    // The binary-protocol connections finish in-flight requests (or are
    // closed at the drain timeout) before the TCP task ends; then no write
    // can come and the replication queue is flushed.
    if let Err(err) = tcp_done.await {
        tracing::error!(%err, "the binary-protocol listener failed");
    }
    drained.cancel();
    tasks.wait().await;
    // What the write-behind queue could not flush may be lost: say so in
    // the exit status too, not only in the log.
    match queue.replication_queue_depth() {
        Some(lost) if lost > 0 => Err(NodeError::WritesLost { lost }),
        _ => Ok(()),
    }
}
