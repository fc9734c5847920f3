//! The seam between the service layer and where sessions live: the
//! operations every storage mode offers, and their typed errors.

use std::future::Future;

use bytes::Bytes;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventPage, SessionId, UserName};

use crate::store::{Owner, Session, StoreError, StoreStats};

/// Where sessions live: this node's memory, Redis with memory as a cache
/// (sync), or memory with Redis following from a queue (write-behind).
///
/// The service layer holds the policies (TTL bounds, size limits, JSON
/// validity, ids) and calls one backend; a backend keeps each operation
/// atomic, applies a tagged write at most once (see `store::WriteLog`) and
/// keeps its own copies coherent.
pub trait Backend: Send + Sync {
    /// Whether every node serves every session (they live in Redis), so a
    /// client may fail over to another node.
    fn shares_sessions(&self) -> bool;

    /// Creates a session under the fresh id `id` (or, for a create tagged
    /// `tag` sent again, under the id its first attempt took), belonging to
    /// `owner`'s user if given (whose cap applies in the same step).
    fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<Owner>,
    ) -> impl Future<Output = Result<Session, BackendError>> + Send;

    /// Reads a session, refreshing its sliding expiry.
    fn get(&self, id: &SessionId) -> impl Future<Output = Result<Session, BackendError>> + Send;

    /// Replaces a session's data (only at version `expected`, if given),
    /// optionally with a new idle TTL.
    fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> impl Future<Output = Result<Session, BackendError>> + Send;

    /// Computes a session's new data from its current data and writes it,
    /// atomically against every other writer. `compute` may run more than
    /// once; its error ends the update as [`Failed::Compute`].
    fn update<E, F>(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
        write: Option<WriteTag>,
        compute: F,
    ) -> impl Future<Output = Result<Session, Failed<E>>> + Send
    where
        E: Send,
        F: Fn(&[u8]) -> Result<Bytes, E> + Send + Sync;

    /// Extends a session's expiry, optionally with a new idle TTL, without
    /// writing it.
    fn touch(
        &self,
        id: &SessionId,
        ttl_ms: Option<u64>,
    ) -> impl Future<Output = Result<Session, BackendError>> + Send;

    /// Deletes a session; deleting a missing one is not an error.
    fn delete(&self, id: &SessionId) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Moves a session to the fresh id `new_id` (or, for a rotation tagged
    /// `tag` sent again, to the id its first attempt took); the old id is
    /// gone at once. With `rebind`, the session belongs to that owner's
    /// user from now on (a login; the cap applies in the same step).
    fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> impl Future<Output = Result<Session, BackendError>> + Send;

    /// The live sessions of `user`, oldest first (their data may be left
    /// out: a listing shows none).
    fn user_sessions(
        &self,
        user: &UserName,
    ) -> impl Future<Output = Result<Vec<Session>, BackendError>> + Send;

    /// Up to `limit` events of the log after `after` (the oldest kept when
    /// `None`, only later ones for `"now"`), waiting up to `wait` for one
    /// when there is none yet.
    fn events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: std::time::Duration,
    ) -> impl Future<Output = Result<EventPage, BackendError>> + Send;

    /// Deletes every live session of `user` but `except`; returns how many.
    fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    /// The counters of this node's memory.
    fn stats(&self) -> StoreStats;

    /// Places taken in a write-behind queue now: the writes acknowledged
    /// and not yet in Redis, and the places writes still in progress hold
    /// (`None` without a queue).
    fn replication_queue_depth(&self) -> Option<u64> {
        None
    }
}

/// Why a backend operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No live session has this id.
    #[error("no live session has this id (it never existed, was deleted or expired)")]
    NotFound,
    /// A conditional write expected another version.
    #[error("the session is at version {current}, not the expected {expected}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// The version now.
        current: u64,
    },
    /// The write does not fit in the memory bound and the policy is to
    /// reject.
    #[error("the store is full: {needed} more bytes do not fit in the {limit}-byte memory bound")]
    StoreFull {
        /// Bytes the write needed.
        needed: u64,
        /// The memory bound.
        limit: u64,
    },
    /// The user is at the cap and the policy is to reject.
    #[error("the user already has {max} sessions (--max-sessions-per-user)")]
    TooManySessions {
        /// The cap.
        max: usize,
    },
    /// The event log cannot serve this read.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The operation cannot be taken now; nothing was changed.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The write may or may not have been applied, and this node cannot
    /// tell.
    #[error(transparent)]
    Indeterminate(#[from] Indeterminate),
    /// The write's tag (an HTTP `Idempotency-Key`) is one another write
    /// used: a create's with a rotation or the other way round, a
    /// rotation's with a rotation of another session, a create's with a
    /// change of the session it made, or a rotation's whose new id holds
    /// another session. A client's mistake; nothing was changed.
    #[error(
        "this write's Idempotency-Key was sent with another write (a create, a rotation and \
         a change of a session cannot share one); nothing was changed (send each write with \
         a key of its own)"
    )]
    KeyReused,
}

