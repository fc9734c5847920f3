//! One binary-protocol connection: handshake, then pipelined requests
//! answered as they complete, with a cap on requests in flight, an idle
//! timeout and a write timeout.
//!
//! Requests are taken in batches: every complete frame a read brought is
//! started at once, the answers ready by then (all of them, in memory) are
//! encoded into one buffer and written with one call. A client that
//! pipelines many requests (a shared, multiplexed connection) thus costs
//! one read and one write per batch, not per request. Each request's
//! future is polled once in a reused box before it joins the set of
//! pending ones, so a request answered at once allocates nothing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FusedStream;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use sessiond_proto::ErrorCode;
use sessiond_proto::codec::{CodecError, FrameCodec};
use sessiond_proto::wire::{
    ClientFrame, Hello, Outcome, PROTOCOL_VERSION, Placement, Request, Response, ServerFrame,
    Welcome, WireError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::context::TcpContext;
use super::dispatch;
use super::telemetry::TcpMetrics;

type Codec = FrameCodec<ClientFrame, ServerFrame>;

/// Free room a read asks the socket to fill, at least.
const READ_CHUNK: usize = 16 * 1024;
/// Answers queued past this many bytes are written before more requests
/// are started: on a connection many callers share, the client gets the
/// first answers (and its callers send their next requests) while the
/// rest of the batch is being answered, instead of the two sides taking
/// turns. (Eight 1 KiB answers; 1.3-1.6x the requests per second of
/// 256 KiB on one connection shared by 50 or 200 workers.)
const WRITE_BATCH_BYTES: usize = 8 * 1024;
/// Largest `Hello` frame: ample for a 1,024-node placement ring and a
/// long auth token, and all a client that has not authenticated yet can
/// make the node buffer.
const HELLO_FRAME_BYTES: usize = 64 * 1024;
/// A buffer grown past this (for a large frame) is given back once empty.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;

/// Longest wait, at shutdown, for a client to close its side after the
/// node's last frame.
const LINGER: Duration = Duration::from_secs(1);

/// Most nodes a client's placement ring may list.
const MAX_RING_NODES: usize = 1024;

/// Serves one connection until the client leaves, breaks the protocol,
/// idles out, or the server shuts down.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &TcpContext,
    metrics: &TcpMetrics,
    shutdown: CancellationToken,
) {
    let mut wire = Wire::new(stream, ctx.limits.max_frame_bytes.min(HELLO_FRAME_BYTES));
    let hello = match handshake(&mut wire, ctx).await {
        // Connected and closed (a TCP health probe, a port scan): nothing
        // to say, and no protocol error.
        Ok(None) => return,
        Ok(Some(hello)) => {
            wire.codec = Codec::new(ctx.limits.max_frame_bytes);
            hello
        }
        Err(error) => {
            tracing::debug!(%peer, code = %error.code, "handshake refused: {}", error.message);
            count_fatal(&error);
            close_with(&mut wire, ctx, error).await;
            return;
        }
    };
    let welcome = ServerFrame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        max_frame_bytes: ctx.limits.max_frame_bytes as u64,
        shared_sessions: ctx.service.shares_sessions(),
        max_ttl_secs: ctx.service.config().max_ttl_secs,
        write_behind: ctx.service.writes_behind(),
    });
    if send(&mut wire, ctx, welcome).await.is_err() {
        return;
    }
    metrics::gauge!("sessiond_tcp_connections").increment(1.0);
    let served = Requests {
        wire: &mut wire,
        ctx,
        metrics,
        placement: hello.placement,
    }
    .serve(&shutdown)
    .await;
    match served {
        Err(error) => {
            tracing::debug!(%peer, code = %error.code, "closing connection: {}", error.message);
            count_fatal(&error);
            close_with(&mut wire, ctx, error).await;
        }
        Ok(Ended::Idle) => {
            let farewell = format!(
                "idle for {:?}; closing: the requests without an answer were not started",
                ctx.limits.idle_timeout
            );
            say_goodbye(&mut wire, ctx, farewell).await;
        }
        Ok(Ended::Done) if shutdown.is_cancelled() => {
            let farewell =
                "the node is shutting down: the requests without an answer were not started";
            say_goodbye(&mut wire, ctx, farewell.to_owned()).await;
        }
        Ok(Ended::Done) => {}
    }
    metrics::gauge!("sessiond_tcp_connections").decrement(1.0);
}

