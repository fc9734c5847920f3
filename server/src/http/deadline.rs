//! The clock of one HTTP connection: which phase of the request cycle it is
//! in and until when it may stay there. hyper's own `header_read_timeout`
//! also runs while a kept-alive connection waits for its next request, so
//! it cannot give a short head timeout and a longer idle timeout at once;
//! this clock does, like nginx's `client_header_timeout` and
//! `keepalive_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head; closed at the deadline.
    Head(Instant),
    /// Waiting for the next request after a response; closed at the deadline.
    Idle(Instant),
    /// A request is being served; its body has its own deadline (the
    /// handlers read it with `--http-body-timeout`).
    Busy,
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time.
    Head,
    /// The connection idled between requests for too long.
    Idle,
}

impl Expired {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Idle => "idle",
        }
    }
}

/// The phase of one connection, shared by its reader, its service and its
/// watchdog.
#[derive(Debug)]
pub struct Deadline {
    phase: watch::Sender<Phase>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Deadline {
    /// A new connection's clock: it must send a request head within
    /// `header_timeout`.
    pub fn start(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            phase: watch::Sender::new(Phase::Head(Instant::now() + header_timeout)),
            header_timeout,
            idle_timeout,
        })
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn bytes_arrived(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Idle(_) => {
                *phase = Phase::Head(Instant::now() + self.header_timeout);
                true
            }
            Phase::Head(_) | Phase::Busy => false,
        });
    }

    /// A request head is complete: its handler runs.
    pub fn request_started(&self) {
        self.phase.send_replace(Phase::Busy);
    }

    /// The response is ready: the connection idles until the next request.
    /// (A client that does not read its response is also closed at the
    /// idle deadline.)
    pub fn response_ready(&self) {
        self.phase
            .send_replace(Phase::Idle(Instant::now() + self.idle_timeout));
    }

    /// Resolves when the connection overstays its current phase.
    pub async fn expired(&self) -> Expired {
        let mut phase = self.phase.subscribe();
        loop {
            let current = *phase.borrow_and_update();
            let (at, which) = match current {
                Phase::Head(at) => (at, Expired::Head),
                Phase::Idle(at) => (at, Expired::Idle),
                Phase::Busy => {
                    // The sender lives as long as `self`: no error here.
                    let _ = phase.changed().await;
                    continue;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(at) => return which,
                _ = phase.changed() => {}
            }
        }
    }
}

/// A connection's socket that tells its [`Deadline`] when bytes arrive.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    deadline: Arc<Deadline>,
}

impl<T> Watched<T> {
    /// Wraps `io`.
    pub fn new(io: T, deadline: Arc<Deadline>) -> Self {
        Self { io, deadline }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.deadline.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn phases_have_their_own_deadlines() {
        let deadline = Deadline::start(Duration::from_secs(10), Duration::from_secs(75));
        let started = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Head);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        deadline.request_started();
        let busy = tokio::time::timeout(Duration::from_secs(3600), deadline.expired()).await;
        assert!(
            busy.is_err(),
            "a busy connection has no connection deadline"
        );

        deadline.response_ready();
        let idle_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Idle);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(75));

        deadline.response_ready();
        tokio::time::sleep(Duration::from_secs(70)).await;
        deadline.bytes_arrived();
        let head_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Head);
        assert_eq!(head_from.elapsed(), Duration::from_secs(10));
    }
}
