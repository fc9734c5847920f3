//! The proxy: checks each request, forwards it to the next upstream in
//! rotation (waiting in the bounded queue when every upstream is at its
//! cap), retries where it is safe, and maps failures to the balancer's own
//! answers. A failure of the client's (a broken or slow upload) is never
//! counted against an upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri, Version, request};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::{AccessLog, Logged, Pending};
use super::answer::{self, Failure, FailureKind};
use super::checks::{self, HeadLimits};
use super::client_body::{BodyLimits, ClientBodyError};
use super::client_slots::ClientSlot;
use super::pool::{Pick, Pool};
use super::replay::UpstreamBody;
use super::replay::{Replayable, Sent, UploadStalled};
use super::response::ClientBody;
use super::upstream::{InFlight, Upstream, UpstreamUrl};
use super::upstream_conns::{Connections, Lent, Owner, SendError};

/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1;
/// `HTTP2-Settings`, RFC 7540 3.2.1, goes only with an `h2c` upgrade, which
/// is not forwarded either).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// Largest over-limit body read and dropped so the client sees its 413.
const DRAIN_MAX_BYTES: u64 = 256 << 20;
/// Longest time spent reading an over-limit body before answering 413.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `request`'s body to its end, keeping none of it.
async fn drop_body(request: Request<Incoming>) {
    let mut body = request.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}

/// Timeouts and limits of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Time an upstream has to send response headers.
    pub response_timeout: Duration,
    /// Request body limits.
    pub body: BodyLimits,
    /// Request head limits.
    pub head: HeadLimits,
    /// Requests waiting for a slot when every upstream is at its cap.
    pub queue: usize,
    /// Longest wait in that queue.
    pub queue_timeout: Duration,
}

/// One client connection, as the proxy sees it.
#[derive(Debug)]
pub struct ClientConn {
    /// The client's address (from the PROXY header, when one was read).
    pub peer: SocketAddr,
    /// Whether it came over TLS.
    pub https: bool,
    /// Whose upstream connections its requests use: the worker's shared
    /// ones, or its own when they carry a PROXY header naming it.
    pub owner: Owner,
    /// Its place under `--max-client-conns`, held as long as anything
    /// serves it: its requests, or the tunnel an upgrade made of it
    /// (`None` in unit tests).
    pub _slot: Option<ClientSlot>,
}

/// The proxy and its upstream connection pool.
#[derive(Debug)]
pub struct Proxy {
    pool: Arc<Pool>,
    connections: Connections,
    limits: ProxyLimits,
    draining: CancellationToken,
    tunnels: TaskTracker,
    access_log: Option<Arc<AccessLog>>,
}

impl Proxy {
    /// A proxy over `pool` sending over `connections`; once `draining` is
    /// cancelled, its HTTP/1 answers close their connection. Upgraded
    /// connections run on `tunnels`; each request is written to
    /// `access_log`, if any.
    pub fn new(
        pool: Arc<Pool>,
        connections: Connections,
        limits: ProxyLimits,
        draining: CancellationToken,
        tunnels: TaskTracker,
        access_log: Option<Arc<AccessLog>>,
    ) -> Self {
        Self {
            pool,
            connections,
            limits,
            draining,
            tunnels,
            access_log,
        }
    }

    /// Proxies one client request.
    pub async fn handle(
        &self,
        conn: &Arc<ClientConn>,
        request: Request<Incoming>,
    ) -> Result<Response<Logged<ClientBody>>, Infallible> {
        let version = request.version();
        let mut noted = self.access_log.as_ref().map(|log| {
            let uri = request.uri();
            Box::new(Pending {
                log: log.clone(),
                client: conn.peer.ip(),
                method: request.method().to_string(),
                target: uri
                    .path_and_query()
                    .map_or_else(|| uri.to_string(), ToString::to_string),
                status: 0,
                upstream: None,
                request_id: None,
                started: Instant::now(),
            })
        });
        let mut response = match self.proxy(conn, request, &mut noted).await {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
        };
        // Not on a 101: its `Connection: upgrade` is the switch itself.
        if self.draining.is_cancelled()
            && version < Version::HTTP_2
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(pending) = &mut noted {
            pending.status = response.status().as_u16();
        }
        Ok(response.map(|body| Logged::new(body, noted)))
    }

