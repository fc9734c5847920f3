//! A response body from the upstream to the client on the fast path. The
//! upstream's side ends (its connection pooled again, its slot freed) as
//! soon as the whole body has been read from it: a small body goes out
//! with the head in one write after that, so a client that reads slowly,
//! or not at all, holds no upstream. A large body streams a buffer at a
//! time (the client's pace holds the upstream's), and a client that leaves
//! meanwhile ends it.

use tokio::io::AsyncReadExt;

use super::chunked::{self, LAST_CHUNK, Rechunker};
use super::client::{Client, ClientIo};
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
    #[error("the client went away")]
    Client,
}

/// Relays the body framed by `framing` from `raw` (whose buffer holds its
/// first bytes) to `client`, after the head already in `out`, counting the
/// body bytes handed to the client in `sent`. `finished` is called once
/// the whole body has been read from the upstream, with its connection
/// when nothing followed the body (reusable, framing allowing); if the
/// relay fails first, it is dropped instead.
pub async fn body<C: ClientIo>(
    framing: Framing,
    raw: RawConn,
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
    sent: &mut u64,
    finished: impl FnOnce(Option<RawConn>),
) -> Result<(), RelayError> {
    match framing {
        Framing::Empty => {
            finished(quiet(raw));
            send(client, out).await
        }
        Framing::Length(length) => sized(length, raw, client, out, sent, finished).await,
        Framing::Chunked => rechunked(raw, client, out, sent, finished).await,
        Framing::UntilClose => until_close(raw, client, out, sent, finished).await,
    }
}

/// `raw`, if the upstream sent nothing past the body.
fn quiet(raw: RawConn) -> Option<RawConn> {
    raw.buf.is_empty().then_some(raw)
}

async fn sized<C: ClientIo>(
    length: u64,
    mut raw: RawConn,
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
    sent: &mut u64,
    finished: impl FnOnce(Option<RawConn>),
) -> Result<(), RelayError> {
    let mut left = length;
    let take = buffered(left, &raw);
    out.extend_from_slice(&raw.buf[..take]);
    raw.buf.drain(..take);
    left -= take as u64;
    *sent = length - left;
    if left == 0 {
        finished(quiet(raw));
        return send(client, out).await;
    }
    send(client, out).await?;
    while left > 0 {
        fill(&mut raw, client).await?;
        let take = buffered(left, &raw);
        client
            .write(&raw.buf[..take])
            .await
            .map_err(|_| RelayError::Client)?;
        raw.buf.drain(..take);
        left -= take as u64;
        *sent = length - left;
    }
    finished(quiet(raw));
    Ok(())
}

/// How much of the buffer belongs to a body with `left` bytes to go.
fn buffered(left: u64, raw: &RawConn) -> usize {
    usize::try_from(left).map_or(raw.buf.len(), |left| left.min(raw.buf.len()))
}

async fn rechunked<C: ClientIo>(
    mut raw: RawConn,
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
    sent: &mut u64,
    finished: impl FnOnce(Option<RawConn>),
) -> Result<(), RelayError> {
    let mut rechunker = Rechunker::default();
    loop {
        let used = rechunker.feed(&raw.buf, out)?;
        raw.buf.drain(..used);
        *sent = rechunker.data_bytes();
        if rechunker.is_done() {
            finished(quiet(raw));
            return send(client, out).await;
        }
        if !out.is_empty() {
            send(client, out).await?;
        }
        fill(&mut raw, client).await?;
    }
}

async fn until_close<C: ClientIo>(
    mut raw: RawConn,
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
    sent: &mut u64,
    finished: impl FnOnce(Option<RawConn>),
) -> Result<(), RelayError> {
    loop {
        chunked::encode(&raw.buf, out);
        *sent += raw.buf.len() as u64;
        raw.buf.clear();
        send(client, out).await?;
        match fill(&mut raw, client).await {
            Ok(()) => {}
            Err(RelayError::Upstream(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                finished(None);
                out.extend_from_slice(LAST_CHUNK);
                return send(client, out).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Reads more of the body from the upstream (its end here is
/// `UnexpectedEof`), unless the client leaves first.
async fn fill<C: ClientIo>(
    raw: &mut RawConn,
    client: &mut Client<'_, C>,
) -> Result<(), RelayError> {
    raw.buf.reserve(READ_CHUNK);
    tokio::select! {
        biased;
        read = raw.stream.read_buf(&mut raw.buf) => match read {
            Ok(0) => Err(RelayError::Upstream(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(err) => Err(RelayError::Upstream(err)),
        },
        () = client.gone() => Err(RelayError::Client),
    }
}

/// Writes `out` to the client and empties it.
async fn send<C: ClientIo>(
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
) -> Result<(), RelayError> {
    let sent = client.write(out).await.map_err(|_| RelayError::Client);
    out.clear();
    sent
}
