//! The proxy: forwards each request to the next upstream in rotation,
//! retries where it is safe, and maps upstream failures to 502/503/504.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri, Version, request};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::pool::Pool;
use super::replay::Replayable;
use super::upstream::UpstreamUrl;
use super::{ClientBody, UpstreamBody};

/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Largest over-limit body read and dropped so the client sees its 413.
const DRAIN_MAX_BYTES: u64 = 256 << 20;
/// Longest time spent reading an over-limit body before answering 413.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeouts and limits of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Time an upstream has to send response headers.
    pub response_timeout: Duration,
    /// Idle pooled upstream connections are closed after this.
    pub idle_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: u64,
}

/// The proxy and its upstream connection pool.
#[derive(Debug)]
pub struct Proxy {
    pool: Arc<Pool>,
    client: Client<HttpConnector, UpstreamBody>,
    limits: ProxyLimits,
}

/// How a proxied request ended without an upstream response.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// An HTTP/1.1 client with a keep-alive connection pool per upstream.
pub fn upstream_client(limits: &ProxyLimits) -> Client<HttpConnector, UpstreamBody> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(limits.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(limits.idle_timeout)
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

impl Proxy {
    /// A proxy over `pool`, with its own upstream connection pool.
    pub fn new(pool: Arc<Pool>, limits: ProxyLimits) -> Self {
        Self {
            pool,
            client: upstream_client(&limits),
            limits,
        }
    }

    /// Proxies one client request.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Result<Response<ClientBody>, Infallible> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = declared.filter(|&length| length > self.limits.max_body_bytes) {
            // Keep reading (and dropping) what the client sends while the
            // answer goes out, bounded, so the client sees the 413 instead
            // of a connection reset under its upload.
            if length <= DRAIN_MAX_BYTES {
                let drain = request.into_body().collect();
                tokio::spawn(tokio::time::timeout(DRAIN_TIMEOUT, drain));
            }
            let mut response = failure_response(self.too_large());
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
        let client_upgrade =
            is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        ensure_request_id(&mut parts.headers);
        let limit = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
        let body = Replayable::new(body, limit);
        match self.forward(&parts, peer, &body).await {
            Ok(mut response) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_upgrade) = client_upgrade
                {
                    tunnel(client_upgrade, hyper::upgrade::on(&mut response));
                } else {
                    strip_hop_by_hop(response.headers_mut());
                }
                Ok(response.map(Either::Left))
            }
            Err(failure) => Ok(failure_response(failure)),
        }
    }

    fn too_large(&self) -> Failure {
        Failure {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!(
                "the request body is over the {}-byte limit (--max-body-bytes)",
                self.limits.max_body_bytes
            ),
        }
    }

    /// Tries upstreams in rotation until one answers or retrying is unsafe.
    async fn forward(
        &self,
        parts: &request::Parts,
        peer: SocketAddr,
        body: &Replayable,
    ) -> Result<Response<Incoming>, Failure> {
        let idempotent = parts.method.is_idempotent();
        let mut tried = Vec::with_capacity(2);
        let mut replayed = false;
        let mut last_failure = None;
        loop {
            let Some(index) = self.pool.pick(&tried) else {
                return Err(last_failure.unwrap_or_else(|| Failure {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "no_upstream",
                    message: "no healthy upstream: every app server is down".into(),
                }));
            };
            tried.push(index);
            let upstream = self.pool.get(index);
            let Some((attempt_body, sent)) = body.attempt() else {
                return Err(last_failure.unwrap_or_else(|| bad_gateway("request body lost".into())));
            };
            let outgoing = upstream_request(parts, &upstream.url, peer, attempt_body);
            let _in_flight = upstream.start();
            let started = Instant::now();
            // The response timeout runs from the moment the body is sent
            // whole: a slow upload is not the upstream's fault.
            let response_deadline = async {
                sent.wait().await;
                tokio::time::sleep(self.limits.response_timeout).await;
            };
            let result = tokio::select! {
                result = self.client.request(outgoing) => Ok(result),
                () = response_deadline => Err(()),
            };
            match result {
                Ok(Ok(response)) => {
                    upstream.record_response(response.status().as_u16(), started.elapsed());
                    return Ok(response);
                }
                Err(()) => {
                    let message = format!(
                        "{} sent no response headers within {:?}",
                        upstream.url, self.limits.response_timeout
                    );
                    upstream.record_failure(&message);
                    return Err(Failure {
                        status: StatusCode::GATEWAY_TIMEOUT,
                        code: "upstream_timeout",
                        message,
                    });
                }
                Ok(Err(err)) => {
                    if body_over_limit(&err) {
                        return Err(self.too_large());
                    }
                    let message = format!("{}: {}", upstream.url, describe(&err));
                    upstream.record_failure(&message);
                    upstream.eject(&message);
                    last_failure = Some(if err.is_connect() {
                        Failure {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            code: "no_upstream",
                            message: format!(
                                "no upstream accepted the connection; last: {message}"
                            ),
                        }
                    } else {
                        bad_gateway(message)
                    });
                    // Nothing reached the upstream: safe to send anywhere.
                    // An idempotent request that died mid-way: once more.
                    if err.is_connect() || (idempotent && !replayed) {
                        replayed |= !err.is_connect();
                        continue;
                    }
                    return Err(last_failure.unwrap_or_else(|| bad_gateway(String::new())));
                }
            }
        }
    }
}

/// The header that names one client request, the same on every attempt.
const REQUEST_ID: &str = "x-request-id";

/// Gives the request an `X-Request-Id` unless the client sent one. A retry
/// carries the same id, so an app can recognise a request it has already
/// handled (the `cart` example counts a visit once however often it is
/// retried).
fn ensure_request_id(headers: &mut HeaderMap) {
    if !headers.contains_key(REQUEST_ID)
        && let Ok(id) = HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
    {
        headers.insert(REQUEST_ID, id);
    }
}

fn bad_gateway(message: String) -> Failure {
    Failure {
        status: StatusCode::BAD_GATEWAY,
        code: "bad_gateway",
        message,
    }
}

/// The error and its causes in one line.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn body_over_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
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

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// The request as the upstream gets it: same method, path, query, Host and
/// headers, minus hop-by-hop headers, plus `X-Forwarded-*`.
fn upstream_request(
    parts: &request::Parts,
    upstream: &UpstreamUrl,
    peer: SocketAddr,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
        .unwrap_or_default();
    let mut headers = parts.headers.clone();
    let upgrade = is_upgrade(&headers)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let mut forwarded_for: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_owned)
        .collect();
    forwarded_for.push(peer.ip().to_string());
    let forwarded_for = forwarded_for.join(", ");
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host.clone());
        headers.insert(header::HOST, host);
    }
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method.clone();
    *outgoing.uri_mut() = uri;
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = headers;
    outgoing
}

/// Splices an upgraded client connection to the upgraded upstream one.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%err, "upgraded connection ended");
                }
            }
            Err(err) => tracing::debug!(%err, "upgrade failed"),
        }
    });
}

fn failure_response(failure: Failure) -> Response<ClientBody> {
    let body = serde_json::json!({"error": {"code": failure.code, "message": failure.message}});
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = failure.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let upstream = UpstreamUrl::parse("http://127.0.0.1:3000").unwrap();
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let outgoing = upstream_request(&parts, &upstream, peer, UpstreamBody::Empty);
        assert_eq!(outgoing.uri(), "http://127.0.0.1:3000/cart?x=1");
        let headers = outgoing.headers();
        assert_eq!(headers[header::HOST], "shop.example");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
    }
}
