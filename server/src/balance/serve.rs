//! The client side: one single-threaded event loop per worker, each
//! accepting from the shared listener with its own upstream connection
//! pool (like nginx's worker processes). Per connection: the connection
//! cap, the PROXY header, the TLS handshake (all within
//! `--header-timeout`), then HTTP/1.1 or, when ALPN chose it, HTTP/2.
//! On shutdown: stop accepting, let keep-alive clients send one more
//! request (answered with `Connection: close`), then close idle
//! connections and wait (bounded) for the rest.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::AccessLog;
use super::answer::{Failure, FailureKind};
use super::client_slots::{ClientSlot, ClientSlots};
use super::fast;
use super::h2_idle::{self, Activity, Tracked};
use super::pool::Pool;
use super::proxy::{ClientConn, Proxy, ProxyLimits};
use super::proxy_protocol::{self, ProxyVersion};
use super::upstream_conns::{Connections, Owner};
use crate::net::{accept, wait_drained};

/// How long, once draining, a keep-alive connection may stay idle before
/// it is closed: a busy client sends its next request within it and gets
/// its answer with `Connection: close` instead of a closed socket.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// How often a worker closes its idle upstream connections past
/// `--idle-timeout`.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct Front {
    /// The upstreams.
    pub pool: Arc<Pool>,
    /// Proxy limits.
    pub limits: ProxyLimits,
    /// Time a client has for its PROXY header, TLS handshake and each
    /// request head (also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest a client may take to accept any of what is written to it.
    pub send_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled upstream connections close after this.
    pub idle_timeout: Duration,
    /// TLS, when terminating it.
    pub tls: Option<TlsAcceptor>,
    /// Read a PROXY header first on every client connection.
    pub accept_proxy_protocol: bool,
    /// Send a PROXY header first on every upstream connection.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// The cap on client connections open at once.
    pub client_slots: Arc<ClientSlots>,
    /// Longest wait for in-flight requests at shutdown.
    pub drain_timeout: Duration,
    /// Where each request is logged, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
}

/// Starts `workers` event loops on `listener`; they return at `shutdown`
/// once drained.
pub fn start_workers(
    listener: std::net::TcpListener,
    front: &Arc<Front>,
    workers: usize,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    listener.set_nonblocking(true)?;
    (0..workers.max(1))
        .map(|index| {
            let listener = listener.try_clone()?;
            let (front, shutdown) = (front.clone(), shutdown.clone());
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
                            Ok(listener) => serve(listener, front, shutdown).await,
                            Err(err) => {
                                tracing::error!(%err, "balancer worker cannot listen");
                                shutdown.cancel();
                            }
                        }
                    });
                })
        })
        .collect()
}

