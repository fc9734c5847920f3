//! One store node as the client sees it: its connection, whether it is up,
//! and the background probe that brings it back after a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sessiond_proto::wire::{Op, Outcome, Placement, WriteTag};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::connection::{CallError, ConnectOptions, Connection};

/// First wait between probes of a down node; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A node of the client's ring.
#[derive(Debug)]
pub(crate) struct Node {
    /// The address the client was given.
    pub address: String,
    placement: Placement,
    options: Arc<ConnectOptions>,
    current: Mutex<Option<Arc<Connection>>>,
    connecting: tokio::sync::Mutex<()>,
    up: AtomicBool,
    /// Calls in a row that got no answer in time.
    timeouts: AtomicU32,
    /// Timeouts in a row that take the node out of rotation.
    fall: u32,
    stop_probes: CancellationToken,
}

impl Node {
    pub fn new(
        address: String,
        placement: Placement,
        options: Arc<ConnectOptions>,
        fall: u32,
        stop_probes: CancellationToken,
    ) -> Self {
        Self {
            address,
            placement,
            options,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            up: AtomicBool::new(true),
            timeouts: AtomicU32::new(0),
            fall: fall.max(1),
            stop_probes,
        }
    }

    /// The largest idle TTL the node accepts, once it has been reached.
    pub fn max_ttl_secs(&self) -> Option<u64> {
        self.current
            .lock()
            .as_ref()
            .map(|connection| connection.max_ttl_secs)
    }

    /// The node answered: its run of timeouts ends.
    pub fn answered(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
    }

    /// A call got no answer in time. One slow answer does not take the node
    /// out of rotation for every caller: only `fall` timeouts in a row do.
    /// Calls still on a node already down count for nothing (its probe
    /// decides when it is back, and it then starts a new run).
    pub fn timed_out(self: &Arc<Self>) {
        if !self.is_up() {
            return;
        }
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= self.fall {
            self.mark_down();
        }
    }

    /// The probe reached the node: it is back in rotation, with no
    /// timeout counted against it.
    fn came_back(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Release);
    }

    /// Whether the node said every node serves every session (`None`
    /// until it has been reached).
    pub fn shares_sessions(&self) -> Option<bool> {
        self.current
            .lock()
            .as_ref()
            .map(|connection| connection.shared_sessions)
    }

    /// Whether the node said it writes behind to Redis (`None` until it
    /// has been reached).
    pub fn writes_behind(&self) -> Option<bool> {
        self.current
            .lock()
            .as_ref()
            .map(|connection| connection.write_behind)
    }

    /// Whether the node is believed up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn live(&self) -> Option<Arc<Connection>> {
        self.current
            .lock()
            .as_ref()
            .filter(|connection| !connection.is_closed())
            .cloned()
    }

    /// The node's connection, opening one if needed. A node known to be down
    /// fails at once (its probe reconnects in the background).
    pub async fn connection(self: &Arc<Self>) -> Result<Arc<Connection>, Error> {
        let down = || {
            Error::Unavailable(format!(
                "node {} is down (probing in the background)",
                self.address
            ))
        };
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        if !self.is_up() {
            return Err(down());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        // Callers that waited here behind a connect that failed fail at
        // once, instead of each trying (and waiting) in turn.
        if !self.is_up() {
            return Err(down());
        }
        match self.open().await {
            Ok(connection) => Ok(connection),
            Err(err) => {
                self.mark_down();
                Err(err)
            }
        }
    }

    /// Sends `op` on `connection`, this node's. A request that found the
    /// connection closed before it left is sent once more, on a new
    /// connection: it was not sent, so that is safe even for a write, and
    /// a caller with no other node to try does not fail for it.
    pub async fn call(
        self: &Arc<Self>,
        connection: Arc<Connection>,
        op: &Op,
        write: Option<WriteTag>,
        timeout: Duration,
    ) -> Result<Outcome, CallError> {
        match connection.call(op.clone(), write, timeout).await {
            Err(CallError::NotSent(Error::Unavailable(_))) => {
                let connection = self.connection().await.map_err(CallError::NotSent)?;
                connection.call(op.clone(), write, timeout).await
            }
            other => other,
        }
    }

    async fn open(&self) -> Result<Arc<Connection>, Error> {
        let connection =
            Arc::new(Connection::open(&self.address, self.placement.clone(), &self.options).await?);
        *self.current.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Takes the node out of rotation and starts probing it.
    pub fn mark_down(self: &Arc<Self>) {
        self.timeouts.store(0, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(node = %self.address, "node marked down");
            *self.current.lock() = None;
            tokio::spawn(self.clone().probe());
        }
    }

    /// Reconnects with exponential backoff until the node answers again.
    async fn probe(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                () = self.stop_probes.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match self.open().await {
                Ok(_) => {
                    self.came_back();
                    tracing::info!(node = %self.address, "node is back");
                    return;
                }
                Err(err) => {
                    tracing::debug!(node = %self.address, %err, "probe failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls that were in flight when a node went down time out after
    /// it; once it is back, one slow answer does not take it out again:
    /// `fall` timeouts in a row do. (They counted on: 50 calls in flight
    /// left it one timeout from going down for good.)
    #[tokio::test]
    async fn timeouts_while_down_do_not_count_once_the_node_is_back() {
        let options = Arc::new(ConnectOptions {
            auth_token: None,
            connect_timeout: Duration::from_millis(10),
            max_frame_bytes: 1 << 20,
        });
        let stop_probes = CancellationToken::new();
        let node = Arc::new(Node::new(
            "127.0.0.1:1".to_owned(),
            Placement {
                ring: vec![1],
                owner: 0,
            },
            options,
            3,
            stop_probes.clone(),
        ));
        node.timed_out();
        node.timed_out();
        assert!(node.is_up(), "two timeouts of three");
        node.timed_out();
        assert!(!node.is_up(), "the third takes it out");
        for _ in 0..50 {
            node.timed_out();
        }
        node.came_back();
        node.timed_out();
        node.timed_out();
        assert!(node.is_up(), "two timeouts after it came back");
        stop_probes.cancel();
    }
}
