//! Small in-process app servers to put behind `sessiond balance`: each
//! answers with its own name and has endpoints that echo, stream, stall,
//! die mid-request or switch protocols, and counts what it was asked.
//! A [`TestUpstream`] can be stopped (its listener and every connection
//! closed, so new connections are refused) and started again on the same
//! port.
//!
//! | path              | answer                                                        |
//! |-------------------|---------------------------------------------------------------|
//! | `/healthz`        | 200 `ok` (503 after [`TestUpstream::set_healthy`]`(false)`)   |
//! | `/headers`        | the request as JSON: method, path, version, header pairs      |
//! | `/echo`           | the request body, streamed back as it arrives                 |
//! | `/early`          | 200 `early` at once, then reads the body to its end           |
//! | `/sink`           | reads the whole body, answers `{"bytes": n}`                  |
//! | `/big/{mb}`       | `mb` MiB of [`pattern`] bytes, streamed in 64 KiB chunks      |
//! | `/slow/{ms}`      | waits `ms` milliseconds, then `slow <name>`                   |
//! | `/die`            | reads the body, then closes the connection without answering |
//! | `/upgrade`        | 101 `Upgrade: echo`, then echoes raw bytes until EOF          |
//! | `/hop`            | 200 with hop-by-hop headers a proxy must drop, and `x-kept`   |
//! | anything else     | 200 with the upstream's name as the body                      |
//!
//! Every answer carries `x-upstream: <name>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`TestUpstream::stop`] waits for its connections to close and
/// [`TestUpstream::restart`] tries to bind the old port again.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Size of the chunks `/big/{mb}` sends.
const CHUNK: usize = 64 << 10;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Byte `index` of the deterministic payloads the tests send and `/big`
/// serves (a period of 251, so chunk boundaries never line up with it).
pub fn pattern(index: usize) -> u8 {
    (index % 251) as u8
}

/// `len` bytes of [`pattern`].
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len).map(pattern).collect()
}

/// The values of header `name` in a test upstream's `/headers` echo, in
/// the order it received them.
pub fn echoed_header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|pair| pair[0] == name)
        .filter_map(|pair| pair[1].as_str())
        .collect()
}

/// `upstreams`' URLs, comma separated, as one `--upstream` takes them.
pub fn url_list(upstreams: &[TestUpstream]) -> String {
    upstreams
        .iter()
        .map(TestUpstream::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// What the endpoints share.
struct Shared {
    name: String,
    healthy: AtomicBool,
    /// Requests being handled now (health checks excluded), and the most
    /// there ever were at once.
    busy: AtomicU64,
    peak: AtomicU64,
    /// Requests per path, health checks included.
    hits: Mutex<HashMap<String, u64>>,
}

impl Shared {
    fn count(&self, path: &str) {
        *self
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_owned())
            .or_default() += 1;
    }
}

/// The accept loop and connections of a running upstream.
struct Running {
    accept: JoinHandle<()>,
    connections: CancellationToken,
    tracker: TaskTracker,
}

/// One in-process test app server on 127.0.0.1.
pub struct TestUpstream {
    /// Where it listens (kept across [`TestUpstream::restart`]).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl TestUpstream {
    /// Starts an upstream called `name` on a free loopback port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            healthy: AtomicBool::new(true),
            busy: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            hits: Mutex::new(HashMap::new()),
        });
        let running = Some(serve(listener, shared.clone()));
        Self {
            addr,
            shared,
            running,
        }
    }

    /// Its name, the body of its default answer.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// `http://127.0.0.1:<port>`, as `--upstream` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it got for `path` (exact path, without the query).
    pub fn hits(&self, path: &str) -> u64 {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests it got on any path but `/healthz`.
    pub fn requests(&self) -> u64 {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(path, _)| path.as_str() != "/healthz")
            .map(|(_, count)| count)
            .sum()
    }

    /// The most requests (health checks aside) it was handling at once.
    pub fn peak_concurrency(&self) -> u64 {
        self.shared.peak.load(Ordering::Acquire)
    }

    /// Makes `/healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::Release);
    }

    /// Whether it is serving (not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops it: closes the listener (new connections are refused) and
    /// every open connection, and waits (bounded) until they are closed.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.accept.abort();
        let _ = running.accept.await;
        running.connections.cancel();
        running.tracker.close();
        tokio::time::timeout(STOP_TIMEOUT, running.tracker.wait())
            .await
            .expect("the test upstream's connections did not close in time");
    }

    /// Starts it again on the same port (stopping it first if needed).
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot bind {} again: {err}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.running = Some(serve(listener, self.shared.clone()));
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.accept.abort();
            running.connections.cancel();
        }
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Running {
    let connections = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept = tokio::spawn({
        let connections = connections.clone();
        let tracker = tracker.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // Cancelled by `/die` (this connection) or by `stop` (all).
                let kill = connections.child_token();
                let service = service_fn({
                    let shared = shared.clone();
                    let kill = kill.clone();
                    let tracker = tracker.clone();
                    move |request| handle(shared.clone(), kill.clone(), tracker.clone(), request)
                });
                tracker.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = connection => {}
                        () = kill.cancelled() => {}
                    }
                });
            }
        }
    });
    Running {
        accept,
        connections,
        tracker,
    }
}

