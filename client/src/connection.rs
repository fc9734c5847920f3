//! One multiplexed connection to a node: callers from any task send
//! requests through it at once. One task owns the socket: it encodes every
//! request queued since its last write into one buffer and writes it with
//! one call, reads answers in the same loop and hands each to its caller by
//! request id, so requests from many callers are pipelined and the socket
//! is never touched from two threads at once. The same task ends the wait
//! of every caller whose deadline passed, with one timer for the whole
//! connection rather than one per request: callers whose request went out
//! learn that its answer was lost, callers whose request is still held
//! (the node stopped reading and the write buffer is full) that it was
//! never sent.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sessiond_proto::ErrorCode;
use sessiond_proto::codec::{
    CodecError, FrameCodec, LENGTH_PREFIX_BYTES, RESPONSE_HEAD_BYTES, answered_request,
};
use sessiond_proto::wire::{
    ClientFrame, Hello, Op, Outcome, PROTOCOL_VERSION, Placement, Request, ServerFrame, WireError,
    WriteTag,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed, FramedParts};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Error;

type Codec = FrameCodec<ServerFrame, ClientFrame>;

/// How long after its deadline a caller stops waiting for its connection's
/// task to say what became of its request.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Requests queued for the connection's task before callers wait.
const QUEUE_DEPTH: usize = 4096;
/// Room for a request's fields around its data in a frame.
const ENVELOPE_BYTES: usize = 256;
/// Free room a read asks the socket to fill, at least.
const READ_CHUNK: usize = 16 * 1024;
/// Requests encoded past this many bytes wait for the buffer to drain.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A buffer grown past this (for a large frame) is given back once empty,
/// so one large session does not keep its size in every pooled connection.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;
/// How far off a deadline too large to represent is put.
const FAR_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a call failed, which decides whether it may be tried elsewhere.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request never left: safe to send anywhere else.
    NotSent(Error),
    /// The request never left because the node did not read its
    /// connection for the whole timeout: safe to send anywhere else, and a
    /// timeout of the node's.
    Stalled(Error),
    /// The request may have been applied, the answer was lost.
    Lost(Error),
    /// The node carried the request out, but its answer was over this
    /// client's `max_frame_bytes` and was dropped unread: final, never
    /// re-sent (a write it answers was applied).
    AnswerTooLarge(Error),
}

/// What a connection needs to open.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub auth_token: Option<String>,
    pub connect_timeout: Duration,
    /// The largest frame the client reads.
    pub max_frame_bytes: usize,
}

/// What a caller is told.
enum Reply {
    /// The node's answer.
    Answered(Outcome),
    /// The deadline passed before the request could be written.
    Unsent,
    /// The request was never started: the node, shutting down, said so
    /// of every request it left unanswered, or the connection ended
    /// before the request was written.
    NotStarted(Error),
    /// The node's answer was over this client's frame limit.
    AnswerTooLarge(Error),
}

/// A request and where its answer goes.
struct Call {
    request: Request,
    answer: oneshot::Sender<Reply>,
    /// When its caller stops waiting.
    deadline: Instant,
}

/// A caller waiting for its answer until its deadline.
struct Waiting {
    answer: oneshot::Sender<Reply>,
    deadline: Instant,
}

/// The callers waiting for answers, by request id.
type WaitingCalls = HashMap<u64, Waiting>;

/// A live connection; dropping the last handle closes it.
#[derive(Debug)]
pub(crate) struct Connection {
    queue: mpsc::Sender<Call>,
    next_id: AtomicU64,
    /// The largest frame the server accepts (from its Welcome).
    max_frame_bytes: usize,
    /// Whether the server's sessions are shared by every node (Redis).
    pub shared_sessions: bool,
    /// The largest idle TTL the server accepts, in seconds.
    pub max_ttl_secs: u64,
    /// Whether the server writes behind to Redis (its acknowledged writes
    /// may be in its queue, seen by no other node).
    pub write_behind: bool,
    closed: CancellationToken,
    _stop_tasks: DropGuard,
}

