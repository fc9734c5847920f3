//! A loopback TCP proxy whose open connections can be silenced: from then
//! on it drops what either side sends and closes nothing, the way a
//! connection through a dead network path or a crashed middlebox looks
//! (half-open); connections made after that are forwarded again. Open
//! connections can also be cut at their next answer: the server's bytes
//! are dropped and the client's side closed, the way a reset after the
//! request went through looks.

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
    /// Connections numbered below this are cut at their next answer.
    cut_below: Arc<AtomicU64>,
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
        let cut_below = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let (accepted, silenced_below) = (accepted.clone(), silenced_below.clone());
            let cut_below = cut_below.clone();
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
                    let silenced = Cut {
                        number,
                        silenced_below: silenced_below.clone(),
                        cut_below: None,
                    };
                    tokio::spawn(forward(client_read, server_write, silenced.clone()));
                    let answers = Cut {
                        cut_below: Some(cut_below.clone()),
                        ..silenced
                    };
                    tokio::spawn(forward(server_read, client_write, answers));
                }
            }
        });
        Self {
            port,
            accepted,
            silenced_below,
            cut_below,
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

    /// Cuts every connection accepted so far at its next answer.
    pub fn cut_open_connections_at_next_answer(&self) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.cut_below.store(accepted, Ordering::SeqCst);
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

/// What becomes of one direction of connection `number`.
#[derive(Clone)]
struct Cut {
    number: u64,
    silenced_below: Arc<AtomicU64>,
    /// For the server's direction: connections below this end, their
    /// bytes dropped, at the next they send.
    cut_below: Option<Arc<AtomicU64>>,
}

/// Copies `from` to `to` until either closes, dropping the bytes instead
/// once the connection is silenced, or ending it once it is cut.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Cut,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let below = |limit: &AtomicU64| cut.number < limit.load(Ordering::SeqCst);
        if cut.cut_below.as_deref().is_some_and(below) {
            return;
        }
        if below(&cut.silenced_below) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
