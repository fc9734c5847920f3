//! `sessiond balance`: a round-robin HTTP reverse proxy in front of
//! stateless app servers. No stickiness of any kind: with sessions in
//! sessiond, any app server can serve any request.
//!
//! The request path: [`serve`] (workers, connection cap, PROXY header, TLS,
//! HTTP/1.1 or HTTP/2) -> [`fast`] (the common body-less HTTP/1.1 request,
//! without hyper) or [`proxy::Proxy`] (everything,
//! with hyper: checks, uploads, upgrades, retries, answers) ->
//! [`pool::Pool`] (round-robin, slow start, per-upstream cap and queue) ->
//! pooled upstream connection. [`membership`] changes the upstream set at
//! run time (admin API, SIGHUP); [`health`] checks each upstream;
//! [`handover`] passes the listening sockets to a new balancer.

mod access_log;
mod admin;
mod admin_state;
mod answer;
mod capacity;
mod checks;
mod client_body;
mod client_slots;
mod connector;
mod cutoffs;
mod fast;
mod h2_idle;
mod handover;
mod health;
mod idle;
mod membership;
mod pool;
mod prefixed;
mod proxy;
mod proxy_protocol;
mod rates;
mod raw_conns;
mod replay;
mod response;
mod serve;
mod tls;
mod upstream;
mod upstream_conns;
mod upstreams_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::prometheus::MetricsHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use checks::HeadLimits;
pub use client_body::BodyLimits;
pub use membership::{SourcesError, UpstreamSources};
pub use proxy_protocol::ProxyVersion;
pub use replay::UpstreamBody;
pub use response::ClientBody;
pub use tls::TlsFiles;
pub use upstream::{UpstreamUrl, UpstreamUrlError};

use crate::net::{NetError, bind};
use crate::secret::{ExpectedToken, Secret};
use access_log::AccessLog;
use admin_state::ApiAuth;
use client_slots::ClientSlots;
use connector::Connector;
use health::HealthCheck;
use membership::Membership;
use pool::Pool;
use proxy::ProxyLimits;
use serve::Front;
use tls::Certificate;

/// The longest the access log's last write may take at shutdown.
const FINAL_LOG_FLUSH: Duration = Duration::from_secs(2);

/// Everything the balancer needs, checked.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the admin pages are served.
    pub admin: SocketAddr,
    /// The app servers at start.
    pub upstreams: Vec<UpstreamUrl>,
    /// Where they come from (read again on SIGHUP).
    pub sources: UpstreamSources,
    /// Bearer token of the upstreams API.
    pub admin_token: Option<Secret>,
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
    /// Upstream response-header timeout, and longest gap in a response
    /// body.
    pub response_timeout: Duration,
    /// Idle pooled upstream connections close after this.
    pub idle_timeout: Duration,
    /// Time for a client's PROXY header, TLS handshake and each request
    /// head (and the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest a client may take to accept any of its answer.
    pub send_timeout: Duration,
    /// Request body limits.
    pub body: BodyLimits,
    /// Request head limits.
    pub head: HeadLimits,
    /// Client connections served at once.
    pub max_client_conns: usize,
    /// Requests in flight per upstream (none: unlimited).
    pub max_conns: Option<u64>,
    /// Requests that may wait for a slot.
    pub queue: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Ramp of a new or recovered upstream's share.
    pub slow_start: Duration,
    /// Longest wait for in-flight requests of a draining upstream or of
    /// the balancer at shutdown.
    pub drain_timeout: Duration,
    /// Read a PROXY header from every client connection.
    pub accept_proxy_protocol: bool,
    /// Send a PROXY header on every upstream connection.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// Terminate TLS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Unix socket for restarts without dropping connections.
    pub handover_socket: Option<PathBuf>,
    /// Where each request is logged (`-`: standard output).
    pub access_log: Option<PathBuf>,
    /// Event-loop threads serving clients.
    pub workers: usize,
}

