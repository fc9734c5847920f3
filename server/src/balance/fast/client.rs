//! The client's side of a request in flight on the fast path: answers are
//! written (and flushed: TLS buffers) to its connection, and while the
//! balancer waits on the upstream the connection is watched, so a client
//! that leaves frees the upstream at once (as hyper's dispatcher does)
//! and what a pipelining client sends meanwhile is kept for next.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientIo, READ_CHUNK};

/// A client connection and the bytes read ahead from it.
#[derive(Debug)]
pub struct Client<'a, C> {
    io: &'a mut C,
    read_ahead: &'a mut Vec<u8>,
    limit: usize,
}

impl<'a, C: ClientIo> Client<'a, C> {
    /// `io`, reading ahead into `read_ahead` while watched, up to `limit`
    /// bytes.
    pub fn new(io: &'a mut C, read_ahead: &'a mut Vec<u8>, limit: usize) -> Self {
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

    /// Resolves once the client has closed its connection (or it broke);
    /// what it sends before that is read ahead, up to the limit, past
    /// which it is no longer watched.
    pub async fn gone(&mut self) {
        while self.read_ahead.len() < self.limit {
            self.read_ahead.reserve(READ_CHUNK);
            match self.io.read_buf(self.read_ahead).await {
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
    async fn pipelined_bytes_are_kept_and_a_close_is_seen() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut read_ahead = Vec::new();
        let mut client = Client::new(&mut near, &mut read_ahead, 1024);
        far.write_all(b"GET /next").await.unwrap();
        drop(far);
        client.gone().await;
        assert_eq!(read_ahead, b"GET /next");
    }
}