/// Counts a connection ended by `error`'s `Fatal` frame.
fn count_fatal(error: &WireError) {
    metrics::counter!("sessiond_tcp_protocol_errors_total", "code" => error.code.as_str())
        .increment(1);
}

/// How a connection's requests ended without a protocol error.
enum Ended {
    /// The client closed, or the server shut down, once every request it
    /// started was answered.
    Done,
    /// Nothing in flight for the idle timeout.
    Idle,
}

/// At shutdown or an idle close, once every request started has its
/// answer: tells the client that the requests it has no answer for were
/// never started (a `Fatal` of code `unavailable` saying `farewell`, which
/// it may send to another node whatever they are, or again on a new
/// connection), then closes without a reset: the write side first,
/// then what the client still sends is read and dropped until it closes
/// too, for at most [`LINGER`]. Closing with unread bytes would send a
/// reset, which can throw away answers still on their way.
async fn say_goodbye(wire: &mut Wire, ctx: &TcpContext, farewell: String) {
    let farewell = WireError::new(ErrorCode::Unavailable, farewell);
    if send(wire, ctx, ServerFrame::Fatal(farewell)).await.is_err() {
        return;
    }
    let _ = wire.stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        wire.input.clear();
        while let Ok(true) = wire.fill().await {
            wire.input.clear();
        }
    })
    .await;
}

/// The socket with its buffers: requests are decoded from `input`, answers
/// encoded into `output` and written in one call per batch.
struct Wire {
    stream: TcpStream,
    codec: Codec,
    input: BytesMut,
    output: BytesMut,
    /// A write timed out partway: the stream may end inside a frame, so
    /// nothing more is written to it.
    stalled: bool,
}

impl Wire {
    fn new(stream: TcpStream, max_frame_bytes: usize) -> Self {
        Self {
            stream,
            codec: Codec::new(max_frame_bytes),
            input: BytesMut::with_capacity(READ_CHUNK),
            output: BytesMut::with_capacity(READ_CHUNK),
            stalled: false,
        }
    }

    /// The next complete frame already read, if any.
    fn buffered(&mut self) -> Result<Option<ClientFrame>, WireError> {
        // Measured before the decode, which splits the frame off and so
        // hides the room kept behind it.
        let grown = self.input.capacity() > KEEP_BUFFER_BYTES;
        let frame = self.codec.decode(&mut self.input).map_err(codec_error)?;
        if self.input.is_empty() && grown {
            self.input = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(frame)
    }

    /// Waits for the socket and reads what it has; `false` at the end of
    /// the stream. Cancel-safe: nothing read is lost.
    async fn fill(&mut self) -> Result<bool, WireError> {
        self.input.reserve(READ_CHUNK);
        let read = self.stream.read_buf(&mut self.input).await;
        Ok(read.map_err(|err| codec_error(err.into()))? > 0)
    }

    /// The next frame, reading as needed; `None` when the client closed
    /// between frames.
    async fn next(&mut self) -> Result<Option<ClientFrame>, WireError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                if self.input.is_empty() {
                    return Ok(None);
                }
                return Err(truncated());
            }
        }
    }

    /// Queues a frame for the next write.
    fn queue(&mut self, frame: ServerFrame) -> Result<(), WireError> {
        self.codec
            .encode(frame, &mut self.output)
            .map_err(codec_error)
    }

    /// Queues an answer; one too large for a frame (a long listing) is
    /// answered as that request's error instead of ending the connection
    /// and every other request on it.
    fn answer(&mut self, response: Response) -> Result<(), WireError> {
        let id = response.id;
        match self
            .codec
            .encode(ServerFrame::Response(response), &mut self.output)
        {
            Err(CodecError::TooLarge { announced, max }) => {
                let error = WireError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the answer is {announced} bytes, over the {max}-byte frame limit \
                         (--max-frame-bytes)"
                    ),
                );
                self.queue(ServerFrame::Response(Response {
                    id,
                    outcome: Outcome::Error(error),
                }))
            }
            encoded => encoded.map_err(codec_error),
        }
    }

    /// Writes every queued frame, unless the client stops reading them for
    /// `timeout` (each write that moves some bytes starts that time again:
    /// a client that reads slowly but steadily is not cut off); `false`
    /// when nothing was queued.
    async fn flush(&mut self, timeout: Duration) -> Result<bool, WireError> {
        self.flush_while(timeout, &mut futures_util::stream::empty(), &mut Vec::new())
            .await
    }

    /// [`Wire::flush`], while the requests in `pending` go on: their
    /// answers are kept in `held` for the next write. A client slow to
    /// read holds up its own answers, never the locks and Redis commands
    /// of requests that other clients' requests wait behind.
    async fn flush_while<S>(
        &mut self,
        timeout: Duration,
        pending: &mut S,
        held: &mut Vec<Response>,
    ) -> Result<bool, WireError>
    where
        S: Stream<Item = Response> + Unpin + FusedStream,
    {
        if self.output.is_empty() {
            return Ok(false);
        }
        if self.stalled {
            return Err(not_reading());
        }
        // Measured before the write: `write_buf` advances past what it
        // wrote, which hides the room kept behind it.
        let grown = self.output.capacity() > KEEP_BUFFER_BYTES;
        // `write_buf` takes what it wrote out of `output`, so a write cut
        // short leaves exactly the rest.
        let written = {
            let (stream, output) = (&mut self.stream, &mut self.output);
            let write = async move {
                while !output.is_empty() {
                    match tokio::time::timeout(timeout, stream.write_buf(output)).await {
                        Ok(Ok(0)) => return Ok(Err(std::io::ErrorKind::WriteZero.into())),
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Ok(Err(err)),
                        Err(elapsed) => return Err(elapsed),
                    }
                }
                Ok(Ok(()))
            };
            let mut write = pin!(write);
            loop {
                tokio::select! {
                    written = &mut write => break written,
                    Some(response) = pending.next(), if !pending.is_terminated() => {
                        held.push(response);
                    }
                }
            }
        };
        match written {
            Ok(written) => written.map_err(|err| codec_error(err.into()))?,
            Err(_) => {
                self.stalled = true;
                return Err(not_reading());
            }
        }
        if grown {
            self.output = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(true)
    }
}

