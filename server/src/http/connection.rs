//! One HTTP/1.1 connection: hyper with a bounded request head, the
//! connection's [`Deadline`], and graceful shutdown.

use std::convert::Infallible;
use std::pin::pin;

use axum::Router;
use axum::response::{IntoResponse, Response};
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sessiond_proto::ErrorCode;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::deadline::{Deadline, UntilSent, Watched};
use super::error::ApiError;
use super::limits::{HttpLimits, RESERVE_HEAD_TIMEOUT};
use super::read_whole;

/// Largest read buffer of a connection (hyper's default is about 400 KiB):
/// bodies stream through it to the handler.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Routes a connection in the health reserve may ask for.
const OPERATIONAL_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Which connection slot a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// One of `--max-http-connections`: the whole API, kept alive.
    General,
    /// One of the few past the cap: operational routes only, one request,
    /// and a short head timeout.
    Reserve,
}

/// Serves `stream` until the client leaves, a deadline passes, or the
/// server shuts down (in-flight requests finish first).
pub async fn serve(
    stream: TcpStream,
    router: Router,
    limits: &HttpLimits,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let header_timeout = match slot {
        Slot::General => limits.header_timeout,
        Slot::Reserve => limits.header_timeout.min(RESERVE_HEAD_TIMEOUT),
    };
    let deadline = Deadline::start(header_timeout, limits.idle_timeout);
    let service = {
        let deadline = deadline.clone();
        let max_connections = limits.max_connections;
        service_fn(move |request: Request<Incoming>| {
            deadline.request_started();
            let (router, deadline) = (router.clone(), deadline.clone());
            async move {
                let (request, read) = read_whole::watch(request);
                let mut response = if slot == Slot::Reserve
                    && !OPERATIONAL_ROUTES.contains(&request.uri().path())
                {
                    over_capacity(max_connections)
                } else {
                    match router.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                };
                read_whole::close_unless_read(&mut response, read.as_deref());
                deadline.response_started();
                let response = response.map(|body| UntilSent::new(body, deadline));
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_header_size(limits.max_head_bytes)
        .max_buf_size(limits.max_head_bytes.max(READ_BUFFER_BYTES))
        .header_read_timeout(None)
        .keep_alive(slot == Slot::General);
    let io = TokioIo::new(Watched::new(stream, deadline.clone()));
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut expired = pin!(deadline.expired());
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%err, "HTTP connection ended with an error");
                }
                return;
            }
            which = &mut expired => {
                metrics::counter!("sessiond_http_timeouts_total", "phase" => which.as_str())
                    .increment(1);
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

fn over_capacity(max_connections: usize) -> Response {
    let error = ApiError::new(
        ErrorCode::Overloaded,
        format!(
            "the node serves at most {max_connections} HTTP connections \
             (--max-http-connections); past it only {} are answered",
            OPERATIONAL_ROUTES.join(", ")
        ),
    );
    (super::NO_STORE, error).into_response()
}
