//! `sessiond balance` as a real process on ephemeral loopback ports,
//! helpers that read its admin listener, and raw HTTP/1.1 exchanges for
//! tests that must send bytes no well-behaved client would.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{Process, binary, spawn_listening};

/// Bound of one request to the admin listener.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `sessiond balance` process; killed (SIGKILL) and reaped when
/// dropped.
pub struct Balancer {
    process: Process,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin listener (`/`, `/stats.json`, `/metrics`, `/healthz`).
    pub admin: SocketAddr,
    http: reqwest::Client,
}

impl Balancer {
    /// Starts `sessiond balance --listen 127.0.0.1:0 --admin 127.0.0.1:0`
    /// plus `args`, and waits until both listeners are up.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_admin("127.0.0.1:0", args)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// [`start`](Self::start) over `upstreams` (comma separated in one
    /// `--upstream`), plus `args`.
    pub fn over(upstreams: &[crate::TestUpstream], args: &[&str]) -> Self {
        let list = crate::upstream::url_list(upstreams);
        let mut all = vec!["--upstream", list.as_str()];
        all.extend(args);
        Self::start(&all)
    }

    /// [`start`](Self::start) with the admin listener on `admin`.
    pub fn start_with_admin(admin: &str, args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", admin, args)
    }

    /// [`start`](Self::start) with the client listener on `listen` and the
    /// admin listener on `admin`.
    pub fn start_on(listen: &str, admin: &str, args: &[&str]) -> Self {
        let mut command = Command::new(binary("sessiond:sessiond"));
        command
            .args(["balance", "--listen", listen, "--admin", admin])
            .args(args)
            .env("SESSIOND_LOG", "info")
            .env_remove("SESSIOND_UPSTREAMS")
            .env_remove("SESSIOND_UPSTREAMS_FILE");
        let (process, addrs) = spawn_listening(command, &["balancer", "admin"]);
        Self {
            process,
            listen: addrs[0],
            admin: addrs[1],
            http: crate::http_client(ADMIN_TIMEOUT),
        }
    }

