//! A request body that can still be sent to another upstream as long as no
//! upstream has started reading it (a connect failure), so such a request
//! is retried without buffering the body. Each attempt also reports when
//! its body has been sent whole, which is when the wait for the response
//! headers starts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{BoxError, ProxyBody};

/// The client's request body, waiting for the attempt that reads it.
pub struct Replayable {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    empty: bool,
}

/// Resolves once an attempt's body has been sent whole (or dropped).
pub struct Sent(Option<watch::Receiver<bool>>);

impl Sent {
    /// Waits until the body is sent.
    pub async fn wait(self) {
        if let Some(mut receiver) = self.0 {
            // An error means the body was dropped: nothing more will be sent.
            let _ = receiver.wait_for(|sent| *sent).await;
        }
    }
}

impl Replayable {
    /// Holds `body`; `empty` bodies can be replayed any number of times.
    pub fn new(body: ProxyBody, empty: bool) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            empty,
        }
    }

    /// A body for the next attempt, or `None` when an earlier attempt has
    /// started sending it (it cannot be sent twice).
    pub fn attempt(&self) -> Option<(ProxyBody, Sent)> {
        if self.empty {
            let body = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed();
            return Some((body, Sent(None)));
        }
        self.slot.lock().as_ref()?;
        let (sent, receiver) = watch::channel(false);
        let body = TakeOnPoll {
            slot: self.slot.clone(),
            body: None,
            sent,
        };
        Some((body.boxed(), Sent(Some(receiver))))
    }
}

/// Takes the shared body out of its slot on the first read.
struct TakeOnPoll {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    body: Option<ProxyBody>,
    sent: watch::Sender<bool>,
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
        if let Poll::Ready(None) = frame {
            this.sent.send_replace(true);
        }
        frame
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
