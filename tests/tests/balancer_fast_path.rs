//! The balancer's fast HTTP/1.1 path (body-less requests on plain
//! connections, served without hyper) against a scripted upstream that
//! answers in every framing HTTP/1.1 allows, over raw sockets: bodies are
//! re-framed intact, upstream connections are reused, broken answers are
//! the upstream's fault, and a request the fast path does not take hands
//! the connection to the full proxy mid-stream without losing a byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessiond_e2e::Balancer;
use sessiond_e2e::balance::{read_head, read_response, read_until_closed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of `/big`'s body.
const BIG: usize = 1 << 20;
/// How long `/slow` takes to answer.
const SLOW: Duration = Duration::from_secs(3);

/// The answer to one request for `path` (`head`: a HEAD request), and
/// whether the upstream closes the connection after it.
fn scripted(method: &str, path: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let sized = |text: &[u8]| {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
        answer.extend_from_slice(text);
        answer
    };
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/early" => (
            [
                &b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"[..],
                &sized(b"early"),
            ]
            .concat(),
            false,
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close".to_vec(),
            true,
        ),
        "/big" => {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
            if method != "HEAD" {
                answer.extend((0..BIG).map(|index| (index % 251) as u8));
            }
            (answer, false)
        }
        "/broken" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
            true,
        ),
        "/kb" => (sized(&[b'k'; 1024]), false),
        "/cut-short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec(),
            true,
        ),
        // A list of one length, which a recipient may take (RFC 9110,
        // 8.6) but must not pass on.
        "/listed-length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(),
            false,
        ),
        // Both framings: the chunked one wins (RFC 9112, 6.3); the
        // connection closes after it.
        "/both-lengths" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              a\r\n0123456789\r\n0\r\n\r\n"
                .to_vec(),
            true,
        ),
        _ => (
            sized(format!("{method} {path} {}", body.len()).as_bytes()),
            false,
        ),
    }
}

/// A scripted upstream: where it listens, the connections it accepted and
/// the targets of the requests it received, in order.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// The targets received, health checks left out.
    fn targets(&self) -> Vec<String> {
        let targets = self.targets.lock().map(|t| t.clone()).unwrap_or_default();
        targets.into_iter().filter(|t| t != "/healthz").collect()
    }
}

/// Starts a scripted upstream: it answers [`scripted`] to each request
/// (`/slow` after [`SLOW`], `/sleep/<ms>` after that long), keeping the
/// connection open unless the answer says otherwise.
async fn scripted_upstream() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let scripted = Scripted {
        addr: listener.local_addr().expect("addr"),
        connections: Arc::new(AtomicUsize::new(0)),
        targets: Arc::new(Mutex::new(Vec::new())),
    };
    let counted = scripted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_scripted(stream, counted.targets.clone()));
        }
    });
    scripted
}

