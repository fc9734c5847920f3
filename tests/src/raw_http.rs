//! Raw HTTP/1.1 over a socket, for tests that send what no well-behaved
//! client would: half-sent heads, stalled bodies, lying `Content-Length`s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `address` within 10 s.
pub async fn connect(address: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .expect("connect timed out")
        .expect("cannot connect")
}

/// Connects and sends `bytes`.
pub async fn send(address: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = connect(address).await;
    stream.write_all(bytes).await.expect("cannot send");
    stream
}

/// What the server sent on a connection, and whether and when it closed it.
#[derive(Debug)]
pub struct Received {
    /// Every byte the server sent.
    pub bytes: Vec<u8>,
    /// How long after the call the server closed the connection, `None` if
    /// it was still open when the wait ended.
    pub closed_after: Option<Duration>,
}

impl Received {
    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let text = std::str::from_utf8(&self.bytes).ok()?;
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The body of the first response, parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        let text = String::from_utf8_lossy(&self.bytes);
        let (_, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response in {text:?}"));
        serde_json::from_str(body).unwrap_or_else(|err| panic!("body {body:?}: {err}"))
    }

    /// The `error.code` of a JSON error response.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.json()))
            .to_owned()
    }
}

/// Reads until the server closes the connection (EOF or reset), or `wait`
/// passes.
pub async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> Received {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        let left = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Received {
                    bytes,
                    closed_after: Some(started.elapsed()),
                };
            }
            Ok(Ok(read)) => bytes.extend_from_slice(&buffer[..read]),
            Err(_) => {
                return Received {
                    bytes,
                    closed_after: None,
                };
            }
        }
    }
}

/// Reads one response whose body ends with `end` (or until `wait`
/// passes); the connection stays open.
pub async fn read_response(stream: &mut TcpStream, end: &[u8], wait: Duration) -> Vec<u8> {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    while !bytes.ends_with(end) {
        let left = wait.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => bytes.extend_from_slice(&buffer[..read]),
        }
    }
    bytes
}