    /// The access log, if one is kept.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_deref()
    }

    /// Proxies `request`; notes in `noted` (when logging) the request id
    /// the app saw and the upstream that answered.
    async fn proxy(
        &self,
        conn: &Arc<ClientConn>,
        mut request: Request<Incoming>,
        noted: &mut Option<Box<Pending>>,
    ) -> Result<Response<ClientBody>, Failure> {
        checks::check(&request, self.limits.head)?;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = declared.filter(|&length| length > self.limits.body.max_bytes) {
            // Keep reading (and dropping) what the client sends while the
            // answer goes out, bounded, so the client sees the 413 instead
            // of a connection reset under its upload.
            if length <= DRAIN_MAX_BYTES {
                tokio::spawn(tokio::time::timeout(DRAIN_TIMEOUT, drop_body(request)));
            }
            return Err(self.client_failure(ClientBodyError::TooLarge));
        }
        let client_upgrade =
            is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        ensure_request_id(&mut parts.headers);
        if let Some(pending) = noted {
            pending.request_id = parts
                .headers
                .get(REQUEST_ID)
                .and_then(|id| id.to_str().ok())
                .map(str::to_owned);
        }
        let body = Replayable::new(body, self.limits.body);
        let (mut response, slot, lent, upload) = self.forward(&parts, conn, &body).await?;
        if let Some(pending) = noted {
            pending.upstream = Some(slot.upstream().url.authority.to_string());
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            self.tunnels.spawn(tunnel(
                client_upgrade,
                hyper::upgrade::on(&mut response),
                slot,
                conn.clone(),
            ));
            return Ok(response.map(|body| ClientBody::Upstream {
                body,
                slot: None,
                lent: None,
                upload: None,
                watch: None,
            }));
        }
        // Framed both ways, the chunked framing wins (hyper reads it so)
        // and the length must not be passed on (RFC 9112, 6.3: hyper's
        // server would cut the body to it); the upstream connection is not
        // used again.
        let framed_both_ways = response.headers().contains_key(header::TRANSFER_ENCODING)
            && response
                .headers_mut()
                .remove(header::CONTENT_LENGTH)
                .is_some();
        single_content_length(response.headers_mut());
        strip_hop_by_hop(response.headers_mut());
        let lent = (!framed_both_ways).then_some(lent);
        let gap = self.limits.response_timeout;
        Ok(response.map(|body| ClientBody::upstream(body, slot, lent, upload, gap)))
    }

    /// The answer to a client whose upload failed: its own fault, so no
    /// upstream is blamed; the connection closes.
    fn client_failure(&self, error: ClientBodyError) -> Failure {
        let failure = match error {
            ClientBodyError::TooLarge => Failure::new(
                FailureKind::PayloadTooLarge,
                format!(
                    "the request body is over the {}-byte limit (--max-body-bytes)",
                    self.limits.body.max_bytes
                ),
            ),
            ClientBodyError::Timeout => Failure::new(
                FailureKind::BodyTimeout,
                "the request body arrived too slowly",
            ),
            ClientBodyError::Broken => Failure::new(
                FailureKind::BadRequest,
                "the request body was cut short or malformed",
            ),
        };
        failure.closing()
    }

    /// A slot at some upstream not in `tried`, waiting in the queue while
    /// all are full.
    async fn slot(&self, tried: &[u64]) -> Result<InFlight, Option<Failure>> {
        let overloaded = |why: &str| {
            Failure::new(
                FailureKind::Overloaded,
                format!("every upstream is at its connection limit and {why}"),
            )
        };
        match self.pool.pick(tried) {
            Pick::Chosen(slot) => return Ok(slot),
            Pick::Nothing => return Err(None),
            Pick::Full => {}
        }
        let Some(place) = self.pool.capacity().join(self.limits.queue) else {
            return Err(Some(overloaded("the queue is full")));
        };
        let deadline = tokio::time::Instant::now() + self.limits.queue_timeout;
        loop {
            let notified = place.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.pool.pick(tried) {
                Pick::Chosen(slot) => return Ok(slot),
                Pick::Nothing => return Err(None),
                Pick::Full => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Some(overloaded("the wait in the queue timed out")));
            }
        }
    }

    /// The answer when `upstream` sent no response headers in time (it is
    /// not retried: the request may be running there).
    pub fn timed_out(&self, upstream: &Upstream) -> Failure {
        let detail = format!(
            "sent no response headers within {:?}",
            self.limits.response_timeout
        );
        Self::upstream_timeout(upstream, detail)
    }

    /// The answer when `upstream` stopped taking the request body for the
    /// response timeout (it is not retried: the body is partly sent).
    fn upload_stalled(&self, upstream: &Upstream) -> Failure {
        let detail = format!(
            "took none of the request body for {:?}",
            self.limits.response_timeout
        );
        Self::upstream_timeout(upstream, detail)
    }

    /// A 504 for `upstream`'s `detail`, logged and recorded (not ejecting).
    fn upstream_timeout(upstream: &Upstream, detail: String) -> Failure {
        tracing::warn!(upstream = %upstream.url, "{detail}");
        upstream.record_failure(&detail);
        Failure::new(
            FailureKind::UpstreamTimeout,
            format!("the upstream {detail}"),
        )
    }

    /// The limits it works to.
    pub fn limits(&self) -> &ProxyLimits {
        &self.limits
    }

    /// Its upstream connection settings.
    pub fn connections(&self) -> Connections {
        self.connections
    }

    /// Whether the balancer is shutting down (answers close their
    /// connection).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Tries upstreams in rotation until one answers or retrying is unsafe.
    async fn forward(
        &self,
        parts: &request::Parts,
        conn: &ClientConn,
        body: &Replayable,
    ) -> Result<(Response<Incoming>, InFlight, Lent, Sent), Failure> {
        let mut attempts = Attempts::new(parts.method.is_idempotent());
        let mut headers = Some(forwarded_headers(parts, conn));
        loop {
            let slot = attempts.slot(self).await?;
            let upstream = slot.upstream().clone();
            let Some((attempt_body, sent)) = body.attempt() else {
                return Err(attempts.last_failure());
            };
            // The first attempt takes the headers; a retry, rare, copies
            // them from the client's again.
            let attempt_headers = headers
                .take()
                .unwrap_or_else(|| forwarded_headers(parts, conn));
            let outgoing = upstream_request(parts, attempt_headers, &upstream.url, attempt_body);
            let started = Instant::now();
            // The response timeout runs from the moment the body is sent
            // whole: a slow upload is not the upstream's fault.
            let uploaded = sent.clone();
            let response_deadline = async {
                let stalled = sent.wait(self.limits.response_timeout).await;
                if stalled.is_ok() {
                    tokio::time::sleep(self.limits.response_timeout).await;
                }
                stalled
            };
            let exchange = self.connections.send(
                &conn.owner,
                (upstream.id, &upstream.url),
                outgoing,
                attempts.needs_fresh_connection(),
            );
            let result = tokio::select! {
                biased;
                result = exchange => Ok(result),
                stalled = response_deadline => Err(Unanswered::Deadline(stalled)),
                () = upstream.closed.cancelled() => Err(Unanswered::Removed),
            };
            let err = match result {
                Ok(Ok((response, lent))) => {
                    upstream.record_response(response.status().as_u16(), started.elapsed());
                    return Ok((response, slot, lent, uploaded));
                }
                Err(Unanswered::Deadline(Ok(()))) => return Err(self.timed_out(&upstream)),
                Err(Unanswered::Deadline(Err(UploadStalled))) => {
                    return Err(self.upload_stalled(&upstream));
                }
                Err(Unanswered::Removed) => return Err(answer::upstream_removed()),
                Ok(Err(err)) => err,
            };
            let (detail, failed) = match &err {
                SendError::Connect(err) => (describe(err), Failed::Connect),
                SendError::Exchange { error, .. } => {
                    if let Some(error) = ClientBodyError::find(error) {
                        tracing::debug!(upstream = %upstream.url, %error, "client upload failed");
                        return Err(self.client_failure(error));
                    }
                    let failed = if err.is_keep_alive_race() {
                        Failed::KeepAliveRace
                    } else if !uploaded.is_done() {
                        Failed::UploadCut
                    } else {
                        Failed::Exchange
                    };
                    (describe(error), failed)
                }
            };
            attempts.failed(&upstream, &detail, failed)?;
        }
    }
}