/// Why the balancer could not run.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    /// A listener could not bind, or serving failed.
    #[error(transparent)]
    Listen(#[from] NetError),
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// rustls refused the TLS settings.
    #[error("TLS settings: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// The handover socket failed.
    #[error("handover socket {path}: {source}")]
    Handover {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The access log cannot be opened.
    #[error("access log {path}: {source}")]
    AccessLog {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// SIGHUP cannot be caught.
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    /// Starting the workers failed.
    #[error("cannot start the balancer workers: {0}")]
    Workers(std::io::Error),
}

/// The listening sockets: taken over from a running balancer, or bound.
async fn listeners(
    config: &BalanceConfig,
) -> Result<(std::net::TcpListener, TcpListener, Option<handover::Taken>), BalanceError> {
    let handover_error = |source| BalanceError::Handover {
        path: config.handover_socket.clone().unwrap_or_default(),
        source,
    };
    if let Some(path) = &config.handover_socket
        && let Some((sockets, taken)) = handover::take(path).map_err(handover_error)?
    {
        for (what, socket) in [("balancer", &sockets.listen), ("admin", &sockets.admin)] {
            let local = socket.local_addr().map_err(handover_error)?;
            tracing::info!(%local, "{what} listening");
        }
        tracing::info!("took the listening sockets over from the running balancer");
        sockets
            .admin
            .set_nonblocking(true)
            .map_err(handover_error)?;
        let admin = TcpListener::from_std(sockets.admin).map_err(handover_error)?;
        return Ok((sockets.listen, admin, Some(taken)));
    }
    let listener = bind("balancer", config.listen).await?;
    let admin = bind("admin", config.admin).await?;
    let listener = listener.into_std().map_err(BalanceError::Workers)?;
    Ok((listener, admin, None))
}

/// What the balancer reads before it serves.
struct Files {
    certificate: Option<Arc<Certificate>>,
    /// The TLS settings made of the certificate.
    tls: Option<tokio_rustls::TlsAcceptor>,
    access_log: Option<Arc<AccessLog>>,
}

fn open_files(config: &BalanceConfig) -> Result<Files, BalanceError> {
    let certificate = config.tls.clone().map(Certificate::load).transpose()?;
    let tls = certificate
        .as_ref()
        .map(Certificate::acceptor)
        .transpose()?;
    let access_log = config
        .access_log
        .as_deref()
        .map(|path| {
            AccessLog::open(path).map_err(|source| BalanceError::AccessLog {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()?
        .map(Arc::new);
    Ok(Files {
        certificate,
        tls,
        access_log,
    })
}

/// Reads what the balancer reads before it serves (the certificate and
/// key, the access log, which it creates if missing): `--check-config`'s
/// check beyond the flags.
pub fn check_files(config: &BalanceConfig) -> Result<(), BalanceError> {
    open_files(config).map(drop)
}

/// Runs the balancer until `shutdown` (or until a new balancer takes its
/// sockets over), then stops accepting, lets in-flight requests finish
/// (bounded) and returns.
pub async fn run(
    config: BalanceConfig,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
) -> Result<(), BalanceError> {
    // Before the listeners: once they are up, SIGHUP reloads, never kills.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(BalanceError::Signal)?;
    let Files {
        certificate,
        tls,
        access_log,
    } = open_files(&config)?;
    let (listener, admin_listener, taken) = listeners(&config).await?;
    let admin_loopback = admin_listener
        .local_addr()
        .map_or(config.admin.ip().is_loopback(), |addr| {
            addr.ip().is_loopback()
        });
    let pool = Arc::new(Pool::new(
        &config.upstreams,
        config.slow_start,
        config.max_conns,
    ));
    tracing::info!(upstreams = ?config.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(), workers = config.workers, tls = tls.is_some(), "balancing round-robin");

    let background = tokio_util::task::TaskTracker::new();
    let health_preamble = config
        .send_proxy_protocol
        .map(|version| proxy_protocol::encode(version, None));
    let membership = Membership::new(
        pool.clone(),
        Connector::new(config.connect_timeout, health_preamble).client(config.idle_timeout),
        HealthCheck {
            path: config.health_path.clone(),
            interval: config.health_interval,
            timeout: config.health_timeout,
            rise: config.rise,
            fall: config.fall,
        },
        config.drain_timeout,
        background.clone(),
        shutdown.clone(),
    );
    for upstream in pool.upstreams().iter() {
        membership.watch(upstream);
    }
    let admin = admin::router(admin_state::AdminState {
        membership: membership.clone(),
        metrics,
        auth: Arc::new(ApiAuth {
            token: config.admin_token.as_ref().map(ExpectedToken::new),
            loopback: admin_loopback,
        }),
    });
    let admin_std = match &config.handover_socket {
        Some(_) => Some(clone_listener(&admin_listener).map_err(BalanceError::Workers)?),
        None => None,
    };
    background.spawn({
        let (shutdown, drain_timeout) = (shutdown.clone(), config.drain_timeout);
        async move {
            let serving = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            // A graceful shutdown waits for every admin connection, and
            // one that never finishes its request would hold the process.
            let cut_off = async {
                shutdown.cancelled().await;
                tokio::time::sleep(drain_timeout).await;
            };
            tokio::select! {
                served = serving => {
                    if let Err(err) = served {
                        tracing::error!(%err, "admin listener failed");
                    }
                }
                () = cut_off => tracing::warn!(
                    "admin connections still open after the drain timeout ({drain_timeout:?}); closing them"
                ),
            }
        }
    });
    background.spawn(reload_on_hangup(
        hangups,
        membership,
        config.sources.clone(),
        certificate,
        access_log.clone(),
        shutdown.clone(),
    ));
    // The access log is written until the workers are done (through the
    // drain), then once more.
    let logging = CancellationToken::new();
    if let Some(log) = access_log.clone() {
        background.spawn(log.write_until(logging.clone()));
    }

    let front = Arc::new(Front {
        pool,
        limits: ProxyLimits {
            response_timeout: config.response_timeout,
            body: config.body,
            head: config.head,
            queue: config.queue,
            queue_timeout: config.queue_timeout,
        },
        header_timeout: config.header_timeout,
        send_timeout: config.send_timeout,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        tls,
        accept_proxy_protocol: config.accept_proxy_protocol,
        send_proxy_protocol: config.send_proxy_protocol,
        client_slots: ClientSlots::new(config.max_client_conns),
        drain_timeout: config.drain_timeout,
        access_log: access_log.clone(),
    });
    // A copy of the listening socket only for a handover: kept through a
    // drain, it would let the kernel take new connections into a backlog
    // nobody accepts (they would hang, then be reset at exit).
    let handover = match (&config.handover_socket, admin_std) {
        (Some(path), Some(admin)) => {
            let listen = listener.try_clone().map_err(BalanceError::Workers)?;
            Some((path, handover::Sockets { listen, admin }))
        }
        _ => None,
    };
    let workers = serve::start_workers(listener, &front, config.workers, &shutdown)
        .map_err(BalanceError::Workers)?;
    if let Some(taken) = taken {
        taken.ready();
    }
    if let Some((path, sockets)) = handover {
        handover::offer(path.clone(), sockets, shutdown.clone()).map_err(|source| {
            BalanceError::Handover {
                path: path.clone(),
                source,
            }
        })?;
    }
    background.close();
    // Wait for the workers off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await;
    shutdown.cancel();
    logging.cancel();
    background.wait().await;
    if let Some(log) = access_log {
        // Bounded: a sink nobody reads (a stalled pipe) never takes it.
        let flushed = tokio::task::spawn_blocking(move || log.flush());
        if tokio::time::timeout(FINAL_LOG_FLUSH, flushed)
            .await
            .is_err()
        {
            tracing::warn!(
                "the access log's last lines could not be written within {FINAL_LOG_FLUSH:?}; \
                 its sink is not read"
            );
        }
    }
    Ok(())
}

/// A second handle on a tokio listener's socket.
fn clone_listener(listener: &TcpListener) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsFd;
    Ok(std::net::TcpListener::from(
        listener.as_fd().try_clone_to_owned()?,
    ))
}

/// On SIGHUP: reads the upstreams again (the flags plus the file as it is
/// now) and the TLS certificate and key, and reopens the access log. A
/// broken file or certificate is logged and changes nothing.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    membership: Membership,
    sources: UpstreamSources,
    certificate: Option<Arc<Certificate>>,
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        match sources.read() {
            Ok(urls) if urls.is_empty() => {
                tracing::error!(
                    "SIGHUP: the reloaded upstream list is empty; keeping the current one"
                );
            }
            Ok(urls) => {
                let (added, drained) = membership.sync(&urls);
                tracing::info!(
                    added,
                    drained,
                    upstreams = urls.len(),
                    "SIGHUP: upstreams reloaded"
                );
            }
            Err(err) => tracing::error!(%err, "SIGHUP: cannot reload the upstreams; keeping them"),
        }
        if let Some(certificate) = &certificate {
            match certificate.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(err) => tracing::error!(%err, "SIGHUP: keeping the old TLS certificate"),
            }
        }
        if let Some(log) = access_log.clone() {
            match tokio::task::spawn_blocking(move || log.reopen()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: access log reopened"),
                Ok(Err(err)) => {
                    tracing::error!(%err, "SIGHUP: cannot reopen the access log; writing to the old file")
                }
                Err(err) => tracing::error!(%err, "SIGHUP: the access log reopen failed"),
            }
        }
    }
}
