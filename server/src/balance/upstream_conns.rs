//! Upstream HTTP/1.1 connections, pooled per worker thread: each worker is
//! a single-threaded event loop, so its idle connections sit in a
//! thread-local map that is never locked and never touched by another
//! thread. A connection goes back to the pool when its response body has
//! been read to the end; one that the upstream closed meanwhile is noticed
//! before use (or its unsent request comes back) and replaced.
//!
//! Connections that carry a PROXY header name one client and are pooled
//! under that client connection's own key, never shared.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connector::{self, ConnectError};
use super::idle::{Idle, Key};
use super::raw_conns;
use super::replay::UpstreamBody;
use super::upstream::UpstreamUrl;

/// The sending half of one upstream connection.
type Sender = http1::SendRequest<UpstreamBody>;

/// Stale connections tried before opening a new one.
const STALE_TRIES: usize = 4;
/// Longest wait for a pooled connection to take a request: one given back
/// as its answer ended is ready as soon as its task has seen the end; one
/// still sending its last request's upload is passed over.
const READY_WAIT: Duration = Duration::from_millis(20);

thread_local! {
    static IDLE: RefCell<Idle<Sender>> = RefCell::new(Idle::default());
}

/// Who a request goes out for: the shared pool, or one client connection's
/// own connections, each opened with `preamble` (a PROXY header).
#[derive(Debug)]
pub struct Owner {
    key: u64,
    preamble: Option<Arc<[u8]>>,
}

impl Owner {
    /// The key of its connections to the upstream `upstream_id`.
    pub fn key(&self, upstream_id: u64) -> Key {
        (self.key, upstream_id)
    }

    /// What every new connection starts with (a PROXY header), if anything.
    pub fn preamble(&self) -> Option<&[u8]> {
        self.preamble.as_deref()
    }

    /// The worker's shared pool.
    pub fn shared() -> Self {
        Self {
            key: 0,
            preamble: None,
        }
    }

    /// A client connection's own connections, each starting with
    /// `preamble`.
    pub fn private(preamble: Vec<u8>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            key: NEXT.fetch_add(1, Ordering::Relaxed),
            preamble: Some(Arc::from(preamble)),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.key != 0 {
            let _ = IDLE.try_with(|idle| idle.borrow_mut().forget(self.key));
            raw_conns::forget(self.key);
        }
    }
}

/// A connection lent to one request; back to the pool via [`Lent::give_back`].
#[derive(Debug)]
pub struct Lent {
    key: Key,
    sender: Sender,
}

impl Lent {
    /// Returns the connection to its worker's pool, if it can take another
    /// request.
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let _ = IDLE.try_with(|idle| idle.borrow_mut().put(self.key, self.sender));
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(ConnectError),
    /// The exchange failed after the request was handed to a connection
    /// (`reused`: a pooled one, not one opened for this request).
    Exchange {
        /// What failed.
        error: hyper::Error,
        /// Whether the connection had served requests before.
        reused: bool,
    },
}

impl SendError {
    /// Whether the failure may be the keep-alive race alone: a pooled
    /// connection the upstream closed (or reset) just as the request went
    /// out. Such a failure is not held against the upstream.
    pub fn is_keep_alive_race(&self) -> bool {
        let Self::Exchange {
            error,
            reused: true,
        } = self
        else {
            return false;
        };
        error.is_incomplete_message() || is_reset(error)
    }
}

/// Whether `error` is the connection reset or broken under hyper.
fn is_reset(error: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted))
}

/// Opens and reuses upstream connections.
#[derive(Debug, Clone, Copy)]
pub struct Connections {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

impl Connections {
    /// Sends `request` to `upstream` (its id and URL) for `owner` on an
    /// idle connection, or a new one when none is usable or `fresh` says
    /// not to take one; the response and the connection, to give back once
    /// the response body is read.
    pub async fn send(
        &self,
        owner: &Owner,
        (upstream_id, upstream): (u64, &UpstreamUrl),
        mut request: Request<UpstreamBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        let key = owner.key(upstream_id);
        let idle_tries = if fresh { 0 } else { STALE_TRIES };
        for _ in 0..idle_tries {
            let Some(mut sender) = self.take_idle(key) else {
                break;
            };
            // Not ready soon: closed, or still sending the upload of a
            // request whose answer came first (waiting would hold this
            // request for as long as another client takes to send it).
            // Dropped, it closes once that exchange is through.
            let ready = tokio::time::timeout(READY_WAIT, sender.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lent { key, sender })),
                Err(mut failed) => match failed.take_message() {
                    // Not sent: the connection was closed while idle.
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(SendError::Exchange {
                            error: failed.into_error(),
                            reused: true,
                        });
                    }
                },
            }
        }
        let mut sender = self
            .connect(upstream, owner.preamble())
            .await
            .map_err(SendError::Connect)?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, Lent { key, sender })),
            Err(error) => Err(SendError::Exchange {
                error,
                reused: false,
            }),
        }
    }

    fn take_idle(&self, key: Key) -> Option<Sender> {
        IDLE.with(|idle| {
            idle.borrow_mut()
                .take(key, self.idle_timeout, |sender| !sender.is_closed())
        })
    }

    async fn connect(
        &self,
        upstream: &UpstreamUrl,
        preamble: Option<&[u8]>,
    ) -> Result<Sender, ConnectError> {
        let stream = connector::open_upstream(upstream, self.connect_timeout, preamble).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ConnectError::Io(std::io::Error::other(err)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes this worker's idle connections older than the idle timeout,
    /// every `period`, forever.
    pub async fn sweep(self, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            IDLE.with(|idle| {
                idle.borrow_mut()
                    .sweep(self.idle_timeout, |sender| !sender.is_closed());
            });
            raw_conns::sweep(self.idle_timeout);
        }
    }
}