/// One worker: accepts client connections until `shutdown`, then drains.
async fn serve(listener: TcpListener, front: Arc<Front>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let connections = Connections {
        connect_timeout: front.connect_timeout,
        idle_timeout: front.idle_timeout,
    };
    tokio::spawn(connections.sweep(IDLE_SWEEP));
    let proxy = Arc::new(Proxy::new(
        front.pool.clone(),
        connections,
        front.limits.clone(),
        shutdown.clone(),
        tasks.clone(),
        front.access_log.clone(),
    ));
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(front.header_timeout)
        .keep_alive(true)
        // hyper's own (bare) 431 only past twice our limit: below it, the
        // proxy answers with a JSON body.
        .max_header_size(front.limits.head.max_total.saturating_mul(2).max(8192));
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(front.limits.head.max_total).unwrap_or(u32::MAX));
    let protocols = Arc::new(Protocols {
        h1,
        h2,
        idle: front.header_timeout,
        send_timeout: front.send_timeout,
    });
    let mut refusal = Vec::new();
    Failure::new(
        FailureKind::TooManyConnections,
        "the balancer is at its client connection limit (--max-client-conns)",
    )
    .closing()
    .write_http1(&mut refusal, false, false);
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let Some(slot) = front.client_slots.acquire() else {
            if front.tls.is_none() {
                let _ = stream.try_write(&refusal);
            }
            tracing::debug!(%peer, "client connection refused: --max-client-conns");
            continue;
        };
        tasks.spawn(connection(
            stream,
            peer,
            front.clone(),
            proxy.clone(),
            protocols.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    tracing::info!("balancer draining in-flight requests");
    wait_drained(&tasks, front.drain_timeout, "client connections").await;
}

/// The HTTP/1.1 and HTTP/2 server settings.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// An HTTP/2 connection idle this long is closed.
    idle: Duration,
    /// An HTTP/2 connection whose client takes no response data this long
    /// is dropped.
    send_timeout: Duration,
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it maps.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A client connection from accept to close.
async fn connection(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    front: Arc<Front>,
    proxy: Arc<Proxy>,
    protocols: Arc<Protocols>,
    shutdown: CancellationToken,
    slot: ClientSlot,
) {
    // On a dual-stack listener an IPv4 client shows as `::ffff:a.b.c.d`:
    // the app (`X-Forwarded-For`), the access log and a PROXY header get
    // the IPv4 address it is.
    peer = canonical(peer);
    let local = canonical(stream.local_addr().unwrap_or(peer));
    if front.accept_proxy_protocol {
        match tokio::time::timeout(
            front.header_timeout,
            proxy_protocol::read_header(&mut stream),
        )
        .await
        {
            Ok(Ok(Some(source))) => peer = canonical(source),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "client connection refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no PROXY header in time");
                return;
            }
        }
    }
    let owner = || match front.send_proxy_protocol {
        Some(version) => Owner::private(proxy_protocol::encode(version, Some((peer, local)))),
        None => Owner::shared(),
    };
    // A client that stops reading its answer is closed once a write has
    // waited `--send-timeout` (nginx's `send_timeout`), under TLS too: it
    // would otherwise hold its upstream's slot and connection for good.
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(front.send_timeout));
    let stream = Box::pin(stream);
    let conn = |https| {
        Arc::new(ClientConn {
            peer,
            https,
            owner: owner(),
            _slot: Some(slot),
        })
    };
    match &front.tls {
        None => serve_http1(stream, conn(false), proxy, &front, &protocols, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(front.header_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    serve_http(tls, true, conn(true), proxy, &protocols, shutdown).await;
                }
                Ok(Ok(tls)) => {
                    serve_http1(tls, conn(true), proxy, &front, &protocols, shutdown).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP/1.1 on `io`: on the fast path while its requests are the
/// common case, then (if the connection is still open) with hyper.
async fn serve_http1<I>(
    io: I,
    conn: Arc<ClientConn>,
    proxy: Arc<Proxy>,
    front: &Front,
    protocols: &Protocols,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outcome = fast::serve(io, &conn, &proxy, front.header_timeout, drained(&shutdown)).await;
    if let fast::Outcome::Handover(io) = outcome {
        serve_http(io, false, conn, proxy, protocols, shutdown).await;
    }
}

/// Serves HTTP on `io` until the client closes, or after a graceful close
/// once draining.
async fn serve_http<I>(
    io: I,
    h2: bool,
    conn: Arc<ClientConn>,
    proxy: Arc<Proxy>,
    protocols: &Protocols,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let result = if h2 {
        let activity = Arc::new(Activity::default());
        let service = service_fn({
            let activity = activity.clone();
            move |request| {
                let (proxy, conn, busy) = (proxy.clone(), conn.clone(), activity.start());
                async move {
                    let response = proxy.handle(&conn, request).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
                }
            }
        });
        let connection = protocols.h2.serve_connection(io, service);
        h2_idle::drive(
            connection,
            &activity,
            (protocols.idle, protocols.send_timeout),
            drained(&shutdown),
            |c| c.graceful_shutdown(),
        )
        .await
    } else {
        let service = service_fn(move |request| {
            let (proxy, conn) = (proxy.clone(), conn.clone());
            async move { proxy.handle(&conn, request).await }
        });
        let connection = protocols.h1.serve_connection(io, service).with_upgrades();
        until_drained(connection, &shutdown, |c| c.graceful_shutdown()).await
    };
    if let Err(err) = result {
        tracing::debug!(%err, "client connection ended with an error");
    }
}

/// Resolves [`DRAIN_IDLE_GRACE`] after `shutdown` fires.
async fn drained(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(DRAIN_IDLE_GRACE).await;
}

/// Drives `connection`; once `shutdown` has fired and [`DRAIN_IDLE_GRACE`]
/// passed, starts its graceful close and drives it to the end.
async fn until_drained<C, F>(
    connection: C,
    shutdown: &CancellationToken,
    graceful: F,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: FnOnce(Pin<&mut C>),
{
    tokio::pin!(connection);
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        () = drained(shutdown) => {}
    }
    graceful(connection.as_mut());
    connection.await
}
