//! Redis as the durable layer (`--redis`): every write reaches Redis, a
//! session missing from memory is read through from Redis, nodes keep each
//! other's caches coherent through invalidations, and Redis Cluster carries
//! the data past one machine.
//!
//! Modes:
//! - `sync` (default): a write is acknowledged after Redis acknowledged it,
//!   through a Lua script that checks the expected version atomically, so
//!   two nodes can never both win conflicting writes. Memory is a cache.
//! - `async` (write-behind): a write is acknowledged from memory and queued
//!   for Redis; a SIGKILL loses what is still queued.

mod invalidation;
mod link;
mod refresher;
mod scripts;
mod write_behind;

use std::sync::Arc;

use bytes::Bytes;
use sessiond_proto::SessionId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::ServiceError;
use crate::store::{Session, Store};
use invalidation::Invalidations;
pub use link::{RedisLink, RedisTarget};
use refresher::{ExpiryRefresher, SYNC_MARGIN_MS};
use scripts::{Scripts, StoredSession, WriteOutcome, session_args};
use write_behind::{Change, WriteBehind};

/// How many times an optimistic read-modify-write against Redis retries
/// after another writer got in between.
const MAX_OPTIMISTIC_ATTEMPTS: usize = 16;
/// Locks that order a node's own cache fills and writes of one session.
const STRIPES: usize = 256;
/// Most ids drawn for a new session while its first draws land on a
/// Redis Cluster master that is down.
const MAX_ID_DRAWS: usize = 32;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// After Redis acknowledged it.
    Sync,
    /// From memory; Redis follows from a bounded queue.
    Async,
}

/// What a read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The cached copy, kept coherent by invalidations (a copy can be stale
    /// for the time an invalidation takes to arrive).
    Cached,
    /// Always the version in Redis (one Redis round trip per read).
    Strong,
}

/// Replication settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub target: RedisTarget,
    /// When writes are acknowledged.
    pub mode: ReplicationMode,
    /// What reads may return.
    pub consistency: Consistency,
    /// Prefix of every key (and of the invalidation channel).
    pub prefix: String,
    /// Writes the async queue holds before refusing more.
    pub queue_capacity: usize,
}

/// Why a replicated operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// Redis did not answer or refused.
    #[error("Redis is unreachable: {0}")]
    Unavailable(String),
    /// The write-behind queue is full.
    #[error("the Redis replication queue is full ({0} writes waiting); try again")]
    QueueFull(usize),
    /// The Redis settings are unusable.
    #[error("invalid Redis configuration: {0}")]
    Config(String),
}

