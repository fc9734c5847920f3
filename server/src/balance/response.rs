//! What the balancer answers a client with: the upstream's body streamed
//! through (holding the upstream's in-flight slot until it ends, so that
//! `--max-conns` and drains count it), or a small body of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::replay::Sent;
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

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream {
                body,
                slot,
                lent,
                upload,
            } => {
                let frame = Pin::new(body).poll_frame(cx);
                match &frame {
                    Poll::Ready(None) => {
                        slot.take();
                        if let Some(lent) = lent.take() {
                            lent.give_back();
                        }
                    }
                    Poll::Ready(Some(Err(err))) => {
                        let clients_fault = upload.as_ref().is_some_and(Sent::failed);
                        if let Some(slot) = slot.take()
                            && !clients_fault
                        {
                            slot.upstream().broke_mid_body(&err.to_string());
                        }
                        lent.take();
                    }
                    _ => {}
                }
                frame
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
