//! `sessiond balance`: a thin round-robin HTTP reverse proxy in front of
//! stateless app servers. No stickiness of any kind: with sessions in
//! sessiond, any app server can serve any request.
//!
//! The request path: listener (hyper, HTTP/1.1 keep-alive, upgrades) ->
//! [`proxy::Proxy`] -> [`pool::Pool`] (round-robin over healthy upstreams) ->
//! pooled upstream connection. Health: [`health`] checks each upstream
//! actively; the proxy ejects an upstream on a connection failure.

mod admin;
mod health;
mod pool;
mod proxy;
mod rates;
mod replay;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use upstream::UpstreamUrl;

use crate::net::{NetError, accept, bind};
use health::HealthCheck;
use pool::Pool;
use proxy::{Proxy, ProxyLimits};
use upstream::Upstream;

/// Errors of bodies passed through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the balancer answers: the upstream's body streamed through, or a
/// small body of its own (its error answers).
pub type ClientBody = http_body_util::Either<hyper::body::Incoming, http_body_util::Full<Bytes>>;
pub use replay::UpstreamBody;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the balancer needs, checked.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the admin pages are served.
    pub admin: SocketAddr,
    /// The app servers.
    pub upstreams: Vec<UpstreamUrl>,
    /// Active health check path.
    pub health_path: String,
    /// Active health check period.
    pub health_interval: Duration,
    /// Time one health check may take.
    pub health_timeout: Duration,
    /// Good checks that bring an upstream back.
    pub rise: u32,
    /// Bad checks that take it out.
    pub fall: u32,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-header timeout.
    pub response_timeout: Duration,
    /// Idle keep-alive timeout, both sides.
    pub idle_timeout: Duration,
    /// Request body limit.
    pub max_body_bytes: u64,
    /// Event-loop threads serving clients.
    pub workers: usize,
}

/// Runs the balancer until `shutdown`, then stops accepting, lets in-flight
/// requests finish (bounded) and returns.
pub async fn run(
    config: BalanceConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), NetError> {
    let upstreams: Vec<Arc<Upstream>> = config
        .upstreams
        .iter()
        .cloned()
        .map(|url| Arc::new(Upstream::new(url)))
        .collect();
    let pool = Arc::new(Pool::new(upstreams));
    let limits = ProxyLimits {
        connect_timeout: config.connect_timeout,
        response_timeout: config.response_timeout,
        idle_timeout: config.idle_timeout,
        max_body_bytes: config.max_body_bytes,
    };
    let listener = bind("balancer", config.listen).await?;
    let admin_listener = bind("admin", config.admin).await?;
    tracing::info!(upstreams = ?config.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(), workers = config.workers, "balancing round-robin");

    let check = HealthCheck {
        path: config.health_path.clone(),
        interval: config.health_interval,
        timeout: config.health_timeout,
        rise: config.rise,
        fall: config.fall,
    };
    let health_client = proxy::upstream_client(&limits);
    let background = tokio_util::task::TaskTracker::new();
    for upstream in pool.upstreams() {
        background.spawn(health::run(
            upstream.clone(),
            health_client.clone(),
            check.clone(),
            shutdown.clone(),
        ));
    }
    let admin = admin::router(admin::AdminState {
        pool: pool.clone(),
        metrics,
    });
    background.spawn({
        let shutdown = shutdown.clone();
        async move {
            let served = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(%err, "admin listener failed");
            }
        }
    });
    background.close();

    let workers = start_workers(listener, &pool, &limits, &config, &shutdown)?;
    // Wait for the workers off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await;
    shutdown.cancel();
    background.wait().await;
    Ok(())
}

/// Starts `config.workers` event loops, each a single-threaded runtime on
/// its own thread accepting from the shared listener with its own upstream
/// connection pool (like nginx's worker processes): a request and its
/// upstream exchange stay on one thread, with no cross-thread wake-ups.
fn start_workers(
    listener: TcpListener,
    pool: &Arc<Pool>,
    limits: &ProxyLimits,
    config: &BalanceConfig,
    shutdown: &CancellationToken,
) -> Result<Vec<std::thread::JoinHandle<()>>, NetError> {
    let serve_error = |source| NetError::Serve {
        what: "balancer",
        source,
    };
    let listener = listener.into_std().map_err(serve_error)?;
    (0..config.workers.max(1))
        .map(|index| {
            let listener = listener.try_clone().map_err(serve_error)?;
            let (pool, limits, shutdown) = (pool.clone(), limits.clone(), shutdown.clone());
            let idle_timeout = config.idle_timeout;
            std::thread::Builder::new()
                .name(format!("balance-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            tracing::error!(%err, "cannot start a balancer worker");
                            shutdown.cancel();
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let proxy = Arc::new(Proxy::new(pool, limits));
                                serve(listener, proxy, idle_timeout, shutdown).await;
                            }
                            Err(err) => {
                                tracing::error!(%err, "balancer worker cannot listen");
                                shutdown.cancel();
                            }
                        }
                    });
                })
                .map_err(serve_error)
        })
        .collect()
}

/// Accepts client connections until `shutdown`, then drains them.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { proxy.handle(peer, request).await }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("balancer draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after {DRAIN_TIMEOUT:?}; exiting");
    }
}
