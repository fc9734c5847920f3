//! The vocabulary that crosses the wire between sessiond and its clients.
//!
//! - [`SessionId`]: server-issued, 128 random bits, base64url without padding.
//! - [`ErrorCode`]: the machine-readable error codes shared by the HTTP API and
//!   the binary protocol.
//! - [`http`]: the JSON bodies of HTTP API v1.
//!
//! This crate holds no I/O and no server logic; both the server and the client
//! depend on it and on nothing of each other.

pub mod error;
pub mod http;
pub mod id;

pub use error::ErrorCode;
pub use id::{ParseIdError, SessionId};
