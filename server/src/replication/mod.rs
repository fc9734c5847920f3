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
use sessiond_proto::wire::WriteTag;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claims::CLAIM_TTL;
use crate::service::ServiceError;
use crate::store::{CLOCK_SKEW_MS, Session, Store, StoreError, Verdict};
use invalidation::Invalidations;
pub use link::{RedisLink, RedisTarget};
use refresher::{ExpiryRefresher, SYNC_MARGIN_MS};
use scripts::{Deleted, Scripts, StoredSession, WriteOutcome, hex, session_args};
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
    /// Redis got the command but its answer was lost (timed out, or the
    /// connection dropped): it may or may not have run.
    #[error("Redis did not answer: {0}")]
    Uncertain(String),
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

/// The error of a tagged write's Redis command: when the command may have
/// run, the write's outcome is unknown to this node (the client then asks
/// another node, which judges it against the session's write log).
fn write_error(err: ReplicationError) -> ServiceError {
    match err {
        ReplicationError::Uncertain(why) => ServiceError::Indeterminate(format!(
            "Redis did not answer ({why}), so this node cannot tell whether the write was applied"
        )),
        other => other.into(),
    }
}

/// A session's key in Redis.
pub fn key(prefix: &str, id: &SessionId) -> String {
    format!("{prefix}{id}")
}

