//! What every listener shares: binding with a deep backlog, an accept loop
//! that survives running out of descriptors, a drain bounded in time, and
//! the errors of both.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a listener could not run.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A listener could not bind its address.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("{what} listener failed: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Listen backlog of every listener: connections the kernel completes
/// while the accept loop is busy (the kernel caps it at
/// `net.core.somaxconn`). Past it, a client's SYN is dropped and its connect
/// stalls for a one-second retransmission.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener (address reuse on, a [`LISTEN_BACKLOG`] backlog) and
/// logs the address it got.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NetError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener = listen().map_err(|source| NetError::Bind { what, addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(%local, "{what} listening");
    Ok(listener)
}

/// The most answer bytes an accepted connection's socket holds unsent:
/// past it the socket takes no more until the client reads. So a write
/// moves as the client reads (without it the kernel says there is room
/// again only once a third of a send buffer of megabytes is free, which a
/// slow but steady reader can take longer than the idle timeout to read,
/// and was cut off as not reading), and a client that stops reading leaves
/// its answers in the node's buffers, not in the kernel's.
const NOT_SENT_LOW_WATER: u32 = 128 * 1024;

/// The next connection of `listener`, or `None` once `shutdown` fires.
/// Accept errors (out of file descriptors and the like) are logged and
/// retried after a short pause: the listener keeps serving.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOT_SENT_LOW_WATER);
                return Some((stream, peer));
            }
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes `tasks` and waits, at most `timeout`, for every one to end;
/// returns whether they did, and logs how many of `what` are still open
/// if not.
pub async fn wait_drained(tasks: &TaskTracker, timeout: Duration, what: &str) -> bool {
    tasks.close();
    let drained = tokio::time::timeout(timeout, tasks.wait()).await.is_ok();
    if !drained {
        tracing::warn!(
            open = tasks.len(),
            "{what} still open after the drain timeout ({timeout:?}); closing them"
        );
    }
    drained
}

/// A listener's open connections: tracked so that a shutdown can wait for
/// them to finish their requests, and dropped (their sockets closed) if
/// they outlast the drain timeout.
#[derive(Debug, Default)]
pub struct OpenConnections {
    tracker: TaskTracker,
    abandon: CancellationToken,
}

impl OpenConnections {
    /// Runs `connection` until it ends or the drain gives up on it.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker
            .spawn(self.abandon.clone().run_until_cancelled_owned(connection));
    }

    /// Waits, at most `timeout`, for every connection to end, then drops
    /// those still open and waits for them to be gone.
    pub async fn drain(&self, timeout: Duration, what: &str) {
        if !wait_drained(&self.tracker, timeout, what).await {
            self.abandon.cancel();
            self.tracker.wait().await;
        }
    }
}
