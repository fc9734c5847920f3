//! What the balancer answers a client with: the upstream's body streamed
//! through (holding the upstream's in-flight slot until it ends, so that
//! `--max-conns` and drains count it, and cut short by the [`Cutoffs`]),
//! or a small body of its own.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::cutoffs::{BodyWatch, CutShort, Cutoffs};
use super::replay::{BoxError, Sent};
use super::upstream::InFlight;
use super::upstream_conns::Lent;

/// A response body sent to a client.
#[derive(Debug)]
pub enum ClientBody {
    /// The upstream's body, and the slot it holds.
    Upstream {
        /// The body.
        body: Incoming,
        /// Released when the body ends or the client goes.
        slot: Option<InFlight>,
        /// The upstream connection, pooled again once the body is read.
        lent: Option<Lent>,
        /// The request's upload: when it failed (the client's fault), a
        /// body cut short after it is not held against the upstream.
        upload: Option<Sent>,
        /// What cuts the body short (none after a protocol switch: the
        /// body is empty, the tunnel watches the upstream).
        watch: Option<BodyWatch>,
    },
    /// An answer of the balancer's own.
    Own(Full<Bytes>),
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // A body never polled because it is empty (HEAD, 204, 304,
        // `Content-Length: 0`) leaves its connection reusable too.
        if let Self::Upstream { body, lent, .. } = self
            && body.is_end_stream()
            && let Some(lent) = lent.take()
        {
            lent.give_back();
        }
    }
}

impl ClientBody {
    /// The upstream's `body`, holding `slot` and `lent` until it ends,
    /// cut short by a `gap` in it or by the slot's upstream leaving.
    pub fn upstream(
        body: Incoming,
        slot: InFlight,
        lent: Option<Lent>,
        upload: Sent,
        gap: Duration,
    ) -> Self {
        let watch = BodyWatch::new(Cutoffs {
            gap,
            upstream: slot.upstream(),
        });
        Self::Upstream {
            body,
            slot: Some(slot),
            lent,
            upload: Some(upload),
            watch: Some(watch),
        }
    }
}

/// Ends an upstream's body cut short by `cut`, blaming the upstream if
/// it is to blame; its connection is not reused.
fn cut_short(
    cut: CutShort,
    slot: &mut Option<InFlight>,
    lent: &mut Option<Lent>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if let Some(slot) = slot.take()
        && cut.blames_upstream()
    {
        slot.upstream().broke_mid_body(&cut.to_string());
    }
    lent.take();
    Poll::Ready(Some(Err(cut.into())))
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream {
                body,
                slot,
                lent,
                upload,
                watch,
            } => {
                let polled = match watch.as_ref().and_then(BodyWatch::removed) {
                    Some(cut) => Err(cut),
                    None => Ok(Pin::new(body).poll_frame(cx)),
                };
                let frame = match polled {
                    Ok(Poll::Ready(frame)) => frame,
                    Ok(Poll::Pending) => {
                        match watch.as_mut().and_then(|watch| watch.poll_cut(cx)) {
                            Some(cut) => return cut_short(cut, slot, lent),
                            None => return Poll::Pending,
                        }
                    }
                    Err(cut) => return cut_short(cut, slot, lent),
                };
                match &frame {
                    None => {
                        slot.take();
                        if let Some(lent) = lent.take() {
                            lent.give_back();
                        }
                    }
                    Some(Err(err)) => {
                        let clients_fault = upload.as_ref().is_some_and(Sent::failed);
                        if let Some(slot) = slot.take()
                            && !clients_fault
                        {
                            slot.upstream().broke_mid_body(&err.to_string());
                        }
                        lent.take();
                    }
                    Some(Ok(_)) => {
                        if let Some(watch) = watch {
                            watch.progressed();
                        }
                    }
                }
                Poll::Ready(frame.map(|frame| frame.map_err(BoxError::from)))
            }
            Self::Own(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Own(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Own(full) => full.size_hint(),
        }
    }
}
