//! One request on the fast path: a slot at an upstream, a pooled (or new)
//! connection to it, the head written in one piece, the response head read
//! within the response timeout, then the body relayed. Failures follow the
//! full proxy's rules ([`Attempts`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{Client, ClientIo};
use super::relay::{self, RelayError};
use super::request_head::RequestHead;
use super::response_head::{self, Parsed, ResponseHead};
use crate::balance::access_log::{CLIENT_GONE, Entry};
use crate::balance::answer::{Failure, upstream_removed};
use crate::balance::cutoffs::Cutoffs;
use crate::balance::proxy::{Attempts, ClientConn, Failed, Proxy, describe};
use crate::balance::raw_conns::{self, READ_CHUNK, RawConn};
use crate::balance::upstream::Upstream;

/// Longest response head read from an upstream.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;

/// Why no response head came back.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    /// The socket failed.
    #[error("{error}")]
    Io {
        /// What failed.
        error: std::io::Error,
        /// Whether any byte of a response had arrived.
        answered: bool,
    },
    /// The upstream closed the connection.
    #[error("the upstream closed the connection before the response head was complete")]
    Closed {
        /// Whether any byte of a response had arrived.
        answered: bool,
    },
    /// The head was malformed.
    #[error(transparent)]
    Malformed(#[from] response_head::Malformed),
    /// The head was over [`MAX_RESPONSE_HEAD`].
    #[error("the response head is over {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
}

impl HeadError {
    /// Whether the upstream sent no byte of an answer.
    fn unanswered(&self) -> bool {
        matches!(
            self,
            Self::Io {
                answered: false,
                ..
            } | Self::Closed { answered: false }
        )
    }
}

/// One request on its way.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The proxy.
    pub proxy: &'a Proxy,
    /// The client connection it came on.
    pub conn: &'a ClientConn,
    /// What the client asked.
    pub request: &'a RequestHead,
    /// The head the upstream gets.
    pub head: &'a [u8],
}

/// What the client got, for the access log.
#[derive(Debug, Default)]
struct Served {
    status: u16,
    bytes: u64,
    upstream: Option<Arc<Upstream>>,
}

/// A request's access log line, written when it is dropped: after the
/// answer, or when the request is cancelled.
struct Record<'a> {
    exchange: Exchange<'a>,
    started: Instant,
    served: Served,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        self.exchange.log(&self.served, self.started);
    }
}