/// Why an attempt at an upstream ended with no answer.
enum Unanswered {
    /// The response timeout: the upstream answered nothing in time once
    /// the body was sent (`Ok`), or stopped taking the body (`Err`).
    Deadline(Result<(), UploadStalled>),
    /// The upstream was removed (drained past `--drain-timeout`).
    Removed,
}

/// How an attempt at an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// No connection: nothing reached the upstream.
    Connect,
    /// A pooled connection closed under the request before any byte of a
    /// response: no sign of a sick upstream.
    KeepAliveRace,
    /// The exchange broke while the client's body was still on its way:
    /// maybe the app gave up on the upload (its own size or time limit),
    /// no sign of a sick upstream (its health checks judge it).
    UploadCut,
    /// The exchange broke, or the response was malformed.
    Exchange,
}

/// The attempts at one request: the upstreams that failed it, whether it
/// was sent again, and the answer if no attempt succeeds.
#[derive(Debug)]
pub struct Attempts {
    idempotent: bool,
    tried: Vec<u64>,
    replayed: bool,
    /// A pooled connection was found closed under a request: connections
    /// pooled with it (after the same burst) reach the app's keep-alive
    /// timeout together, so the replay opens a new one.
    fresh_connection: bool,
    last_failure: Option<Failure>,
}

