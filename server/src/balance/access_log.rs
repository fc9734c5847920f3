//! The access log (`--access-log PATH`, `-` for standard output): one JSON
//! line per request once its answer has gone out (or the client left):
//! when, the client, method, target, status (499 when the client left
//! first), body bytes sent, duration,
//! the upstream that answered (none for the balancer's own answers) and the
//! `X-Request-Id` sent to the app. Lines gather in a buffer that a blocking
//! thread writes out every second (sooner when it fills), so a request
//! costs no system call of its own and a stalled disk or pipe never stalls
//! a worker; SIGHUP reopens the file (after logrotate has moved it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use serde::Serialize;

/// Buffered bytes that wake the writer before its next tick.
const WRITE_AT: usize = 64 * 1024;
/// Buffered bytes past which new lines are dropped (and counted) while
/// the sink does not keep up.
const MAX_BUFFERED: usize = 8 << 20;

/// Where lines go.
#[derive(Debug)]
enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout => std::io::stdout().lock().write_all(bytes),
            Self::File { file, .. } => file.write_all(bytes),
        }
    }
}

/// Lines not written yet.
#[derive(Debug, Default)]
struct Lines {
    bytes: Vec<u8>,
    dropped: u64,
}

/// The sink, owned by whoever writes (never a worker).
#[derive(Debug)]
struct Writer {
    sink: Sink,
    /// Whether the last write failed (logged once until one succeeds).
    failing: bool,
}

/// The access log. Workers only append lines to a buffer under a short
/// lock; the writing (which may block on a slow disk or a stalled pipe)
/// happens on a blocking thread, so a stalled sink costs lines (counted
/// and reported), never a stalled worker.
#[derive(Debug)]
pub struct AccessLog {
    lines: Mutex<Lines>,
    writer: Mutex<Writer>,
    full: tokio::sync::Notify,
}

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the answer ended, RFC 3339 UTC.
    pub time: String,
    /// The client's address (from the PROXY header when one was read).
    pub client: IpAddr,
    /// The request method.
    pub method: &'a str,
    /// The request target.
    pub target: &'a str,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// From the request head read to the answer's end, in milliseconds.
    pub duration_ms: f64,
    /// `host:port` of the upstream that answered; none for the balancer's
    /// own answers.
    pub upstream: Option<&'a str>,
    /// The `X-Request-Id` sent to the app.
    pub request_id: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// An entry for a request that started at `started` and ends now.
    pub fn now(client: IpAddr, method: &'a str, target: &'a str, started: Instant) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client,
            method,
            target,
            status: 0,
            bytes: 0,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            upstream: None,
            request_id: None,
        }
    }
}

