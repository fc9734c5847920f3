//! The background task that frees expired sessions without waiting for reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Sweeps `store` every `interval`, examining at most `batch` sessions per
/// shard each time, until `shutdown` fires.
pub async fn run(store: Arc<Store>, interval: Duration, batch: usize, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let freed = store.sweep(batch);
                if freed > 0 {
                    tracing::debug!(freed, "swept expired sessions");
                }
                if let Some(events) = store.events() {
                    events.trim(store.now_ms());
                    metrics::gauge!("sessiond_events_retained").set(events.retained() as f64);
                }
            }
        }
    }
}
