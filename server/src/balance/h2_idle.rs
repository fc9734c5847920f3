//! Idle and stalled HTTP/2 client connections: HTTP/1.1 ones are closed
//! by the header-read timeout and the send timeout on the socket, HTTP/2
//! ones by this watch instead. Every `--header-timeout`, a connection with
//! no request in flight (a response body still streaming counts) and none
//! started since the last look gets a GOAWAY; one still open and idle at
//! the next look (a client that never sent its preface) is dropped. A
//! response body whose data hyper has not asked to follow for
//! `--send-timeout` (the client takes none of it: its flow-control window
//! stays shut, and the socket, which never blocks, never times out) is
//! ended at the next look: dropped, which frees its upstream's slot and
//! connection, and its stream reset when hyper asks for it again; the
//! connection's other streams go on. Bodies are handed to hyper
//! [`CHUNK_BYTES`] at a time, so hyper asks again as soon as the client
//! has taken that much: a client that reads slowly but steadily is not
//! taken for one that reads nothing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
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
    /// since when, and the body.
    unasked: Mutex<HashMap<u64, (Instant, Weak<SharedBody>)>>,
}

/// A response body its stream and the stall watch share (`None` once the
/// watch ended it).
type SharedBody = Mutex<Option<Logged<ClientBody>>>;

/// Most of a body handed to hyper at once (see the module's doc).
const CHUNK_BYTES: usize = 16 * 1024;

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

    /// Ends the response bodies hyper has left unasked for `send_timeout`
    /// (see the module's doc); how many.
    fn end_stalled(&self, send_timeout: Duration) -> usize {
        let mut stalled = Vec::new();
        self.unasked.lock().retain(|_, (since, body)| {
            let due = since.elapsed() >= send_timeout;
            if due {
                stalled.push(body.clone());
            }
            !due
        });
        for body in &stalled {
            // Dropped outside the locks: it gives its upstream back.
            let ended = body.upgrade().and_then(|body| body.lock().take());
            drop(ended);
        }
        stalled.len()
    }
}

/// One request in flight on an HTTP/2 connection, and its stream's number.
#[derive(Debug)]
pub struct Busy(Arc<Activity>, u64);

impl Busy {
    /// Its `body` has data out (or its head): hyper asks for more once the
    /// client's window has room.
    fn gave(&self, body: &Arc<SharedBody>) {
        let since = (Instant::now(), Arc::downgrade(body));
        self.0.unasked.lock().insert(self.1, since);
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

/// A response body that keeps its request counted until it is sent, is
/// handed to hyper [`CHUNK_BYTES`] at a time, and tells how long hyper
/// leaves it unasked.
#[derive(Debug)]
pub struct Tracked {
    body: Arc<SharedBody>,
    /// What is left of the last data frame.
    rest: Bytes,
    busy: Busy,
}

impl Tracked {
    /// `body`, counted as `busy` until it is dropped (from now on, hyper
    /// sends its head and is to ask for the body).
    pub fn new(body: Logged<ClientBody>, busy: Busy) -> Self {
        let body = Arc::new(Mutex::new(Some(body)));
        busy.gave(&body);
        Self {
            body,
            rest: Bytes::new(),
            busy,
        }
    }

    /// The next chunk of what is left of the last data frame.
    fn next_chunk(&mut self) -> Frame<Bytes> {
        let take = self.rest.len().min(CHUNK_BYTES);
        Frame::data(self.rest.split_to(take))
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.busy.asked();
        let mut body = this.body.lock();
        let Some(inner) = body.as_mut() else {
            let ended = "the client took none of the response for --send-timeout";
            return Poll::Ready(Some(Err(ended.into())));
        };
        if !this.rest.is_empty() {
            drop(body);
            this.busy.gave(&this.body);
            return Poll::Ready(Some(Ok(this.next_chunk())));
        }
        let polled = Pin::new(inner).poll_frame(cx);
        drop(body);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.busy.gave(&this.body);
                match frame.into_data() {
                    Ok(data) => {
                        this.rest = data;
                        Poll::Ready(Some(Ok(this.next_chunk())))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body the watch ended is not at its end: hyper is to ask for
        // it and reset the stream, not end it as if it were whole.
        self.rest.is_empty()
            && self
                .body
                .lock()
                .as_ref()
                .is_some_and(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.len() as u64;
        let inner = self
            .body
            .lock()
            .as_ref()
            .map_or_else(SizeHint::new, |body| body.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// Drives an HTTP/2 `connection` to its end: `graceful` (a GOAWAY) once
/// `drained` resolves or once it has been idle for a `period`; dropped if
/// it is still open and idle one `period` after that. Each look ends the
/// response bodies hyper has not asked to follow for `send_timeout`.
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
                let ended = activity.end_stalled(send_timeout);
                if ended > 0 {
                    tracing::info!(
                        streams = ended,
                        ?send_timeout,
                        "HTTP/2 client took none of a response for --send-timeout; its stream ended"
                    );
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