/// The key that records which id the tagged create or rotation `tag` took,
/// so the same write sent to any node completes or replays that one.
fn claim_key(prefix: &str, tag: u64) -> String {
    format!("{prefix}op:{tag:x}")
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
    /// This node's id as the scripts record it among a session's cachers
    /// (empty in strong mode, where nothing is cached).
    cacher: String,
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
        let node_id = fastrand::u64(1..);
        let invalidations = Arc::new(Invalidations::new(&config.prefix, node_id, link.clone()));
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
        let cacher = match config.consistency {
            Consistency::Cached => hex(node_id),
            Consistency::Strong => String::new(),
        };
        Ok(Arc::new(Self {
            store,
            link,
            scripts,
            invalidations,
            refresher,
            write_behind,
            config,
            cacher,
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

    /// The session in Redis, if it is there and live; this node is recorded
    /// among its cachers (it may keep the copy).
    async fn read_redis(&self, id: &SessionId) -> Result<Option<Session>, ReplicationError> {
        let mut conn = self.link.conn()?;
        let result = self
            .scripts
            .read
            .key(self.key(id))
            .arg(&self.cacher)
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
    /// (the copy could then be older than what Redis holds). In strong mode
    /// nothing is kept: every read goes to Redis.
    fn cache(&self, session: &Session, epoch: u64) {
        if !self.cacher.is_empty()
            && self.invalidations.epoch() == epoch
            && self.store.insert_copy(session.clone()).is_ok()
        {
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

    /// The id the tagged create or rotation `tag` is to use: `fresh`, or
    /// the one another attempt of the same write claimed first.
    async fn claim(&self, tag: u64, fresh: SessionId) -> Result<SessionId, ServiceError> {
        let mut conn = self.link.conn()?;
        let claimed = redis::cmd("SET")
            .arg(claim_key(&self.config.prefix, tag))
            .arg(fresh.to_string())
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(CLAIM_TTL.as_millis() as u64)
            .query_async::<Option<String>>(&mut conn)
            .await;
        match self.link.observe(claimed).map_err(write_error)? {
            None => Ok(fresh),
            Some(text) => match text.parse() {
                Ok(earlier) => Ok(earlier),
                Err(_) => Err(ServiceError::Unavailable(format!(
                    "the claim of write {tag:x} in Redis holds no session id"
                ))),
            },
        }
    }

    /// Creates a session under `id` (or, for a tagged create sent again,
    /// under the id its first attempt claimed).
    pub async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
    ) -> Result<Session, ServiceError> {
        let id = self.usable_id(id);
        if let Some(queue) = self.queue() {
            let slot = queue.reserve()?;
            let session = self.store.create(id, data, ttl_ms, tag)?;
            slot.send(Change::Upsert(session.clone()));
            return Ok(session);
        }
        let id = match tag {
            Some(tag) => self.claim(tag, id).await?,
            None => id,
        };
        let session = self.store.new_session(id, data, ttl_ms, tag);
        let epoch = self.invalidations.epoch();
        let mut conn = self.link.conn()?;
        let key = self.key(&id);
        let result = session_args(&self.scripts.store_new, &key, &session, &self.cacher)
            .invoke_async::<i64>(&mut conn)
            .await;
        let stored = match self.link.observe(result) {
            Ok(stored) => stored,
            Err(err) if tag.is_some() => return Err(write_error(err)),
            Err(err) => return Err(err.into()),
        };
        if stored == 0 {
            if tag.is_some() {
                // Another attempt of the same create made it (the id is
                // claimed by this write alone): answer what it made.
                return self.load(&id).await;
            }
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

    /// Runs the WRITE script (`data: None` is a touch) and waits until the
    /// other nodes that may hold a copy dropped it.
    async fn write(&self, id: &SessionId, write: Write<'_>) -> Result<WriteOutcome, ServiceError> {
        let mut conn = self.link.conn()?;
        let optional = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        let announcement = self.invalidations.announce(id);
        let tag = write.tag.filter(|tag| tag.id != 0);
        let result = self
            .scripts
            .write
            .key(self.key(id))
            .arg(optional(write.expected))
            .arg(write.data.map_or(&b""[..], |data| data.as_ref()))
            .arg(self.now())
            .arg(optional(write.ttl_ms))
            .arg(optional(self.max_lifetime_ms))
            .arg(&self.invalidations.channel)
            .arg(&announcement.message)
            .arg(if write.data.is_some() { "w" } else { "t" })
            .arg(tag.map(|tag| hex(tag.id)).unwrap_or_default())
            .arg(optional(tag.and_then(|tag| tag.resent_after_ms)))
            .arg(CLOCK_SKEW_MS)
            .arg(&self.cacher)
            .invoke_async::<WriteOutcome>(&mut conn)
            .await;
        let outcome = match self.link.observe(result) {
            Ok(outcome) => outcome,
            Err(err) if tag.is_some() => return Err(write_error(err)),
            Err(err) => return Err(err.into()),
        };
        if let WriteOutcome::Done { others, .. } = &outcome {
            announcement.acked_by(others).await;
        }
        Ok(outcome)
    }

    /// Turns a WRITE outcome into the session it produced, caching it.
    async fn written(
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
            WriteOutcome::Indeterminate => Err(StoreError::Indeterminate.into()),
            WriteOutcome::Replayed { version } => {
                let current = self.load_locked(id).await?;
                Ok(Session { version, ..current })
            }
            WriteOutcome::Done {
                version,
                created_at_ms,
                updated_at_ms,
                ttl_ms,
                expires_at_ms,
                writes,
                others: _,
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
                    writes,
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
        tag: Option<WriteTag>,
    ) -> Result<Session, ServiceError> {
        if let Some(queue) = self.queue() {
            return self
                .write_behind(queue, id, || {
                    Ok(self.store.put(id, data.clone(), ttl_ms, expected, tag)?)
                })
                .await;
        }
        let _ordered = self.lock(id).await;
        let epoch = self.invalidations.epoch();
        let write = Write {
            expected,
            data: Some(&data),
            ttl_ms,
            tag,
        };
        let outcome = self.write(id, write).await?;
        self.written(id, outcome, Some(data), expected.unwrap_or(0), epoch)
            .await
    }

    /// Computes a session's new data from its current data and writes it,
    /// atomically against concurrent writers on any node. A tagged write
    /// sent again is judged on the session as Redis holds it, and applied
    /// at most once.
    pub async fn update(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
        tag: Option<WriteTag>,
        compute: impl Fn(&Bytes) -> Result<Bytes, ServiceError>,
    ) -> Result<Session, ServiceError> {
        if let Some(queue) = self.queue() {
            return self
                .write_behind(queue, id, || {
                    self.store.update(id, expected, ttl_ms, tag, &compute)
                })
                .await;
        }
        let _ordered = self.lock(id).await;
        let resent = tag.is_some_and(|tag| tag.resent_after_ms.is_some());
        // A re-sent write is judged on what Redis holds, never on a copy.
        let (mut current, mut fresh) = match self.cached(id).filter(|_| !resent) {
            Some(session) => (session, false),
            None => (self.load_locked(id).await?, true),
        };
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            match current
                .writes
                .judge(current.version, tag, expected, self.now())
            {
                Verdict::Apply => {}
                Verdict::Replay { version } => return Ok(Session { version, ..current }),
                Verdict::Indeterminate => return Err(StoreError::Indeterminate.into()),
            }
            if let Some(expected) = expected
                && expected != current.version
            {
                if fresh {
                    return Err(ServiceError::VersionMismatch {
                        expected,
                        current: current.version,
                    });
                }
                // The cached copy may lag: decide on what Redis holds.
                (current, fresh) = (self.load_locked(id).await?, true);
                continue;
            }
            let data = compute(&current.data)?;
            let epoch = self.invalidations.epoch();
            let write = Write {
                expected: Some(current.version),
                data: Some(&data),
                ttl_ms,
                tag,
            };
            let outcome = self.write(id, write).await?;
            match self
                .written(id, outcome, Some(data), current.version, epoch)
                .await
            {
                // Another writer got in between: start again from Redis
                // (where a conditional write is judged again, and fails
                // if its expected version is gone).
                Err(ServiceError::VersionMismatch { .. }) => {
                    (current, fresh) = (self.load_locked(id).await?, true);
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
        let write = Write {
            expected: None,
            data: None,
            ttl_ms,
            tag: None,
        };
        let outcome = self.write(id, write).await?;
        self.written(id, outcome, None, 0, epoch).await
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

    /// DELETE script (only at version `only_at`, if given): whether the key
    /// was deleted. Waits until the other nodes that may hold a copy
    /// dropped it.
    async fn delete_in_redis(
        &self,
        id: &SessionId,
        only_at: Option<u64>,
    ) -> Result<bool, ReplicationError> {
        let mut conn = self.link.conn()?;
        let announcement = self.invalidations.announce(id);
        let result = self
            .scripts
            .delete
            .key(self.key(id))
            .arg(&self.invalidations.channel)
            .arg(&announcement.message)
            .arg(only_at.map(|v| v.to_string()).unwrap_or_default())
            .arg(self.own_id())
            .invoke_async::<Deleted>(&mut conn)
            .await;
        let deleted = self.link.observe(result)?;
        announcement.acked_by(&deleted.others).await;
        Ok(deleted.deleted)
    }

    /// This node's id as the scripts record it (also in strong mode, where
    /// it caches nothing but must still not wait for itself).
    fn own_id(&self) -> String {
        hex(self.invalidations.node_id)
    }

    /// Moves a session to `new_id` (or, for a tagged rotation sent again,
    /// to the id its first attempt claimed). In Redis the two keys may live
    /// on different cluster nodes, so the move is copy-then-delete-if-
    /// unchanged: a write that lands in between makes it copy again, none
    /// is lost.
    pub async fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
    ) -> Result<Session, ServiceError> {
        let new_id = self.usable_id(new_id);
        if let Some(queue) = self.queue() {
            let delete = queue.reserve()?;
            let session = self
                .write_behind(queue, id, || Ok(self.store.rotate(id, new_id)?))
                .await?;
            delete.send(Change::Delete(*id));
            return Ok(session);
        }
        let new_id = match tag {
            Some(tag) => self.claim(tag, new_id).await?,
            None => new_id,
        };
        let _ordered = self.lock(id).await;
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            let Some(current) = self.read_redis(id).await? else {
                self.store.delete(id);
                if tag.is_some() {
                    // Another attempt of this rotation may have finished
                    // the move (the new id is claimed by this write alone).
                    return self.load(&new_id).await;
                }
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
            let copied = session_args(&self.scripts.store_any, &key, &moved, &self.cacher)
                .invoke_async::<i64>(&mut conn)
                .await;
            self.link.observe(copied).map_err(write_error)?;
            let deleted = self.delete_in_redis(id, Some(current.version)).await;
            if deleted.map_err(write_error)? {
                self.store.delete(id);
                self.cache(&moved, epoch);
                return Ok(moved);
            }
        }
        self.delete_in_redis(&new_id, None).await?;
        Err(ServiceError::Unavailable(
            "the session changed under every attempt to rotate it; try again".into(),
        ))
    }
}

/// What the WRITE script is to do.
struct Write<'a> {
    /// The version the session must be at.
    expected: Option<u64>,
    /// New data; `None` for a touch.
    data: Option<&'a Bytes>,
    /// A new idle TTL.
    ttl_ms: Option<u64>,
    /// The write's identity.
    tag: Option<WriteTag>,
}