/// Why the event log cannot serve a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    /// Events after the cursor are no longer kept.
    #[error(
        "events after this cursor are no longer kept; resume after the oldest cursor, {oldest}"
    )]
    CursorExpired {
        /// The cursor before the oldest event kept.
        oldest: String,
    },
    /// The cursor is not one this log hands out.
    #[error("not an event cursor of this log: {:?}", excerpt(cursor))]
    InvalidCursor {
        /// What was given.
        cursor: String,
    },
    /// The event log is off.
    #[error("the event log is off (--events off, or Redis Cluster)")]
    Off,
}

/// The first 64 characters of `text`, as an error message echoes what a
/// client sent (whose length only the frame limit bounds).
fn excerpt(text: &str) -> &str {
    text.char_indices()
        .nth(64)
        .map_or(text, |(end, _)| &text[..end])
}

/// Why an operation cannot be taken now (nothing was changed; try again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Redis refused the connection or the command failed before it ran.
    #[error("Redis is unreachable: {reason}")]
    RedisDown {
        /// What Redis (or the connection to it) said.
        reason: String,
    },
    /// Redis is at its `maxmemory` and its policy frees nothing: it refused
    /// what the operation had to write (a read through to Redis lists the
    /// node as a cacher); nothing was applied.
    #[error(
        "Redis is out of memory (at its maxmemory, and its eviction policy frees nothing): it \
         refused what this request had to write there, and nothing was written; it takes \
         writes again once it has room: {reason}"
    )]
    RedisFull {
        /// What Redis said.
        reason: String,
    },
    /// The write-behind queue is full.
    #[error("the Redis replication queue is full ({capacity} writes waiting); try again")]
    QueueFull {
        /// The queue's capacity (`--redis-queue`).
        capacity: usize,
    },
    /// The write-behind queue holds as many bytes of session data as the
    /// node's memory bound.
    #[error(
        "the Redis replication queue holds {limit} bytes of writes waiting for Redis, \
         the node's --max-memory; try again"
    )]
    QueueMemoryFull {
        /// The bound (`--max-memory`).
        limit: u64,
    },
    /// Other writers changed the session under every attempt.
    #[error("the session changed under every attempt to {operation} it; try again")]
    Contention {
        /// What was being done.
        operation: &'static str,
    },
    /// The write-behind queue did not ship this node's earlier writes in
    /// time for a step that goes to Redis directly.
    #[error("this node's queued writes did not reach Redis in time; try again")]
    QueueBehind,
    /// The session's shard holds the most sessions a shard can.
    #[error(
        "the shard this session belongs to holds {max} sessions, the most a shard can; \
         start the node with more --shards"
    )]
    ShardFull {
        /// The most sessions a shard holds.
        max: usize,
    },
    /// The fresh id a create drew holds another session already (drawn
    /// twice: astronomically unlikely); a new attempt draws another.
    #[error("the fresh session id this create drew holds another session; try again")]
    IdTaken,
}

/// Why nobody can tell whether a write was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Indeterminate {
    /// A re-sent write that the session's write log no longer covers.
    #[error(
        "this write was sent again after its answer was lost, and the session has changed \
         too much since to tell whether the first attempt was applied; read it to find out"
    )]
    Resent,
    /// The write's Redis command got no answer (it may have run).
    #[error(
        "Redis did not answer ({reason}), so this node cannot tell whether the write was applied"
    )]
    RedisNoAnswer {
        /// What the connection to Redis said.
        reason: String,
    },
}

/// How an update ended without a session: the backend's reason, or the
/// caller's `compute` refusing the current data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed<E> {
    /// The backend could not do it.
    Backend(BackendError),
    /// `compute` failed.
    Compute(E),
}

impl<E> From<BackendError> for Failed<E> {
    fn from(err: BackendError) -> Self {
        Self::Backend(err)
    }
}

impl<E> From<StoreError> for Failed<E> {
    fn from(err: StoreError) -> Self {
        Self::Backend(err.into())
    }
}

impl From<StoreError> for BackendError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            StoreError::VersionMismatch { expected, current } => {
                Self::VersionMismatch { expected, current }
            }
            StoreError::Indeterminate => Self::Indeterminate(Indeterminate::Resent),
            StoreError::Full { needed, limit } => Self::StoreFull { needed, limit },
            StoreError::TooManySessions { max } => Self::TooManySessions { max },
            StoreError::ShardFull { max } => Self::Unavailable(Unavailable::ShardFull { max }),
            StoreError::IdTaken | StoreError::KeyReused => Self::KeyReused,
        }
    }
}
