//! Idle HTTP/2 client connections: HTTP/1.1 ones are closed by the
//! header-read timeout, HTTP/2 ones by this watch instead. Every
//! `--header-timeout`, a connection with no request in flight (a response
//! body still streaming counts) and none started since the last look gets
//! a GOAWAY; one still open and idle at the next look (a client that never
//! sent its preface) is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::access_log::Logged;
use super::replay::BoxError;
use super::response::ClientBody;

/// What one HTTP/2 connection is doing.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    started: AtomicBool,
}

impl Activity {
    /// A request starts; it ends when the guard (kept by its response
    /// body) drops.
    pub fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Release);
        Busy(self.clone())
    }

    /// Whether nothing is in flight and nothing started since the last call.
    fn idle_since_last_look(&self) -> bool {
        let started = self.started.swap(false, Ordering::AcqRel);
        !started && self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// One request in flight on an HTTP/2 connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is sent.
#[derive(Debug)]
pub struct Tracked {
    body: Logged<ClientBody>,
    _busy: Busy,
}

impl Tracked {
    /// `body`, counted as `busy` until it is dropped.
    pub fn new(body: Logged<ClientBody>, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Drives an HTTP/2 `connection` to its end: `graceful` (a GOAWAY) once
/// `drained` resolves or once it has been idle for a `period`; dropped if
/// it is still open and idle one `period` after that.
pub async fn drive<C, F>(
    connection: C,
    activity: &Activity,
    period: Duration,
    drained: impl Future<Output = ()>,
    graceful: F,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Fn(Pin<&mut C>),
{
    tokio::pin!(connection);
    tokio::pin!(drained);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => return result,
            () = drained.as_mut(), if !closing => {
                closing = true;
                graceful(connection.as_mut());
            }
            _ = ticker.tick() => {
                if activity.idle_since_last_look() {
                    if closing {
                        tracing::debug!("idle HTTP/2 connection dropped");
                        return Ok(());
                    }
                    closing = true;
                    graceful(connection.as_mut());
                }
            }
        }
    }
}
