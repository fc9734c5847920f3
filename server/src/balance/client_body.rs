//! The client's request body as the balancer reads it: capped at
//! `--max-body-bytes`, bounded in time (`--body-timeout` without a byte,
//! `--min-body-rate` on average), and with every failure marked as the
//! client's, so that the proxy never counts it against an upstream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// Time and rate bounds of request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max_bytes: u64,
    /// Longest wait for the next piece of the body.
    pub timeout: Duration,
    /// Slowest average upload accepted after the first `timeout`, in bytes
    /// per second (0: no minimum).
    pub min_rate: u64,
}

/// Why a client's body could not be read: the client's fault, never the
/// upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// The body is over `--max-body-bytes`.
    #[error("the request body is over the limit")]
    TooLarge,
    /// The client stopped sending (or sent too slowly).
    #[error("the client sent the request body too slowly")]
    Timeout,
    /// The connection closed or the chunked framing was malformed.
    #[error("the request body was cut short or malformed")]
    Broken,
}

impl ClientBodyError {
    /// Finds a client body error in `err`'s source chain.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut source = Some(err);
        while let Some(cause) = source {
            if let Some(found) = cause.downcast_ref::<Self>() {
                return Some(*found);
            }
            source = cause.source();
        }
        None
    }
}

/// A client's request body under [`BodyLimits`].
pub struct Upload {
    inner: Incoming,
    limits: BodyLimits,
    read: u64,
    /// When the body was first asked for: the clock starts then, not while
    /// the request waits for an upstream (hyper invites a client that
    /// expects `100 Continue` to send its body only at the first read).
    started: Option<Instant>,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Upload {
    /// Wraps `inner`; the clock starts at the first read.
    pub fn new(inner: Incoming, limits: BodyLimits) -> Self {
        Self {
            inner,
            limits,
            read: 0,
            started: None,
            last: Instant::now(),
            timer: None,
        }
    }

    /// When the client must have sent more: `timeout` after the last piece,
    /// and for a minimum rate, the time by which `read + 1` bytes are due,
    /// for a body first asked for at `started`.
    fn deadline(&self, started: Instant) -> Instant {
        let gap = self.last + self.limits.timeout;
        if self.limits.min_rate == 0 {
            return gap;
        }
        let due = Duration::from_secs_f64((self.read + 1) as f64 / self.limits.min_rate as f64);
        gap.min(started + self.limits.timeout + due)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(|| {
            this.last = Instant::now();
            this.last
        });
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    this.last = Instant::now();
                    if this.read > this.limits.max_bytes {
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(ClientBodyError::Broken))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline(started);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
