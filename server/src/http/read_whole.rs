//! Whether a request's body was read to its end. An answer given before it
//! was (an early 401, 404 or 400 to a request with a body) leaves unread
//! bytes on the connection, which is then closed: the answer says so
//! (`Connection: close`), so a client does not send its next request on a
//! connection about to go.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// A body that records when it has been read to its end.
struct Watched<B> {
    inner: B,
    read: Arc<AtomicBool>,
}

impl<B: HttpBody + Unpin> HttpBody for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request to route, and what tells whether its body was read whole
/// (`None` for a request without a body: nothing is left to read).
pub fn watch<B>(request: Request<B>) -> (Request<Body>, Option<Arc<AtomicBool>>)
where
    B: HttpBody<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    if request.body().is_end_stream() {
        return (request.map(Body::new), None);
    }
    let read = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        Body::new(Watched {
            inner,
            read: read.clone(),
        })
    });
    (request, Some(read))
}

/// Marks `response` as closing the connection when the body `read`
/// watched was not read to its end.
pub fn close_unless_read<B>(response: &mut Response<B>, read: Option<&AtomicBool>) {
    if read.is_some_and(|read| !read.load(Ordering::Relaxed)) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn only_a_body_left_unread_closes_the_connection() {
        let with_body = || Request::new(Full::new(bytes::Bytes::from_static(b"{\"a\":1}")));
        let (_, read) = watch(with_body());
        let mut answered_early = Response::new(());
        close_unless_read(&mut answered_early, read.as_deref());
        assert_eq!(answered_early.headers()[header::CONNECTION], "close");

        let (request, read) = watch(with_body());
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"a\":1}");
        let mut answered_after = Response::new(());
        close_unless_read(&mut answered_after, read.as_deref());
        assert!(answered_after.headers().get(header::CONNECTION).is_none());

        let (_, read) = watch(Request::new(Full::new(bytes::Bytes::new())));
        assert!(read.is_none(), "an empty body has nothing left to read");
    }
}
