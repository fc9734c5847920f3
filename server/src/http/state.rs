//! What every handler can reach.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::prometheus::MetricsHandle;

use crate::backend::redis::ReplicationMode;
use crate::readiness::Readiness;
use crate::secret::ExpectedToken;
use crate::service::SessionService;
use crate::store::WhenFull;

/// What every handler can reach, shared: axum clones the state for each
/// extractor and middleware that takes it, several times a request, and a
/// clone of the parts themselves (the shutdown token's among them, which
/// takes a lock) cost about 2 % of a session read's CPU.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state made of `parts`.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppParts {
    /// The session operations.
    pub service: SessionService,
    /// The bearer token `/v1` requires, if any.
    pub auth_token: Option<ExpectedToken>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<MetricsHandle>,
    /// Answers `/readyz`.
    pub readiness: Readiness,
    /// Time a request body has to arrive once its head is in.
    pub body_timeout: Duration,
    /// Settings the status page shows.
    pub facts: NodeFacts,
}

/// Settings of the node that the status page shows (the defaults: those
/// of `sessiond serve`, memory only).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeFacts {
    /// What a full store does.
    pub when_full: WhenFull,
    /// How sessions reach Redis (`None`: memory only).
    pub replication: Option<ReplicationMode>,
}
