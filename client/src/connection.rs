//! One multiplexed connection to a node: callers from any task send
//! requests through it at once; a writer task batches them into as few
//! writes as possible and a reader task hands each response to its caller
//! by request id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sessiond_proto::codec::FrameCodec;
use sessiond_proto::wire::{
    ClientFrame, Hello, Op, Outcome, PROTOCOL_VERSION, Placement, Request, ServerFrame, WriteTag,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Error;

type Codec = FrameCodec<ServerFrame, ClientFrame>;

/// Requests queued for the writer before callers wait.
const QUEUE_DEPTH: usize = 4096;
/// Room for a request's fields around its data in a frame.
const ENVELOPE_BYTES: usize = 256;

/// How a call failed, which decides whether it may be tried elsewhere.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request never left: safe to send anywhere else.
    NotSent(Error),
    /// The request may have been applied, the answer was lost.
    Lost(Error),
}

/// What a connection needs to open.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub auth_token: Option<String>,
    pub connect_timeout: Duration,
    /// The largest frame the client reads.
    pub max_frame_bytes: usize,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

/// A live connection; dropping the last handle closes it.
#[derive(Debug)]
pub(crate) struct Connection {
    queue: mpsc::Sender<Request>,
    pending: Pending,
    next_id: AtomicU64,
    /// The largest frame the server accepts (from its Welcome).
    max_frame_bytes: usize,
    /// Whether the server's sessions are shared by every node (Redis).
    pub shared_sessions: bool,
    /// The largest idle TTL the server accepts, in seconds.
    pub max_ttl_secs: u64,
    closed: CancellationToken,
    _stop_tasks: DropGuard,
}

impl Connection {
    /// Connects, shakes hands and starts the reader and writer tasks.
    pub async fn open(
        address: &str,
        placement: Placement,
        options: &ConnectOptions,
    ) -> Result<Self, Error> {
        let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Unavailable(format!("connecting to {address} timed out")))?
            .map_err(|err| Error::Unavailable(format!("cannot connect to {address}: {err}")))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut reader = FramedRead::new(read, Codec::new(options.max_frame_bytes));
        let mut writer = FramedWrite::new(write, Codec::new(options.max_frame_bytes));
        let hello = ClientFrame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            auth_token: options.auth_token.clone(),
            placement: Some(placement),
        });
        let welcome = async {
            writer
                .send(hello)
                .await
                .map_err(|err| Error::Unavailable(err.to_string()))?;
            match reader.next().await {
                Some(Ok(ServerFrame::Welcome(welcome))) => Ok(welcome),
                Some(Ok(ServerFrame::Fatal(error))) => Err(Error::from(error)),
                Some(Ok(other)) => Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
                Some(Err(err)) => Err(Error::Unavailable(err.to_string())),
                None => Err(Error::Unavailable(format!(
                    "{address} closed the connection"
                ))),
            }
        };
        let welcome = tokio::time::timeout(options.connect_timeout, welcome)
            .await
            .map_err(|_| Error::Unavailable(format!("no handshake answer from {address}")))??;

        let (queue, outgoing) = mpsc::channel(QUEUE_DEPTH);
        let pending = Pending::default();
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(writer, outgoing, closed.clone()));
        tokio::spawn(read_loop(reader, pending.clone(), closed.clone()));
        Ok(Self {
            queue,
            pending,
            next_id: AtomicU64::new(1),
            max_frame_bytes: usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX),
            shared_sessions: welcome.shared_sessions,
            max_ttl_secs: welcome.max_ttl_secs,
            _stop_tasks: closed.clone().drop_guard(),
            closed,
        })
    }

    /// Whether the connection is gone for good.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends `op` (a write identified by `write`) and waits at most
    /// `timeout` for its outcome.
    pub async fn call(
        &self,
        op: Op,
        write: Option<WriteTag>,
        timeout: Duration,
    ) -> Result<Outcome, CallError> {
        let payload = match &op {
            Op::Create { data, .. } | Op::Put { data, .. } => data.len(),
            Op::Patch { patch, .. } => patch.len(),
            _ => 0,
        };
        if payload + ENVELOPE_BYTES > self.max_frame_bytes {
            return Err(CallError::NotSent(Error::TooLarge(format!(
                "{payload} bytes of data do not fit in the server's {}-byte frames",
                self.max_frame_bytes
            ))));
        }
        if self.is_closed() {
            return Err(CallError::NotSent(Error::Unavailable(
                "connection closed".into(),
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let forget = || self.pending.lock().remove(&id);
        if self.queue.send(Request { id, op, write }).await.is_err() {
            forget();
            return Err(CallError::NotSent(Error::Unavailable(
                "connection closed".into(),
            )));
        }
        let lost = || {
            CallError::Lost(Error::Unavailable(
                "connection lost before the answer".into(),
            ))
        };
        tokio::select! {
            biased;
            outcome = rx => outcome.map_err(|_| lost()),
            () = self.closed.cancelled() => {
                forget();
                Err(lost())
            }
            () = tokio::time::sleep(timeout) => {
                forget();
                Err(CallError::Lost(Error::Timeout(timeout)))
            }
        }
    }
}

async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, Codec>,
    mut outgoing: mpsc::Receiver<Request>,
    closed: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            () = closed.cancelled() => break,
            request = outgoing.recv() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let mut batch = writer.feed(ClientFrame::Request(request)).await;
        while batch.is_ok() {
            match outgoing.try_recv() {
                Ok(request) => batch = writer.feed(ClientFrame::Request(request)).await,
                Err(_) => break,
            }
        }
        if batch.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    closed.cancel();
}

async fn read_loop(
    mut reader: FramedRead<OwnedReadHalf, Codec>,
    pending: Pending,
    closed: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            () = closed.cancelled() => break,
            frame = reader.next() => frame,
        };
        match frame {
            Some(Ok(ServerFrame::Response(response))) => {
                if let Some(waiter) = pending.lock().remove(&response.id) {
                    let _ = waiter.send(response.outcome);
                }
            }
            Some(Ok(ServerFrame::Fatal(error))) => {
                tracing::warn!(code = %error.code, "server closed the connection: {}", error.message);
                break;
            }
            Some(Ok(ServerFrame::Welcome(_))) | Some(Err(_)) | None => break,
        }
    }
    closed.cancel();
    // Dropping the senders tells every waiting caller the answer is lost.
    pending.lock().clear();
}
