//! Idle and stalled HTTP/2 client connections: HTTP/1.1 ones are closed
//! by the header-read timeout and the send timeout on the socket, HTTP/2
//! ones by this watch instead. Every `--header-timeout`, a connection with
//! no request in flight (a response body still streaming counts) and none
//! started since the last look gets a GOAWAY; one still open and idle at
//! the next look (a client that never sent its preface) is dropped. A
//! connection with a response body whose data hyper has not asked to
//! follow for `--send-timeout` (the client grants no flow-control window:
//! the socket never blocks, so the socket's timeout never fires) is
//! dropped at the next look, which frees the upstreams its streams held.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

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
    next_stream: AtomicU64,
    /// The response bodies waiting for hyper to ask for more, by stream:
    /// since when.
    unasked: Mutex<HashMap<u64, Instant>>,
}

impl Activity {
    /// A request starts; it ends when the guard (kept by its response
    /// body) drops.
    pub fn start(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Release);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone(), stream)
    }

    /// Whether nothing is in flight and nothing started since the last call.
    fn idle_since_last_look(&self) -> bool {
        let started = self.started.swap(false, Ordering::AcqRel);
        !started && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// How long the body hyper has left unasked longest has waited.
    fn longest_unasked(&self) -> Option<Duration> {
        let oldest = self.unasked.lock().values().min().copied()?;
        Some(oldest.elapsed())
    }
}

/// One request in flight on an HTTP/2 connection, and its stream's number.
#[derive(Debug)]
pub struct Busy(Arc<Activity>, u64);

impl Busy {
    /// Its body has data out (or its head): hyper asks for more once the
    /// client's window has room.
    fn gave(&self) {
        self.0.unasked.lock().insert(self.1, Instant::now());
    }

    /// Hyper asks for more of its body.
    fn asked(&self) {
        self.0.unasked.lock().remove(&self.1);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.asked();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is sent, and
/// tells how long hyper leaves it unasked.
#[derive(Debug)]
pub struct Tracked {
    body: Logged<ClientBody>,
    busy: Busy,
}

impl Tracked {
    /// `body`, counted as `busy` until it is dropped (from now on, hyper
    /// sends its head and is to ask for the body).
    pub fn new(body: Logged<ClientBody>, busy: Busy) -> Self {
        busy.gave();
        Self { body, busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.busy.asked();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.busy.gave();
        }
        polled
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
/// it is still open and idle one `period` after that, or at a look that
/// finds a response body hyper has not asked to follow for `send_timeout`.
pub async fn drive<C, F>(
    connection: C,
    activity: &Activity,
    (period, send_timeout): (Duration, Duration),
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
                if activity.longest_unasked().is_some_and(|waited| waited >= send_timeout) {
                    tracing::info!(
                        ?send_timeout,
                        "HTTP/2 client took no response data for --send-timeout; connection dropped"
                    );
                    return Ok(());
                }
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
