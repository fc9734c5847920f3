//! The backend a node runs, chosen once from its configuration: the one
//! place that knows every storage mode.

use std::sync::Arc;

use bytes::Bytes;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventPage, SessionId, UserName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::api::{Backend, BackendError, Failed};
use super::memory::MemoryBackend;
use super::redis::{
    Invalidations, Redis, RedisConfig, RedisLink, ReplicationError, ReplicationMode, SyncBackend,
    WriteBehindBackend,
};
use crate::store::{Owner, Session, Store, StoreStats};

/// One of the storage modes.
#[derive(Debug)]
pub enum AnyBackend {
    /// This node's memory only.
    Memory(MemoryBackend),
    /// Redis, written through; memory as a cache.
    Sync(SyncBackend),
    /// Memory, written behind to Redis.
    WriteBehind(WriteBehindBackend),
}

impl AnyBackend {
    /// Sessions in `store` only.
    pub fn memory(store: Arc<Store>) -> Self {
        Self::Memory(MemoryBackend::new(store))
    }

    /// Sessions in Redis as `config` says, with `store` as this node's
    /// memory; its background tasks run on `tasks` until `shutdown` (the
    /// write-behind queue and the slid expiries are flushed once `drained`
    /// fires). Also returns the link and the invalidation subscription, for
    /// readiness and the status page.
    pub fn redis(
        config: RedisConfig,
        store: Arc<Store>,
        max_lifetime_ms: Option<u64>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        drained: &CancellationToken,
    ) -> Result<(Self, Arc<RedisLink>, Arc<Invalidations>), ReplicationError> {
        let (mode, capacity) = (config.mode, config.queue_capacity);
        let redis = Redis::connect(config, store, max_lifetime_ms, tasks, shutdown, drained)?;
        let link = redis.link().clone();
        let invalidations = redis.invalidations().clone();
        let backend = match mode {
            ReplicationMode::Sync => Self::Sync(SyncBackend::new(redis)),
            ReplicationMode::Async => {
                Self::WriteBehind(WriteBehindBackend::start(redis, capacity, tasks, drained))
            }
        };
        Ok((backend, link, invalidations))
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $backend:ident => $call:expr) => {
        match $self {
            AnyBackend::Memory($backend) => $call,
            AnyBackend::Sync($backend) => $call,
            AnyBackend::WriteBehind($backend) => $call,
        }
    };
}

impl Backend for AnyBackend {
    fn shares_sessions(&self) -> bool {
        dispatch!(self, backend => backend.shares_sessions())
    }

    async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<Owner>,
    ) -> Result<Session, BackendError> {
        // With Redis a create's future is over 5 KB: boxed there, so that a
        // memory node's create stays small and allocates nothing for it.
        match self {
            AnyBackend::Memory(backend) => backend.create(id, data, ttl_ms, tag, owner).await,
            AnyBackend::Sync(backend) => {
                Box::pin(backend.create(id, data, ttl_ms, tag, owner)).await
            }
            AnyBackend::WriteBehind(backend) => {
                Box::pin(backend.create(id, data, ttl_ms, tag, owner)).await
            }
        }
    }

    async fn get(&self, id: &SessionId) -> Result<Session, BackendError> {
        dispatch!(self, backend => backend.get(id).await)
    }

    async fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, BackendError> {
        dispatch!(self, backend => backend.put(id, data, ttl_ms, expected, write).await)
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
        dispatch!(self, backend => backend.update(id, expected, ttl_ms, write, compute).await)
    }

    async fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, BackendError> {
        dispatch!(self, backend => backend.touch(id, ttl_ms).await)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), BackendError> {
        dispatch!(self, backend => backend.delete(id).await)
    }

    async fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> Result<Session, BackendError> {
        dispatch!(self, backend => backend.rotate(id, new_id, tag, rebind).await)
    }

    async fn user_sessions(&self, user: &UserName) -> Result<Vec<Session>, BackendError> {
        dispatch!(self, backend => backend.user_sessions(user).await)
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<EventPage, BackendError> {
        dispatch!(self, backend => backend.events(after, limit, wait).await)
    }

    async fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, BackendError> {
        dispatch!(self, backend => backend.revoke_user(user, except).await)
    }

    fn stats(&self) -> StoreStats {
        dispatch!(self, backend => backend.stats())
    }

    fn replication_queue_depth(&self) -> Option<u64> {
        dispatch!(self, backend => backend.replication_queue_depth())
    }
}
