//! Limits that keep HTTP clients from holding a node's memory and
//! descriptors, and their bounds.

use std::time::Duration;

/// Limits that keep HTTP clients from holding a node's memory and
/// descriptors.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once (past it, [`RESERVE_CONNECTIONS`] more for
    /// health checks, then new connections are closed at once).
    pub max_connections: usize,
    /// Time to send a whole request head (from the connection's start, or
    /// from the first byte of the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time to send a whole request body once its head is in.
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
}

/// Connections accepted past `--max-http-connections` for `/healthz`,
/// `/readyz` and `/metrics` only.
pub const RESERVE_CONNECTIONS: usize = 16;

/// Head timeout of a reserve connection (at most `--http-header-timeout`):
/// a health checker sends its request at once.
pub const RESERVE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Smallest `--http-max-head-bytes`.
pub const MIN_HEAD_BYTES: usize = 1 << 10;

/// Largest `--http-max-head-bytes`.
pub const MAX_HEAD_BYTES: usize = 1 << 20;