impl Connection {
    /// Connects, shakes hands and starts the connection's task.
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
        let mut framed = Framed::new(stream, Codec::new(options.max_frame_bytes));
        let hello = ClientFrame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            auth_token: options.auth_token.clone(),
            placement: Some(placement),
        });
        let welcome = async {
            framed
                .send(hello)
                .await
                .map_err(|err| Error::Unavailable(err.to_string()))?;
            match framed.next().await {
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

        let (queue, calls) = mpsc::channel(QUEUE_DEPTH);
        let closed = CancellationToken::new();
        let max_frame_bytes = usize::try_from(welcome.max_frame_bytes).unwrap_or(usize::MAX);
        tokio::spawn(drive(
            framed.into_parts(),
            Codec::new(max_frame_bytes),
            calls,
            closed.clone(),
        ));
        Ok(Self {
            queue,
            next_id: AtomicU64::new(1),
            max_frame_bytes,
            shared_sessions: welcome.shared_sessions,
            max_ttl_secs: welcome.max_ttl_secs,
            write_behind: welcome.write_behind,
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
        let (answer, answered) = oneshot::channel();
        let now = Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + FAR_DEADLINE);
        let call = Call {
            request: Request { id, op, write },
            answer,
            deadline,
        };
        let closed = || CallError::NotSent(Error::Unavailable("connection closed".into()));
        // A timer only when the queue is full (the node has stopped reading).
        match self.queue.try_send(call) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(call)) => {
                match tokio::time::timeout_at(deadline, self.queue.send(call)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => return Err(CallError::Stalled(backed_up())),
                }
            }
        }
        // The connection's task answers or drops the caller's sender by its
        // deadline, and drops every caller's when it ends.
        // Bounded by the deadline too (a request that slipped into the
        // queue as the connection's task ended is never answered), with a
        // margin so that the task's own verdict at the deadline (a request
        // it never wrote is `Unsent`) comes first.
        let backstop = deadline.checked_add(ANSWER_MARGIN).unwrap_or(deadline);
        match tokio::time::timeout_at(backstop, answered).await {
            Ok(Ok(Reply::Answered(outcome))) => Ok(outcome),
            Ok(Ok(Reply::Unsent)) => Err(CallError::Stalled(backed_up())),
            Ok(Ok(Reply::NotStarted(err))) => Err(CallError::NotSent(err)),
            Ok(Ok(Reply::AnswerTooLarge(err))) => Err(CallError::AnswerTooLarge(err)),
            Err(_) => Err(CallError::Lost(Error::Timeout(timeout))),
            Ok(Err(_)) if Instant::now() >= deadline => {
                Err(CallError::Lost(Error::Timeout(timeout)))
            }
            Ok(Err(_)) => Err(CallError::Lost(Error::Unavailable(
                "connection lost before the answer".into(),
            ))),
        }
    }
}

/// Why a request was not sent before its deadline.
fn backed_up() -> Error {
    Error::Unavailable("the node has not read its connection for the whole timeout".into())
}

