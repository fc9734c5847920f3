//! Sliding expiry in Redis: reads push a session's expiry in memory at
//! once, and the new expiry reaches Redis in coalesced batches (one
//! `PEXPIREAT ... GT` per session per flush). A read close to the key's
//! current expiry refreshes Redis before it answers, so a session used
//! within its TTL never expires in Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sessiond_proto::SessionId;
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::link::RedisLink;
use super::scripts::key;

/// How often coalesced expiry refreshes are flushed to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A read of a session whose Redis expiry is closer than this refreshes
/// Redis before answering.
pub const SYNC_MARGIN_MS: u64 = 2_000;

/// Expiry refreshes waiting to be sent.
#[derive(Debug)]
pub struct ExpiryRefresher {
    prefix: String,
    link: Arc<RedisLink>,
    pending: Mutex<HashMap<SessionId, u64>>,
}

impl ExpiryRefresher {
    /// A refresher writing through `link`.
    pub fn new(prefix: String, link: Arc<RedisLink>) -> Self {
        Self {
            prefix,
            link,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `id` now expires at `expires_at_ms`.
    pub fn note(&self, id: SessionId, expires_at_ms: u64) {
        self.pending.lock().insert(id, expires_at_ms);
    }

    /// Refreshes one session's expiry in Redis now.
    pub async fn refresh_now(
        &self,
        id: &SessionId,
        expires_at_ms: u64,
    ) -> Result<(), ReplicationError> {
        let mut conn = self.link.conn()?;
        let result = redis::cmd("PEXPIREAT")
            .arg(key(&self.prefix, id))
            .arg(expires_at_ms)
            .arg("GT")
            .query_async::<i64>(&mut conn)
            .await;
        self.link.observe(result).map(drop)
    }

    /// Flushes every `FLUSH_INTERVAL` until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(FLUSH_INTERVAL) => false,
            };
            self.flush().await;
            if stop {
                return;
            }
        }
    }

    async fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let refreshes = batch
            .iter()
            .map(|(id, expires_at)| self.refresh_now(id, *expires_at));
        let failed = futures_util::future::join_all(refreshes)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            // Put them back for the next flush; newer notes win.
            let mut pending = self.pending.lock();
            for (id, expires_at) in batch {
                pending.entry(id).or_insert(expires_at);
            }
            tracing::debug!(failed, "expiry refreshes failed; retrying next flush");
        }
    }
}
