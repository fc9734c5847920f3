//! What the binary protocol's connections share: the service, the token
//! and the limits.

use std::time::Duration;

use crate::secret::ExpectedToken;
use crate::service::SessionService;

/// Limits that keep one client from exhausting the node.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Connections served at once; more are refused with an error frame.
    pub max_connections: usize,
    /// Requests of one connection in flight at once; past it the server
    /// stops reading that connection until answers go out.
    pub max_in_flight: usize,
    /// Time a connection may stay without requests (and a write may block).
    pub idle_timeout: Duration,
    /// Time a new connection has to send its Hello.
    pub handshake_timeout: Duration,
}

/// What connections share.
#[derive(Debug)]
pub struct TcpContext {
    /// The session operations.
    pub service: SessionService,
    /// The token clients must present in Hello, if any.
    pub auth_token: Option<ExpectedToken>,
    /// Connection limits.
    pub limits: TcpLimits,
}