impl Attempts {
    /// No attempt yet at a request that may (`idempotent`) or may not be
    /// sent twice.
    pub fn new(idempotent: bool) -> Self {
        Self {
            idempotent,
            tried: Vec::new(),
            replayed: false,
            fresh_connection: false,
            last_failure: None,
        }
    }

    /// Whether the next attempt must open a new connection rather than
    /// take an idle one (after the keep-alive race).
    pub fn needs_fresh_connection(&self) -> bool {
        self.fresh_connection
    }

    /// A slot at an upstream not tried yet, or the answer.
    pub async fn slot(&mut self, proxy: &Proxy) -> Result<InFlight, Failure> {
        proxy.slot(&self.tried).await.map_err(|failure| {
            failure
                .or_else(|| self.last_failure.take())
                .unwrap_or_else(answer::no_upstream)
        })
    }

    /// The answer after the last failed attempt.
    pub fn last_failure(&mut self) -> Failure {
        self.last_failure.take().unwrap_or_else(answer::bad_gateway)
    }

    /// Records an attempt at `upstream` that failed (`detail`, for the log
    /// and the status page): ejects the upstream unless it was the
    /// keep-alive race or an upload cut short. `Ok` when another attempt is
    /// safe: nothing reached the upstream, or an idempotent request died
    /// mid-way the first time.
    pub fn failed(
        &mut self,
        upstream: &Upstream,
        detail: &str,
        how: Failed,
    ) -> Result<(), Failure> {
        // A pooled connection closed under the request is no sign of a
        // sick upstream (a replay may go to it again, on a new connection),
        // nor is an upload the client cut short: neither is counted as the
        // upstream's error.
        if matches!(how, Failed::KeepAliveRace | Failed::UploadCut) {
            tracing::debug!(upstream = %upstream.url, error = %detail, "upstream request failed, not the upstream's fault");
        } else {
            tracing::warn!(upstream = %upstream.url, error = %detail, "upstream request failed");
            upstream.record_failure(detail);
            upstream.eject(detail);
            self.tried.push(upstream.id);
        }
        self.fresh_connection |= how == Failed::KeepAliveRace;
        let connect = how == Failed::Connect;
        self.last_failure = Some(if connect {
            Failure::new(
                FailureKind::NoUpstream,
                "no upstream accepted the connection",
            )
        } else {
            answer::bad_gateway()
        });
        if connect || (self.idempotent && !self.replayed) {
            self.replayed |= !connect;
            return Ok(());
        }
        Err(self.last_failure())
    }
}

