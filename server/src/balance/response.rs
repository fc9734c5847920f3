//! What the balancer answers a client with: the upstream's body streamed
//! through (holding the upstream's in-flight slot until it ends, so that
//! `--max-conns` and drains count it), or a small body of its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::InFlight;

/// A response body sent to a client.
#[derive(Debug)]
pub enum ClientBody {
    /// The upstream's body, and the slot it holds.
    Upstream {
        /// The body.
        body: Incoming,
        /// Released when the body ends or the client goes.
        slot: Option<InFlight>,
    },
    /// An answer of the balancer's own.
    Own(Full<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream { body, slot } => {
                let frame = Pin::new(body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    slot.take();
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