fn not_reading() -> WireError {
    WireError::new(
        ErrorCode::ProtocolError,
        "the client is not reading its responses",
    )
}

fn truncated() -> WireError {
    WireError::new(
        ErrorCode::ProtocolError,
        "the connection closed in the middle of a frame",
    )
}

/// Reads and checks the client's Hello (`None`: it closed before sending
/// a byte).
async fn handshake(wire: &mut Wire, ctx: &TcpContext) -> Result<Option<Hello>, WireError> {
    let first = tokio::time::timeout(ctx.limits.handshake_timeout, wire.next())
        .await
        .map_err(|_| {
            WireError::new(
                ErrorCode::ProtocolError,
                format!("no handshake within {:?}", ctx.limits.handshake_timeout),
            )
        })?;
    let first = first.map_err(|mut error| {
        if error.code == ErrorCode::PayloadTooLarge {
            error.message = format!(
                "a Hello frame is at most {HELLO_FRAME_BYTES} bytes: {}",
                error.message
            );
        }
        error
    });
    let hello = match first? {
        Some(ClientFrame::Hello(hello)) => hello,
        Some(ClientFrame::Request(_)) => {
            return Err(WireError::new(
                ErrorCode::ProtocolError,
                "the first frame must be Hello",
            ));
        }
        None => return Ok(None),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client {}",
                hello.protocol
            ),
        ));
    }
    if let Some(expected) = &ctx.auth_token {
        let presented = hello.auth_token.as_deref().unwrap_or("");
        if !expected.matches(presented) {
            let message = if hello.auth_token.is_none() {
                "this server needs an auth token in Hello"
            } else {
                "the auth token is wrong"
            };
            return Err(WireError::new(ErrorCode::Unauthorized, message));
        }
    }
    if let Some(placement) = &hello.placement {
        check_placement(placement)?;
    }
    Ok(Some(hello))
}