/// The connection's task: queues requests, writes them in batches, reads
/// answers and hands them out, and gives up on callers whose deadline
/// passed, until the socket fails or the connection is dropped. Dropping
/// the callers' senders tells those still waiting that their answer is
/// lost.
async fn drive(
    parts: FramedParts<TcpStream, Codec>,
    mut encoder: Codec,
    mut calls: mpsc::Receiver<Call>,
    closed: CancellationToken,
) {
    let FramedParts {
        io: mut stream,
        codec: decoder,
        read_buf: mut input,
        ..
    } = parts;
    let mut answers = Answers {
        decoder,
        skipping: 0,
    };
    let (mut reader, mut writer) = stream.split();
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut waiting = WaitingCalls::new();
    // Calls taken off the queue while the write buffer is full, in order.
    let mut held = VecDeque::new();
    // One timer for every caller: it fires at the earliest deadline (or
    // sooner) while anyone waits.
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut expiry_armed = false;
    // Requests in the batch being written, and in the last one written.
    let (mut batch, mut last_batch) = (0usize, 0usize);
    // The node's farewell, if it closed the connection at its shutdown.
    let mut goodbye = None;
    // Whether a buffer has grown past `KEEP_BUFFER_BYTES` since it was last
    // given back: noted before each read or write, as taking bytes out of
    // a buffer hides the room kept behind them.
    let (mut input_grown, mut output_grown) = (false, false);
    loop {
        input.reserve(READ_CHUNK);
        input_grown |= input.capacity() > KEEP_BUFFER_BYTES;
        output_grown |= output.capacity() > KEEP_BUFFER_BYTES;
        tokio::select! {
            biased;
            () = closed.cancelled() => break,
            () = &mut expiry, if expiry_armed => {
                expiry_armed = match expire(&mut waiting, &mut held, Instant::now()) {
                    Some(next) => {
                        expiry.as_mut().reset(next);
                        true
                    }
                    None => false,
                };
            }
            call = calls.recv(), if held.len() < QUEUE_DEPTH => {
                let Some(call) = call else { break };
                // A shared connection (other requests in flight, or the
                // last write carried several): callers that are ready to
                // run get to queue theirs before the write, so they go out
                // in the same one. A connection with one caller writes at
                // once (yielding would only add to its latency).
                let shared = !waiting.is_empty() || last_batch > 1;
                let mut earliest = call.deadline;
                batch += take(call, &mut encoder, &mut output, &mut waiting, &mut held);
                if shared {
                    tokio::task::yield_now().await;
                }
                while held.len() < QUEUE_DEPTH {
                    let Ok(call) = calls.try_recv() else { break };
                    earliest = earliest.min(call.deadline);
                    batch += take(call, &mut encoder, &mut output, &mut waiting, &mut held);
                }
                // Deadlines mostly come in order: the timer moves only for
                // one earlier than it already is.
                if !expiry_armed || earliest < expiry.deadline() {
                    expiry.as_mut().reset(earliest);
                    expiry_armed = true;
                }
            }
            read = reader.read_buf(&mut input) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                if let Err(ended) = answers.hand_out(&mut input, &mut waiting) {
                    goodbye = ended.goodbye;
                    break;
                }
                input_grown = give_back_if_grown(&mut input, input_grown);
            }
            written = writer.write_buf(&mut output), if !output.is_empty() => {
                if written.is_err() {
                    break;
                }
                if output.is_empty() {
                    (last_batch, batch) = (batch, 0);
                }
                output_grown = give_back_if_grown(&mut output, output_grown);
                while output.len() < WRITE_BATCH_BYTES {
                    let Some(call) = held.pop_front() else { break };
                    queue(call, &mut encoder, &mut output, &mut waiting);
                    batch += 1;
                }
            }
        }
    }
    // Closed before any caller learns of it, so none sends again on this
    // connection (a request queued here now would be dropped unsent and
    // taken for a lost answer).
    closed.cancel();
    calls.close();
    if let Some(message) = goodbye {
        // The node answered every request it started before saying so.
        for (_, call) in waiting.drain() {
            let refused = Error::Unavailable(message.clone());
            let _ = call.answer.send(Reply::NotStarted(refused));
        }
    }
    let queued = std::iter::from_fn(|| calls.try_recv().ok());
    for call in held.into_iter().chain(queued) {
        let unsent = Error::Unavailable("the connection closed before the request was sent".into());
        let _ = call.answer.send(Reply::NotStarted(unsent));
    }
}

/// Swaps an emptied buffer that had `grown` past [`KEEP_BUFFER_BYTES`] for
/// a small one, giving its memory back; whether it is still grown.
fn give_back_if_grown(buffer: &mut BytesMut, grown: bool) -> bool {
    if grown && buffer.is_empty() {
        *buffer = BytesMut::with_capacity(READ_CHUNK);
        return false;
    }
    grown
}

/// Why a connection's reading side stopped.
struct Ended {
    /// The node's farewell at its shutdown; `None` when the node broke the
    /// protocol or closed the connection with an error.
    goodbye: Option<String>,
}

/// Ends the wait of the callers whose deadline has come (an answer that
/// still comes is dropped; a request still held is never sent, and its
/// caller is told so) and forgets those that stopped waiting on their own;
/// the earliest deadline left, if anyone still waits.
fn expire(waiting: &mut WaitingCalls, held: &mut VecDeque<Call>, now: Instant) -> Option<Instant> {
    waiting.retain(|_, call| call.deadline > now && !call.answer.is_closed());
    let (expired, kept): (VecDeque<Call>, VecDeque<Call>) =
        held.drain(..).partition(|call| call.deadline <= now);
    *held = kept;
    for call in expired {
        let _ = call.answer.send(Reply::Unsent);
    }
    let waiting_deadlines = waiting.values().map(|call| call.deadline);
    waiting_deadlines
        .chain(held.iter().map(|call| call.deadline))
        .min()
}

