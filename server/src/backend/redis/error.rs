//! Why a Redis command gave no answer, and what that means for a backend
//! operation.

use crate::backend::api::{BackendError, Indeterminate, Unavailable};

/// Why a Redis command did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// Redis did not take the command (refused, or failed before it ran).
    #[error("Redis is unreachable: {0}")]
    Unavailable(String),
    /// Redis refused a write for want of memory (at its `maxmemory` with a
    /// policy that frees nothing for it): nothing of it was applied.
    #[error("Redis is out of memory: {0}")]
    OutOfMemory(String),
    /// Redis got the command but its answer was lost (timed out, or the
    /// connection dropped): it may or may not have run.
    #[error("Redis did not answer: {0}")]
    Uncertain(String),
    /// The Redis settings are unusable.
    #[error("invalid Redis configuration: {0}")]
    Config(String),
}

impl ReplicationError {
    /// Whether the command may have run in Redis all the same.
    pub fn may_have_run(&self) -> bool {
        matches!(self, Self::Uncertain(_))
    }
}

impl From<ReplicationError> for BackendError {
    fn from(err: ReplicationError) -> Self {
        match err {
            ReplicationError::OutOfMemory(reason) => Unavailable::RedisFull { reason }.into(),
            ReplicationError::Unavailable(reason)
            | ReplicationError::Uncertain(reason)
            | ReplicationError::Config(reason) => Unavailable::RedisDown { reason }.into(),
        }
    }
}

/// The error of a write's Redis command: when the command may have run,
/// the write's outcome is unknown to this node (the client then asks
/// another node, which judges it against the session's write log).
pub fn write_error(err: ReplicationError) -> BackendError {
    match err {
        ReplicationError::Uncertain(reason) => Indeterminate::RedisNoAnswer { reason }.into(),
        other => other.into(),
    }
}