impl Exchange<'_> {
    /// Serves the request to `client`, using `out` as the write buffer,
    /// and logs it (also when the balancer drops it unanswered at the end
    /// of a drain); `false` when the client connection must close (the
    /// answer said so, or it could not be sent whole).
    pub async fn run<C: ClientIo>(self, client: &mut Client<'_, C>, out: &mut Vec<u8>) -> bool {
        if self.proxy.access_log().is_none() {
            return self.serve(client, out, &mut Served::default()).await;
        }
        let mut record = Record {
            exchange: self,
            started: Instant::now(),
            served: Served::default(),
        };
        self.serve(client, out, &mut record.served).await
    }

    /// Writes the access log's line, if one is kept.
    fn log(self, served: &Served, started: Instant) {
        let Some(log) = self.proxy.access_log() else {
            return;
        };
        let text = |range: &Range<usize>| {
            std::str::from_utf8(self.head.get(range.clone()).unwrap_or_default()).ok()
        };
        let (method, target) = (text(&self.request.method), text(&self.request.target));
        let mut entry = Entry::now(
            self.conn.peer.ip(),
            method.unwrap_or_default(),
            target.unwrap_or_default(),
            started,
        );
        entry.status = if served.status == 0 {
            CLIENT_GONE
        } else {
            served.status
        };
        entry.bytes = served.bytes;
        entry.upstream = served.upstream.as_ref().map(|u| u.url.authority.as_str());
        entry.request_id = text(&self.request.request_id);
        log.record(&entry);
    }

    /// Whether the answer, written now, keeps the connection open: the
    /// client did not ask to close and the balancer is not shutting down.
    fn keep_alive(self) -> bool {
        !self.request.close && !self.proxy.is_draining()
    }

    async fn serve<C: ClientIo>(
        self,
        client: &mut Client<'_, C>,
        out: &mut Vec<u8>,
        served: &mut Served,
    ) -> bool {
        let (proxy, conn, request) = (self.proxy, self.conn, self.request);
        let connections = proxy.connections();
        let mut attempts = Attempts::new(request.idempotent);
        loop {
            // A client that leaves while its request waits for a slot or a
            // connection takes it back: nothing reaches an upstream.
            let slot = tokio::select! {
                biased;
                slot = attempts.slot(proxy) => slot,
                () = client.gone() => {
                    served.status = CLIENT_GONE;
                    return false;
                }
            };
            let slot = match slot {
                Ok(slot) => slot,
                Err(failure) => return self.answer(&failure, client, out, served).await,
            };
            let upstream = slot.upstream().clone();
            let key = conn.owner.key(upstream.id);
            let pooled = if attempts.needs_fresh_connection() {
                None
            } else {
                raw_conns::take(key, connections.idle_timeout)
            };
            let (mut raw, reused) = match pooled {
                Some(raw) => (raw, true),
                None => {
                    let open = RawConn::open(
                        &upstream.url,
                        connections.connect_timeout,
                        conn.owner.preamble(),
                    );
                    let opened = tokio::select! {
                        biased;
                        opened = open => opened,
                        () = client.gone() => {
                            served.status = CLIENT_GONE;
                            return false;
                        }
                    };
                    match opened {
                        Ok(raw) => (raw, false),
                        Err(err) => {
                            match attempts.failed(&upstream, &describe(&err), Failed::Connect) {
                                Ok(()) => continue,
                                Err(failure) => {
                                    return self.answer(&failure, client, out, served).await;
                                }
                            }
                        }
                    }
                }
            };
            let started = Instant::now();
            let exchanged = tokio::select! {
                biased;
                exchanged = tokio::time::timeout(
                    proxy.limits().response_timeout,
                    send_and_read_head(&mut raw, self, out),
                ) => exchanged,
                () = client.gone() => {
                    // Nothing is held against the upstream; its connection,
                    // with a request in flight, is closed.
                    served.status = CLIENT_GONE;
                    return false;
                }
                () = upstream.closed.cancelled() => {
                    return self.answer(&upstream_removed(), client, out, served).await;
                }
            };
            let response = match exchanged {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    let how = if reused && err.unanswered() {
                        Failed::KeepAliveRace
                    } else {
                        Failed::Exchange
                    };
                    match attempts.failed(&upstream, &err.to_string(), how) {
                        Ok(()) => continue,
                        Err(failure) => return self.answer(&failure, client, out, served).await,
                    }
                }
                Err(_) => {
                    let failure = proxy.timed_out(&upstream);
                    return self.answer(&failure, client, out, served).await;
                }
            };
            upstream.record_response(response.status, started.elapsed());
            served.status = response.status;
            served.upstream = Some(upstream.clone());
            let reusable = response.reusable;
            let finished = move |raw: Option<RawConn>| {
                if let Some(raw) = raw.filter(|_| reusable) {
                    raw_conns::give_back(key, raw);
                }
                drop(slot);
            };
            let cutoffs = Cutoffs {
                gap: proxy.limits().response_timeout,
                upstream: &upstream,
            };
            let relayed = relay::body(
                response.framing,
                raw,
                client,
                out,
                &mut served.bytes,
                cutoffs,
                finished,
            )
            .await;
            return match relayed {
                Ok(()) => response.keep_alive,
                Err(RelayError::Client) => false,
                Err(RelayError::Cut(cut)) if !cut.blames_upstream() => false,
                Err(err) => {
                    upstream.broke_mid_body(&err.to_string());
                    false
                }
            };
        }
    }

    /// Writes the balancer's own answer; `false` when the connection must
    /// close.
    async fn answer<C: ClientIo>(
        self,
        failure: &Failure,
        client: &mut Client<'_, C>,
        out: &mut Vec<u8>,
        served: &mut Served,
    ) -> bool {
        let keep_alive = self.keep_alive() && !failure.close;
        out.clear();
        let body = failure.write_http1(out, keep_alive, self.request.head_only);
        served.status = failure.status().as_u16();
        served.bytes = body as u64;
        client.write(out).await.is_ok() && keep_alive
    }
}

/// Writes `head` to the upstream and reads the response head (skipping
/// interim answers); the client's head is then in `out`, the body's first
/// bytes at the start of `raw`'s buffer.
async fn send_and_read_head(
    raw: &mut RawConn,
    exchange: Exchange<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, HeadError> {
    raw.stream
        .write_all(exchange.head)
        .await
        .map_err(|error| HeadError::Io {
            error,
            answered: false,
        })?;
    let mut answered = false;
    loop {
        if !raw.buf.is_empty() {
            let (head_only, keep_alive) = (exchange.request.head_only, exchange.keep_alive());
            match response_head::parse(&raw.buf, head_only, keep_alive, out)? {
                Parsed::Ready(response) => {
                    raw.buf.drain(..response.len);
                    return Ok(response);
                }
                Parsed::Interim(len) => {
                    raw.buf.drain(..len);
                    continue;
                }
                Parsed::Partial if raw.buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(HeadError::TooLarge);
                }
                Parsed::Partial => {}
            }
        }
        raw.buf.reserve(READ_CHUNK);
        match raw.stream.read_buf(&mut raw.buf).await {
            Ok(0) => return Err(HeadError::Closed { answered }),
            Ok(_) => answered = true,
            Err(error) => return Err(HeadError::Io { error, answered }),
        }
    }
}
