//! The request body sent upstream. A client's body can still go to another
//! upstream as long as no upstream has started reading it (a connect
//! failure), so such a request is retried without buffering the body. Each
//! attempt also reports when its body has been sent whole, which is when
//! the wait for the response headers starts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::client_body::{BodyLimits, Upload};

/// Errors of bodies passed through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body, waiting for the attempt that reads it.
pub struct Replayable {
    /// `None` for a request without a body: every attempt sends nothing.
    slot: Option<Arc<Mutex<Option<Upload>>>>,
}

/// Where an attempt's upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Waiting for the client's next bytes (or not started).
    Reading,
    /// A piece was handed to the upstream connection at this instant, and
    /// the connection has not asked for the next one since (it asks once
    /// the upstream has taken what it holds).
    Handed(Instant),
    /// Sent whole.
    Sent,
    /// The client's body failed (too slow, too large, cut short): nothing
    /// more will be sent.
    Failed,
}

/// The upstream stopped taking the request body.
#[derive(Debug)]
pub struct UploadStalled;

/// Follows an attempt's upload until its body has been sent whole (or
/// dropped).
#[derive(Debug, Clone)]
pub struct Sent(Option<watch::Receiver<Progress>>);

impl Sent {
    /// Whether the body has been sent whole (a request without one: at
    /// once).
    pub fn is_done(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|receiver| *receiver.borrow() == Progress::Sent)
    }

    /// Whether the client's body failed on its way (its fault: an answer
    /// the upstream could not finish after that is not the upstream's).
    pub fn failed(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|receiver| *receiver.borrow() == Progress::Failed)
    }

    /// Waits until the body is sent, or until the upstream has left a piece
    /// of it untaken for `stall` (a slow client is not the upstream's
    /// fault: its own limits govern the wait for its bytes).
    pub async fn wait(self, stall: Duration) -> Result<(), UploadStalled> {
        let Some(mut receiver) = self.0 else {
            return Ok(());
        };
        loop {
            let progress = *receiver.borrow_and_update();
            // A closed channel means the body was dropped: nothing more
            // will be sent.
            let changed = match progress {
                Progress::Sent | Progress::Failed => return Ok(()),
                Progress::Reading => receiver.changed().await,
                Progress::Handed(at) => tokio::select! {
                    changed = receiver.changed() => changed,
                    () = tokio::time::sleep_until((at + stall).into()) => return Err(UploadStalled),
                },
            };
            if changed.is_err() {
                return Ok(());
            }
        }
    }
}

impl Replayable {
    /// Holds `body`, to be read by one attempt, under `limits`.
    pub fn new(body: Incoming, limits: BodyLimits) -> Self {
        let slot =
            (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(Upload::new(body, limits)))));
        Self { slot }
    }

    /// A body for the next attempt, or `None` when an earlier attempt has
    /// started sending it (it cannot be sent twice).
    pub fn attempt(&self) -> Option<(UpstreamBody, Sent)> {
        let Some(slot) = &self.slot else {
            return Some((UpstreamBody::Empty, Sent(None)));
        };
        slot.lock().as_ref()?;
        let (sent, receiver) = watch::channel(Progress::Reading);
        let body = TakeOnPoll {
            slot: slot.clone(),
            body: None,
            sent,
        };
        Some((UpstreamBody::Streamed(body), Sent(Some(receiver))))
    }
}

/// What the balancer sends upstream: nothing, or a client's body streamed
/// through (never buffered whole).
pub enum UpstreamBody {
    /// No body (a health check, or a request without one).
    Empty,
    /// The client's body, taken on first read.
    Streamed(TakeOnPoll),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Streamed(body) => body.size_hint(),
        }
    }
}

/// Takes the shared body out of its slot on the first read.
pub struct TakeOnPoll {
    slot: Arc<Mutex<Option<Upload>>>,
    body: Option<Upload>,
    sent: watch::Sender<Progress>,
}

impl Body for TakeOnPoll {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this.slot.lock().take();
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(Some(Err(
                "the request body was already sent elsewhere".into()
            )));
        };
        let frame = Pin::new(body).poll_frame(cx);
        let progress = match &frame {
            Poll::Pending => Progress::Reading,
            Poll::Ready(Some(Ok(_))) => Progress::Handed(Instant::now()),
            Poll::Ready(None) => Progress::Sent,
            Poll::Ready(Some(Err(_))) => Progress::Failed,
        };
        this.sent.send_if_modified(|now| {
            let changed = *now != progress;
            *now = progress;
            changed
        });
        frame.map_err(Into::into)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .lock()
                .as_ref()
                .map(Body::size_hint)
                .unwrap_or_default(),
        }
    }
}
