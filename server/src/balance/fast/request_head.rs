//! A client's request head on the fast path: parsed with httparse, judged,
//! and written out as the upstream gets it. Only the plain case is taken:
//! HTTP/1.1, an origin-form target, no body (no `Transfer-Encoding`, no
//! `Content-Length` other than 0), no hop-by-hop header but `Connection:
//! keep-alive` or `close`, and every check of [`checks`] passed. Anything
//! else (an upload, an upgrade, a head the checks refuse, a parse error)
//! goes to the full proxy, which answers it as it always has.

use std::io::Write;
use std::ops::Range;

use crate::balance::checks::{self, HeadLimits};
use crate::balance::proxy::{ClientConn, new_request_id};

/// Most header lines a fast-path request may have.
const MAX_HEADERS: usize = 64;

/// Request headers that send a request to the full proxy: they frame a
/// body, ask for an upgrade or an interim answer, or describe one hop.
const ELSEWHERE: [&str; 10] = [
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path: the full proxy takes the connection from here.
    Elsewhere,
    /// A request for the fast path; its head for the upstream is written.
    Ready(RequestHead),
}

/// A request taken by the fast path.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the client's head.
    pub len: usize,
    /// Where the method is in the upstream's head.
    pub method: Range<usize>,
    /// Where the target is in the upstream's head.
    pub target: Range<usize>,
    /// Where the `X-Request-Id` value is in the upstream's head.
    pub request_id: Range<usize>,
    /// Whether it may be sent twice (RFC 9110 9.2.2).
    pub idempotent: bool,
    /// A `HEAD` request: its response has no body.
    pub head_only: bool,
    /// The client asked to close the connection after it.
    pub close: bool,
}

/// Parses the head at the start of `buf`; when the fast path takes it,
/// writes the head the upstream gets into `out`: the client's request line
/// and headers, `Host` kept, `Connection` dropped, `X-Forwarded-For`
/// appended to, `X-Forwarded-Proto` and `X-Forwarded-Host` set, an
/// `X-Request-Id` added unless the client sent one.
pub fn parse(buf: &[u8], limits: HeadLimits, conn: &ClientConn, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Elsewhere,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Elsewhere;
    };
    let mut total = HeadLimits::request_line(method.len(), target.len());
    if method == "CONNECT" || !is_plain_origin_form(target) || total > limits.max_line {
        return Parsed::Elsewhere;
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let method_at = 0..method.len();
    let target_at = method.len() + 1..method.len() + 1 + target.len();
    let mut host = None;
    let mut lengths = 0;
    let mut close = false;
    let mut request_id = None;
    for header in request.headers.iter() {
        let (name, value) = (header.name, header.value);
        let line = HeadLimits::header_line(name.len(), value.len());
        if line > limits.max_line {
            return Parsed::Elsewhere;
        }
        total += line;
        if name.contains('_') {
            // Dropped, as nginx does: CGI-style apps read `X_Forwarded_For`
            // as the `X-Forwarded-For` the balancer sets.
            continue;
        }
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        if is("host") {
            if host.replace(value).is_some() {
                return Parsed::Elsewhere;
            }
        } else if is("content-length") {
            lengths += 1;
            if lengths > 1 || value.trim_ascii() != b"0" {
                return Parsed::Elsewhere;
            }
        } else if is("connection") {
            match connection_asks_close(value) {
                Some(asks) => close |= asks,
                None => return Parsed::Elsewhere,
            }
            continue;
        } else if is("x-forwarded-for") || is("x-forwarded-proto") || is("x-forwarded-host") {
            continue;
        } else if is("x-request-id") {
            if request_id.is_some() {
                return Parsed::Elsewhere;
            }
            request_id = Some(write_header(out, name.as_bytes(), value));
            continue;
        } else if ELSEWHERE.iter().any(|elsewhere| is(elsewhere)) {
            return Parsed::Elsewhere;
        }
        write_header(out, name.as_bytes(), value);
    }
    let Some(host) = host.filter(|host| checks::is_valid_host(host)) else {
        return Parsed::Elsewhere;
    };
    if total > limits.max_total {
        return Parsed::Elsewhere;
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("x-forwarded-for") {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}\r\n", conn.peer.ip());
    let proto: &[u8] = if conn.https { b"https" } else { b"http" };
    write_header(out, b"x-forwarded-proto", proto);
    write_header(out, b"x-forwarded-host", host);
    let request_id =
        request_id.unwrap_or_else(|| write_header(out, b"x-request-id", &new_request_id()));
    out.extend_from_slice(b"\r\n");
    Parsed::Ready(RequestHead {
        len,
        method: method_at,
        target: target_at,
        request_id,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
        head_only: method == "HEAD",
        close,
    })
}

/// Whether `target` is an origin-form target made only of the characters
/// RFC 3986 allows unescaped in a path and query (no fragment, no
/// obs-text): anything more unusual goes to the full proxy's URI parser.
fn is_plain_origin_form(target: &str) -> bool {
    target.starts_with('/')
        && target
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&byte))
}

