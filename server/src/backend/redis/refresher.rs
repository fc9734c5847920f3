//! Sliding expiry in Redis: reads push a session's expiry in memory at
//! once, and the new expiry reaches Redis in coalesced batches (one
//! `PEXPIREAT ... GT` per session per flush). A read close to the key's
//! current expiry refreshes Redis before it answers, so a session used
//! within its TTL never expires in Redis.
//!
//! A flush sends at most [`MAX_CONCURRENT`] refreshes at once, and the
//! refreshes that failed (their Redis master is down) wait for a backoff
//! that grows while they keep failing, so a failing Redis is never
//! flooded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use sessiond_proto::SessionId;
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::link::RedisLink;
use super::scripts::{REFRESH, key};

/// How often coalesced expiry refreshes are flushed to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A read of a session whose Redis expiry is closer than this refreshes
/// Redis before answering.
pub const SYNC_MARGIN_MS: u64 = 2_000;
/// Refreshes one flush has in flight at most.
pub const MAX_CONCURRENT: usize = 8;
/// Longest wait before failed refreshes are tried again (the wait starts
/// at one flush interval and doubles per failed attempt).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Refreshes that failed, and when they are tried again.
#[derive(Debug)]
struct Failed {
    refreshes: HashMap<SessionId, u64>,
    attempts: u32,
    due: Instant,
}

/// Expiry refreshes waiting to be sent.
#[derive(Debug)]
pub struct ExpiryRefresher {
    prefix: String,
    link: Arc<RedisLink>,
    /// The event log's expiry index, moved along with each expiry.
    expiry_index: Option<String>,
    script: redis::Script,
    pending: Mutex<HashMap<SessionId, u64>>,
    failed: Mutex<Failed>,
}

impl ExpiryRefresher {
    /// A refresher writing through `link` (and moving each session in the
    /// event log's expiry index, if there is one).
    pub fn new(prefix: String, link: Arc<RedisLink>, expiry_index: Option<String>) -> Self {
        Self {
            prefix,
            link,
            expiry_index,
            script: redis::Script::new(REFRESH),
            pending: Mutex::new(HashMap::new()),
            failed: Mutex::new(Failed {
                refreshes: HashMap::new(),
                attempts: 0,
                due: Instant::now(),
            }),
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
        let mut invocation = self.script.key(key(&self.prefix, id));
        if let Some(index) = &self.expiry_index {
            invocation.key(index);
        }
        let result = invocation
            .arg(expires_at_ms)
            .invoke_async::<i64>(&mut conn)
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
        let mut batch = std::mem::take(&mut *self.pending.lock());
        {
            let mut failed = self.failed.lock();
            if Instant::now() >= failed.due {
                // Newer notes win.
                for (id, expires_at) in std::mem::take(&mut failed.refreshes) {
                    batch.entry(id).or_insert(expires_at);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let failures: Vec<(SessionId, u64)> = futures_util::stream::iter(batch)
            .map(|(id, expires_at)| async move {
                let result = self.refresh_now(&id, expires_at).await;
                result.is_err().then_some((id, expires_at))
            })
            .buffer_unordered(MAX_CONCURRENT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut failed = self.failed.lock();
        if failures.is_empty() {
            if failed.refreshes.is_empty() {
                failed.attempts = 0;
            }
            return;
        }
        failed.attempts = failed.attempts.saturating_add(1);
        let delay = FLUSH_INTERVAL.saturating_mul(1 << failed.attempts.min(8));
        failed.due = Instant::now() + delay.min(MAX_RETRY_DELAY);
        tracing::debug!(
            failed = failures.len(),
            retry_in = ?delay.min(MAX_RETRY_DELAY),
            "expiry refreshes failed; retrying later"
        );
        for (id, expires_at) in failures {
            failed.refreshes.entry(id).or_insert(expires_at);
        }
    }
}