/// Encodes `call` for the next write (1), or holds it while the write
/// buffer is full or earlier calls are held (0).
fn take(
    call: Call,
    codec: &mut Codec,
    output: &mut BytesMut,
    waiting: &mut WaitingCalls,
    held: &mut VecDeque<Call>,
) -> usize {
    if output.len() < WRITE_BATCH_BYTES && held.is_empty() {
        queue(call, codec, output, waiting);
        1
    } else {
        held.push_back(call);
        0
    }
}

/// Encodes a request for the next write and keeps its caller waiting for
/// the answer. A request that cannot be encoded (a frame over the server's
/// limit: its user name and fields took more room than the caller's check
/// allowed for) fails alone, as `payload_too_large`, and is never sent.
fn queue(call: Call, encoder: &mut Codec, output: &mut BytesMut, waiting: &mut WaitingCalls) {
    let Call {
        request,
        answer,
        deadline,
    } = call;
    let id = request.id;
    match encoder.encode(ClientFrame::Request(request), output) {
        Ok(()) => {
            waiting.insert(id, Waiting { answer, deadline });
        }
        Err(err) => {
            let refused = WireError::new(ErrorCode::PayloadTooLarge, err.to_string());
            let _ = answer.send(Reply::Answered(Outcome::Error(refused)));
        }
    }
}

/// The reading side of a connection: decodes answers and hands each to
/// its caller.
struct Answers {
    decoder: Codec,
    /// Bytes of an answer too large for this client's `max_frame_bytes`
    /// still to be dropped as they arrive.
    skipping: usize,
}

impl Answers {
    /// Hands every complete answer in `input` to its caller, until the
    /// server breaks the protocol or closes the connection. An answer over
    /// the client's frame limit fails its own call (as
    /// [`Reply::AnswerTooLarge`]) and is dropped unread, so the other calls
    /// on the connection go on.
    fn hand_out(&mut self, input: &mut BytesMut, waiting: &mut WaitingCalls) -> Result<(), Ended> {
        let broken = Err(Ended { goodbye: None });
        loop {
            if self.skipping > 0 {
                let dropped = self.skipping.min(input.len());
                input.advance(dropped);
                self.skipping -= dropped;
                if self.skipping > 0 {
                    return Ok(());
                }
            }
            match self.decoder.decode(input) {
                Ok(None) => return Ok(()),
                Ok(Some(ServerFrame::Response(response))) => {
                    if let Some(caller) = waiting.remove(&response.id) {
                        let _ = caller.answer.send(Reply::Answered(response.outcome));
                    }
                }
                Ok(Some(ServerFrame::Fatal(error))) if error.code == ErrorCode::Unavailable => {
                    // A node's farewell at shutdown, after answering every
                    // request it started.
                    tracing::debug!("server closed the connection: {}", error.message);
                    return Err(Ended {
                        goodbye: Some(error.message),
                    });
                }
                Ok(Some(ServerFrame::Fatal(error))) => {
                    tracing::warn!(code = %error.code, "server closed the connection: {}", error.message);
                    return broken;
                }
                Err(CodecError::TooLarge { announced, max }) => {
                    let head = LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + RESPONSE_HEAD_BYTES;
                    let Some(head) = input.get(head) else {
                        return Ok(());
                    };
                    let Some(id) = answered_request(head) else {
                        return broken;
                    };
                    if let Some(caller) = waiting.remove(&id) {
                        let dropped = Error::TooLarge(format!(
                            "the answer is {announced} bytes, over this client's \
                             {max}-byte max_frame_bytes; the node carried the request \
                             out (a write is applied: read the session to see it)"
                        ));
                        let _ = caller.answer.send(Reply::AnswerTooLarge(dropped));
                    }
                    self.skipping = LENGTH_PREFIX_BYTES + announced;
                }
                Ok(Some(ServerFrame::Welcome(_))) | Err(_) => return broken,
            }
        }
    }
}