async fn serve_scripted(mut stream: TcpStream, targets: Arc<Mutex<Vec<String>>>) {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => seen.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        // Reads no byte of the body, then closes: as an app past its own
        // body timeout (`/gives-up`), or a stuck one (`/stops-reading`).
        let unread = match path {
            "/gives-up" => Some(Duration::from_millis(300)),
            "/stops-reading" => Some(Duration::from_secs(20)),
            _ => None,
        };
        if let Some(unread) = unread {
            tokio::time::sleep(unread).await;
            return;
        }
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while seen.len() < end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => seen.extend_from_slice(&chunk[..read]),
            }
        }
        if let Ok(mut targets) = targets.lock() {
            targets.push(path.to_owned());
        }
        let (answer, close) = scripted(method, path, &seen[end..end + length]);
        seen.drain(..end + length);
        let delay = match path.strip_prefix("/sleep/") {
            Some(ms) => ms.parse().ok().map(Duration::from_millis),
            None => (path == "/slow").then_some(SLOW),
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// Reads one chunked body (after its head, `rest` already read).
async fn read_chunked(stream: &mut TcpStream, mut rest: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while !rest.windows(2).any(|w| w == b"\r\n") {
            let read = stream.read(&mut chunk).await.expect("read a chunk size");
            assert!(read > 0, "closed inside a chunked body");
            rest.extend_from_slice(&chunk[..read]);
        }
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(&size_text, 16)
            .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
        while rest.len() < line_end + 2 + size + 2 {
            let read = stream.read(&mut chunk).await.expect("read a chunk");
            assert!(read > 0, "closed inside a chunk");
            rest.extend_from_slice(&chunk[..read]);
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        assert_eq!(&rest[line_end + 2 + size..line_end + 4 + size], b"\r\n");
        rest.drain(..line_end + 4 + size);
        if size == 0 {
            assert!(rest.is_empty(), "bytes after the last chunk: {rest:?}");
            return body;
        }
    }
}

/// A balancer over `upstream` with `extra` flags; health checks once an
/// hour, and a hundred good ones to come back: an ejection shows.
fn balancer_over(upstream: SocketAddr, extra: &[&str]) -> Balancer {
    let url = format!("http://{upstream}");
    let mut args = vec!["--upstream", url.as_str(), "--workers", "1"];
    args.extend(["--health-interval", "1h", "--rise", "100", "--fall", "1"]);
    args.extend(extra);
    Balancer::start(&args)
}

/// A scripted upstream, a balancer over it (with `extra` flags) and a
/// client connection to the balancer.
async fn client_of_a_balancer(extra: &[&str]) -> (Balancer, TcpStream, Scripted) {
    let upstream = scripted_upstream().await;
    let balancer = balancer_over(upstream.addr, extra);
    let client = TcpStream::connect(balancer.listen).await.expect("connect");
    (balancer, client, upstream)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_framing_reaches_the_client_intact_on_one_connection() {
    let (_balancer, mut client, upstream) = client_of_a_balancer(&[]).await;
    let connections = upstream.connections;

    client.write_all(&get("/chunked")).await.expect("send");
    let (status, headers, rest) = read_head(&mut client).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("transfer-encoding".into(), "chunked".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-kind".into(), "chunked".into())),
        "{headers:?}"
    );
    assert_eq!(read_chunked(&mut client, rest).await, b"hello, world");

    // An interim 103 is not passed on; the final answer is.
    client.write_all(&get("/early")).await.expect("send");
    let early = read_response(&mut client).await;
    assert_eq!((early.status, early.body.as_slice()), (200, &b"early"[..]));

    // A body that ends when the upstream closes goes to the client chunked,
    // and the client's connection stays open.
    client.write_all(&get("/until-close")).await.expect("send");
    let (status, headers, rest) = read_head(&mut client).await;
    assert_eq!(status, 200);
    assert!(
        !headers.iter().any(|(name, _)| name == "connection"),
        "{headers:?}"
    );
    assert_eq!(read_chunked(&mut client, rest).await, b"until close");

    // HEAD: the length, no body; the next answer on the connection is whole.
    client
        .write_all(b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("send");
    let (status, headers, rest) = read_head(&mut client).await;
    assert_eq!(status, 200);
    assert!(
        headers.contains(&("content-length".into(), BIG.to_string())),
        "{headers:?}"
    );
    assert!(
        rest.is_empty(),
        "a HEAD answer with a body: {} bytes",
        rest.len()
    );
    client.write_all(&get("/big")).await.expect("send");
    let big = read_response(&mut client).await;
    assert_eq!(big.body.len(), BIG);
    assert!(
        big.body
            .iter()
            .enumerate()
            .all(|(index, &byte)| byte == (index % 251) as u8)
    );

    // Five more plain requests: the pooled upstream connection serves them.
    let before = connections.load(Ordering::SeqCst);
    for round in 0..5 {
        client
            .write_all(&get(&format!("/plain/{round}")))
            .await
            .expect("send");
        let plain = read_response(&mut client).await;
        assert_eq!(plain.status, 200);
        assert_eq!(plain.body, format!("GET /plain/{round} 0").into_bytes());
        let id = plain.header("x-request-id");
        assert!(
            id.is_none(),
            "the request id goes to the upstream, not back: {id:?}"
        );
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        before,
        "no new upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_a_pipeline_hands_the_connection_to_the_full_proxy_intact() {
    let (_balancer, mut client, _) = client_of_a_balancer(&[]).await;
    // One write: a GET the fast path serves, a POST with a body it hands
    // over (with the bytes already read), and a GET after it.
    let pipeline = [
        get("/first"),
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
        b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_vec(),
    ]
    .concat();
    client.write_all(&pipeline).await.expect("send");
    // The answers may come in one read: split them by their lengths.
    let mut all = read_until_closed(&mut client).await;
    for expected in ["GET /first 0", "POST /upload 11", "GET /last 0"] {
        let text = String::from_utf8_lossy(&all).into_owned();
        let end = text
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("no answer for {expected}: {text}"));
        assert!(text.starts_with("HTTP/1.1 200 "), "{expected}: {text}");
        let length: usize = text[..end]
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length: ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no length: {text}"));
        assert_eq!(&text[end + 4..end + 4 + length], expected);
        all.drain(..end + 4 + length);
    }
    assert!(all.is_empty(), "more bytes: {all:?}");
}

/// A head answered for `path` on each of the balancer's paths (a GET on
/// the fast path, a POST with a body on hyper's), each on a connection of
/// its own: the path's name, the status and headers, the bytes read after
/// the head and the connection.
type Answered = (String, u16, Vec<(String, String)>, Vec<u8>, TcpStream);

async fn on_both_paths(balancer: &Balancer, path: &str) -> Vec<Answered> {
    let requests = [
        ("fast", get(path)),
        (
            "hyper",
            format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi").into_bytes(),
        ),
    ];
    let mut answered = Vec::new();
    for (case, request) in requests {
        let mut client = TcpStream::connect(balancer.listen).await.expect("connect");
        client.write_all(&request).await.expect("send");
        let (status, headers, rest) = read_head(&mut client).await;
        answered.push((case.to_owned(), status, headers, rest, client));
    }
    answered
}

/// An answer with both a `Content-Length` and a chunked body reaches the
/// client whole on both paths (a GET on the fast path, a POST with a body
/// on hyper's): the chunked framing wins and the length is not passed on.
/// On hyper's path the length was passed on, and the body cut to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_both_ways_reaches_the_client_whole_on_both_paths() {
    let (balancer, _, _) = client_of_a_balancer(&[]).await;
    for (case, status, headers, rest, mut client) in on_both_paths(&balancer, "/both-lengths").await
    {
        assert_eq!(status, 200, "{case}");
        let chunked = headers.contains(&("transfer-encoding".into(), "chunked".into()));
        assert!(chunked, "{case}: {headers:?}");
        assert!(
            !headers.iter().any(|(name, _)| name == "content-length"),
            "{case}: {headers:?}"
        );
        assert_eq!(
            read_chunked(&mut client, rest).await,
            b"0123456789",
            "{case}"
        );
    }
}

/// An upstream's `Content-Length: 3, 3` reaches the client as `3` on both
/// paths: hyper's passed the list on, which RFC 9110 forbids (a client
/// that refuses it may read the body to the close of a kept-alive
/// connection, the next answer with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_length_reaches_the_client_as_one_on_both_paths() {
    let (balancer, _, _) = client_of_a_balancer(&[]).await;
    for (case, status, headers, rest, _) in on_both_paths(&balancer, "/listed-length").await {
        assert_eq!(status, 200, "{case}");
        let lengths: Vec<&str> = headers
            .iter()
            .filter(|(name, _)| name == "content-length")
            .map(|(_, value)| value.as_str())
            .collect();
        assert_eq!(lengths, ["3"], "{case}: {headers:?}");
        assert_eq!(rest, b"abc", "{case}");
    }
}

/// An upstream that gives up on an upload still on its way (as an app
/// past its own body timeout or size limit does: it closes, the body
/// unread) fails that request (502) but stays in rotation: the upload's
/// slowness is no sign of a sick upstream. It was ejected, so a few slow
/// uploads took every upstream out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_gives_up_on_a_slow_upload_stays_in_rotation() {
    let (balancer, mut client, _) = client_of_a_balancer(&[]).await;
    client
        .write_all(b"POST /gives-up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The balancer may have answered and closed already.
    let _ = client.write_all(&[b'x'; 90]).await;
    let answer = read_until_closed(&mut client).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], 1, "{stats}");
    client = TcpStream::connect(balancer.listen).await.expect("connect");
    client.write_all(&get("/after")).await.expect("send");
    assert_eq!(read_response(&mut client).await.status, 200);
}

