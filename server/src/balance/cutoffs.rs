//! What cuts a response body short on the upstream's side, on both paths:
//! a gap longer than `--response-timeout` (nginx's `proxy_read_timeout`),
//! or the upstream's removal from the pool (removed through the API, or
//! its drain timed out).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::upstream::Upstream;

/// Why a response body was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CutShort {
    /// The upstream sent nothing for the response timeout.
    #[error("the upstream sent none of the body for {0:?} (--response-timeout)")]
    Stalled(Duration),
    /// The upstream left the pool.
    #[error("the upstream was removed mid-body")]
    Removed,
}

impl CutShort {
    /// Whether the upstream is to blame (a removal is the operator's).
    pub fn blames_upstream(self) -> bool {
        matches!(self, Self::Stalled(_))
    }

    /// [`Removed`](Self::Removed) if `upstream` has left the pool, checked
    /// before each read: a body that always has bytes ready (a fast
    /// upstream, a slow client) never waits, so a removal looked for only
    /// while waiting would never be seen.
    fn if_left(upstream: &Upstream) -> Option<Self> {
        upstream.has_left().then_some(Self::Removed)
    }
}

/// The limits a body is relayed under.
#[derive(Debug, Clone, Copy)]
pub struct Cutoffs<'a> {
    /// Longest wait for the next bytes of the body.
    pub gap: Duration,
    /// The upstream sending it.
    pub upstream: &'a Arc<Upstream>,
}

impl Cutoffs<'_> {
    /// The upstream's removal, checked before each read
    /// ([`CutShort::if_left`]).
    pub fn removed(self) -> Option<CutShort> {
        CutShort::if_left(self.upstream)
    }

    /// Resolves when one of the limits ends the wait for the body's next
    /// bytes, begun now.
    pub async fn reached(self) -> CutShort {
        tokio::select! {
            () = self.upstream.closed.cancelled() => CutShort::Removed,
            () = tokio::time::sleep(self.gap) => CutShort::Stalled(self.gap),
        }
    }
}

/// [`Cutoffs`] watched from a body polled by hyper: the gap is timed
/// only while hyper asks for more (a client that does not read is the
/// send timeout's business).
#[derive(Debug)]
pub struct BodyWatch {
    gap: Duration,
    upstream: Arc<Upstream>,
    stall: Pin<Box<Sleep>>,
    removed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether the stall timer runs (from the first wait after bytes).
    timing: bool,
}

impl BodyWatch {
    /// Watches a body under `cutoffs`.
    pub fn new(cutoffs: Cutoffs<'_>) -> Self {
        Self {
            gap: cutoffs.gap,
            upstream: cutoffs.upstream.clone(),
            stall: Box::pin(tokio::time::sleep(cutoffs.gap)),
            removed: Box::pin(cutoffs.upstream.closed.clone().cancelled_owned()),
            timing: false,
        }
    }

    /// The upstream's removal, checked before each poll of the body
    /// ([`CutShort::if_left`]).
    pub fn removed(&self) -> Option<CutShort> {
        CutShort::if_left(&self.upstream)
    }

    /// The body gave bytes: the next wait starts a new gap.
    pub fn progressed(&mut self) {
        self.timing = false;
    }

    /// The body has nothing yet: whether a limit cuts it now (else the
    /// limits wake `cx`).
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<CutShort> {
        if self.removed.as_mut().poll(cx).is_ready() {
            return Some(CutShort::Removed);
        }
        if !self.timing {
            self.stall.as_mut().reset(Instant::now() + self.gap);
            self.timing = true;
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => Some(CutShort::Stalled(self.gap)),
            Poll::Pending => None,
        }
    }
}
