//! Chunked bodies on the fast path: an upstream's chunked body is decoded
//! and written to the client as fresh chunks (its chunk extensions and
//! trailers dropped, as the full proxy does), and a body delimited by the
//! upstream closing its connection goes to the client chunked.

use std::io::Write;

/// Longest chunk-size line accepted from an upstream.
const MAX_LINE: usize = 16 * 1024;
/// Longest trailer section accepted (and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the upstream sent a malformed chunked body ({0})")]
pub struct Malformed(&'static str);

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting the trailer section.
    Trailers,
    /// The body is complete.
    Done,
}

/// Decodes an upstream's chunked body and re-encodes it for the client.
#[derive(Debug)]
pub struct Rechunker {
    state: State,
    data_bytes: u64,
}

impl Default for Rechunker {
    fn default() -> Self {
        Self {
            state: State::Size,
            data_bytes: 0,
        }
    }
}

impl Rechunker {
    /// Data bytes decoded so far (the chunks' framing not counted).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what it can of `input`, appending the client's chunks to
    /// `out`; returns how many bytes of `input` it used (the rest waits
    /// for more).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Malformed> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Done => return Ok(used),
                State::Size if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Err(Malformed("no chunk size"));
                }
                State::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((len, _))) if !is_crlf_line(&rest[..len]) => {
                        return Err(Malformed("a chunk size line not ended by CRLF"));
                    }
                    Ok(httparse::Status::Complete((len, 0))) => {
                        used += len;
                        self.state = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((len, size))) => {
                        used += len;
                        // Writing to a Vec cannot fail.
                        let _ = write!(out, "{size:x}\r\n");
                        self.state = State::Data(size);
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_LINE => return Ok(used),
                    _ => return Err(Malformed("chunk size")),
                },
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    used += take;
                    self.data_bytes += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        out.extend_from_slice(b"\r\n");
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(Malformed("no CRLF after a chunk")),
                },
                State::Trailers => match trailer_section(rest)? {
                    Some(len) => {
                        used += len;
                        out.extend_from_slice(b"0\r\n\r\n");
                        self.state = State::Done;
                    }
                    None => return Ok(used),
                },
            }
        }
    }
}

/// Whether `line` ends with its only CRLF and holds no other CR or LF.
fn is_crlf_line(line: &[u8]) -> bool {
    line.strip_suffix(b"\r\n")
        .is_some_and(|body| !body.iter().any(|&b| b == b'\r' || b == b'\n'))
}

/// The length of the trailer section at the start of `input` (fields, each
/// a CRLF line, then an empty line; the fields are dropped), or `None`
/// while it is incomplete.
fn trailer_section(input: &[u8]) -> Result<Option<usize>, Malformed> {
    let mut at = 0;
    loop {
        let Some(end) = input[at..].windows(2).position(|pair| pair == b"\r\n") else {
            if input.len() > MAX_TRAILERS {
                return Err(Malformed("trailers too long"));
            }
            return Ok(None);
        };
        let line = &input[at..at + end + 2];
        if !is_crlf_line(line) || (end > 0 && !line.contains(&b':')) {
            return Err(Malformed("trailers"));
        }
        at += end + 2;
        if end == 0 {
            return Ok(Some(at));
        }
        if at > MAX_TRAILERS {
            return Err(Malformed("trailers too long"));
        }
    }
}

/// Appends `data` to `out` as one chunk (nothing when it is empty: an
/// empty chunk would end the body).
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, ending a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";

    #[test]
    fn a_chunked_body_is_rechunked_whole_or_byte_by_byte() {
        let expected = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let mut whole = Rechunker::default();
        let mut out = Vec::new();
        assert_eq!(whole.feed(BODY, &mut out), Ok(BODY.len() - 4));
        assert!(whole.is_done());
        assert_eq!(out, expected);
        assert_eq!(whole.data_bytes(), 12);
        // Fed one byte more at a time, as a slow upstream would send it.
        let mut slow = Rechunker::default();
        let (mut out, mut buffered, mut at) = (Vec::new(), Vec::new(), 0);
        while !slow.is_done() {
            buffered.push(BODY[at]);
            at += 1;
            let used = slow.feed(&buffered, &mut out).unwrap();
            buffered.drain(..used);
        }
        assert_eq!(out, expected);
        assert_eq!(at, BODY.len() - 4);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"0\r\nbad trailer\r\n\r\n",
            b"\r\n\r\n",
            b";ext\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"0\r\nX: a\nb\r\n\r\n",
        ] {
            assert!(
                Rechunker::default().feed(body, &mut Vec::new()).is_err(),
                "{body:?}"
            );
        }
        let endless = vec![b'1'; MAX_LINE + 1];
        assert!(
            Rechunker::default()
                .feed(&endless, &mut Vec::new())
                .is_err()
        );
    }

    #[test]
    fn data_is_encoded_as_chunks() {
        let mut out = Vec::new();
        encode(b"", &mut out);
        encode(&[b'a'; 26], &mut out);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            out,
            [&b"1a\r\n"[..], &[b'a'; 26], b"\r\n0\r\n\r\n"].concat()
        );
    }
}
