//! An upstream's response head on the fast path: parsed with httparse, its
//! body's framing found (RFC 9112 6.3), and written out as the client gets
//! it: hop-by-hop headers and the ones `Connection` names dropped, the
//! framing header the balancer sends in their place.

use std::io::Write;

use super::request_head::{list_items, write_header};
use crate::balance::proxy::is_hop_by_hop;

/// Most header lines an upstream's response may have (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// How the response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a HEAD request, 204, 304).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// When the upstream closes the connection.
    UntilClose,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim (1xx) response of this many bytes, skipped.
    Interim(usize),
    /// A final response; its head for the client is written.
    Ready(ResponseHead),
}

/// A final response's head.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// Its status code.
    pub status: u16,
    /// Bytes of the upstream's head.
    pub len: usize,
    /// How its body ends.
    pub framing: Framing,
    /// Whether the upstream connection may serve another request once
    /// the body has been read.
    pub reusable: bool,
    /// Whether the client's head keeps its connection open.
    pub keep_alive: bool,
}

/// Why a response head was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the upstream sent a malformed response head ({0})")]
pub struct Malformed(&'static str);

/// What the headers say about framing and the connection.
#[derive(Debug, Default)]
struct Framed {
    /// The Content-Length, checked only where it frames the body.
    length: Option<Result<u64, Malformed>>,
    transfer_encoding: bool,
    chunked_last: bool,
    close: bool,
}

/// Parses the response head at the start of `buf` for a request that was
/// a `HEAD` (`head_only`); writes the client's head into `out`, with
/// `Connection: close` unless `keep_alive`.
pub fn parse(
    buf: &[u8],
    head_only: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Parsed, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(Malformed("not HTTP/1.x")),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(Malformed("no status"));
    };
    match status {
        0..=99 => return Err(Malformed("a status below 100")),
        101 => return Err(Malformed("101 without an upgrade asked for")),
        100..=199 => return Ok(Parsed::Interim(len)),
        _ => {}
    }
    let mut framed = Framed::default();
    let mut named = Vec::new();
    for header in response.headers.iter() {
        let (name, value) = (header.name, header.value);
        if name.eq_ignore_ascii_case("connection") {
            for token in list_items(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    framed.close = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            framed.transfer_encoding = true;
            let last = list_items(value).next_back().unwrap_or_default();
            framed.chunked_last = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in list_items(value) {
                let length = parse_length(part);
                framed.length = Some(match (framed.length.take(), length) {
                    (None, length) => length,
                    (Some(Ok(known)), Ok(length)) if known != length => {
                        Err(Malformed("conflicting Content-Length"))
                    }
                    (Some(known), length) => known.and(length),
                });
            }
        }
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Empty
    } else if framed.transfer_encoding {
        if version == 0 {
            return Err(Malformed("Transfer-Encoding in an HTTP/1.0 response"));
        }
        if framed.chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match framed.length.clone() {
            Some(length) => Framing::Length(length?),
            None => Framing::UntilClose,
        }
    };
    let reusable = version == 1
        && !framed.close
        && framing != Framing::UntilClose
        && !(framed.transfer_encoding && framed.length.is_some());
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\n",
        response.reason.unwrap_or("")
    );
    for header in response.headers.iter() {
        let name = header.name;
        let dropped = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("content-length")
            || named
                .iter()
                .any(|named| named.eq_ignore_ascii_case(name.as_bytes()));
        if !dropped {
            write_header(out, name.as_bytes(), header.value);
        }
    }
    match (framing, framed.length) {
        (Framing::Length(length), _) => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        // A HEAD or 304 answer keeps a valid length (a broken one is left
        // out: it frames nothing here).
        (Framing::Empty, Some(Ok(length))) if status != 204 => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        (Framing::Chunked | Framing::UntilClose, _) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        (Framing::Empty, _) => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Ready(ResponseHead {
        status,
        len,
        framing,
        reusable,
        keep_alive,
    }))
}

/// A Content-Length value: digits only.
fn parse_length(text: &[u8]) -> Result<u64, Malformed> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(Malformed("bad Content-Length"));
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(Malformed("bad Content-Length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str, head_only: bool) -> (Result<Parsed, Malformed>, String) {
        let mut out = Vec::new();
        let parsed = parse(head.as_bytes(), head_only, true, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    fn ready(head: &str, head_only: bool) -> (ResponseHead, String) {
        match parsed(head, head_only) {
            (Ok(Parsed::Ready(response)), out) => (response, out),
            (other, _) => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn a_sized_response_keeps_its_headers_minus_hop_by_hop_ones() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n\
                    X-Hop: 1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\n\r\nok";
        let (response, out) = ready(head, false);
        assert_eq!(
            response,
            ResponseHead {
                status: 200,
                len: head.len() - 2,
                framing: Framing::Length(2),
                reusable: true,
                keep_alive: true,
            }
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                false,
                Framing::Length(3),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
        ];
        for (head, head_only, framing, reusable) in cases {
            let (response, _) = ready(head, head_only);
            assert_eq!(
                (response.framing, response.reusable),
                (framing, reusable),
                "{head:?}"
            );
        }
        let (_, out) = ready("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", true);
        assert!(
            out.contains("content-length: 50\r\n"),
            "HEAD keeps the length: {out}"
        );
        let (_, out) = ready(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert!(
            out.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{out}"
        );
    }

    #[test]
    fn interim_answers_are_skipped_and_broken_heads_refused() {
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert_eq!(parsed(interim, false).0, Ok(Parsed::Interim(interim.len())));
        assert_eq!(parsed("HTTP/1.1 200 OK\r\n", false).0, Ok(Parsed::Partial));
        for head in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 000 Weird\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(parsed(head, false).0.is_err(), "{head:?}");
        }
    }

    #[test]
    fn a_broken_length_that_frames_nothing_is_not_an_error() {
        let (response, out) = ready("HTTP/1.1 204 No Content\r\nContent-Length: \r\n\r\n", false);
        assert_eq!(
            (response.framing, out.contains("ength")),
            (Framing::Empty, false)
        );
        let (response, out) = ready("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true);
        assert_eq!(
            (response.framing, out.contains("ength")),
            (Framing::Empty, false)
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n";
        let (response, _) = ready(chunked, false);
        assert_eq!(
            (response.framing, response.reusable),
            (Framing::Chunked, false)
        );
    }
}
