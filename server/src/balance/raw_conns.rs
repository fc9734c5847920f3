//! Upstream connections of the fast HTTP/1 path ([`super::fast`]): plain
//! TCP streams with their read buffers, pooled per worker thread beside
//! hyper's (a worker is a single-threaded event loop: never locked).

use std::cell::RefCell;
use std::time::Duration;

use tokio::net::TcpStream;

use super::connector::{self, ConnectError};
use super::idle::{Idle, Key};
use super::upstream::UpstreamUrl;

/// Bytes read from an upstream at a time.
pub const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    static IDLE: RefCell<Idle<RawConn>> = RefCell::new(Idle::default());
}

/// One upstream connection and what has been read from it but not used.
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not yet consumed.
    pub buf: Vec<u8>,
}

impl RawConn {
    /// Opens a connection to `upstream`, writing `preamble` first.
    pub async fn open(
        upstream: &UpstreamUrl,
        timeout: Duration,
        preamble: Option<&[u8]>,
    ) -> Result<Self, ConnectError> {
        let stream = connector::open_upstream(upstream, timeout, preamble).await?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
        })
    }

    /// Whether the connection still looks open and quiet: an idle one that
    /// has data or an end of stream waiting was closed (or broken) by the
    /// upstream. The check makes no system call unless the event loop has
    /// seen the socket become readable.
    fn is_quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

/// An idle connection under `key`, if one is young and quiet.
pub fn take(key: Key, idle_timeout: Duration) -> Option<RawConn> {
    IDLE.with(|idle| {
        idle.borrow_mut()
            .take(key, idle_timeout, |conn| conn.is_quiet())
    })
}

/// Pools `conn` under `key` for the next request.
pub fn give_back(key: Key, mut conn: RawConn) {
    conn.buf.clear();
    let _ = IDLE.try_with(|idle| idle.borrow_mut().put(key, conn));
}

/// Closes this worker's connections idle `idle_timeout` or longer.
pub fn sweep(idle_timeout: Duration) {
    IDLE.with(|idle| idle.borrow_mut().sweep(idle_timeout, RawConn::is_quiet));
}

/// Closes this worker's connections of the client connection keyed `owner`.
pub fn forget(owner: u64) {
    let _ = IDLE.try_with(|idle| idle.borrow_mut().forget(owner));
}
