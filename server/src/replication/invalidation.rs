//! Cross-node cache coherence: every write a node makes in Redis publishes
//! `node id + session id` on one channel (from inside the write's Lua
//! script); every node subscribes and drops its copy of sessions other
//! nodes changed. While the subscription is down the cache is not trusted,
//! and it is cleared when the subscription comes back, so no copy that
//! missed an invalidation is ever served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sessiond_proto::SessionId;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Bytes of an invalidation message: node id (8) + session id (16).
const MESSAGE_BYTES: usize = 24;

/// This node's view of invalidations.
#[derive(Debug)]
pub struct Invalidations {
    /// Channel name.
    pub channel: String,
    /// This node's id, so it ignores its own messages.
    pub node_id: u64,
    live: AtomicBool,
    received: AtomicU64,
}

impl Invalidations {
    /// Invalidations on `channel` for the node `node_id`.
    pub fn new(channel: String, node_id: u64) -> Self {
        Self {
            channel,
            node_id,
            live: AtomicBool::new(false),
            received: AtomicU64::new(0),
        }
    }

    /// The message announcing a change of `id` by this node.
    pub fn message(&self, id: &SessionId) -> Vec<u8> {
        let mut message = Vec::with_capacity(MESSAGE_BYTES);
        message.extend_from_slice(&self.node_id.to_be_bytes());
        message.extend_from_slice(id.as_bytes());
        message
    }

    /// Whether the subscription is up, so cached copies can be trusted.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A counter that moves whenever another node's change arrives (or the
    /// cache is cleared): a cache fill that began before a move must not be
    /// kept, it may hold what was just invalidated.
    pub fn epoch(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    fn apply(&self, payload: &[u8], store: &Store) {
        let Some((node, id)) = payload.split_at_checked(8) else {
            return;
        };
        let (Ok(node), Ok(id)) = (<[u8; 8]>::try_from(node), <[u8; 16]>::try_from(id)) else {
            return;
        };
        if u64::from_be_bytes(node) != self.node_id {
            self.received.fetch_add(1, Ordering::AcqRel);
            store.delete(&SessionId::from_bytes(id));
        }
    }

    /// Subscribes (to one of `urls`, in turn) and applies invalidations to
    /// `store` until `shutdown`, resubscribing after any failure.
    pub async fn run(
        self: Arc<Self>,
        urls: Vec<String>,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) {
        let mut attempt = 0usize;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            if let Err(err) = self.subscribe(url, &store, &shutdown).await {
                let err = err.to_string();
                if err != last_error {
                    tracing::warn!(%url, %err, "invalidation subscription failed; retrying");
                    last_error = err;
                }
            }
            if self.live.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "lost the invalidation subscription; cache bypassed until it is back"
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn subscribe(
        &self,
        url: &str,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let client = redis::Client::open(url)?;
        let connect = client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(Duration::from_secs(1), connect)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub.subscribe(&self.channel).await?;
        // Copies cached before now may have missed invalidations.
        let dropped = store.clear();
        self.received.fetch_add(1, Ordering::AcqRel);
        self.live.store(true, Ordering::Release);
        tracing::info!(dropped, channel = %self.channel, "subscribed to invalidations");
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = messages.next() => match message {
                    Some(message) => self.apply(message.get_payload_bytes(), store),
                    None => return Ok(()),
                },
            }
        }
    }
}
