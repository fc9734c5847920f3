//! A store node: builds the store and service from its configuration,
//! binds the listeners, runs the background tasks and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::descriptors::{self, Caps};
use crate::health::Readiness;
use crate::http::{self, AppState};
use crate::replication::{ReplicationError, Replicator};
use crate::service::SessionService;
use crate::store::{Store, SystemClock};
use crate::sweeper;
use crate::tcp::{self, TcpContext};

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listener could not bind its address.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Redis settings are unusable.
    #[error(transparent)]
    Redis(ReplicationError),
    /// Serving failed.
    #[error("{what} listener failed: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Listen backlog of every listener: connections the kernel completes
/// while the accept loop is busy (the kernel caps it at
/// `net.core.somaxconn`). Past it, a client's SYN is dropped and its connect
/// stalls for a one-second retransmission.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener (address reuse on, a [`LISTEN_BACKLOG`] backlog) and
/// logs the address it got.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener = listen().map_err(|source| NodeError::Bind { what, addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(%local, "{what} listening");
    Ok(listener)
}

/// The next connection of `listener`, or `None` once `shutdown` fires.
/// Accept errors (out of file descriptors and the like) are logged and
/// retried after a short pause: the listener keeps serving.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Lowers the connection caps of both listeners to what `limit`
/// descriptors allow, and says so.
fn fit_connection_caps(config: &mut NodeConfig, limit: Option<u64>) {
    let asked = Caps {
        http: config.http_limits.max_connections,
        tcp: config.tcp_limits.max_connections,
    };
    let fitted = asked.fit(limit);
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

/// Runs a store node until `shutdown` fires, then drains in-flight requests
/// and stops the background tasks.
pub async fn run(
    config: NodeConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let mut config = config;
    fit_connection_caps(&mut config, descriptors::raise_limit());
    let store = Arc::new(Store::new(config.store.clone(), Arc::new(SystemClock)));
    let http_listener = bind("HTTP API", config.http).await?;
    let tcp_listener = bind("binary protocol", config.tcp).await?;
    let auth_token: Option<Arc<str>> = config
        .auth_token
        .as_ref()
        .map(|token| Arc::from(token.expose()));

    let tasks = TaskTracker::new();
    let drained = CancellationToken::new();
    let (service, readiness) = match config.redis.clone() {
        Some(redis) => {
            tracing::info!(target = ?redis.target, mode = ?redis.mode, consistency = ?redis.consistency, "replicating to Redis");
            let replicator = Replicator::start(
                redis,
                store.clone(),
                config.store.max_lifetime_ms,
                &tasks,
                &shutdown,
                &drained,
            )
            .map_err(NodeError::Redis)?;
            let readiness = Readiness::with_redis(replicator.link().clone());
            let service =
                SessionService::replicated(store.clone(), replicator, config.service.clone());
            (service, readiness)
        }
        None => (
            SessionService::new(store.clone(), config.service.clone()),
            Readiness::default(),
        ),
    };
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
            auth_token: auth_token.clone(),
            limits: config.tcp_limits.clone(),
        }),
        shutdown.clone(),
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

    let state = AppState {
        service,
        auth_token,
        metrics,
        readiness,
        body_timeout: config.http_limits.body_timeout,
    };
    http::serve(http_listener, state, config.http_limits, shutdown.clone()).await;
    shutdown.cancel();
    // The binary-protocol connections finish in-flight requests before the
    // TCP task ends; then no write can come and the replication queue is
    // flushed.
    if let Err(err) = tcp_done.await {
        tracing::error!(%err, "the binary-protocol listener failed");
    }
    drained.cancel();
    tasks.wait().await;
    Ok(())
}
