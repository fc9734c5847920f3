//! `--redis-mode async`: memory leads. A write is applied to this node's
//! copy (read through from Redis when memory lacks it), acknowledged, and
//! shipped to Redis from a bounded queue; a SIGKILL loses what is still
//! queued. Conditional writes are checked on this node's copy only (route a
//! session to its owner node, as the Rust client does). What touches the
//! user index (a create or login for a user, a rotation of a user's
//! session, listings and revocations) goes to Redis synchronously, as in
//! sync mode, so it holds across nodes the same way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventPage, SessionId, UserName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::WriteBehind;
use super::queued::{CATCH_UP, Latest};
use super::refresher::Push;
use super::shared::{MAX_OPTIMISTIC_ATTEMPTS, Redis};
use super::sync::SyncBackend;
use crate::backend::api::{Backend, BackendError, Failed, Unavailable};
use crate::backend::claims::{ClaimedBy, Claims};
use crate::store::{Owner, Session, StoreStats};

/// The write-behind Redis backend.
#[derive(Debug)]
pub struct WriteBehindBackend {
    redis: Arc<Redis>,
    queue: WriteBehind,
    /// What goes to Redis synchronously.
    sync: SyncBackend,
    /// The ids tagged creates claimed while Redis could not take the claim.
    claims: Claims,
}

impl WriteBehindBackend {
    /// A backend over the shared Redis side whose queue holds `capacity`
    /// writes; its worker runs on `tasks` and flushes what is left once
    /// `drained` fires (after the listeners have finished).
    pub fn start(
        redis: Arc<Redis>,
        capacity: usize,
        tasks: &TaskTracker,
        drained: &CancellationToken,
    ) -> Self {
        let max_bytes = redis.store.stats().bytes_limit;
        let (queue, worker) = WriteBehind::new(capacity, max_bytes, redis.queued.clone());
        tasks.spawn(worker.run(redis.clone(), drained.clone()));
        let sync = SyncBackend::new(redis.clone());
        Self {
            redis,
            queue,
            sync,
            claims: Claims::default(),
        }
    }

    /// Makes sure memory holds `id` (the write that follows supersedes
    /// what was loaded); `true` when it loaded it (see
    /// [`Self::queued_copy`] for what while a write of it is queued). The
    /// caller holds the session's lock.
    async fn ensure_local(&self, id: &SessionId) -> Result<bool, BackendError> {
        let redis = &self.redis;
        if redis.store.holds(id) {
            return Ok(false);
        }
        let session = match self.queued_copy(id).await? {
            Some(session) => session,
            None => redis
                .read_redis(id, true)
                .await?
                .filter(|session| !redis.past_lifetime(session))
                .ok_or(BackendError::NotFound)?,
        };
        redis.store.insert_copy(session)?;
        Ok(true)
    }

    /// What this node answers for `id`, which its memory lacks (evicted,
    /// or dropped by another node's write or delete), while a change of it
    /// is still queued for Redis: `NotFound` after a delete; after a write,
    /// the version it wrote (Redis holds an older one, or another node's
    /// of the same version, which this write will overwrite), unless Redis
    /// holds a later version (this write has landed and another node wrote
    /// on it: that one is answered), shows the session deleted lately (on
    /// another node: the queued write will be refused), or both copies
    /// have expired. Redis is read without this node being listed as a
    /// cacher, and a read keeps nothing: once the write has shipped, the
    /// session is read through Redis as usual. `None`: no change of `id` is
    /// queued. The caller holds the session's lock.
    async fn queued_copy(&self, id: &SessionId) -> Result<Option<Session>, BackendError> {
        let mut written = match self.redis.queued.latest(id) {
            None => return Ok(None),
            Some(Latest::Deleted) => return Err(BackendError::NotFound),
            Some(Latest::Written(session)) => session,
        };
        let redis = &self.redis;
        let expires_in_redis = match redis.read_redis(id, false).await {
            Ok(Some(stored)) if stored.version > written.version => return Ok(Some(stored)),
            Ok(Some(stored)) => stored.expires_at_ms,
            Ok(None) if redis.deleted_lately(id).await => return Err(BackendError::NotFound),
            // Not in Redis yet (a create), or Redis unreachable: this node's
            // write is the newest it knows of.
            Ok(None) | Err(_) => 0,
        };
        // Reads since the write may have slid the expiry Redis holds.
        written.expires_at_ms = written.expires_at_ms.max(expires_in_redis);
        if written.expires_at_ms <= redis.now() {
            return Err(BackendError::NotFound);
        }
        Ok(Some(written))
    }

