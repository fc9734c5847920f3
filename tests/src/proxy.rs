//! A loopback TCP proxy whose open connections can be silenced: from then
//! on it drops what either side sends and closes nothing, the way a
//! connection through a dead network path or a crashed middlebox looks
//! (half-open); connections made after that are forwarded again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy from a loopback port to `target`; it accepts no more when
/// dropped (a forwarded connection ends when either side closes it).
pub struct SilencingProxy {
    port: u16,
    /// Connections accepted so far (numbered from 0 in that order).
    accepted: Arc<AtomicU64>,
    /// Connections numbered below this are silenced.
    silenced_below: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl SilencingProxy {
    /// Starts forwarding connections to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy's port");
        let port = listener.local_addr().expect("the proxy's port").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let silenced_below = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let (accepted, silenced_below) = (accepted.clone(), silenced_below.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (from, to) in [(client_read, server_write), (server_read, client_write)] {
                        tokio::spawn(forward(from, to, number, silenced_below.clone()));
                    }
                }
            }
        });
        Self {
            port,
            accepted,
            silenced_below,
            accept,
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Silences every connection accepted so far.
    pub fn silence_open_connections(&self) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.silenced_below.store(accepted, Ordering::SeqCst);
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` until either closes, dropping the bytes instead
/// once connection `number` is silenced.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    silenced_below: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if number < silenced_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
