//! Sessions in this node's memory only: a node's death loses its sessions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventPage, SessionId, UserName};

use super::api::{Backend, BackendError, EventsError, Failed};
use super::claims::{Claim, ClaimedBy, Claims};
use crate::store::{Owner, Position, ReadError, Session, Store, StoreError, StoreStats};

/// The memory-only backend: the store, and the claims that let a tagged
/// create or rotation sent again find the id its first attempt took.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    store: Arc<Store>,
    claims: Claims,
}

impl MemoryBackend {
    /// A backend over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            claims: Claims::default(),
        }
    }

    /// The id a tagged rotation of `origin` is to use: `fresh`, or the one
    /// an attempt of the same rotation claimed first.
    fn claimed(
        &self,
        tag: Option<u64>,
        fresh: SessionId,
        origin: SessionId,
    ) -> Result<SessionId, BackendError> {
        tag.map_or(Ok(fresh), |tag| {
            let by = ClaimedBy::Rotation { origin };
            self.claims.claim(tag, fresh, by).id()
        })
    }
}

impl Backend for MemoryBackend {
    fn shares_sessions(&self) -> bool {
        false
    }

    async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<Owner>,
    ) -> Result<Session, BackendError> {
        let Some(tag) = tag else {
            return Ok(self.store.create(id, data, ttl_ms, None, owner.as_ref())?);
        };
        let id = match self.claims.claim(tag, id, ClaimedBy::Create) {
            // An earlier attempt made it: its session, if it still lives
            // (a repeat never brings back a session that ended since).
            Claim::Earlier { id, made: true } => return Ok(self.store.get(&id)?),
            claim => claim.id()?,
        };
        let session = self
            .store
            .create(id, data, ttl_ms, Some(tag), owner.as_ref())?;
        self.claims.made(tag);
        Ok(session)
    }

    async fn get(&self, id: &SessionId) -> Result<Session, BackendError> {
        Ok(self.store.get(id)?)
    }

    async fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, BackendError> {
        Ok(self.store.put(id, data, ttl_ms, expected, write)?)
    }

    async fn update<E, F>(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
        write: Option<WriteTag>,
        compute: F,
    ) -> Result<Session, Failed<E>>
    where
        E: Send,
        F: Fn(&[u8]) -> Result<Bytes, E> + Send + Sync,
    {
        self.store.update(id, expected, ttl_ms, write, |data| {
            compute(data).map_err(Failed::Compute)
        })
    }

    async fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, BackendError> {
        Ok(self.store.touch(id, ttl_ms)?)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), BackendError> {
        self.store.delete(id);
        Ok(())
    }

    async fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> Result<Session, BackendError> {
        // A claim names the session it moves: another one's key is refused.
        let moved_to = self.claimed(tag, new_id, *id)?;
        match self.store.rotate(id, moved_to, rebind.as_ref()) {
            // Another attempt of this rotation may have moved it already
            // (the new id is claimed by this write alone).
            Err(StoreError::NotFound) if tag.is_some() => Ok(self.store.get(&moved_to)?),
            result => Ok(result?),
        }
    }

    async fn user_sessions(&self, user: &UserName) -> Result<Vec<Session>, BackendError> {
        Ok(self.store.user_sessions(user))
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, BackendError> {
        let log = self.store.events().ok_or(EventsError::Off)?;
        let mut position = match after {
            None => Position::Oldest,
            Some("now") => Position::Now,
            Some(text) => {
                text.parse()
                    .map(Position::After)
                    .map_err(|_| EventsError::InvalidCursor {
                        cursor: text.to_owned(),
                    })?
            }
        };
        let mut appended = log.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (events, next) = log.read(position, limit).map_err(|err| match err {
                ReadError::Expired { oldest } => EventsError::CursorExpired { oldest },
                ReadError::Unknown => EventsError::InvalidCursor {
                    cursor: after.unwrap_or_default().to_owned(),
                },
            })?;
            if !events.is_empty() {
                return Ok(EventPage { events, next });
            }
            let waited = tokio::time::timeout_at(deadline, appended.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Ok(EventPage { events, next });
            }
            position = Position::After(next.parse().unwrap_or_default());
        }
    }

    async fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, BackendError> {
        Ok(self.store.revoke_user(user, except).len() as u64)
    }

    fn stats(&self) -> StoreStats {
        self.store.stats()
    }
}
