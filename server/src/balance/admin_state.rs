//! What the admin listener's handlers share: the upstreams, the metrics
//! renderer, who may change the upstreams, and the stats they all show.

use std::sync::Arc;

use crate::prometheus::MetricsHandle;
use crate::secret::ExpectedToken;
use serde::Serialize;

use super::membership::Membership;
use super::pool::Pool;
use super::upstream::UpstreamStats;

/// Who may use the upstreams API.
#[derive(Debug)]
pub struct ApiAuth {
    /// The bearer token, if one is configured.
    pub token: Option<ExpectedToken>,
    /// Whether the admin listener is on a loopback address.
    pub loopback: bool,
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The upstreams, and the way to change them.
    pub membership: Membership,
    /// Renders `/metrics`.
    pub metrics: Option<MetricsHandle>,
    /// Who may use the upstreams API.
    pub auth: Arc<ApiAuth>,
}

/// The balancer's state as `/stats.json` shows it.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Upstreams in rotation: passing their health checks, not draining.
    pub healthy: usize,
    /// Requests waiting for a slot (every upstream at `--max-conns`).
    pub queued: usize,
    /// Every upstream, draining ones included.
    pub upstreams: Vec<UpstreamStats>,
}

/// The pool's state now.
pub fn stats(pool: &Pool) -> Stats {
    let all = pool.upstreams();
    let upstreams: Vec<UpstreamStats> = all.iter().map(|u| u.stats()).collect();
    Stats {
        healthy: all.iter().filter(|u| u.is_routable()).count(),
        queued: pool.capacity().queued(),
        upstreams,
    }
}
