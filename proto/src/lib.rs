//! The vocabulary that crosses the wire between sessiond and its clients.
//!
//! - [`SessionId`]: server-issued, 128 random bits, base64url without padding.
//! - [`ErrorCode`]: the machine-readable error codes shared by the HTTP API and
//!   the binary protocol.
//! - [`http`]: the JSON bodies of HTTP API v1.
//! - [`wire`] and [`codec`]: the binary protocol's messages and its frames.
//! - [`ring`]: rendezvous hashing of sessions onto nodes.
//! - [`UserName`]: who a session belongs to.
//!
//! This crate holds no I/O and no server logic; both the server and the client
//! depend on it and on nothing of each other.

pub mod codec;
mod copied;
pub mod error;
pub mod event;
pub mod http;
pub mod id;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod ring;
pub mod user;
pub mod wire;

pub use error::ErrorCode;
pub use event::{Event, EventKind, EventPage};
pub use id::{ParseIdError, SessionId};
pub use user::{InvalidUser, UserName};