/// A placement ring the server can draw ids for: 1 to [`MAX_RING_NODES`]
/// nodes, each listed once (a repeated seed leaves every copy but the first
/// an empty share), and an owner among them.
fn check_placement(placement: &Placement) -> Result<(), WireError> {
    let nodes = placement.ring.len();
    if nodes == 0 || nodes > MAX_RING_NODES || placement.owner as usize >= nodes {
        return Err(WireError::new(
            ErrorCode::ProtocolError,
            format!(
                "placement must list 1 to {MAX_RING_NODES} nodes and an owner among them \
                 (got {nodes} nodes, owner {})",
                placement.owner
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(nodes);
    if let Some(seed) = placement.ring.iter().find(|seed| !seen.insert(**seed)) {
        return Err(WireError::new(
            ErrorCode::ProtocolError,
            format!(
                "placement lists node seed {seed:#018x} more than once; each node must appear once"
            ),
        ));
    }
    Ok(())
}

/// A handshaken connection's requests.
struct Requests<'a> {
    wire: &'a mut Wire,
    ctx: &'a TcpContext,
    metrics: &'a TcpMetrics,
    placement: Option<Placement>,
}

impl Requests<'_> {
    /// Serves requests until the client closes (after answering what it
    /// sent), breaks the protocol (after answering the requests started
    /// before) or idles out, or `shutdown` fires (after answering the
    /// requests already started; the complete ones read but not started
    /// are left unanswered, as the farewell then says).
    async fn serve(self, shutdown: &CancellationToken) -> Result<Ended, WireError> {
        let Self {
            wire,
            ctx,
            metrics,
            placement,
        } = self;
        let placement = placement.as_ref();
        let limits = &ctx.limits;
        let mut pending = FuturesUnordered::new();
        // Answers that completed while a write was under way.
        let mut held = Vec::new();
        let mut spare = None;
        // When a request last started, an answer last completed, a write
        // went through or bytes arrived: a connection waiting on a long
        // request (an events read) is not idle.
        let mut last_activity = Instant::now();
        let mut idle = pin!(tokio::time::sleep_until(
            last_activity + limits.idle_timeout
        ));
        // `reading`: the socket may bring more; `accepting`: requests read
        // are started (not after shutdown, nor after a frame that broke
        // the protocol: `broken`, sent once the requests started before it
        // are answered).
        let (mut reading, mut accepting) = (true, true);
        let mut broken = None;
        loop {
            let mut more = false;
            if accepting {
                let mut started = false;
                while pending.len() < limits.max_in_flight {
                    if wire.output.len() >= WRITE_BATCH_BYTES {
                        more = true;
                        break;
                    }
                    let request = match wire.buffered() {
                        Ok(Some(ClientFrame::Request(request))) => request,
                        Ok(Some(ClientFrame::Hello(_))) => {
                            broken = Some(WireError::new(
                                ErrorCode::ProtocolError,
                                "Hello may only be sent once",
                            ));
                            break;
                        }
                        Ok(None) => break,
                        Err(err) => {
                            broken = Some(err);
                            break;
                        }
                    };
                    started = true;
                    match start(&mut spare, answer(ctx, metrics, request, placement)) {
                        Ok(response) => wire.answer(response)?,
                        Err(future) => pending.push(future),
                    }
                }
                if started {
                    last_activity = Instant::now();
                }
                if broken.is_some() {
                    (reading, accepting) = (false, false);
                }
            }
            let mut answered = false;
            while let Some(Some(response)) = pending.next().now_or_never() {
                wire.answer(response)?;
                answered = true;
            }
            if wire
                .flush_while(limits.idle_timeout, &mut pending, &mut held)
                .await?
            {
                metrics.writes.increment(1);
                // A client reading its answers is not idle.
                last_activity = Instant::now();
            }
            for response in held.drain(..) {
                wire.answer(response)?;
                answered = true;
            }
            if answered {
                last_activity = Instant::now();
            }
            // An answer freed a slot: requests already read start now, not
            // once another answer or more of the socket comes.
            if more || answered || !wire.output.is_empty() {
                continue;
            }
            if !reading && pending.is_empty() {
                if let Some(err) = broken {
                    return Err(err);
                }
                // Every complete frame was answered; what is left is the
                // start of one the client never finished.
                if accepting && !wire.input.is_empty() {
                    return Err(truncated());
                }
                return Ok(Ended::Done);
            }
            tokio::select! {
                Some(response) = pending.next(), if !pending.is_empty() => {
                    wire.answer(response)?;
                    last_activity = Instant::now();
                }
                filled = wire.fill(), if reading && pending.len() < limits.max_in_flight => {
                    if filled? {
                        metrics.reads.increment(1);
                        // A client sending a request, however slowly, is
                        // not idle.
                        last_activity = Instant::now();
                    } else {
                        reading = false;
                    }
                }
                () = &mut idle, if pending.is_empty() => {
                    let deadline = last_activity + limits.idle_timeout;
                    if deadline <= Instant::now() {
                        return Ok(Ended::Idle);
                    }
                    idle.as_mut().reset(deadline);
                }
                () = shutdown.cancelled(), if accepting => (reading, accepting) = (false, false),
            }
        }
    }
}

/// Polls `future` once, in the box `spare` holds if any: its output, or
/// the boxed future when it has to wait. A box whose future completed
/// goes back to `spare` for the next one, so requests answered at once
/// allocate nothing.
fn start<F: Future>(spare: &mut Option<Pin<Box<F>>>, future: F) -> Result<F::Output, Pin<Box<F>>> {
    let mut boxed = match spare.take() {
        Some(mut reused) => {
            reused.set(future);
            reused
        }
        None => Box::pin(future),
    };
    match (&mut boxed).now_or_never() {
        Some(output) => {
            *spare = Some(boxed);
            Ok(output)
        }
        None => Err(boxed),
    }
}

async fn answer(
    ctx: &TcpContext,
    metrics: &TcpMetrics,
    request: Request,
    placement: Option<&Placement>,
) -> Response {
    let started = std::time::Instant::now();
    let Request {
        id: request_id,
        op,
        write,
    } = request;
    let op_index = op.index();
    let outcome = dispatch::execute(&ctx.service, op, write, placement).await;
    metrics.request(op_index, &outcome, started.elapsed());
    Response {
        id: request_id,
        outcome,
    }
}

async fn send(wire: &mut Wire, ctx: &TcpContext, frame: ServerFrame) -> Result<(), WireError> {
    wire.queue(frame)?;
    wire.flush(ctx.limits.idle_timeout).await.map(drop)
}

/// Sends a last error frame (best effort) and lets the connection drop.
async fn close_with(wire: &mut Wire, ctx: &TcpContext, error: WireError) {
    let _ = send(wire, ctx, ServerFrame::Fatal(error)).await;
}

fn codec_error(err: CodecError) -> WireError {
    let code = match err {
        CodecError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        CodecError::Malformed(_) | CodecError::Io(_) => ErrorCode::ProtocolError,
        CodecError::Encode(_) => ErrorCode::Internal,
    };
    WireError::new(code, err.to_string())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The server's side of a loopback connection (frames up to 4 MiB),
    /// and the client's.
    async fn wire_and_client() -> (Wire, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let wire = Wire::new(accepted.unwrap().0, 4 * KEEP_BUFFER_BYTES);
        (wire, client.unwrap())
    }

    /// An output buffer grown for a large answer is given back once the
    /// answer is written, not kept for the connection's life.
    #[tokio::test]
    async fn a_buffer_grown_for_a_large_answer_is_given_back() {
        let (mut wire, mut client) = wire_and_client().await;
        let large = 2 * KEEP_BUFFER_BYTES;
        wire.output.extend_from_slice(&vec![7; large]);
        let reader = tokio::spawn(async move {
            let mut received = vec![0; large];
            client.read_exact(&mut received).await.map(|_| received)
        });
        let flushed = wire.flush(Duration::from_secs(10)).await.unwrap();
        assert!(flushed);
        let received = reader.await.unwrap().unwrap();
        assert!(received.iter().all(|&byte| byte == 7));
        assert_eq!(wire.output.len(), 0);
        assert!(
            wire.output.capacity() <= READ_CHUNK,
            "kept {} bytes",
            wire.output.capacity()
        );
        // And the space was really given back, not just advanced past.
        wire.output.extend_from_slice(&[1]);
        assert!(wire.output.capacity() <= READ_CHUNK);
    }

    /// The input buffer grown for a large request is given back once the
    /// request is decoded.
    #[tokio::test]
    async fn a_buffer_grown_for_a_large_request_is_given_back() {
        let (mut wire, _client) = wire_and_client().await;
        let request = ClientFrame::Request(sessiond_proto::wire::Request {
            id: 1,
            op: sessiond_proto::wire::Op::Create {
                data: bytes::Bytes::from(vec![b'7'; 2 * KEEP_BUFFER_BYTES]),
                ttl_secs: None,
                user: None,
            },
            write: None,
        });
        let payload = sessiond_proto::codec::encode(&request).unwrap();
        wire.input
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.input.extend_from_slice(&payload);
        let decoded = wire.buffered().unwrap();
        assert!(matches!(decoded, Some(ClientFrame::Request(_))));
        drop(decoded);
        assert_eq!(wire.input.len(), 0);
        wire.input.reserve(1);
        assert!(
            wire.input.capacity() <= READ_CHUNK,
            "kept {} bytes",
            wire.input.capacity()
        );
    }
}