/// The header that names one client request, the same on every attempt.
const REQUEST_ID: &str = "x-request-id";

/// Gives the request an `X-Request-Id` unless the client sent one. A retry
/// carries the same id, so an app can recognise a request it has already
/// handled (the `cart` example counts a visit once however often it is
/// retried).
fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    if let Ok(id) = HeaderValue::from_bytes(&new_request_id()) {
        headers.insert(REQUEST_ID, id);
    }
}

/// A new request id: 128 random bits in hex.
pub fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (index, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((random >> (4 * (31 - index))) & 0xf) as usize];
    }
    id
}

/// The error and its causes in one line.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// An upstream's `Content-Length: 3, 3` (a list of one length, which hyper
/// takes, refusing lists of different ones) goes on as `3`: RFC 9110 8.6
/// forbids passing the list on.
fn single_content_length(headers: &mut HeaderMap) {
    let single = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.split_once(','))
        .and_then(|(first, _)| HeaderValue::from_str(first.trim()).ok());
    if let Some(single) = single {
        headers.insert(header::CONTENT_LENGTH, single);
    }
}

/// Whether the `Upgrade` value `protocols` names HTTP/2 over cleartext.
fn names_h2c(protocols: &HeaderValue) -> bool {
    protocols.to_str().map_or(true, |text| {
        text.split(',')
            .any(|protocol| protocol.trim().eq_ignore_ascii_case("h2c"))
    })
}

/// Whether `name` is a hop-by-hop header (any case).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, no removal.
    let any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The headers every attempt sends: the client's, minus hop-by-hop
/// headers, plus `X-Forwarded-*`, `Host` kept (or taken from an
/// absolute-form target). Made once per request, whatever the retries.
fn forwarded_headers(parts: &request::Parts, conn: &ClientConn) -> HeaderMap {
    let mut headers = parts.headers.clone();
    // An `h2c` upgrade is not forwarded (the request goes on as a plain
    // one): a tunnel to an upstream that takes it would carry requests the
    // balancer never saw.
    let upgrade = is_upgrade(&headers)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|protocol| !names_h2c(protocol));
    // The balancer answers the expectation itself (hyper sends the client
    // `100 Continue` as the body is first read, and the body goes on at
    // once): an upstream told to expect may answer before reading the
    // body, and then take it, sent unasked, for a request of its own.
    headers.remove(header::EXPECT);
    // The id the access log records reaches the app even if `Connection`
    // names it (as a hop-by-hop header it would be dropped).
    let request_id = headers.get(REQUEST_ID).cloned();
    strip_hop_by_hop(&mut headers);
    strip_underscored(&mut headers);
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID, id);
    }
    join_cookies(&mut headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let mut forwarded_for = Vec::with_capacity(64);
    for value in headers.get_all(&X_FORWARDED_FOR) {
        forwarded_for.extend_from_slice(value.as_bytes());
        forwarded_for.extend_from_slice(b", ");
    }
    // An IP address always writes; the buffer is a Vec.
    let _ = std::io::Write::write_fmt(&mut forwarded_for, format_args!("{}", conn.peer.ip()));
    if let Ok(value) = HeaderValue::from_bytes(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.https { "https" } else { "http" }),
    );
    // An absolute-form target (or HTTP/2's :authority) names the host;
    // otherwise the (single, checked) Host header does.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    // Only the balancer's: a request that names no host (HTTP/1.0
    // without Host) forwards none.
    headers.remove(X_FORWARDED_HOST);
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(header::HOST, host);
    }
    headers
}

/// Drops the headers whose name holds an underscore, as nginx does by
/// default: CGI-style apps (PHP, WSGI, Rack) read `X_Forwarded_For` as
/// the `X-Forwarded-For` the balancer sets, so a client could name its
/// own address.
fn strip_underscored(headers: &mut HeaderMap) {
    let underscored: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        headers.remove(name);
    }
}

