//! Whether this node should receive traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::redis::{Invalidations, RedisLink};

/// Readiness of a node: not ready while draining for shutdown, nor while
/// its Redis (when it replicates to one) is unreachable.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    redis: Option<Arc<RedisLink>>,
    invalidations: Option<Arc<Invalidations>>,
}

impl Readiness {
    /// Readiness that also requires `link` to be up; `invalidations` is
    /// the node's subscription, shown on its status page.
    pub fn with_redis(link: Arc<RedisLink>, invalidations: Arc<Invalidations>) -> Self {
        Self {
            draining: Arc::default(),
            redis: Some(link),
            invalidations: Some(invalidations),
        }
    }

    /// Whether the invalidation subscription is live (`None` without
    /// Redis).
    pub fn subscribed(&self) -> Option<bool> {
        self.invalidations
            .as_ref()
            .map(|subscription| subscription.is_live())
    }

    /// Marks the node as shutting down; `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether Redis answers (`None` without Redis).
    pub fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|link| link.is_up())
    }

    /// `Ok` when ready, otherwise the reason in a sentence.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("the node is shutting down".to_owned());
        }
        if let Some(link) = &self.redis {
            link.status()?;
        }
        Ok(())
    }
}