    /// The id a tagged create is to use: the one an attempt of the same
    /// create claimed first, on any node (claimed in Redis, as in sync
    /// mode), or while Redis cannot answer on this node (a resend to
    /// another node may then make a second session: availability first).
    /// A tag a rotation claimed is a reused key: refused.
    async fn claimed(&self, tag: Option<u64>, fresh: SessionId) -> Result<SessionId, BackendError> {
        let Some(tag) = tag else {
            return Ok(fresh);
        };
        match self.redis.claim(tag, fresh, ClaimedBy::Create).await {
            Err(BackendError::KeyReused) => Err(BackendError::KeyReused),
            Err(err) => {
                tracing::debug!(%err, "claiming a create's id in Redis failed; claimed here");
                self.claims.claim(tag, fresh, ClaimedBy::Create).id()
            }
            claimed => claimed,
        }
    }

    /// The answer to a create repeated under `id`, the id an earlier
    /// attempt claimed, unless this node's store is to answer it (it holds
    /// that attempt's session, or nothing says the session was ever made):
    /// not found if the session was deleted since, else the session as
    /// this node's queue or Redis holds it (making it anew here would
    /// write over its later versions).
    async fn repeated_create(&self, id: &SessionId) -> Option<Result<Session, BackendError>> {
        let redis = &self.redis;
        match redis.queued.latest(id) {
            Some(Latest::Deleted) => return Some(Err(BackendError::NotFound)),
            Some(Latest::Written(_)) => return Some(self.get(id).await),
            None => {}
        }
        if redis.store.holds(id) {
            return None;
        }
        match redis.stored(id).await {
            Ok(true) => Some(redis.load(id).await),
            Ok(false) if redis.deleted_lately(id).await => Some(Err(BackendError::NotFound)),
            // Never stored, or Redis cannot tell: made here.
            _ => None,
        }
    }

    /// The user of `id` as Redis holds it; `None` when the session has
    /// none, is not there, or Redis cannot answer (the delete is queued
    /// all the same: availability first).
    async fn user_in_redis(&self, id: &SessionId) -> Option<UserName> {
        let redis = &self.redis;
        let read = async {
            let mut conn = redis.link.conn()?;
            let mut command = redis::cmd("HGET");
            command.arg(redis.key(id)).arg("p");
            redis
                .link
                .observe(command.query_async::<Option<String>>(&mut conn).await)
        };
        match read.await {
            Ok(user) => user.and_then(|user| UserName::parse(&user).ok()),
            Err(err) => {
                tracing::debug!(%id, %err, "cannot read a deleted session's user");
                None
            }
        }
    }

    /// Applies `write` to this node's memory copy and queues the result
    /// for Redis. A place in the queue is taken first, so a full queue
    /// refuses the write before anything changes.
    async fn apply<E>(
        &self,
        id: &SessionId,
        write: impl Fn() -> Result<Session, Failed<E>>,
    ) -> Result<Session, Failed<E>> {
        let slot = self.queue.reserve()?;
        let _ordered = self.redis.lock(id).await;
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            let loaded = self.ensure_local(id).await?;
            match write() {
                // Another node's invalidation dropped the copy in between.
                Err(Failed::Backend(BackendError::NotFound)) => continue,
                Ok(session) => {
                    self.redis.refresher.forget(id);
                    slot.upsert(session.clone());
                    return Ok(session);
                }
                Err(err) => {
                    if loaded {
                        // Loaded only to be written on: kept, it could miss
                        // an invalidation that came while it was read.
                        self.redis.store.delete(id);
                    }
                    return Err(err);
                }
            }
        }
        Err(BackendError::from(Unavailable::Contention { operation: "write" }).into())
    }
}

/// The backend's error of an operation whose closure cannot fail itself.
fn backend_only(result: Result<Session, Failed<Infallible>>) -> Result<Session, BackendError> {
    result.map_err(|failed| match failed {
        Failed::Backend(err) => err,
        Failed::Compute(never) => match never {},
    })
}

impl Backend for WriteBehindBackend {
    fn shares_sessions(&self) -> bool {
        true
    }

