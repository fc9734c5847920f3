//! What every listener shares: binding with a deep backlog, an accept loop
//! that survives running out of descriptors, and the errors of both.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

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
                return Some((stream, peer));
            }
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
