//! A response body from the upstream to the client on the fast path: a
//! small one goes out with the head in one write; a large one streams, read
//! and written a buffer at a time (the client's pace holds the upstream's).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientIo;
use super::chunked::{self, LAST_CHUNK, Rechunker};
use super::response_head::Framing;
use crate::balance::raw_conns::{READ_CHUNK, RawConn};

/// Why a body did not reach the client whole.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The upstream failed or closed mid-body.
    #[error("the upstream broke off the body: {0}")]
    Upstream(std::io::Error),
    /// The upstream's chunked body was malformed.
    #[error(transparent)]
    Chunked(#[from] chunked::Malformed),
    /// The client went away.
    #[error("the client went away: {0}")]
    Client(std::io::Error),
}

/// Relays the body framed by `framing` from `raw` (whose buffer holds its
/// first bytes) to `client`, after the head already in `out`, counting the
/// body bytes handed to the client in `sent`. `Ok(true)` when the upstream
/// sent nothing past the body (its connection can be reused, framing
/// allowing).
pub async fn body(
    framing: Framing,
    raw: &mut RawConn,
    client: &mut impl ClientIo,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<bool, RelayError> {
    match framing {
        Framing::Empty => {
            send(client, out).await?;
        }
        Framing::Length(length) => sized(length, raw, client, out, sent).await?,
        Framing::Chunked => rechunked(raw, client, out, sent).await?,
        Framing::UntilClose => {
            until_close(raw, client, out, sent).await?;
            return Ok(false);
        }
    }
    Ok(raw.buf.is_empty())
}

async fn sized(
    length: u64,
    raw: &mut RawConn,
    client: &mut impl ClientIo,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<(), RelayError> {
    let mut left = length;
    let take = buffered(left, raw);
    out.extend_from_slice(&raw.buf[..take]);
    raw.buf.drain(..take);
    left -= take as u64;
    send(client, out).await?;
    *sent = length - left;
    while left > 0 {
        fill(raw).await?;
        let take = buffered(left, raw);
        write_out(client, &raw.buf[..take])
            .await
            .map_err(RelayError::Client)?;
        raw.buf.drain(..take);
        left -= take as u64;
        *sent = length - left;
    }
    Ok(())
}

/// How much of the buffer belongs to a body with `left` bytes to go.
fn buffered(left: u64, raw: &RawConn) -> usize {
    usize::try_from(left).map_or(raw.buf.len(), |left| left.min(raw.buf.len()))
}

async fn rechunked(
    raw: &mut RawConn,
    client: &mut impl ClientIo,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<(), RelayError> {
    let mut rechunker = Rechunker::default();
    loop {
        let used = rechunker.feed(&raw.buf, out)?;
        raw.buf.drain(..used);
        *sent = rechunker.data_bytes();
        if rechunker.is_done() {
            return send(client, out).await;
        }
        if !out.is_empty() {
            send(client, out).await?;
        }
        fill(raw).await?;
    }
}

async fn until_close(
    raw: &mut RawConn,
    client: &mut impl ClientIo,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<(), RelayError> {
    loop {
        chunked::encode(&raw.buf, out);
        *sent += raw.buf.len() as u64;
        raw.buf.clear();
        send(client, out).await?;
        raw.buf.reserve(READ_CHUNK);
        match raw.stream.read_buf(&mut raw.buf).await {
            Ok(0) => {
                out.extend_from_slice(LAST_CHUNK);
                return send(client, out).await;
            }
            Ok(_) => {}
            Err(err) => return Err(RelayError::Upstream(err)),
        }
    }
}

/// Reads more of the body from the upstream; its end here is an error.
async fn fill(raw: &mut RawConn) -> Result<(), RelayError> {
    raw.buf.reserve(READ_CHUNK);
    match raw.stream.read_buf(&mut raw.buf).await {
        Ok(0) => Err(RelayError::Upstream(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Ok(_) => Ok(()),
        Err(err) => Err(RelayError::Upstream(err)),
    }
}

/// Writes `out` to the client and empties it.
async fn send(client: &mut impl ClientIo, out: &mut Vec<u8>) -> Result<(), RelayError> {
    let sent = write_out(client, out).await.map_err(RelayError::Client);
    out.clear();
    sent
}

/// Writes `bytes` to the client and flushes them (TLS buffers; plain TCP
/// does not, and its flush costs nothing).
pub async fn write_out(client: &mut impl ClientIo, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}