    async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<Owner>,
    ) -> Result<Session, BackendError> {
        if let Some(owner) = owner {
            self.queue
                .caught_up_with_user(&owner.user, CATCH_UP)
                .await?;
            return self.sync.create(id, data, ttl_ms, tag, Some(owner)).await;
        }
        let slot = self.queue.reserve()?;
        let fresh = self.redis.usable_id(id);
        let id = self.claimed(tag, fresh).await?;
        if id != fresh
            && let Some(answer) = self.repeated_create(&id).await
        {
            return answer;
        }
        let session = self.redis.store.create(id, data, ttl_ms, tag, None)?;
        slot.upsert(session.clone());
        Ok(session)
    }

    async fn get(&self, id: &SessionId) -> Result<Session, BackendError> {
        // As in sync mode: memory only while it may be served (`cached`,
        // with invalidations arriving or Redis out of reach); a write still
        // queued here is found below.
        if self.redis.trust_memory()
            && let Some(session) = self.redis.get_from_memory(id).await
        {
            return Ok(session);
        }
        // Under the lock a write or delete takes: a read through to Redis
        // never finds (and keeps) an older version than this node's queue.
        let _ordered = self.redis.lock(id).await;
        let Some(mut session) = self.queued_copy(id).await? else {
            return self.redis.load_locked(id).await;
        };
        // A read is a use: the expiry slides, in Redis too once it can.
        let redis = &self.redis;
        session.expires_at_ms = (redis.store)
            .expiry(redis.now(), session.ttl_ms, session.created_at_ms)
            .max(session.expires_at_ms);
        redis
            .queued
            .slide(id, session.version, session.expires_at_ms);
        redis.refresher.note(*id, Push::of(&session));
        Ok(session)
    }

    async fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, BackendError> {
        let store = &self.redis.store;
        let put = || Ok(store.put(id, data.clone(), ttl_ms, expected, write)?);
        backend_only(self.apply(id, put).await)
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
        let store = &self.redis.store;
        self.apply(id, || {
            store.update(id, expected, ttl_ms, write, |data| {
                compute(data).map_err(Failed::Compute)
            })
        })
        .await
    }

    async fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, BackendError> {
        let store = &self.redis.store;
        backend_only(self.apply(id, || Ok(store.touch(id, ttl_ms)?)).await)
    }

    async fn delete(&self, id: &SessionId) -> Result<(), BackendError> {
        let slot = self.queue.reserve_for_delete()?;
        let redis = &self.redis;
        let _ordered = redis.lock(id).await;
        // A session this node neither holds nor has a change of queued
        // (one made on another node) gets its user from Redis: the user's
        // listings, logins and revocations on this node then wait for the
        // delete, as for any of the user's changes.
        let known = redis.store.user_of(id).or_else(|| redis.queued.user_of(id));
        let user = match known {
            Some(user) => user,
            None => self.user_in_redis(id).await,
        };
        redis.store.delete(id);
        slot.delete(*id, user);
        Ok(())
    }

    async fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> Result<Session, BackendError> {
        // A rotation goes to Redis directly (it moves the session in Redis,
        // its user index and the event log): this node's queued writes of
        // it go first, so it moves the session as this node last wrote it
        // (the move waits again, under the session's lock, for any queued
        // since); a login (a rotation to a user) waits for the user's
        // queued changes too, as a login by create does.
        self.queue.caught_up_with(id, CATCH_UP).await?;
        if let Some(owner) = &rebind {
            self.queue
                .caught_up_with_user(&owner.user, CATCH_UP)
                .await?;
        }
        self.sync.rotate(id, new_id, tag, rebind).await
    }

    async fn user_sessions(&self, user: &UserName) -> Result<Vec<Session>, BackendError> {
        // The listing reads Redis: this node's changes of the user's
        // sessions queued before it (a logout, a write) go first.
        self.queue.caught_up_with_user(user, CATCH_UP).await?;
        self.sync.user_sessions(user).await
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, BackendError> {
        self.sync.events(after, limit, wait).await
    }

    async fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, BackendError> {
        self.queue.caught_up_with_user(user, CATCH_UP).await?;
        self.sync.revoke_user(user, except).await
    }

    fn stats(&self) -> StoreStats {
        self.redis.store.stats()
    }

    fn replication_queue_depth(&self) -> Option<u64> {
        Some(self.queue.depth())
    }
}