/// Joins the cookie fields of a request into one `Cookie` header, with
/// "; " between them: an HTTP/2 client may split its cookies over several
/// fields (RFC 9113 8.2.3, as browsers do), and an HTTP/1.1 upstream
/// expects one header (RFC 6265 5.4): many read only the first, and would
/// miss the session cookie.
fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if cookies.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
        headers.insert(header::COOKIE, joined);
    }
}

/// The request as the upstream gets it: same method, the path and query
/// as an origin-form target (RFC 9112 3.2.1: what a server expects from a
/// client, not the absolute form meant for forward proxies), the
/// [`forwarded_headers`] (with `Host: upstream` when an HTTP/1.0 client
/// named no host: HTTP/1.1 requires one), HTTP/1.1.
fn upstream_request(
    parts: &request::Parts,
    mut headers: HeaderMap,
    upstream: &UpstreamUrl,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(upstream.authority.as_str())
    {
        headers.insert(header::HOST, host);
    }
    // A body of unknown length goes chunked whatever the method: left to
    // choose, the connection sends a GET or HEAD without it.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/"));
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = Uri::from(target);
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = headers;
    outgoing
}

/// Splices an upgraded client connection to the upgraded upstream one,
/// holding the upstream's slot and the client connection's place under
/// `--max-client-conns` while it is open; closed when the upstream leaves
/// the pool.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    slot: InFlight,
    conn: Arc<ClientConn>,
) {
    let closed = slot.upstream().closed.clone();
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(err) = copied {
                        tracing::debug!(%err, "upgraded connection ended");
                    }
                }
                () = closed.cancelled() => {
                    tracing::info!("upgraded connection closed: its upstream left the pool");
                }
            }
        }
        Err(err) => tracing::debug!(%err, "upgrade failed"),
    }
    drop((slot, conn));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain client connection from 192.0.2.7.
    fn client() -> ClientConn {
        ClientConn {
            peer: "192.0.2.7:5555".parse().unwrap(),
            https: false,
            owner: Owner::shared(),
            _slot: None,
        }
    }

    #[test]
    fn an_http_1_0_request_without_host_gets_the_upstreams() {
        let request = Request::builder()
            .uri("/ten")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let conn = client();
        let upstream = UpstreamUrl::parse("http://127.0.0.1:3000").unwrap();
        let headers = forwarded_headers(&parts, &conn);
        let outgoing = upstream_request(&parts, headers, &upstream, UpstreamBody::Empty);
        assert_eq!(outgoing.headers()[header::HOST], "127.0.0.1:3000");
        assert_eq!(outgoing.uri(), "/ten");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn a_request_id_is_added_unless_the_client_sent_one() {
        let mut headers = HeaderMap::new();
        ensure_request_id(&mut headers);
        let made = headers[REQUEST_ID].to_str().unwrap_or_default().to_owned();
        assert_eq!(made.len(), 32);
        ensure_request_id(&mut headers);
        assert_eq!(headers[REQUEST_ID], made.as_str());
        let mut given = HeaderMap::new();
        given.insert(REQUEST_ID, HeaderValue::from_static("client-7"));
        ensure_request_id(&mut given);
        assert_eq!(given[REQUEST_ID], "client-7");
    }

    #[test]
    fn forwarded_headers_are_added_and_host_is_kept() {
        let request = Request::builder()
            .uri("/cart?x=1")
            .header(header::HOST, "shop.example")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x_forwarded_for", "6.6.6.6")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let conn = client();
        let headers = forwarded_headers(&parts, &conn);
        assert!(!headers.contains_key("x_forwarded_for"), "{headers:?}");
        let upstream = UpstreamUrl::parse("http://127.0.0.1:3000").unwrap();
        let outgoing = upstream_request(&parts, headers, &upstream, UpstreamBody::Empty);
        assert_eq!(outgoing.uri(), "/cart?x=1");
        let headers = outgoing.headers();
        assert_eq!(headers[header::HOST], "shop.example");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
    }
}
