//! One binary-protocol connection: handshake, then pipelined requests
//! answered as they complete, with a cap on requests in flight, an idle
//! timeout and a write timeout.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sessiond_proto::ErrorCode;
use sessiond_proto::codec::{CodecError, FrameCodec};
use sessiond_proto::wire::{
    ClientFrame, Hello, Outcome, PROTOCOL_VERSION, Placement, Request, Response, ServerFrame,
    Welcome, WireError,
};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::{TcpContext, dispatch};

type Codec = FrameCodec<ClientFrame, ServerFrame>;
type Reader = FramedRead<OwnedReadHalf, Codec>;
type Writer = FramedWrite<OwnedWriteHalf, Codec>;

/// Most nodes a client's placement ring may list.
const MAX_RING_NODES: usize = 1024;

/// Serves one connection until the client leaves, breaks the protocol,
/// idles out, or the server shuts down.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &TcpContext,
    shutdown: CancellationToken,
) {
    let (read, write) = stream.into_split();
    let max_frame = ctx.limits.max_frame_bytes;
    let mut reader = FramedRead::new(read, Codec::new(max_frame));
    let mut writer = FramedWrite::new(write, Codec::new(max_frame));
    let hello = match handshake(&mut reader, ctx).await {
        Ok(hello) => hello,
        Err(error) => {
            tracing::debug!(%peer, code = %error.code, "handshake refused: {}", error.message);
            close_with(&mut writer, ctx, error).await;
            return;
        }
    };
    let welcome = ServerFrame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        max_frame_bytes: max_frame as u64,
        shared_sessions: ctx.service.is_replicated(),
        max_ttl_secs: ctx.service.config().max_ttl_secs,
    });
    if send(&mut writer, ctx, welcome).await.is_err() {
        return;
    }
    metrics::gauge!("sessiond_tcp_connections").increment(1.0);
    if let Err(error) =
        serve_requests(&mut reader, &mut writer, ctx, hello.placement, &shutdown).await
    {
        tracing::debug!(%peer, code = %error.code, "closing connection: {}", error.message);
        metrics::counter!("sessiond_tcp_protocol_errors_total", "code" => error.code.as_str())
            .increment(1);
        close_with(&mut writer, ctx, error).await;
    }
    metrics::gauge!("sessiond_tcp_connections").decrement(1.0);
}

async fn handshake(reader: &mut Reader, ctx: &TcpContext) -> Result<Hello, WireError> {
    let first = tokio::time::timeout(ctx.limits.handshake_timeout, reader.next())
        .await
        .map_err(|_| {
            WireError::new(
                ErrorCode::ProtocolError,
                format!("no handshake within {:?}", ctx.limits.handshake_timeout),
            )
        })?;
    let hello = match first {
        Some(Ok(ClientFrame::Hello(hello))) => hello,
        Some(Ok(ClientFrame::Request(_))) => {
            return Err(WireError::new(
                ErrorCode::ProtocolError,
                "the first frame must be Hello",
            ));
        }
        Some(Err(err)) => return Err(codec_error(err)),
        None => {
            return Err(WireError::new(
                ErrorCode::ProtocolError,
                "closed before Hello",
            ));
        }
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
    if let Some(expected) = ctx.auth_token.as_deref() {
        let presented = hello.auth_token.as_deref().unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
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
    Ok(hello)
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

async fn serve_requests(
    reader: &mut Reader,
    writer: &mut Writer,
    ctx: &TcpContext,
    placement: Option<Placement>,
    shutdown: &CancellationToken,
) -> Result<(), WireError> {
    let mut in_flight = FuturesUnordered::new();
    let mut idle = pin!(tokio::time::sleep(ctx.limits.idle_timeout));
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            Some(response) = in_flight.next(), if !in_flight.is_empty() => {
                writer.feed(ServerFrame::Response(response)).await.map_err(codec_error)?;
                // Batch whatever else is ready into the same write.
                while let Some(Some(response)) = in_flight.next().now_or_never() {
                    writer.feed(ServerFrame::Response(response)).await.map_err(codec_error)?;
                }
                flush(writer, ctx).await?;
            }
            frame = reader.next(), if reading && in_flight.len() < ctx.limits.max_in_flight => {
                match frame {
                    Some(Ok(ClientFrame::Request(request))) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + ctx.limits.idle_timeout);
                        in_flight.push(answer(ctx, request, placement.as_ref()));
                    }
                    Some(Ok(ClientFrame::Hello(_))) => {
                        return Err(WireError::new(ErrorCode::ProtocolError, "Hello may only be sent once"));
                    }
                    Some(Err(err)) => return Err(codec_error(err)),
                    None => reading = false,
                }
            }
            () = &mut idle, if in_flight.is_empty() => {
                return Err(WireError::new(
                    ErrorCode::ProtocolError,
                    format!("idle for {:?}; closing", ctx.limits.idle_timeout),
                ));
            }
            () = shutdown.cancelled(), if reading => reading = false,
        }
    }
    Ok(())
}

async fn answer(ctx: &TcpContext, request: Request, placement: Option<&Placement>) -> Response {
    let started = Instant::now();
    let Request {
        id: request_id,
        op,
        write,
    } = request;
    let name = op.name();
    let outcome = dispatch::execute(&ctx.service, op, write, placement).await;
    let label = match &outcome {
        Outcome::Error(error) => error.code.as_str(),
        _ => "ok",
    };
    metrics::histogram!("sessiond_tcp_request_duration_seconds", "op" => name)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("sessiond_tcp_requests_total", "op" => name, "outcome" => label).increment(1);
    Response {
        id: request_id,
        outcome,
    }
}

async fn send(writer: &mut Writer, ctx: &TcpContext, frame: ServerFrame) -> Result<(), WireError> {
    writer.feed(frame).await.map_err(codec_error)?;
    flush(writer, ctx).await
}

async fn flush(writer: &mut Writer, ctx: &TcpContext) -> Result<(), WireError> {
    match tokio::time::timeout(ctx.limits.idle_timeout, writer.flush()).await {
        Ok(result) => result.map_err(codec_error),
        Err(_) => Err(WireError::new(
            ErrorCode::ProtocolError,
            "the client is not reading its responses",
        )),
    }
}

/// Sends a last error frame (best effort) and lets the connection drop.
async fn close_with(writer: &mut Writer, ctx: &TcpContext, error: WireError) {
    let _ = send(writer, ctx, ServerFrame::Fatal(error)).await;
}

fn codec_error(err: CodecError) -> WireError {
    let code = match err {
        CodecError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        CodecError::Malformed(_) | CodecError::Io(_) => ErrorCode::ProtocolError,
        CodecError::Encode(_) => ErrorCode::Internal,
    };
    WireError::new(code, err.to_string())
}
