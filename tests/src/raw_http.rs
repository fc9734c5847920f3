//! Raw HTTP/1.1 over a socket, for tests that send what no well-behaved
//! client would (half-sent heads, stalled bodies, lying `Content-Length`s,
//! bytes that are not HTTP) or must see exactly what came back. Responses
//! are parsed with `httparse`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::EXCHANGE_TIMEOUT;

/// Most headers a response may have.
const MAX_HEADERS: usize = 64;

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

/// One HTTP/1.1 response: status, headers (names in lowercase, in their
/// order) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The header lines, as (lowercase name, value).
    pub headers: Vec<(String, String)>,
    /// The body (empty for a head read alone).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of the header called `name` (lowercase), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The declared `Content-Length`, if any.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("Content-Length {value:?} is not a number"))
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.text()))
    }

    /// The `error.code` of a JSON error body; panics when there is none.
    pub fn error_code(&self) -> String {
        let json = self.json();
        json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {json}"))
            .to_owned()
    }
}

/// The response head at the start of `bytes` (its body empty) and the
/// head's length, once the whole head is there; `None` before. Panics on
/// bytes that are not an HTTP/1.x response head.
pub fn parse_head(bytes: &[u8]) -> Option<(Response, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => {
            let status = parsed.code.expect("a complete head has a status");
            let headers = parsed
                .headers
                .iter()
                .map(|header| {
                    (
                        header.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(header.value).into_owned(),
                    )
                })
                .collect();
            let head = Response {
                status,
                headers,
                body: Vec::new(),
            };
            Some((head, length))
        }
        Ok(httparse::Status::Partial) => None,
        Err(err) => panic!(
            "not an HTTP response ({err}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Reads a response head from `stream` within `wait`: the head (body
/// empty) and whatever bytes came after it. The connection stays open.
pub async fn read_head(stream: &mut TcpStream, wait: Duration) -> (Response, Vec<u8>) {
    let read = async {
        let mut buffer = Vec::new();
        loop {
            if let Some((head, length)) = parse_head(&buffer) {
                return (head, buffer.split_off(length));
            }
            assert!(buffer.len() < 1 << 20, "a response head over 1 MiB");
            let mut chunk = [0u8; 16 << 10];
            let read = stream.read(&mut chunk).await.expect("cannot read");
            assert!(
                read > 0,
                "the connection closed before a whole response head: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or_else(|_| panic!("no response head within {wait:?}"))
}

/// Reads one whole response within `wait`: its head, then a body of its
/// `Content-Length` (none without one). The connection stays open.
pub async fn read_response(stream: &mut TcpStream, wait: Duration) -> Response {
    let started = Instant::now();
    let (mut response, mut body) = read_head(stream, wait).await;
    let length = response.content_length().unwrap_or(0);
    let rest = async {
        while body.len() < length {
            let mut chunk = [0u8; 16 << 10];
            let read = stream.read(&mut chunk).await.expect("cannot read the body");
            assert!(read > 0, "the connection closed before the body ended");
            body.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(wait.saturating_sub(started.elapsed()), rest)
        .await
        .unwrap_or_else(|_| panic!("no whole response body within {wait:?}"));
    assert_eq!(body.len(), length, "more bytes than the Content-Length");
    response.body = body;
    response
}

/// Sends `bytes` on a new connection to `address` and reads one response
/// (bounded by [`EXCHANGE_TIMEOUT`]).
pub async fn exchange(address: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = send(address, bytes).await;
    read_response(&mut stream, EXCHANGE_TIMEOUT).await
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
    /// The first response, if a whole head arrived: its body is what
    /// its `Content-Length` covers, or everything after the head.
    pub fn response(&self) -> Option<Response> {
        let (mut response, length) = parse_head(&self.bytes)?;
        let rest = &self.bytes[length..];
        let end = response
            .content_length()
            .unwrap_or(rest.len())
            .min(rest.len());
        response.body = rest[..end].to_vec();
        Some(response)
    }

    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        self.response().map(|response| response.status)
    }

    /// The `error.code` of the first response, a JSON error.
    pub fn error_code(&self) -> String {
        self.response()
            .unwrap_or_else(|| panic!("no response in {self:?}"))
            .error_code()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_once_complete_and_bodies_follow_their_length() {
        let bytes = b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n\
                      content-length: 2\r\nX-Two: a\r\nx-two: b\r\n\r\n{}extra";
        assert_eq!(parse_head(&bytes[..20]), None, "a partial head");
        let received = Received {
            bytes: bytes.to_vec(),
            closed_after: None,
        };
        let response = received.response().expect("a whole head");
        assert_eq!(response.status, 413);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header_values("x-two"), ["a", "b"]);
        assert_eq!(response.body, b"{}");
        let empty = Received {
            bytes: Vec::new(),
            closed_after: Some(Duration::ZERO),
        };
        assert_eq!(empty.status(), None);
    }
}
