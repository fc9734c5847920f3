//! The clock of one HTTP connection: which phase of the request cycle it is
//! in and until when it may stay there. hyper's own `header_read_timeout`
//! also runs while a kept-alive connection waits for its next request, so
//! it cannot give a short head timeout and a longer idle timeout at once;
//! this clock does, like nginx's `client_header_timeout`,
//! `keepalive_timeout` and `send_timeout`. A response body has no deadline
//! while the client takes what is written (an event stream lasts as long
//! as its client reads it); a client that stops reading is closed when no
//! write has gone through for the idle timeout.
//!
//! A phase change wakes nobody (a request would wake the watchdog four
//! times): the watchdog looks at the phase when its deadline comes, and at
//! least once per the shorter timeout, so a deadline set meanwhile is
//! never overstayed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// The response's body is being written, and the client takes it.
    Sending,
    /// A write of a response is waiting for the client to read; closed at
    /// `at` unless a write goes through first.
    Stalled {
        at: Instant,
        /// Whether the response's body has ended (what is stuck is its
        /// last bytes): the connection then idles once they go through.
        body_ended: bool,
    },
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time.
    Head,
    /// The connection idled between requests for too long.
    Idle,
    /// The client did not read its response for too long.
    Send,
}

impl Expired {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Idle => "idle",
            Self::Send => "send",
        }
    }
}

