//! The binary-protocol listener: one task per connection, a cap on
//! connections, and the same service layer as the HTTP API.

mod connection;
mod context;
mod dispatch;
mod telemetry;

pub use context::{TcpContext, TcpLimits};

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use sessiond_proto::ErrorCode;
use sessiond_proto::codec::FrameCodec;
use sessiond_proto::wire::{ClientFrame, ServerFrame, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::net::{OpenConnections, accept};
use telemetry::TcpMetrics;

/// Accepts connections until `shutdown` fires, then waits (at most
/// `drain_timeout`) for open connections to finish the requests they
/// already sent.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<TcpContext>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let connections = OpenConnections::default();
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let metrics = Arc::new(TcpMetrics::register());
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let (ctx, metrics) = (ctx.clone(), metrics.clone());
        let shutdown = shutdown.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => connections.spawn(async move {
                connection::run(stream, peer, &ctx, &metrics, shutdown).await;
                drop(slot);
            }),
            Err(_) => connections.spawn(refuse(stream, ctx)),
        };
    }
    // Closed now, not when the drain ends: a client's new connection is
    // refused at once instead of waiting in a backlog no one accepts.
    drop(listener);
    connections
        .drain(drain_timeout, "binary-protocol connections")
        .await;
}

/// Tells a client over the connection cap why it is being closed.
async fn refuse(stream: TcpStream, ctx: Arc<TcpContext>) {
    metrics::counter!("sessiond_tcp_refused_connections_total").increment(1);
    let mut writer = FramedWrite::new(
        stream,
        FrameCodec::<ClientFrame, ServerFrame>::new(ctx.limits.max_frame_bytes),
    );
    let error = WireError::new(
        ErrorCode::Overloaded,
        format!(
            "the node serves at most {} connections (--max-connections)",
            ctx.limits.max_connections
        ),
    );
    let _ = tokio::time::timeout(
        ctx.limits.handshake_timeout,
        writer.send(ServerFrame::Fatal(error)),
    )
    .await;
}
