//! A response body from the upstream to the client on the fast path. The
//! upstream's side ends (its connection pooled again, its slot freed) as
//! soon as the whole body has been read from it: a small body goes out
//! with the head in one write after that, so a client that reads slowly,
//! or not at all, holds no upstream. A large body streams a buffer at a
//! time (the client's pace holds the upstream's), and a client that leaves
//! meanwhile ends it, as do a gap in the body longer than the response
//! timeout and the upstream's removal from the pool.

use tokio::io::AsyncReadExt;

use super::chunked::{self, LAST_CHUNK, Rechunker};
use super::client::{Client, ClientIo};
use super::response_head::Framing;
use crate::balance::cutoffs::{CutShort, Cutoffs};
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
    /// A limit cut the body short.
    #[error(transparent)]
    Cut(#[from] CutShort),
}

/// Relays the body framed by `framing` from `raw` (whose buffer holds its
/// first bytes) to `client`, after the head already in `out`, counting the
/// body bytes handed to the client in `sent`, until `cutoffs` end it.
/// `finished` is called once the whole body has been read from the
/// upstream, with its connection when nothing followed the body
/// (reusable, framing allowing); if the relay fails first, it is dropped
/// instead.
pub async fn body<C: ClientIo>(
    framing: Framing,
    raw: RawConn,
    client: &mut Client<'_, C>,
    out: &mut Vec<u8>,
    sent: &mut u64,
    cutoffs: Cutoffs<'_>,
    finished: impl FnOnce(Option<RawConn>),
) -> Result<(), RelayError> {
    let relay = Relay {
        raw,
        client,
        out,
        sent,
        cutoffs,
        finished,
    };
    match framing {
        Framing::Empty => {
            (relay.finished)(quiet(relay.raw));
            send(relay.client, relay.out).await
        }
        Framing::Length(length) => relay.sized(length).await,
        Framing::Chunked => relay.rechunked().await,
        Framing::UntilClose => relay.until_close().await,
    }
}

/// One body's relay: the upstream connection, the client, the write
/// buffer, the count of body bytes sent, what cuts it short, and what to
/// do once the upstream side is done.
struct Relay<'a, 'c, C, F> {
    raw: RawConn,
    client: &'a mut Client<'c, C>,
    out: &'a mut Vec<u8>,
    sent: &'a mut u64,
    cutoffs: Cutoffs<'a>,
    finished: F,
}

/// `raw`, if the upstream sent nothing past the body.
fn quiet(raw: RawConn) -> Option<RawConn> {
    raw.buf.is_empty().then_some(raw)
}

impl<C: ClientIo, F: FnOnce(Option<RawConn>)> Relay<'_, '_, C, F> {
    async fn sized(mut self, length: u64) -> Result<(), RelayError> {
        let mut left = length;
        let take = buffered(left, &self.raw);
        self.out.extend_from_slice(&self.raw.buf[..take]);
        self.raw.buf.drain(..take);
        left -= take as u64;
        *self.sent = length - left;
        if left == 0 {
            (self.finished)(quiet(self.raw));
            return send(self.client, self.out).await;
        }
        send(self.client, self.out).await?;
        while left > 0 {
            fill(&mut self.raw, self.client, self.cutoffs).await?;
            let take = buffered(left, &self.raw);
            self.client
                .write(&self.raw.buf[..take])
                .await
                .map_err(|_| RelayError::Client)?;
            self.raw.buf.drain(..take);
            left -= take as u64;
            *self.sent = length - left;
        }
        (self.finished)(quiet(self.raw));
        Ok(())
    }

    async fn rechunked(mut self) -> Result<(), RelayError> {
        let mut rechunker = Rechunker::default();
        loop {
            let used = rechunker.feed(&self.raw.buf, self.out)?;
            self.raw.buf.drain(..used);
            *self.sent = rechunker.data_bytes();
            if rechunker.is_done() {
                (self.finished)(quiet(self.raw));
                return send(self.client, self.out).await;
            }
            if !self.out.is_empty() {
                send(self.client, self.out).await?;
            }
            fill(&mut self.raw, self.client, self.cutoffs).await?;
        }
    }

    async fn until_close(mut self) -> Result<(), RelayError> {
        loop {
            chunked::encode(&self.raw.buf, self.out);
            *self.sent += self.raw.buf.len() as u64;
            self.raw.buf.clear();
            send(self.client, self.out).await?;
            match fill(&mut self.raw, self.client, self.cutoffs).await {
                Ok(()) => {}
                Err(RelayError::Upstream(err))
                    if err.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    (self.finished)(None);
                    self.out.extend_from_slice(LAST_CHUNK);
                    return send(self.client, self.out).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// How much of the buffer belongs to a body with `left` bytes to go.
fn buffered(left: u64, raw: &RawConn) -> usize {
    usize::try_from(left).map_or(raw.buf.len(), |left| left.min(raw.buf.len()))
}

/// Reads more of the body from the upstream (its end here is
/// `UnexpectedEof`), unless the client leaves or `cutoffs` end it first.
async fn fill<C: ClientIo>(
    raw: &mut RawConn,
    client: &mut Client<'_, C>,
    cutoffs: Cutoffs<'_>,
) -> Result<(), RelayError> {
    if let Some(cut) = cutoffs.removed() {
        return Err(RelayError::Cut(cut));
    }
    raw.buf.reserve(READ_CHUNK);
    tokio::select! {
        biased;
        read = raw.stream.read_buf(&mut raw.buf) => match read {
            Ok(0) => Err(RelayError::Upstream(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(err) => Err(RelayError::Upstream(err)),
        },
        () = client.gone() => Err(RelayError::Client),
        cut = cutoffs.reached() => Err(RelayError::Cut(cut)),
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
