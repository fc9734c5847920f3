//! The service layer: every session operation written once, with the API's
//! policies (TTL bounds, size limit, JSON validity), called by both the HTTP
//! and the binary-protocol front ends.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use sessiond_proto::wire::{Placement, WriteTag};
use sessiond_proto::{ErrorCode, EventPage, InvalidUser, SessionId, UserName, ring};
use tokio_util::sync::CancellationToken;

use crate::backend::{
    AnyBackend, Backend, BackendError, EventsError, Failed, Indeterminate, Unavailable,
};
use crate::store::{Owner, Session, StoreStats, UserLimit};
use merge::MergeError;

mod cursor;
mod json_check;
mod merge;

/// Events one read returns when it does not say.
const DEFAULT_EVENTS: u64 = 100;
/// Most events one read returns.
pub const MAX_EVENTS: u64 = 1000;
/// Longest wait of one events read, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// Session data known to be valid JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonData(Bytes);

impl JsonData {
    /// Checks that `bytes` is one JSON value that every later operation can
    /// parse again: nesting within serde_json's depth limit and no lone
    /// surrogate escapes (both of which a merge patch would choke on).
    pub fn parse(bytes: Bytes) -> Result<Self, ServiceError> {
        json_check::check(&bytes).map_err(|err| ServiceError::InvalidData(err.to_string()))?;
        Ok(Self(bytes))
    }

    /// Data from a request body's `data` field, checked like [`parse`](Self::parse).
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, ServiceError> {
        let text: Box<str> = raw.into();
        Self::parse(Bytes::from(text.into_boxed_bytes()))
    }

    /// The empty object, `{}`.
    pub fn empty_object() -> Self {
        Self(Bytes::from_static(b"{}"))
    }

    /// The JSON text.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Policies the API applies on top of the store.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// TTL of sessions created without one, in seconds.
    pub default_ttl_secs: u64,
    /// Largest TTL a client may ask for, in seconds.
    pub max_ttl_secs: u64,
    /// Largest session data, in bytes of JSON text.
    pub max_session_bytes: usize,
    /// The cap on one user's sessions.
    pub user_limit: UserLimit,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            default_ttl_secs: 1800,
            max_ttl_secs: 86_400,
            max_session_bytes: 1 << 20,
            user_limit: UserLimit::default(),
        }
    }
}

/// Why an operation failed, typed for every front end to map once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
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
    /// The session data is over `--max-session-bytes`.
    #[error("session data of {size} bytes is over the {max}-byte limit (--max-session-bytes)")]
    TooLarge {
        /// The data's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The requested TTL is out of bounds.
    #[error("ttl_secs must be between 1 and {max} (--max-ttl), got {got}")]
    InvalidTtl {
        /// What the client asked for.
        got: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The session data is not JSON.
    #[error("session data is not valid JSON: {0}")]
    InvalidData(String),
    /// A user name is malformed.
    #[error("invalid user name: {0}")]
    InvalidUser(InvalidUser),
    /// The user is at the cap and the policy is to reject.
    #[error("the user already has {max} sessions (--max-sessions-per-user); sign one out first")]
    TooManySessions {
        /// The cap.
        max: usize,
    },
    /// The event log cannot serve this read.
    #[error(transparent)]
    Events(EventsError),
    /// An events read asked for too many events or too long a wait.
    #[error(
        "limit must be 1 to {MAX_EVENTS} and the wait at most {MAX_WAIT_SECS} s \
         (wait_secs over HTTP, wait_ms on the binary protocol)"
    )]
    InvalidEventQuery,
    /// A merge patch could not be applied.
    #[error("the merge patch is not valid JSON: {0}")]
    InvalidPatch(String),
    /// The store is full and its policy is to reject.
    #[error("the store is full: {needed} more bytes do not fit in the {limit}-byte memory bound")]
    StoreFull {
        /// Bytes the write needed.
        needed: u64,
        /// The memory bound.
        limit: u64,
    },
    /// The operation cannot be taken now (Redis down, queue full, too much
    /// contention); nothing was changed.
    #[error(transparent)]
    Unavailable(Unavailable),
    /// The write may or may not have been applied, and this node cannot
    /// tell (a re-sent write the log no longer covers, or a Redis command
    /// whose answer was lost).
    #[error(transparent)]
    Indeterminate(Indeterminate),
    /// A write's Idempotency-Key (write tag) was sent with another write.
    #[error(transparent)]
    KeyReused(BackendError),
    /// No id in this node's share of the connection's placement ring.
    #[error("no id among {draws} drawn falls in this node's share of the placement ring")]
    Unplaceable {
        /// How many ids were drawn.
        draws: usize,
    },
}