/// An upstream that stops taking a large upload gets no more than the
/// response timeout: the client gets 504 `upstream_timeout`, and nothing
/// stays in flight. The response timeout counted from the end of the
/// upload only, so the request hung for as long as the upstream did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_taking_an_upload_times_out() {
    const UPLOAD: usize = 64 << 20;
    let (balancer, client, _) = client_of_a_balancer(&["--response-timeout", "500ms"]).await;
    let (mut reader, mut writer) = client.into_split();
    let head =
        format!("POST /stops-reading HTTP/1.1\r\nHost: h\r\nContent-Length: {UPLOAD}\r\n\r\n");
    let upload = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let piece = vec![b'u'; 1 << 16];
        for _ in 0..UPLOAD / piece.len() {
            writer.write_all(&piece).await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(count) => answer.extend_from_slice(&chunk[..count]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
    upload.abort();
    balancer.wait_until_idle(Duration::from_secs(10)).await;
}

/// An upstream that breaks off a response body (closes after 10 of its
/// 100 bytes) is taken out of rotation, on both paths (a GET on the fast
/// path, a POST with a body on hyper's): its failure happened after the
/// head, where nothing was counted against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_off_a_body_is_ejected_on_both_paths() {
    let requests = [
        get("/cut-short"),
        b"POST /cut-short HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
    ];
    for request in requests {
        let (balancer, mut client, _) = client_of_a_balancer(&[]).await;
        let case = String::from_utf8_lossy(&request[..4]).into_owned();
        client.write_all(&request).await.expect("send");
        let answer = read_until_closed(&mut client).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200 "), "{case}: {text}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{case}: ended as whole: {text}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stats = balancer.stats().await;
            if stats["healthy"] == 0 {
                assert_eq!(stats["upstreams"][0]["errors"], 1, "{case}: {stats}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{case}: {stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_a_502_and_the_upstreams_fault() {
    let (balancer, mut client, _) = client_of_a_balancer(&[]).await;
    client.write_all(&get("/broken")).await.expect("send");
    let answer = read_response(&mut client).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"]["code"], "bad_gateway");
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(!body.contains("127.0.0.1"), "the upstream is named: {body}");
    let stats = balancer.stats().await;
    assert_eq!(stats["healthy"], 0, "{stats}");
    let errors = stats["upstreams"][0]["errors"].as_u64();
    assert!(errors.is_some_and(|errors| errors >= 1), "{stats}");
}

/// The lines of the access log at `path` once it has `count` (bounded).
async fn log_lines(path: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} has not {count} lines: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_on_both_paths_and_reopens_on_sighup() {
    let upstream = scripted_upstream().await.addr;
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("access.log");
    let log = path.to_string_lossy().into_owned();
    let balancer = balancer_over(upstream, &["--access-log", log.as_str()]);
    let mut client = TcpStream::connect(balancer.listen).await.expect("connect");
    let requests = [
        // The fast path, with the client's request id.
        b"GET /plain/1?q=2 HTTP/1.1\r\nHost: h\r\nX-Request-Id: given-1\r\n\r\n".to_vec(),
        // The full proxy: an upload.
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
    ];
    for request in &requests {
        client.write_all(request).await.expect("send");
        assert_eq!(read_response(&mut client).await.status, 200);
    }
    // The balancer's own answer: no Host.
    let mut bare = TcpStream::connect(balancer.listen).await.expect("connect");
    bare.write_all(b"GET /no-host HTTP/1.1\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_response(&mut bare).await.status, 400);
    // Clients that leave before their answer, on each path.
    for (request, lines) in [
        (get("/slow"), 4),
        (
            b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            5,
        ),
    ] {
        let mut leaving = TcpStream::connect(balancer.listen).await.expect("connect");
        leaving.write_all(&request).await.expect("send");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(leaving);
        log_lines(&path, lines).await;
    }

    let lines = log_lines(&path, 5).await;
    let summary: Vec<_> = lines
        .iter()
        .map(|line| {
            (
                line["method"].as_str().unwrap_or_default(),
                line["target"].as_str().unwrap_or_default(),
                line["status"].as_u64().unwrap_or_default(),
                line["bytes"].as_u64().unwrap_or_default(),
                line["upstream"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let upstream_name = Some(upstream.to_string());
    assert_eq!(
        summary,
        [
            ("GET", "/plain/1?q=2", 200, 18, upstream_name.clone()),
            ("POST", "/upload", 200, 15, upstream_name),
            ("GET", "/no-host", 400, summary[2].3, None),
            ("GET", "/slow", 499, 0, None),
            ("POST", "/slow", 499, 0, None),
        ]
    );
    assert!(summary[2].3 > 0, "the error body is counted");
    assert_eq!(lines[0]["request_id"], "given-1");
    assert_eq!(lines[1]["request_id"].as_str().map(str::len), Some(32));
    for line in &lines {
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert!(
            line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        assert!(
            line["time"]
                .as_str()
                .is_some_and(|time| time.ends_with('Z')),
            "{line}"
        );
    }

    // Moved away as logrotate does, then SIGHUP: new lines go to a new file.
    let moved = dir.path().join("access.log.1");
    std::fs::rename(&path, &moved).expect("rotate");
    sessiond_e2e::process::signal(balancer.pid(), "HUP");
    let mut reopened = false;
    for _ in 0..50 {
        client.write_all(&get("/after")).await.expect("send");
        assert_eq!(read_response(&mut client).await.status, 200);
        if path.exists() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "no new access log after SIGHUP");
    let after = log_lines(&path, 1).await;
    assert_eq!(after[0]["target"], "/after");
    // Lines written before the reopen stay in the moved file.
    let old = log_lines(&moved, 5).await;
    assert!(
        old[5..].iter().all(|line| line["target"] == "/after"),
        "{old:?}"
    );
}

/// Requests in flight at the balancer's one upstream.
async fn in_flight(balancer: &Balancer) -> u64 {
    balancer.stats().await["upstreams"][0]["in_flight"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_no_upstream_slot() {
    let flags = ["--max-conns", "1", "--queue", "4", "--queue-timeout", "1s"];
    let (balancer, _idle, _) = client_of_a_balancer(&flags).await;
    // A client with a tiny receive buffer pipelines 20,000 requests for
    // 1 KiB answers (20 MiB, more than every socket buffer on the way
    // holds) and never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stuck = socket.connect(balancer.listen).await.expect("connect");
    let writer = tokio::spawn(async move {
        let pipeline = get("/kb").repeat(20_000);
        let _ = tokio::time::timeout(Duration::from_secs(20), stuck.write_all(&pipeline)).await;
        stuck
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Its answers wait in buffers; the upstream's one slot is free.
    let mut other = TcpStream::connect(balancer.listen).await.expect("connect");
    other.write_all(&get("/plain/other")).await.expect("send");
    let answer = read_response(&mut other).await;
    assert_eq!(
        (
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned()
        ),
        (200, "GET /plain/other 0".to_owned())
    );
    assert_eq!(in_flight(&balancer).await, 0);
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_the_upstream_at_once() {
    let (balancer, mut client, _) = client_of_a_balancer(&[]).await;
    client.write_all(&get("/slow")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        in_flight(&balancer).await,
        1,
        "the slow request is in flight"
    );
    drop(client);
    // Well before the upstream answers (after 3 s), the slot is free.
    let mut freed = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if in_flight(&balancer).await == 0 {
            freed = true;
            break;
        }
    }
    assert!(freed, "the slot is held after the client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_after_sigterm_closes_its_connection() {
    let (balancer, mut client, _) = client_of_a_balancer(&[]).await;
    client.write_all(&get("/slow")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sessiond_e2e::process::signal(balancer.pid(), "TERM");
    let answer = read_response(&mut client).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{:?}",
        answer.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_left_while_it_queued_never_reaches_an_upstream() {
    let flags = ["--max-conns", "1", "--queue", "4", "--queue-timeout", "5s"];
    let (balancer, mut holder, upstream) = client_of_a_balancer(&flags).await;
    // The only slot is busy for 3 s; a body-less POST queues behind it,
    // and its client leaves.
    holder.write_all(&get("/slow")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut leaving = TcpStream::connect(balancer.listen).await.expect("connect");
    leaving
        .write_all(b"POST /charge HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leaving);
    assert_eq!(read_response(&mut holder).await.status, 200);
    holder.write_all(&get("/after")).await.expect("send");
    assert_eq!(read_response(&mut holder).await.status, 200);
    assert_eq!(upstream.targets(), ["/slow", "/after"], "the POST was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_then_a_half_close_all_get_their_answers() {
    let (_balancer, client, _) = client_of_a_balancer(&[]).await;
    let (mut reader, mut writer) = client.into_split();
    writer
        .write_all(&[get("/sleep/1000"), get("/second")].concat())
        .await
        .expect("send");
    writer.shutdown().await.expect("half-close");
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut all));
    read.await.expect("closed in time").expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("GET /sleep/1000 0") && text.contains("GET /second 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_written_through_a_drain_and_logs_requests_it_cuts() {
    let upstream = scripted_upstream().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("access.log");
    let log = path.to_string_lossy().into_owned();
    let balancer = balancer_over(
        upstream.addr,
        &["--access-log", log.as_str(), "--drain-timeout", "3s"],
    );
    let mut quick = TcpStream::connect(balancer.listen).await.expect("connect");
    let mut cut = TcpStream::connect(balancer.listen).await.expect("connect");
    quick.write_all(&get("/sleep/500")).await.expect("send");
    cut.write_all(&get("/sleep/6000")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sessiond_e2e::process::signal(balancer.pid(), "TERM");
    assert_eq!(read_response(&mut quick).await.status, 200);
    // Within about a second, while the drain goes on, its line is written.
    let lines = log_lines(&path, 1).await;
    assert_eq!(lines[0]["target"], "/sleep/500");
    assert!(
        alive(balancer.pid()),
        "the drain is still waiting for the cut request"
    );
    // The drain timeout ends the other one: logged too, as cut short.
    for _ in 0..100 {
        if !alive(balancer.pid()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !alive(balancer.pid()),
        "still running 10 s after the drain timeout"
    );
    let lines = log_lines(&path, 2).await;
    assert_eq!(
        (lines[1]["target"].as_str(), lines[1]["status"].as_u64()),
        (Some("/sleep/6000"), Some(499))
    );
}

/// Whether process `pid` runs (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
        !state.starts_with('Z')
    })
}
