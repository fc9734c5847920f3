//! Where sessions live. The service layer calls one [`Backend`]; each
//! storage mode is one implementation:
//! - [`MemoryBackend`]: this node's memory only;
//! - [`redis::SyncBackend`]: Redis written through, memory as a cache;
//! - [`redis::WriteBehindBackend`]: memory, written behind to Redis.
//!
//! [`AnyBackend`] is the one chosen from the node's configuration. A new
//! capability goes into [`Backend`] and each implementation, never into the
//! front ends or the service's policies.

mod any;
mod api;
mod claims;
mod memory;
pub mod redis;

pub use any::AnyBackend;
pub use api::{Backend, BackendError, EventsError, Failed, Indeterminate, Unavailable};
pub use memory::MemoryBackend;