impl ServiceError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::InvalidTtl { .. } => ErrorCode::InvalidTtl,
            Self::InvalidData(_) | Self::InvalidPatch(_) => ErrorCode::InvalidJson,
            Self::StoreFull { .. } => ErrorCode::StoreFull,
            Self::InvalidUser(_) => ErrorCode::InvalidUser,
            Self::Events(EventsError::CursorExpired { .. }) => ErrorCode::CursorExpired,
            Self::Events(EventsError::InvalidCursor { .. }) => ErrorCode::InvalidCursor,
            Self::Events(EventsError::Off) => ErrorCode::EventsOff,
            Self::InvalidEventQuery => ErrorCode::InvalidRequest,
            Self::TooManySessions { .. } => ErrorCode::TooManySessions,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Indeterminate(_) => ErrorCode::Indeterminate,
            Self::Unplaceable { .. } => ErrorCode::InvalidRequest,
            Self::KeyReused(_) => ErrorCode::KeyReused,
        }
    }

    /// The session's current version, for version conflicts.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            Self::VersionMismatch { current, .. } => Some(*current),
            _ => None,
        }
    }

    /// The oldest cursor to resume from, for expired cursors.
    pub fn oldest(&self) -> Option<String> {
        match self {
            Self::Events(EventsError::CursorExpired { oldest }) => Some(oldest.clone()),
            _ => None,
        }
    }
}

impl From<BackendError> for ServiceError {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::NotFound => Self::NotFound,
            BackendError::VersionMismatch { expected, current } => {
                Self::VersionMismatch { expected, current }
            }
            BackendError::StoreFull { needed, limit } => Self::StoreFull { needed, limit },
            BackendError::TooManySessions { max } => Self::TooManySessions { max },
            BackendError::Events(why) => Self::Events(why),
            BackendError::Unavailable(why) => Self::Unavailable(why),
            BackendError::Indeterminate(why) => Self::Indeterminate(why),
            reused @ BackendError::KeyReused => Self::KeyReused(reused),
        }
    }
}

impl From<Failed<ServiceError>> for ServiceError {
    fn from(failed: Failed<ServiceError>) -> Self {
        match failed {
            Failed::Backend(err) => err.into(),
            Failed::Compute(err) => err,
        }
    }
}

/// The session operations of a node: the API's policies over one backend.
#[derive(Debug, Clone)]
pub struct SessionService {
    backend: Arc<AnyBackend>,
    config: ServiceConfig,
    /// Fires when the node shuts down: waits for events end at once, so
    /// they do not hold up the drain.
    shutdown: CancellationToken,
}

impl SessionService {
    /// A service with the given policies over `backend`, until `shutdown`.
    pub fn new(backend: AnyBackend, config: ServiceConfig, shutdown: CancellationToken) -> Self {
        Self {
            backend: Arc::new(backend),
            config,
            shutdown,
        }
    }

    /// Whether the node is shutting down (event streams then end).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Whether every node serves every session (they live in Redis).
    pub fn shares_sessions(&self) -> bool {
        self.backend.shares_sessions()
    }