/// Whether a `Connection` value asks to close (`None`: it names anything
/// but `close` and `keep-alive`).
fn connection_asks_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in list_items(value) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The items of a comma-separated header value, trimmed.
pub fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&byte| byte == b',').map(<[u8]>::trim_ascii)
}

/// Appends `name: value` and CRLF; where the value is in `out`.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Range<usize> {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let start = out.len();
    out.extend_from_slice(value);
    let end = out.len();
    out.extend_from_slice(b"\r\n");
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::upstream_conns::Owner;

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 200,
        max_total: 400,
    };

    fn conn() -> ClientConn {
        ClientConn {
            peer: "192.0.2.7:5555".parse().unwrap(),
            https: false,
            owner: Owner::shared(),
            _slot: None,
        }
    }

    fn parsed(head: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = parse(head.as_bytes(), LIMITS, &conn(), &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_plain_get_is_taken_and_forwarded_with_the_proxy_headers() {
        let head = "GET /cart?x=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n\
                    X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\
                    X-Forwarded-For: 10.0.0.2\r\nX-Request-Id: r-1\r\nX_Forwarded_For: 6.6.6.6\r\n\
                    \r\nGET /next";
        let (parsed, out) = parsed(head);
        let Parsed::Ready(request) = parsed else {
            panic!("not taken: {parsed:?}");
        };
        assert_eq!(request.len, head.len() - "GET /next".len());
        assert!(request.idempotent && !request.head_only && !request.close);
        assert_eq!(
            out,
            "GET /cart?x=1 HTTP/1.1\r\nHost: shop.example\r\nAccept: */*\r\nX-Request-Id: r-1\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\n\r\n"
        );
        let at = |range: Range<usize>| &out[range];
        assert_eq!(
            (
                at(request.method),
                at(request.target),
                at(request.request_id)
            ),
            ("GET", "/cart?x=1", "r-1")
        );
    }

    #[test]
    fn a_request_id_is_added_and_close_and_methods_are_read() {
        let (delete, out) = parsed(
            "DELETE /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let Parsed::Ready(head) = delete else {
            panic!("not taken: {delete:?}");
        };
        assert!(head.close && head.idempotent && !head.head_only);
        let id = out
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .unwrap_or_default();
        assert_eq!(id.len(), 32, "{out}");
        assert_eq!(&out[head.request_id], id);
        assert!(out.contains("Content-Length: 0\r\n"), "{out}");
        let (post, _) = parsed("POST /a HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(
            post,
            Parsed::Ready(RequestHead {
                idempotent: false,
                ..
            })
        ));
        let (head, _) = parsed("HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(
            head,
            Parsed::Ready(RequestHead {
                head_only: true,
                ..
            })
        ));
    }

    #[test]
    fn everything_unusual_goes_to_the_full_proxy() {
        for head in [
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@h\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n",
        ] {
            assert_eq!(parsed(head).0, Parsed::Elsewhere, "{head:?}");
        }
        let long_line = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "v".repeat(200)
        );
        assert_eq!(parsed(&long_line).0, Parsed::Elsewhere);
        let mut big = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for index in 0..5 {
            big.push_str(&format!("X-{index}: {}\r\n", "v".repeat(90)));
        }
        big.push_str("\r\n");
        assert_eq!(parsed(&big).0, Parsed::Elsewhere);
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: h\r\n").0, Parsed::Partial);
    }
}