impl From<ReplicationError> for ServiceError {
    fn from(err: ReplicationError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

/// A session's key in Redis.
pub fn key(prefix: &str, id: &SessionId) -> String {
    format!("{prefix}{id}")
}

/// The replicated session operations of a node.
#[derive(Debug)]
pub struct Replicator {
    store: Arc<Store>,
    link: Arc<RedisLink>,
    scripts: Arc<Scripts>,
    invalidations: Arc<Invalidations>,
    refresher: Arc<ExpiryRefresher>,
    write_behind: Option<WriteBehind>,
    config: RedisConfig,
    max_lifetime_ms: Option<u64>,
    /// A cache fill and a write of the same session on this node never
    /// overlap, so a fill can never put back a copy older than a write (or
    /// a delete, or a rotation) this node has just acknowledged. Other
    /// nodes' writes are ordered by the invalidation epoch instead.
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

impl Replicator {
    /// Connects (in the background) and starts the replication tasks on
    /// `tasks`. They stop on `shutdown`; the write-behind queue is flushed
    /// once `drained` fires (after the listeners have finished).
    pub fn start(
        config: RedisConfig,
        store: Arc<Store>,
        max_lifetime_ms: Option<u64>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        drained: &CancellationToken,
    ) -> Result<Arc<Self>, ReplicationError> {
        let link = RedisLink::new(config.target.clone())?;
        let scripts = Arc::new(Scripts::default());
        let invalidations = Arc::new(Invalidations::new(
            format!("{}invalidations", config.prefix),
            fastrand::u64(..),
        ));
        let refresher = Arc::new(ExpiryRefresher::new(config.prefix.clone(), link.clone()));
        tasks.spawn(link.clone().watch(shutdown.clone()));
        tasks.spawn(
            invalidations
                .clone()
                .run(link.pubsub_urls(), store.clone(), shutdown.clone()),
        );
        tasks.spawn(refresher.clone().run(shutdown.clone()));
        let write_behind = match config.mode {
            ReplicationMode::Sync => None,
            ReplicationMode::Async => {
                let (queue, worker) = WriteBehind::new(config.queue_capacity);
                tasks.spawn(worker.run(
                    link.clone(),
                    scripts.clone(),
                    invalidations.clone(),
                    config.prefix.clone(),
                    drained.clone(),
                ));
                Some(queue)
            }
        };
        Ok(Arc::new(Self {
            store,
            link,
            scripts,
            invalidations,
            refresher,
            write_behind,
            config,
            max_lifetime_ms,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }))
    }

    /// The lock that orders this node's fills and writes of `id`.
    async fn lock(&self, id: &SessionId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = (id.as_u128() >> 64) as usize % STRIPES;
        self.stripes[stripe].lock().await
    }

    /// The link, for readiness checks.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    fn key(&self, id: &SessionId) -> String {
        key(&self.config.prefix, id)
    }

    /// `id`, or while its Redis Cluster master is down a freshly drawn id
    /// whose master is up (a new session can live anywhere).
    fn usable_id(&self, id: SessionId) -> SessionId {
        std::iter::once(id)
            .chain(std::iter::repeat_with(SessionId::random))
            .take(MAX_ID_DRAWS)
            .find(|id| self.link.serves(&self.key(id)))
            .unwrap_or(id)
    }

    fn now(&self) -> u64 {
        self.store.now_ms()
    }

    /// The session in Redis, if it is there and live.
    async fn read_redis(&self, id: &SessionId) -> Result<Option<Session>, ReplicationError> {
        let mut conn = self.link.conn()?;
        let result = self
            .scripts
            .read
            .key(self.key(id))
            .invoke_async::<Option<StoredSession>>(&mut conn)
            .await;
        let now = self.now();
        Ok(self
            .link
            .observe(result)?
            .and_then(|stored| stored.into_session(*id))
            .filter(|session| session.expires_at_ms > now))
    }

    /// Keeps a copy in memory unless an invalidation arrived since `epoch`
    /// (the copy could then be older than what Redis holds).
    fn cache(&self, session: &Session, epoch: u64) {
        if self.invalidations.epoch() == epoch && self.store.insert_copy(session.clone()).is_ok() {
            return;
        }
        self.store.delete(&session.id);
    }

    /// Pushes a session's new expiry to Redis: now when the key would expire
    /// soon, otherwise with the next coalesced flush.
    async fn slide(&self, id: &SessionId, redis_expiry_ms: u64, new_expiry_ms: u64) {
        if redis_expiry_ms.saturating_sub(self.now()) < SYNC_MARGIN_MS {
            if let Err(err) = self.refresher.refresh_now(id, new_expiry_ms).await {
                tracing::debug!(%err, "expiry refresh failed; queued for the next flush");
                self.refresher.note(*id, new_expiry_ms);
            }
        } else {
            self.refresher.note(*id, new_expiry_ms);
        }
    }

    /// Read-through under the session's lock.
    async fn load(&self, id: &SessionId) -> Result<Session, ServiceError> {
        let _ordered = self.lock(id).await;
        self.load_locked(id).await
    }

    /// Read-through: the session from Redis, its expiry slid (a read is a
    /// use), cached. The caller holds the session's lock.
    async fn load_locked(&self, id: &SessionId) -> Result<Session, ServiceError> {
        let epoch = self.invalidations.epoch();
        let Some(mut session) = self.read_redis(id).await? else {
            self.store.delete(id);
            return Err(ServiceError::NotFound);
        };
        let redis_expiry = session.expires_at_ms;
        session.expires_at_ms =
            self.store
                .expiry(self.now(), session.ttl_ms, session.created_at_ms);
        self.slide(id, redis_expiry, session.expires_at_ms).await;
        self.cache(&session, epoch);
        Ok(session)
    }

    /// Makes sure memory holds `id` (async mode, where memory leads and the
    /// write that follows supersedes what was loaded). The caller holds the
    /// session's lock.
    async fn ensure_local(&self, id: &SessionId) -> Result<(), ServiceError> {
        if self.store.peek(id).is_none() {
            let Some(session) = self.read_redis(id).await? else {
                return Err(ServiceError::NotFound);
            };
            self.store.insert_copy(session)?;
        }
        Ok(())
    }

    /// Async mode: applies `write` to this node's memory copy (read through
    /// from Redis first when memory lacks it) and queues the result for
    /// Redis. A place in the queue is taken first, so a full queue refuses
    /// the write before anything changes.
    async fn write_behind(
        &self,
        queue: &WriteBehind,
        id: &SessionId,
        write: impl Fn() -> Result<Session, ServiceError>,
    ) -> Result<Session, ServiceError> {
        let slot = queue.reserve()?;
        let _ordered = self.lock(id).await;
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            self.ensure_local(id).await?;
            match write() {
                // Another node's invalidation dropped the copy in between.
                Err(ServiceError::NotFound) => continue,
                Ok(session) => {
                    slot.send(Change::Upsert(session.clone()));
                    return Ok(session);
                }
                Err(err) => return Err(err),
            }
        }
        Err(ServiceError::Unavailable(
            "the session kept changing on other nodes; try again".into(),
        ))
    }

    fn queue(&self) -> Option<&WriteBehind> {
        self.write_behind.as_ref()
    }

    /// Creates a session under `id`.
    pub async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
    ) -> Result<Session, ServiceError> {
        let id = self.usable_id(id);
        if let Some(queue) = self.queue() {
            let slot = queue.reserve()?;
            let session = self.store.create(id, data, ttl_ms)?;
            slot.send(Change::Upsert(session.clone()));
            return Ok(session);
        }
        let session = self.store.new_session(id, data, ttl_ms);
        let epoch = self.invalidations.epoch();
        let mut conn = self.link.conn()?;
        let key = self.key(&id);
        let result = session_args(&self.scripts.store_new, &key, &session)
            .invoke_async::<i64>(&mut conn)
            .await;
        if self.link.observe(result)? == 0 {
            return Err(ServiceError::Unavailable(
                "a fresh session id is already taken in Redis; try again".into(),
            ));
        }
        self.cache(&session, epoch);
        Ok(session)
    }

