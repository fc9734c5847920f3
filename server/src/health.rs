//! Whether this node should receive traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness of a node: not ready once it starts draining for shutdown.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Marks the node as shutting down; `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, otherwise the reason in a sentence.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("the node is shutting down".to_owned());
        }
        Ok(())
    }
}
