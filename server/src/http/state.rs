//! What every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::readiness::Readiness;
use crate::service::SessionService;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The session operations.
    pub service: SessionService,
    /// The bearer token `/v1` requires, if any.
    pub auth_token: Option<Arc<str>>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Answers `/readyz`.
    pub readiness: Readiness,
    /// Time a request body has to arrive once its head is in.
    pub body_timeout: Duration,
}