    /// The policies in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    fn ttl_ms(&self, ttl_secs: Option<u64>) -> Result<Option<u64>, ServiceError> {
        match ttl_secs {
            None => Ok(None),
            Some(secs) if secs == 0 || secs > self.config.max_ttl_secs => {
                Err(ServiceError::InvalidTtl {
                    got: secs,
                    max: self.config.max_ttl_secs,
                })
            }
            Some(secs) => Ok(Some(secs * 1000)),
        }
    }

    fn checked_size(&self, data: JsonData) -> Result<Bytes, ServiceError> {
        let bytes = data.into_bytes();
        if bytes.len() > self.config.max_session_bytes {
            return Err(ServiceError::TooLarge {
                size: bytes.len(),
                max: self.config.max_session_bytes,
            });
        }
        Ok(bytes)
    }

    /// The owner a session of `user` gets: the user and the cap.
    fn owner(&self, user: Option<UserName>) -> Option<Owner> {
        user.map(|user| Owner {
            user,
            limit: self.config.user_limit,
        })
    }

    /// Creates a session, belonging to `user` if given (the cap applies in
    /// the same step); with a `placement`, its id is one the client's ring
    /// maps to this node. A tagged create sent again gets the session its
    /// first attempt made, never a second one.
    pub async fn create(
        &self,
        data: JsonData,
        ttl_secs: Option<u64>,
        placement: Option<&Placement>,
        write: Option<WriteTag>,
        user: Option<UserName>,
    ) -> Result<Session, ServiceError> {
        let ttl_ms = self
            .ttl_ms(ttl_secs)?
            .unwrap_or(self.config.default_ttl_secs * 1000);
        let data = self.checked_size(data)?;
        let id = fresh_id(placement)?;
        let tag = write.map(|write| write.id);
        let owner = self.owner(user);
        Ok(self.backend.create(id, data, ttl_ms, tag, owner).await?)
    }

    /// Reads a session, refreshing its expiry.
    pub async fn get(&self, id: &SessionId) -> Result<Session, ServiceError> {
        Ok(self.backend.get(id).await?)
    }

    /// Replaces a session's data, optionally only if at `expected` version.
    /// A tagged write sent again is applied at most once.
    pub async fn put(
        &self,
        id: &SessionId,
        data: JsonData,
        ttl_secs: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, ServiceError> {
        let ttl_ms = self.ttl_ms(ttl_secs)?;
        let data = self.checked_size(data)?;
        Ok(self.backend.put(id, data, ttl_ms, expected, write).await?)
    }

    /// Applies an RFC 7386 JSON merge patch atomically, optionally with a
    /// new idle TTL. A tagged patch sent again is applied at most once.
    pub async fn patch(
        &self,
        id: &SessionId,
        patch: &RawValue,
        ttl_secs: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, ServiceError> {
        let ttl_ms = self.ttl_ms(ttl_secs)?;
        let compute = |current: &[u8]| self.checked_size(merge_patch(current, patch)?);
        Ok(self
            .backend
            .update(id, expected, ttl_ms, write, compute)
            .await?)
    }

    /// Deletes a session; deleting a missing one is not an error.
    pub async fn delete(&self, id: &SessionId) -> Result<(), ServiceError> {
        Ok(self.backend.delete(id).await?)
    }

    /// Extends a session's expiry, optionally with a new idle TTL.
    pub async fn touch(
        &self,
        id: &SessionId,
        ttl_secs: Option<u64>,
    ) -> Result<Session, ServiceError> {
        let ttl_ms = self.ttl_ms(ttl_secs)?;
        Ok(self.backend.touch(id, ttl_ms).await?)
    }

    /// Moves a session to a new id (placed like [`create`](Self::create)
    /// places ids); the old one stops working at once. With `user`, the
    /// session belongs to that user from now on, in the same step (a
    /// login; the cap applies). A tagged rotation sent again answers the id
    /// its first attempt moved the session to.
    pub async fn rotate(
        &self,
        id: &SessionId,
        placement: Option<&Placement>,
        write: Option<WriteTag>,
        user: Option<UserName>,
    ) -> Result<Session, ServiceError> {
        let new_id = fresh_id(placement)?;
        let tag = write.map(|write| write.id);
        let rebind = self.owner(user);
        Ok(self.backend.rotate(id, new_id, tag, rebind).await?)
    }

    /// The live sessions of `user`, oldest first.
    pub async fn user_sessions(&self, user: &UserName) -> Result<Vec<Session>, ServiceError> {
        Ok(self.backend.user_sessions(user).await?)
    }

    /// Up to `limit` (default 100, at most [`MAX_EVENTS`]) events of the
    /// log after `after` (the oldest kept when `None` or empty, only later
    /// ones for `"now"`), waiting up to `wait` (at most [`MAX_WAIT_SECS`])
    /// for one when there is none yet (a wait ends when the node shuts
    /// down).
    pub async fn events(
        &self,
        after: Option<&str>,
        limit: Option<u64>,
        wait: Option<std::time::Duration>,
    ) -> Result<EventPage, ServiceError> {
        let limit = limit.unwrap_or(DEFAULT_EVENTS);
        let wait = wait.unwrap_or_default();
        if !(1..=MAX_EVENTS).contains(&limit)
            || wait > std::time::Duration::from_secs(MAX_WAIT_SECS)
        {
            return Err(ServiceError::InvalidEventQuery);
        }
        let after = after.filter(|text| !text.is_empty());
        if let Some(text) = after.filter(|&text| text != "now" && !cursor::is_canonical(text)) {
            return Err(ServiceError::Events(EventsError::InvalidCursor {
                cursor: text.to_owned(),
            }));
        }
        let limit = limit as usize;
        let at_once = std::time::Duration::ZERO;
        if wait.is_zero() {
            return Ok(self.backend.events(after, limit, at_once).await?);
        }
        // "now" is pinned to a cursor before the wait: a wait cut short at
        // shutdown then reads again from the same place (a second "now"
        // would skip what came in between).
        let pinned = match after {
            Some("now") => {
                let page = self.backend.events(after, limit, at_once).await?;
                if !page.events.is_empty() {
                    return Ok(page);
                }
                Some(page.next)
            }
            _ => None,
        };
        let after = pinned.as_deref().or(after);
        let page = tokio::select! {
            page = self.backend.events(after, limit, wait) => page,
            () = self.shutdown.cancelled() => self.backend.events(after, limit, at_once).await,
        };
        Ok(page?)
    }

    /// Deletes every session of `user` but `except`; returns how many.
    pub async fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, ServiceError> {
        let revoked = self.backend.revoke_user(user, except).await?;
        metrics::counter!("sessiond_user_revocations_total").increment(revoked);
        Ok(revoked)
    }

    /// The counters of this node's memory.
    pub fn stats(&self) -> StoreStats {
        self.backend.stats()
    }

    /// Whether this node writes behind to Redis (it has a write-behind
    /// queue).
    pub fn writes_behind(&self) -> bool {
        self.replication_queue_depth().is_some()
    }

    /// Places taken in the write-behind queue (`None` without one).
    pub fn replication_queue_depth(&self) -> Option<u64> {
        self.backend.replication_queue_depth()
    }
}

/// Most ids drawn for one placed id, per node of the ring: a ring of n
/// distinct nodes needs n draws on average, so n * 32 draws all miss with
/// probability e^-32.
const PLACEMENT_DRAWS_PER_NODE: usize = 32;

/// A new id from the OS RNG. With a placement, ids are drawn until one
/// falls in this node's rendezvous share: each id is still 128 random bits,
/// and the ids of all nodes together are uniform over the whole id space.
/// A ring where this node's share is (nearly) empty fails after a bounded
/// number of draws instead of issuing an unplaced id.
pub fn fresh_id(placement: Option<&Placement>) -> Result<SessionId, ServiceError> {
    let Some(placement) = placement else {
        return Ok(SessionId::random());
    };
    let draws = PLACEMENT_DRAWS_PER_NODE * placement.ring.len();
    (0..draws)
        .map(|_| SessionId::random())
        .find(|id| ring::owns(&placement.ring, placement.owner as usize, id))
        .ok_or(ServiceError::Unplaceable { draws })
}

/// `current` with `patch` merged into it (RFC 7386); untouched members
/// keep their exact text (see [`crate::merge`]).
fn merge_patch(current: &[u8], patch: &RawValue) -> Result<JsonData, ServiceError> {
    let text = merge::merge_patch(current, patch).map_err(|err| match err {
        MergeError::Target(message) => ServiceError::InvalidData(message),
        MergeError::Patch(message) => ServiceError::InvalidPatch(message),
    })?;
    JsonData::parse(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreConfig, SystemClock};

    fn service(config: ServiceConfig) -> SessionService {
        let store = Store::new(StoreConfig::default(), Arc::new(SystemClock));
        SessionService::new(
            AnyBackend::memory(Arc::new(store)),
            config,
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn merge_patch_follows_rfc_7386() {
        let service = service(ServiceConfig::default());
        let data = JsonData::parse(Bytes::from_static(br#"{"a":1,"b":{"c":2,"d":3}}"#)).unwrap();
        let id = service
            .create(data, None, None, None, None)
            .await
            .unwrap()
            .id;
        let patch = RawValue::from_string(r#"{"a":null,"b":{"c":5},"e":[1]}"#.into()).unwrap();
        let patched = service
            .patch(&id, &patch, None, Some(1), None)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&patched.data).unwrap();
        assert_eq!(value, serde_json::json!({"b": {"c": 5, "d": 3}, "e": [1]}));
        assert_eq!(patched.version, 2);
    }

    #[tokio::test]
    async fn ttl_and_size_bounds_are_enforced() {
        let service = service(ServiceConfig {
            default_ttl_secs: 60,
            max_ttl_secs: 100,
            max_session_bytes: 8,
            user_limit: Default::default(),
        });
        let small = || JsonData::empty_object();
        assert_eq!(
            service.create(small(), Some(0), None, None, None).await,
            Err(ServiceError::InvalidTtl { got: 0, max: 100 })
        );
        assert_eq!(
            service.create(small(), Some(101), None, None, None).await,
            Err(ServiceError::InvalidTtl { got: 101, max: 100 })
        );
        let created = service
            .create(small(), None, None, None, None)
            .await
            .unwrap();
        assert_eq!(created.ttl_ms, 60_000);
        let big = JsonData::parse(Bytes::from_static(b"\"123456789\"")).unwrap();
        assert_eq!(
            service.create(big, None, None, None, None).await,
            Err(ServiceError::TooLarge { size: 11, max: 8 })
        );
        let grow = RawValue::from_string(r#"{"key":"value"}"#.into()).unwrap();
        assert!(matches!(
            service.patch(&created.id, &grow, None, None, None).await,
            Err(ServiceError::TooLarge { .. })
        ));
    }

    #[test]
    fn placed_ids_belong_to_the_placed_node() {
        let placement = Placement {
            ring: vec![
                ring::node_seed("a"),
                ring::node_seed("b"),
                ring::node_seed("c"),
            ],
            owner: 2,
        };
        for _ in 0..200 {
            let id = fresh_id(Some(&placement)).unwrap();
            assert_eq!(ring::owner(&placement.ring, &id), Some(2));
        }
    }

    #[test]
    fn an_empty_share_fails_after_bounded_draws() {
        // Identical seeds: ties go to the first, so node 1 owns nothing.
        let placement = Placement {
            ring: vec![7; 4],
            owner: 1,
        };
        assert_eq!(
            fresh_id(Some(&placement)),
            Err(ServiceError::Unplaceable { draws: 128 })
        );
    }

    #[test]
    fn invalid_json_data_is_refused() {
        assert!(JsonData::parse(Bytes::from_static(b"{nope")).is_err());
        assert!(JsonData::parse(Bytes::from_static(b"1 2")).is_err());
        assert!(JsonData::parse(Bytes::from_static(b"[1,2]")).is_ok());
        assert!(JsonData::parse(Bytes::from_static(br#""\ud800""#)).is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(JsonData::parse(Bytes::from(deep)).is_err());
    }
}