    /// Whether this node's memory copy may be served: in async mode memory
    /// leads (it holds writes Redis may not have yet); in cached mode while
    /// invalidations arrive, or while Redis is down (nobody can write).
    fn trust_memory(&self) -> bool {
        self.write_behind.is_some()
            || (self.config.consistency == Consistency::Cached
                && (self.invalidations.is_live() || !self.link.is_up()))
    }

    /// The memory copy, if it may be served (without sliding its expiry).
    fn cached(&self, id: &SessionId) -> Option<Session> {
        self.trust_memory().then(|| self.store.peek(id)).flatten()
    }

    /// Reads a session.
    pub async fn get(&self, id: &SessionId) -> Result<Session, ServiceError> {
        if self.trust_memory()
            && let Ok((session, redis_expiry)) = self.store.get_refreshing(id)
        {
            if self.link.is_up() {
                self.slide(id, redis_expiry, session.expires_at_ms).await;
            } else {
                self.refresher.note(*id, session.expires_at_ms);
            }
            return Ok(session);
        }
        self.load(id).await
    }

    /// Runs the WRITE script.
    async fn write(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        data: Option<&Bytes>,
        ttl_ms: Option<u64>,
    ) -> Result<WriteOutcome, ReplicationError> {
        let mut conn = self.link.conn()?;
        let optional = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        let result = self
            .scripts
            .write
            .key(self.key(id))
            .arg(optional(expected))
            .arg(data.map_or(&b""[..], |data| data.as_ref()))
            .arg(self.now())
            .arg(optional(ttl_ms))
            .arg(optional(self.max_lifetime_ms))
            .arg(&self.invalidations.channel)
            .arg(self.invalidations.message(id))
            .arg(if data.is_some() { "w" } else { "t" })
            .invoke_async::<WriteOutcome>(&mut conn)
            .await;
        self.link.observe(result)
    }

    /// Turns a WRITE outcome into the session it produced, caching it.
    fn written(
        &self,
        id: &SessionId,
        outcome: WriteOutcome,
        data: Option<Bytes>,
        expected: u64,
        epoch: u64,
    ) -> Result<Session, ServiceError> {
        match outcome {
            WriteOutcome::Missing => {
                self.store.delete(id);
                Err(ServiceError::NotFound)
            }
            WriteOutcome::Mismatch { current } => {
                self.store.delete(id);
                Err(ServiceError::VersionMismatch { expected, current })
            }
            WriteOutcome::Done {
                version,
                created_at_ms,
                updated_at_ms,
                ttl_ms,
                expires_at_ms,
                data: touched,
            } => {
                let session = Session {
                    id: *id,
                    data: data.or(touched).unwrap_or_default(),
                    version,
                    created_at_ms,
                    updated_at_ms,
                    ttl_ms,
                    expires_at_ms,
                };
                self.cache(&session, epoch);
                Ok(session)
            }
        }
    }

