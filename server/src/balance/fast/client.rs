//! The client's side of a request in flight on the fast path: answers are
//! written (and flushed: TLS buffers) to its connection, and while the
//! balancer waits on the upstream the connection is watched, so a client
//! that leaves frees the upstream at once (as hyper's dispatcher does)
//! and what a pipelining client sends meanwhile is kept for next.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read from a client at a time.
pub const READ_CHUNK: usize = 4096;

/// A client connection: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin {}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo for S {}

/// What has been read ahead from a client connection.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// The bytes, not parsed yet.
    pub bytes: Vec<u8>,
    /// Whether the client closed its sending side after pipelined bytes.
    pub ended: bool,
}

/// A client connection and what was read ahead from it.
#[derive(Debug)]
pub struct Client<'a, C> {
    io: &'a mut C,
    read_ahead: &'a mut ReadAhead,
    limit: usize,
}

impl<'a, C: ClientIo> Client<'a, C> {
    /// `io`, reading ahead into `read_ahead` while watched, up to `limit`
    /// bytes.
    pub fn new(io: &'a mut C, read_ahead: &'a mut ReadAhead, limit: usize) -> Self {
        Self {
            io,
            read_ahead,
            limit,
        }
    }

    /// Writes `bytes` and flushes them.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Resolves once the client has closed its connection (or it broke)
    /// with nothing read ahead; what it sends before that is read ahead,
    /// up to the limit, past which it is no longer watched. A client that
    /// pipelined requests and then closed its sending side (a half-close)
    /// still gets its answers, as from hyper.
    pub async fn gone(&mut self) {
        while !self.read_ahead.ended && self.read_ahead.bytes.len() < self.limit {
            self.read_ahead.bytes.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.read_ahead.bytes).await {
                Ok(0) if !self.read_ahead.bytes.is_empty() => self.read_ahead.ended = true,
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_close_is_seen_unless_requests_were_pipelined_before_it() {
        let wait = std::time::Duration::from_millis(100);
        let (mut near, far) = tokio::io::duplex(64);
        let mut read_ahead = ReadAhead::default();
        let mut client = Client::new(&mut near, &mut read_ahead, 1024);
        drop(far);
        client.gone().await;
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut client = Client::new(&mut near, &mut read_ahead, 1024);
        far.write_all(b"GET /next").await.unwrap();
        drop(far);
        let watched = tokio::time::timeout(wait, client.gone());
        assert!(
            watched.await.is_err(),
            "a half-close after a pipelined request"
        );
        assert_eq!(read_ahead.bytes, b"GET /next");
        assert!(read_ahead.ended);
        // Its next request taken, the client is still not taken as gone.
        read_ahead.bytes.clear();
        let mut client = Client::new(&mut near, &mut read_ahead, 1024);
        assert!(tokio::time::timeout(wait, client.gone()).await.is_err());
    }
}