/// The phase of one connection, shared by its reader, its service and its
/// watchdog.
#[derive(Debug)]
pub struct Deadline {
    phase: Mutex<Phase>,
    /// Whether the phase is [`Phase::Stalled`]: a write that goes through
    /// looks at the phase only then.
    stalled: AtomicBool,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Deadline {
    /// A new connection's clock: it must send a request head within
    /// `header_timeout`.
    pub fn start(header_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head(Instant::now() + header_timeout)),
            stalled: AtomicBool::new(false),
            header_timeout,
            idle_timeout,
        })
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn bytes_arrived(&self) {
        let mut phase = self.phase.lock();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now() + self.header_timeout);
        }
    }

    /// A write waits for the client to read: a response's body, or the
    /// end of one (after its body ended, in what looked like idling).
    fn write_blocked(&self) {
        let mut phase = self.phase.lock();
        let body_ended = match *phase {
            Phase::Sending => false,
            Phase::Idle(_) => true,
            Phase::Head(_) | Phase::Busy | Phase::Stalled { .. } => return,
        };
        *phase = Phase::Stalled {
            at: Instant::now() + self.idle_timeout,
            body_ended,
        };
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// A write went through: the client reads.
    fn write_progressed(&self) {
        if !self.stalled.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut phase = self.phase.lock();
        if let Phase::Stalled { body_ended, .. } = *phase {
            *phase = if body_ended {
                Phase::Idle(Instant::now() + self.idle_timeout)
            } else {
                Phase::Sending
            };
        }
    }

    /// A request head is complete: its handler runs.
    pub fn request_started(&self) {
        *self.phase.lock() = Phase::Busy;
    }

    /// The response is ready: its body is written next.
    pub fn response_started(&self) {
        *self.phase.lock() = Phase::Sending;
    }

    /// The response's body has ended: the connection idles until the next
    /// request (or, if a write of it waits for the client, until that goes
    /// through).
    pub fn response_sent(&self) {
        let mut phase = self.phase.lock();
        match &mut *phase {
            Phase::Sending => *phase = Phase::Idle(Instant::now() + self.idle_timeout),
            Phase::Stalled { body_ended, .. } => *body_ended = true,
            Phase::Head(_) | Phase::Idle(_) | Phase::Busy => {}
        }
    }

    /// The current phase's deadline and what overstaying it is, if it has
    /// one.
    fn due(&self) -> Option<(Instant, Expired)> {
        match *self.phase.lock() {
            Phase::Head(at) => Some((at, Expired::Head)),
            Phase::Idle(at) => Some((at, Expired::Idle)),
            Phase::Stalled { at, .. } => Some((at, Expired::Send)),
            Phase::Busy | Phase::Sending => None,
        }
    }

    /// Resolves when the connection overstays its current phase. It looks
    /// at the phase at its deadline and at least once per the shorter
    /// timeout: a phase set since the last look has a deadline at least
    /// that far from when it was set, so it is looked at in time.
    pub async fn expired(&self) -> Expired {
        let look_every = (self.header_timeout.min(self.idle_timeout)).max(Duration::from_millis(1));
        loop {
            let now = Instant::now();
            let due = self.due();
            if let Some((at, which)) = due
                && at <= now
            {
                return which;
            }
            let next_look = now + look_every;
            let wake = due.map_or(next_look, |(at, _)| at.min(next_look));
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A response body that tells its connection's [`Deadline`] when it is
/// done (hyper drops it once its end is written, or the exchange ends).
#[derive(Debug)]
pub struct UntilSent {
    body: Body,
    deadline: Arc<Deadline>,
}

impl UntilSent {
    /// `body`, whose end ends the response phase of `deadline`.
    pub fn new(body: Body, deadline: Arc<Deadline>) -> Self {
        Self { body, deadline }
    }
}

impl Drop for UntilSent {
    fn drop(&mut self) {
        self.deadline.response_sent();
    }
}

impl hyper::body::Body for UntilSent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket that tells its [`Deadline`] when bytes arrive
/// and whether the client takes what is written.
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

impl<T> Watched<T> {
    /// Tells the deadline how a write went.
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => self.deadline.write_blocked(),
            Poll::Ready(Ok(written)) if written > 0 => self.deadline.write_progressed(),
            Poll::Ready(_) => {}
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
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled)
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

        deadline.response_started();
        let sending = tokio::time::timeout(Duration::from_secs(3600), deadline.expired()).await;
        assert!(
            sending.is_err(),
            "a response the client takes has no deadline"
        );

        deadline.response_sent();
        let idle_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Idle);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(75));

        deadline.request_started();
        deadline.response_started();
        deadline.response_sent();
        tokio::time::sleep(Duration::from_secs(70)).await;
        deadline.bytes_arrived();
        let head_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Head);
        assert_eq!(head_from.elapsed(), Duration::from_secs(10));
    }

    /// Phases set while the watchdog waits for another's deadline (or for
    /// none) are held to their own deadlines, an earlier one included.
    #[tokio::test(start_paused = true)]
    async fn a_phase_set_while_the_watchdog_waits_keeps_its_deadline() {
        let deadline = Deadline::start(Duration::from_secs(10), Duration::from_secs(2));
        let started = Instant::now();
        let watchdog = tokio::spawn({
            let deadline = deadline.clone();
            async move { deadline.expired().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        deadline.request_started();
        deadline.response_started();
        deadline.response_sent();
        assert_eq!(watchdog.await.ok(), Some(Expired::Idle));
        assert_eq!(started.elapsed(), Duration::from_millis(2_500));

        deadline.bytes_arrived();
        deadline.request_started();
        let watchdog = tokio::spawn({
            let deadline = deadline.clone();
            async move { deadline.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(!watchdog.is_finished(), "a busy connection has no deadline");
        deadline.response_started();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let blocked_from = Instant::now();
        deadline.write_blocked();
        assert_eq!(watchdog.await.ok(), Some(Expired::Send));
        assert_eq!(blocked_from.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_stops_taking_is_closed_at_the_idle_timeout() {
        let deadline = Deadline::start(Duration::from_secs(10), Duration::from_secs(75));
        deadline.request_started();
        deadline.response_started();
        deadline.write_blocked();
        tokio::time::sleep(Duration::from_secs(70)).await;
        // A write went through: the client still reads.
        deadline.write_progressed();
        deadline.write_blocked();
        let blocked_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Send);
        assert_eq!(blocked_from.elapsed(), Duration::from_secs(75));
        // The body ended but its last bytes wait for the client: once they
        // go through, the connection idles.
        deadline.request_started();
        deadline.response_started();
        deadline.response_sent();
        deadline.write_blocked();
        tokio::time::sleep(Duration::from_secs(70)).await;
        deadline.write_progressed();
        let idle_from = Instant::now();
        assert_eq!(deadline.expired().await, Expired::Idle);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(75));
    }
}
