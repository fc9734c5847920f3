//! Redis as the durable layer (`--redis`): every write reaches Redis, a
//! session missing from memory is read through from Redis, nodes keep each
//! other's caches coherent through acked invalidations, and Redis Cluster
//! carries the data past one machine.
//!
//! Two backends share what this module holds (the link, the scripts, the
//! invalidations, the expiry refresher and the cache-fill locks):
//! - [`SyncBackend`] (`--redis-mode sync`, the default): a write is
//!   acknowledged after Redis acknowledged it, through a Lua script that
//!   checks the expected version atomically, so two nodes can never both
//!   win conflicting writes. Memory is a cache.
//! - [`WriteBehindBackend`] (`--redis-mode async`): a write is acknowledged
//!   from memory and queued for Redis; a SIGKILL loses what is still queued.

mod copy_in_doubt;
mod error;
mod event_log;
mod events;
mod invalidation;
mod lagging;
mod link;
mod queue;
mod queued;
mod refresher;
mod script_call;
mod scripts;
mod settings;
mod shared;
mod sync;
mod users;
mod write_behind;

pub use error::ReplicationError;
pub use event_log::RedisEvents;
pub use invalidation::Invalidations;
pub use link::{RedisLink, RedisTarget};
pub use scripts::prefix_keeps_tombstones_in_slot;
pub use shared::{Consistency, Redis, RedisConfig, ReplicationMode};
pub use sync::SyncBackend;
pub use write_behind::WriteBehindBackend;