    /// `http://<listen>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `http://<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `GET /stats.json` of the admin listener, parsed.
    pub async fn stats(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/stats.json", self.admin_url()))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET /stats.json failed: {err}\n{}", self.log()));
        assert_eq!(response.status(), 200, "GET /stats.json");
        response.json().await.expect("/stats.json is JSON")
    }

    /// The `/stats.json` entry of the upstream `url`, if it is a member.
    pub async fn find_upstream(&self, url: &str) -> Option<Value> {
        let stats = self.stats().await;
        stats["upstreams"]
            .as_array()
            .and_then(|upstreams| upstreams.iter().find(|u| u["url"] == url).cloned())
    }

    /// Waits (at most `within`) until no upstream has a request in flight.
    pub async fn wait_until_idle(&self, within: Duration) {
        self.wait_for_stats("nothing in flight", within, |stats| {
            stats["upstreams"]
                .as_array()
                .is_some_and(|all| all.iter().all(|u| u["in_flight"] == 0))
        })
        .await;
    }

    /// Waits (at most `within`) until `check` holds for `/stats.json`;
    /// panics with the stats otherwise.
    pub async fn wait_for_stats(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {what} after {within:?}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/stats.json` entry of the upstream `url`.
    pub async fn upstream_stats(&self, url: &str) -> Value {
        let stats = self.stats().await;
        stats["upstreams"]
            .as_array()
            .and_then(|upstreams| upstreams.iter().find(|u| u["url"] == url).cloned())
            .unwrap_or_else(|| panic!("no upstream {url} in /stats.json: {stats}"))
    }

    /// Waits (at most `within`) until `/stats.json` shows the upstream `url`
    /// up (`true`) or down (`false`); panics with the stats otherwise.
    pub async fn wait_until_up(&self, url: &str, up: bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.upstream_stats(url).await;
            if stats["up"] == up {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} is not {} after {within:?}: {stats}",
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `within`) until `/stats.json` counts `healthy`
    /// upstreams in rotation.
    pub async fn wait_until_healthy(&self, healthy: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats().await;
            if stats["healthy"] == healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {healthy} healthy upstreams after {within:?}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::ops::Deref for Balancer {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Balancer {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Health-check arguments that check once an hour: only passive
/// ejection can take an upstream out.
pub const NO_CHECKS: [&str; 6] = ["--health-interval", "1h", "--rise", "1", "--fall", "1"];

/// Bound of one raw exchange.
const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// A raw HTTP/1.1 response: status code, header pairs (names lowercase)
/// and a `Content-Length` body.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header pairs, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body))
        })
    }
}

/// Reads a response head (up to the blank line) from `stream`: status,
/// headers and the bytes read past the head.
pub async fn read_head(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        assert!(buffer.len() < 64 << 10, "response head too long");
        let read = stream.read(&mut chunk).await.expect("read the response");
        assert!(
            read > 0,
            "closed before the response head ended: {buffer:?}"
        );
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..end].to_vec()).expect("an ASCII head");
    let rest = buffer[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, rest)
}

/// Reads one response with a `Content-Length` body from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let read = async {
        let (status, headers, mut body) = read_head(stream).await;
        let length: usize = headers
            .iter()
            .find(|(key, _)| key == "content-length")
            .map(|(_, value)| value.parse().expect("a numeric Content-Length"))
            .unwrap_or_else(|| panic!("no Content-Length in {headers:?}"));
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.expect("read the body");
            assert!(read > 0, "closed before the body ended");
            body.extend_from_slice(&chunk[..read]);
        }
        RawResponse {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(RAW_TIMEOUT, read)
        .await
        .expect("no response in time")
}

/// Sends `request` as bytes on a new connection to `addr` and reads one
/// response with a `Content-Length` body.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send the request");
    read_response(&mut stream).await
}

/// Reads from `stream` until the peer closes it (EOF or reset), bounded:
/// what was read before the close. Panics if it is still open after the
/// bound.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let read = async {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return all,
                Ok(read) => all.extend_from_slice(&chunk[..read]),
            }
        }
    };
    tokio::time::timeout(RAW_TIMEOUT, read)
        .await
        .expect("the connection is still open")
}

/// An app server on a raw socket: to every request it answers `answer`
/// (a head and maybe the body's first bytes), then, with `trickle`, a
/// chunk of a chunked body (`1\r\nx\r\n`) every `trickle` (for a
/// minute at most), or without, nothing more: the connection stays open
/// (a body that stalls, if `answer` holds only part of it) and the next
/// request on it is answered the same.
pub async fn raw_upstream(
    answer: &'static [u8],
    trickle: Option<Duration>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&chunk[..read]),
                        }
                    }
                    head.clear();
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    let Some(every) = trickle else { continue };
                    for _ in 0..Duration::from_secs(60).as_millis() / every.as_millis().max(1) {
                        tokio::time::sleep(every).await;
                        if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            });
        }
    });
    (addr, task)
}

/// Clients sending `GET` requests in a loop (each with its own keep-alive
/// connection pool) until stopped, counting what failed.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Every other outcome: status and body, or the client's error.
    pub failed: Vec<String>,
}

impl Load {
    /// Starts `clients` loops of `GET url`.
    pub fn start(url: &str, clients: usize) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.to_owned());
                tokio::spawn(async move {
                    let http = crate::http_client(Duration::from_secs(20));
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.is_cancelled() {
                        match http.get(&url).send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let body = response.text().await;
                                match (status, body) {
                                    (200, Ok(_)) => ok += 1,
                                    (status, body) => failed.push(format!("{status}: {body:?}")),
                                }
                            }
                            Err(err) => failed.push(format!("{err:?}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        let mut report = LoadReport {
            ok: 0,
            failed: Vec::new(),
        };
        for task in self.tasks {
            let (ok, failed) = task.await.expect("a load client panicked");
            report.ok += ok;
            report.failed.extend(failed);
        }
        report
    }
}

/// An upgraded connection through the balancer to a test upstream's
/// `/upgrade` (which echoes raw bytes), like a WebSocket.
pub struct Tunnel {
    stream: TcpStream,
    /// The upstream that answered the upgrade.
    pub upstream: String,
}

impl Tunnel {
    /// Opens one through the balancer at `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                b"GET /upgrade HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("send the upgrade");
        let (status, headers, early) = tokio::time::timeout(RAW_TIMEOUT, read_head(&mut stream))
            .await
            .expect("no upgrade answer in time");
        assert_eq!(status, 101, "{headers:?}");
        assert!(early.is_empty());
        let upstream = headers
            .iter()
            .find(|(key, _)| key == "x-upstream")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        Self { stream, upstream }
    }

    /// Sends `message` and reads it back; `false` if the tunnel is broken.
    pub async fn echo(&mut self, message: &[u8]) -> bool {
        let exchange = async {
            self.stream.write_all(message).await.ok()?;
            let mut back = vec![0u8; message.len()];
            self.stream.read_exact(&mut back).await.ok()?;
            Some(back == message)
        };
        matches!(
            tokio::time::timeout(RAW_TIMEOUT, exchange).await,
            Ok(Some(true))
        )
    }
}
