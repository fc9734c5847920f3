//! Opens upstream connections for the HTTP client: TCP with a connect
//! timeout and `TCP_NODELAY`, then, with `--send-proxy-protocol`, the PROXY
//! header that names the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::replay::UpstreamBody;
use super::upstream::UpstreamUrl;

/// The HTTP/1.1 client every upstream request goes through.
pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// Connects to upstreams.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
    /// Written first on every new connection.
    preamble: Option<Arc<[u8]>>,
}

impl Connector {
    /// A connector with `timeout`, writing `preamble` (a PROXY header) first.
    pub fn new(timeout: Duration, preamble: Option<Vec<u8>>) -> Self {
        Self {
            timeout,
            preamble: preamble.map(Arc::from),
        }
    }

    /// An HTTP/1.1 client over this connector, its keep-alive pool closing
    /// connections idle for `idle_timeout`.
    pub fn client(self, idle_timeout: Duration) -> UpstreamClient {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .build(self)
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI has no host or port.
    #[error("the upstream URI has no host and port")]
    NoAddress,
    /// The connect timeout passed.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The OS refused (connection refused, unreachable, ...).
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (timeout, preamble) = (self.timeout, self.preamble.clone());
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoAddress)?;
            let port = uri.port_u16().ok_or(ConnectError::NoAddress)?;
            let stream = open(host, port, timeout, preamble.as_deref()).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Opens a TCP connection to `upstream` (see [`open`]).
pub async fn open_upstream(
    upstream: &UpstreamUrl,
    timeout: Duration,
    preamble: Option<&[u8]>,
) -> Result<TcpStream, ConnectError> {
    let port = upstream
        .authority
        .port_u16()
        .ok_or(ConnectError::NoAddress)?;
    open(upstream.authority.host(), port, timeout, preamble).await
}

/// Opens a TCP connection to `host:port` within `timeout`, with
/// `TCP_NODELAY`, and writes `preamble` (a PROXY header) first.
pub async fn open(
    host: &str,
    port: u16,
    timeout: Duration,
    preamble: Option<&[u8]>,
) -> Result<TcpStream, ConnectError> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    if let Some(preamble) = preamble {
        stream.write_all(preamble).await?;
    }
    Ok(stream)
}
