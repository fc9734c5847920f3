//! The binary-protocol listener: one task per connection (on the node's
//! runtime, or on an event-loop thread of its own: [`TcpWorkers`]), a cap
//! on connections, and the same service layer as the HTTP API.

mod connection;
mod context;
mod dispatch;
mod telemetry;
mod workers;

pub use context::{TcpContext, TcpLimits};
pub use workers::TcpWorkers;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::SinkExt;
use sessiond_proto::ErrorCode;
use sessiond_proto::codec::FrameCodec;
use sessiond_proto::wire::{ClientFrame, ServerFrame, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::accept;
use telemetry::TcpMetrics;

/// Accepts connections until `shutdown` fires, each served on one of
/// `workers` (or here, without workers), then waits for open connections
/// to finish the requests they already sent.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<TcpContext>,
    workers: &TcpWorkers,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let metrics = Arc::new(TcpMetrics::register());
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let accepted = Accepted {
            peer,
            slot: slots.clone().try_acquire_owned().ok(),
            ctx: ctx.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let Some((runtime, placed)) = workers.place() else {
            connections.spawn(accepted.serve(stream));
            continue;
        };
        // Registered again with the worker's event loop.
        match stream.into_std() {
            Ok(stream) => connections.spawn_on(
                async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => accepted.serve(stream).await,
                        Err(err) => {
                            tracing::warn!(%peer, %err, "a worker cannot take a connection")
                        }
                    }
                    drop(placed);
                },
                runtime,
            ),
            Err(err) => {
                tracing::warn!(%peer, %err, "cannot hand a connection to a worker");
                continue;
            }
        };
    }
    connections.close();
    connections.wait().await;
}

/// An accepted connection with what serving it takes.
struct Accepted {
    peer: SocketAddr,
    /// Its place under `--max-connections`, if there was one.
    slot: Option<OwnedSemaphorePermit>,
    ctx: Arc<TcpContext>,
    metrics: Arc<TcpMetrics>,
    shutdown: CancellationToken,
}

impl Accepted {
    /// Serves the connection, or refuses it when it got no slot.
    async fn serve(self, stream: TcpStream) {
        match self.slot {
            Some(_slot) => {
                connection::run(stream, self.peer, &self.ctx, &self.metrics, self.shutdown).await;
            }
            None => refuse(stream, &self.ctx).await,
        }
    }
}

/// Tells a client over the connection cap why it is being closed.
async fn refuse(stream: TcpStream, ctx: &TcpContext) {
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