/// A request being handled, counted in [`Shared::busy`] and its peak.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.busy.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak.fetch_max(now, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>, name: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Ok(name) = HeaderValue::from_str(name) {
        response.headers_mut().insert("x-upstream", name);
    }
    response
}

async fn handle(
    shared: Arc<Shared>,
    kill: CancellationToken,
    tracker: TaskTracker,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    shared.count(&path);
    let _busy = (path != "/healthz").then(|| Busy::enter(&shared));
    let name = shared.name.as_str();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match segments.as_slice() {
        ["healthz"] => {
            if shared.healthy.load(Ordering::Acquire) {
                full(StatusCode::OK, "ok\n", name)
            } else {
                full(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n", name)
            }
        }
        ["headers"] => {
            let pairs: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(key, value)| {
                    (
                        key.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "upstream": name,
                "method": request.method().as_str(),
                "path": request.uri().path_and_query().map_or("/", |p| p.as_str()),
                "version": format!("{:?}", request.version()),
                "headers": pairs,
            });
            let mut response = full(StatusCode::OK, body.to_string(), name);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        ["echo"] => {
            let mut response = Response::new(
                request
                    .into_body()
                    .map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)
                    .boxed(),
            );
            if let Ok(name) = HeaderValue::from_str(name) {
                response.headers_mut().insert("x-upstream", name);
            }
            response
        }
        // Answers at once and reads the upload after (a check that fails
        // on the head, or an app that answers before it has the body).
        ["early"] => {
            let body = request.into_body();
            tracker.spawn(async move {
                let _ = body.collect().await;
            });
            full(StatusCode::OK, "early", name)
        }
        ["sink"] => match request.into_body().collect().await {
            Ok(body) => {
                let bytes = body.to_bytes().len();
                full(
                    StatusCode::OK,
                    serde_json::json!({"bytes": bytes}).to_string(),
                    name,
                )
            }
            Err(err) => full(StatusCode::BAD_REQUEST, format!("body: {err}"), name),
        },
        ["big", mb] => {
            let Ok(mb) = mb.parse::<usize>() else {
                return Ok(full(StatusCode::BAD_REQUEST, "bad size", name));
            };
            let total = mb << 20;
            let chunks = (0..total.div_ceil(CHUNK)).map(move |index| {
                let start = index * CHUNK;
                let end = (start + CHUNK).min(total);
                let chunk: Vec<u8> = (start..end).map(pattern).collect();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(chunk)))
            });
            let mut response =
                Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed());
            if let Ok(name) = HeaderValue::from_str(name) {
                response.headers_mut().insert("x-upstream", name);
            }
            response
        }
        ["slow", ms] => {
            let Ok(ms) = ms.parse::<u64>() else {
                return Ok(full(StatusCode::BAD_REQUEST, "bad delay", name));
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, format!("slow {name}"), name)
        }
        ["die"] => {
            // The request arrived whole; the connection dies before any answer.
            let _ = request.into_body().collect().await;
            kill.cancel();
            // Never answers: the connection task drops this handler.
            return Ok(std::future::pending().await);
        }
        ["upgrade"] => {
            let on_upgrade = hyper::upgrade::on(request);
            let stop = kill.clone();
            tracker.spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buffer = vec![0u8; 16 << 10];
                loop {
                    let read = tokio::select! {
                        read = io.read(&mut buffer) => read,
                        () = stop.cancelled() => return,
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(read) => {
                            if io.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                            let _ = io.flush().await;
                        }
                    }
                }
            });
            let mut response = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new(), name);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("echo"));
            response
        }
        ["hop"] => {
            let mut response = full(StatusCode::OK, "hop", name);
            let headers = response.headers_mut();
            for (key, value) in [
                ("connection", "x-upstream-secret"),
                ("x-upstream-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic realm=\"upstream\""),
                ("x-kept", "yes"),
            ] {
                headers.insert(key, HeaderValue::from_static(value));
            }
            response
        }
        _ => full(StatusCode::OK, name.to_owned(), name),
    };
    Ok(response)
}
