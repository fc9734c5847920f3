//! A loopback TCP proxy whose open connections can be silenced: from then
//! on it drops what either side sends and closes nothing, the way a
//! connection through a dead network path or a crashed middlebox looks
//! (half-open); connections made after that are forwarded again. Open
//! connections can also be cut at their next answer: the server's bytes
//! are dropped and the client's side closed, the way a reset after the
//! request went through looks; or only the connection that carries the
//! next request holding some marker (a session id, say), at the answer
//! after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The first request holding these bytes has its connection cut.
    marker: Marker,
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
        let marker = Arc::new(Mutex::new(None));
        let accept = tokio::spawn({
            let (accepted, silenced_below) = (accepted.clone(), silenced_below.clone());
            let (cut_below, marker) = (cut_below.clone(), marker.clone());
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
                        marker: marker.clone(),
                        marked: Arc::default(),
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
            marker,
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

    /// Cuts the connection that carries the next request holding `marker`
    /// at the first answer after it: the request runs, its answer (and
    /// with it any other answer in flight) is lost.
    pub fn lose_answer_to_next_request_holding(&self, marker: &[u8]) {
        *self.marker.lock().expect("the proxy's marker") = Some(marker.to_vec());
    }

    /// Whether the request armed by
    /// [`Self::lose_answer_to_next_request_holding`] has gone through.
    pub fn marked_request_went_through(&self) -> bool {
        self.marker.lock().expect("the proxy's marker").is_none()
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

/// A marker to look for in requests (taken by the first that holds it).
type Marker = Arc<Mutex<Option<Vec<u8>>>>;

/// What becomes of one direction of connection `number`.
#[derive(Clone)]
struct Cut {
    number: u64,
    silenced_below: Arc<AtomicU64>,
    /// For the server's direction: connections below this end, their
    /// bytes dropped, at the next they send.
    cut_below: Option<Arc<AtomicU64>>,
    /// The marker requests are looked for.
    marker: Marker,
    /// Set once a request holding the marker went this connection's way:
    /// its next answer ends it.
    marked: Arc<AtomicBool>,
}

impl Cut {
    /// Whether `bytes` (sent by the client) hold the marker: then the
    /// marker is used up and this connection is cut at its next answer.
    fn mark_if_holding(&self, bytes: &[u8]) {
        let mut marker = self.marker.lock().expect("the proxy's marker");
        let holds = marker
            .as_deref()
            .is_some_and(|marker| bytes.windows(marker.len()).any(|window| window == marker));
        if holds {
            *marker = None;
            self.marked.store(true, Ordering::SeqCst);
        }
    }
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
        let answering = cut.cut_below.is_some();
        if answering && cut.marked.load(Ordering::SeqCst) {
            return;
        }
        if cut.cut_below.as_deref().is_some_and(below) {
            return;
        }
        if !answering {
            cut.mark_if_holding(&buffer[..read]);
        }
        if below(&cut.silenced_below) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