impl AccessLog {
    /// Opens `path` for appending (created if missing); `-` is standard
    /// output.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let sink = if path == Path::new("-") {
            Sink::Stdout
        } else {
            Sink::File {
                path: path.to_owned(),
                file: append(path)?,
            }
        };
        Ok(Self {
            lines: Mutex::new(Lines::default()),
            writer: Mutex::new(Writer {
                sink,
                failing: false,
            }),
            full: tokio::sync::Notify::new(),
        })
    }

    /// Adds `entry` as a line (dropped, and counted, while the buffer is
    /// at its limit).
    pub fn record(&self, entry: &Entry<'_>) {
        let mut lines = self.lines.lock();
        if lines.bytes.len() >= MAX_BUFFERED {
            lines.dropped += 1;
            return;
        }
        // Serializing plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut lines.bytes, entry);
        lines.bytes.push(b'\n');
        if lines.bytes.len() >= WRITE_AT {
            self.full.notify_one();
        }
    }

    /// Writes the buffered lines out (blocking: not on a worker).
    pub fn flush(&self) {
        let mut writer = self.writer.lock();
        let Lines { bytes, dropped } = std::mem::take(&mut *self.lines.lock());
        if dropped > 0 {
            tracing::warn!(dropped, "access log lines dropped: the log did not keep up");
        }
        if bytes.is_empty() {
            return;
        }
        match writer.sink.write_all(&bytes) {
            Ok(()) => writer.failing = false,
            Err(err) if !writer.failing => {
                writer.failing = true;
                tracing::error!(%err, "cannot write the access log; lines are lost until it works again");
            }
            Err(_) => {}
        }
    }

    /// Writes the buffered lines out and opens the file again by its path
    /// (a new file when logrotate has moved the old one). Blocking.
    pub fn reopen(&self) -> std::io::Result<()> {
        self.flush();
        let mut writer = self.writer.lock();
        if let Sink::File { path, file } = &mut writer.sink {
            *file = append(path)?;
        }
        Ok(())
    }

    /// Writes the buffered lines out every second, and sooner when 64 KiB
    /// are waiting, on a blocking thread, until `stop` fires (also while a
    /// write is stuck on a sink nobody reads: that one is left behind).
    pub async fn write_until(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = self.full.notified() => {}
            }
            let log = self.clone();
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tokio::task::spawn_blocking(move || log.flush()) => {}
            }
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What the full proxy knows of a request when its answer starts: logged
/// when the answer's body ends or is dropped.
#[derive(Debug)]
pub struct Pending {
    /// The log.
    pub log: Arc<AccessLog>,
    /// The client.
    pub client: IpAddr,
    /// Method.
    pub method: String,
    /// Target.
    pub target: String,
    /// Status sent; 0 until the answer starts.
    pub status: u16,
    /// The upstream that answered.
    pub upstream: Option<String>,
    /// The request id the app saw.
    pub request_id: Option<String>,
    /// When the request arrived.
    pub started: Instant,
}

/// The status logged for a request whose client left before its answer
/// (nginx's convention).
pub const CLIENT_GONE: u16 = 499;

impl Drop for Pending {
    /// A request dropped before its answer started (the client left and
    /// hyper cancelled it) is logged as [`CLIENT_GONE`].
    fn drop(&mut self) {
        if self.status == 0 {
            self.status = CLIENT_GONE;
            self.write(0);
        }
    }
}

impl Pending {
    fn write(&self, bytes: u64) {
        let mut entry = Entry::now(self.client, &self.method, &self.target, self.started);
        entry.status = self.status;
        entry.bytes = bytes;
        entry.upstream = self.upstream.as_deref();
        entry.request_id = self.request_id.as_deref();
        self.log.record(&entry);
    }
}

/// A response body that writes its request's log line when it ends.
#[derive(Debug)]
pub struct Logged<B> {
    body: B,
    pending: Option<Box<Pending>>,
    bytes: u64,
}

impl<B> Logged<B> {
    /// `body`, logged as `pending` says (not at all when `None`).
    pub fn new(body: B, pending: Option<Box<Pending>>) -> Self {
        Self {
            body,
            pending,
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.write(self.bytes);
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_buffered_until_flushed_and_reopen_follows_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).unwrap();
        let mut entry = Entry::now(
            "192.0.2.7".parse().unwrap(),
            "GET",
            "/a?\"q\"",
            Instant::now(),
        );
        entry.status = 200;
        entry.upstream = Some("127.0.0.1:3000");
        log.record(&entry);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        log.flush();
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["target"], "/a?\"q\"");
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream"], "127.0.0.1:3000");
        assert_eq!(line["request_id"], serde_json::Value::Null);
        // Moved away, as logrotate does: the next lines go to a new file.
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        log.record(&entry);
        log.reopen().unwrap();
        log.record(&entry);
        log.flush();
        assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn lines_past_the_buffer_limit_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::open(&dir.path().join("access.log")).unwrap();
        let target = "x".repeat(1000);
        let entry = Entry::now("192.0.2.7".parse().unwrap(), "GET", &target, Instant::now());
        for _ in 0..10_000 {
            log.record(&entry);
        }
        let lines = log.lines.lock();
        assert!(
            lines.bytes.len() < MAX_BUFFERED + 2000,
            "{}",
            lines.bytes.len()
        );
        assert!(
            lines.dropped > 0 && lines.dropped < 10_000,
            "{}",
            lines.dropped
        );
    }
}