    /// Replaces a session's data.
    pub async fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
    ) -> Result<Session, ServiceError> {
        if let Some(queue) = self.queue() {
            return self
                .write_behind(queue, id, || {
                    Ok(self.store.put(id, data.clone(), ttl_ms, expected)?)
                })
                .await;
        }
        let _ordered = self.lock(id).await;
        let epoch = self.invalidations.epoch();
        let outcome = self.write(id, expected, Some(&data), ttl_ms).await?;
        self.written(id, outcome, Some(data), expected.unwrap_or(0), epoch)
    }

    /// Computes a session's new data from its current data and writes it,
    /// atomically against concurrent writers on any node.
    pub async fn update(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        compute: impl Fn(&Bytes) -> Result<Bytes, ServiceError>,
    ) -> Result<Session, ServiceError> {
        if let Some(queue) = self.queue() {
            return self
                .write_behind(queue, id, || {
                    self.store.update(id, expected, None, &compute)
                })
                .await;
        }
        let _ordered = self.lock(id).await;
        let mut current = match self.cached(id) {
            Some(session) => session,
            None => self.load_locked(id).await?,
        };
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            if let Some(expected) = expected
                && expected != current.version
            {
                // The cached copy may lag: decide on what Redis holds.
                current = self.load_locked(id).await?;
                if expected != current.version {
                    return Err(ServiceError::VersionMismatch {
                        expected,
                        current: current.version,
                    });
                }
            }
            let data = compute(&current.data)?;
            let epoch = self.invalidations.epoch();
            let outcome = self
                .write(id, Some(current.version), Some(&data), None)
                .await?;
            match self.written(id, outcome, Some(data), current.version, epoch) {
                Err(ServiceError::VersionMismatch { .. }) if expected.is_none() => {
                    current = self.load_locked(id).await?;
                }
                result => return result,
            }
        }
        Err(ServiceError::Unavailable(
            "the session changed under every attempt to patch it; try again".into(),
        ))
    }

    /// Extends a session's expiry, optionally with a new idle TTL.
    pub async fn touch(
        &self,
        id: &SessionId,
        ttl_ms: Option<u64>,
    ) -> Result<Session, ServiceError> {
        if let Some(queue) = self.queue() {
            return self
                .write_behind(queue, id, || Ok(self.store.touch(id, ttl_ms)?))
                .await;
        }
        let _ordered = self.lock(id).await;
        let epoch = self.invalidations.epoch();
        let outcome = self.write(id, None, None, ttl_ms).await?;
        self.written(id, outcome, None, 0, epoch)
    }

    /// Deletes a session everywhere.
    pub async fn delete(&self, id: &SessionId) -> Result<(), ServiceError> {
        if let Some(queue) = self.queue() {
            let slot = queue.reserve()?;
            self.store.delete(id);
            slot.send(Change::Delete(*id));
            return Ok(());
        }
        let _ordered = self.lock(id).await;
        self.delete_in_redis(id, None).await?;
        self.store.delete(id);
        Ok(())
    }

    /// DELETE script: `true` when the key was deleted.
    async fn delete_in_redis(
        &self,
        id: &SessionId,
        only_at: Option<u64>,
    ) -> Result<bool, ReplicationError> {
        let mut conn = self.link.conn()?;
        let result = self
            .scripts
            .delete
            .key(self.key(id))
            .arg(&self.invalidations.channel)
            .arg(self.invalidations.message(id))
            .arg(only_at.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async::<i64>(&mut conn)
            .await;
        Ok(self.link.observe(result)? == 1)
    }

    /// Moves a session to `new_id`. In Redis the two keys may live on
    /// different cluster nodes, so the move is copy-then-delete-if-unchanged:
    /// a write that lands in between makes it start over, none is lost.
    pub async fn rotate(&self, id: &SessionId, new_id: SessionId) -> Result<Session, ServiceError> {
        let new_id = self.usable_id(new_id);
        if let Some(queue) = self.queue() {
            let delete = queue.reserve()?;
            let session = self
                .write_behind(queue, id, || Ok(self.store.rotate(id, new_id)?))
                .await?;
            delete.send(Change::Delete(*id));
            return Ok(session);
        }
        let _ordered = self.lock(id).await;
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            let Some(current) = self.read_redis(id).await? else {
                self.store.delete(id);
                return Err(ServiceError::NotFound);
            };
            let moved = Session {
                id: new_id,
                expires_at_ms: self
                    .store
                    .expiry(self.now(), current.ttl_ms, current.created_at_ms),
                ..current.clone()
            };
            let epoch = self.invalidations.epoch();
            let mut conn = self.link.conn()?;
            let key = self.key(&new_id);
            let stored = session_args(&self.scripts.store_new, &key, &moved)
                .invoke_async::<i64>(&mut conn)
                .await;
            self.link.observe(stored)?;
            if self.delete_in_redis(id, Some(current.version)).await? {
                self.store.delete(id);
                self.cache(&moved, epoch);
                return Ok(moved);
            }
            self.delete_in_redis(&new_id, None).await?;
        }
        Err(ServiceError::Unavailable(
            "the session changed under every attempt to rotate it; try again".into(),
        ))
    }
}
