//! The fast HTTP/1.1 path: a client connection (plain, or TLS that chose
//! HTTP/1.1) is served here, without hyper, for as long as its requests
//! are the common case (no body, no upgrade, nothing the checks refuse:
//! [`request_head`]). Heads
//! are parsed with httparse straight from the connection's buffer, the
//! upstream's head is written in one piece to a pooled upstream socket, and
//! the response comes back through one buffer: no header maps, no tasks,
//! no channels. The first request that is not the common case hands the
//! connection, with the bytes already read, to hyper and the full proxy
//! for the rest of its life.
//!
//! The rules are the full proxy's: the same rotation, queue, retries and
//! ejections ([`Attempts`](super::proxy::Attempts)), the same forwarded
//! headers, answers and timeouts, `Connection: close` once draining.

mod chunked;
mod client;
mod exchange;
mod relay;
mod request_head;
mod response_head;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::prefixed::Prefixed;
use super::proxy::{ClientConn, Proxy};
pub use client::ClientIo;
use client::{Client, READ_CHUNK, ReadAhead};
use exchange::Exchange;
use request_head::Parsed;

/// How a client connection left the fast path.
#[derive(Debug)]
pub enum Outcome<S> {
    /// It is closed (or the client went).
    Closed,
    /// A request needs the full proxy: hyper serves the connection from
    /// here, starting with the bytes already read.
    Handover(Prefixed<S>),
}

/// Serves `stream` while its requests are the common case; each request
/// head must arrive within `header_timeout` (also the keep-alive idle
/// limit), and once `drained` resolves (the balancer is shutting down) an
/// idle connection closes.
pub async fn serve<S: ClientIo>(
    mut stream: S,
    conn: &ClientConn,
    proxy: &Proxy,
    header_timeout: Duration,
    drained: impl Future<Output = ()>,
) -> Outcome<S> {
    let mut read_ahead = ReadAhead {
        bytes: Vec::with_capacity(READ_CHUNK),
        ended: false,
    };
    let mut upstream_head = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(READ_CHUNK);
    tokio::pin!(drained);
    let head_deadline = tokio::time::sleep(header_timeout);
    tokio::pin!(head_deadline);
    loop {
        head_deadline
            .as_mut()
            .reset(Instant::now() + header_timeout);
        let request = loop {
            let buf = &mut read_ahead.bytes;
            match request_head::parse(buf, proxy.limits().head, conn, &mut upstream_head) {
                Parsed::Ready(request) => break request,
                Parsed::Elsewhere => {
                    return Outcome::Handover(Prefixed::new(read_ahead.bytes, stream));
                }
                Parsed::Partial if buf.len() >= proxy.limits().head.max_total => {
                    return Outcome::Handover(Prefixed::new(read_ahead.bytes, stream));
                }
                Parsed::Partial => {}
            }
            buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = stream.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
                () = &mut head_deadline => return close(stream).await,
                () = &mut drained, if buf.is_empty() => return close(stream).await,
            }
        };
        read_ahead.bytes.drain(..request.len);
        let exchange = Exchange {
            proxy,
            conn,
            request: &request,
            head: &upstream_head,
        };
        let limit = proxy.limits().head.max_total;
        let mut client = Client::new(&mut stream, &mut read_ahead, limit);
        if !exchange.run(&mut client, &mut out).await {
            return close(stream).await;
        }
    }
}

/// Closes `stream` cleanly (a FIN; over TLS, a close_notify first), within
/// a second.
async fn close<S: ClientIo>(mut stream: S) -> Outcome<S> {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    Outcome::Closed
}
