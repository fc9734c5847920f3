//! The HTTP accept loop: a cap on connections, a small reserve past it for
//! health checks, and a graceful end.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Slot};
use super::limits::{HttpLimits, RESERVE_CONNECTIONS};
use crate::net::{OpenConnections, accept};

/// Accepts connections until `shutdown` fires, then waits (at most
/// `drain_timeout`) for open connections to finish the requests they
/// already sent.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let limits = Arc::new(limits);
    let general = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(RESERVE_CONNECTIONS));
    let connections = OpenConnections::default();
    while let Some((stream, _peer)) = accept(&listener, &shutdown).await {
        let (permit, slot) = match general.clone().try_acquire_owned() {
            Ok(permit) => (permit, Slot::General),
            Err(_) => match reserve.clone().try_acquire_owned() {
                Ok(permit) => (permit, Slot::Reserve),
                Err(_) => {
                    // Closed at once: its descriptor is free again.
                    metrics::counter!("sessiond_http_refused_connections_total").increment(1);
                    continue;
                }
            },
        };
        let (router, limits, shutdown) = (router.clone(), limits.clone(), shutdown.clone());
        connections.spawn(async move {
            metrics::gauge!("sessiond_http_connections").increment(1.0);
            connection::serve(stream, router, &limits, slot, shutdown).await;
            metrics::gauge!("sessiond_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    // Closed now, not when the drain ends: a new connection is refused at
    // once instead of waiting in a backlog no one accepts.
    drop(listener);
    connections.drain(drain_timeout, "HTTP connections").await;
}
