//! What both Redis backends share: the link, the scripts, the
//! invalidations, the expiry refresher and the locks that order this
//! node's cache fills and writes of one session.

use std::sync::Arc;
use std::time::Instant;

use sessiond_proto::{EventKind, SessionId, UserName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::copy_in_doubt::CopyInDoubt;
use super::error::{ReplicationError, write_error};
use super::event_log::{RedisEvents, count_logged};
use super::invalidation::Invalidations;
use super::link::{RedisLink, RedisTarget};
use super::queued::QueuedIds;
use super::refresher::{ExpiryRefresher, Held, Push};
use super::script_call::ScriptCall;
use super::scripts::{
    Deleted, Scripts, StoredSession, hex, key, node_ids, session_args, tombstone,
};
use super::settings;
use crate::backend::api::{BackendError, Unavailable};
use crate::backend::claims::{CLAIM_TTL, ClaimedBy};
use crate::store::{EventLogConfig, Session, Store};

/// How many times an optimistic read-modify-write against Redis retries
/// after another writer got in between.
pub const MAX_OPTIMISTIC_ATTEMPTS: usize = 16;
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
    /// The cached copy, kept coherent by acked invalidations.
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
    /// The event log (`None`: off).
    pub events: Option<EventLogConfig>,
}

/// The key that records which id the tagged create or rotation `tag` took,
/// so the same write sent to any node completes or replays that one.
fn claim_key(prefix: &str, tag: u64) -> String {
    format!("{prefix}op:{tag:x}")
}

/// The letter that marks a claim in Redis as a create's or a rotation's.
fn claim_letter(by: ClaimedBy) -> &'static str {
    match by {
        ClaimedBy::Create => "c",
        ClaimedBy::Rotation { .. } => "r",
    }
}

/// Why a session's key is deleted, as its event says.
#[derive(Debug, Clone, Copy)]
pub(super) enum Gone<'a> {
    /// Deleted by a client.
    Deleted,
    /// Deleted by a user-wide revocation.
    Revoked,
    /// Evicted to keep its user under the cap.
    Evicted,
    /// Moved to this id by a rotation (belonging to this user).
    RotatedTo(&'a SessionId, Option<&'a UserName>),
}

/// What both Redis backends share.
#[derive(Debug)]
pub struct Redis {
    pub(super) store: Arc<Store>,
    pub(super) link: Arc<RedisLink>,
    pub(super) scripts: Arc<Scripts>,
    pub(super) invalidations: Arc<Invalidations>,
    pub(super) refresher: Arc<ExpiryRefresher>,
    pub(super) config: RedisConfig,
    /// The event log, if it is on.
    pub(super) events: Option<RedisEvents>,
    /// Its retention as the scripts take it ('' when off), formatted once.
    retention: String,
    /// The newest event log entry seen, watched by the readers waiting on
    /// this node (kept current only while there are some).
    pub(super) newest_event: tokio::sync::watch::Sender<String>,
    /// This node's id as the scripts record it among a session's cachers
    /// (empty in strong mode, where nothing is cached).
    pub(super) cacher: String,
    /// The heartbeat keys' prefix, for a read to drop dead nodes from a
    /// full cacher list (empty, and nothing dropped, with Redis Cluster,
    /// where the keys are in other slots than the session's).
    pruning_prefix: String,
    /// Sessions with a write-behind write not in Redis yet.
    pub(super) queued: Arc<QueuedIds>,
    pub(super) max_lifetime_ms: Option<u64>,
    /// A cache fill and a write of the same session on this node never
    /// overlap, so a fill can never put back a copy older than a write (or
    /// a delete, or a rotation) this node has just acknowledged. Other
    /// nodes' writes are ordered by the invalidation epoch instead.
    stripes: Box<[tokio::sync::Mutex<()>]>,
    /// Where changes that must run to their end are spawned: the node
    /// waits for them before it exits.
    pub(super) changes: TaskTracker,
}

impl Redis {
    /// Connects (in the background) and starts the link's health check
    /// and the invalidation subscription on `tasks`, until `shutdown`, and
    /// the expiry refresher, until `drained` (after the last request).
    pub fn connect(
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
        let queued = Arc::new(QueuedIds::default());
        let invalidations = Arc::new(Invalidations::new(
            &config.prefix,
            node_id,
            link.clone(),
            queued.clone(),
        ));
        let events = match (&config.target, config.events) {
            (RedisTarget::Cluster { .. }, Some(_)) => {
                tracing::warn!(
                    "the event log needs its stream in the same Redis as the sessions' keys; \
                     with --redis-cluster it is off"
                );
                None
            }
            (_, events) => events.map(|events| RedisEvents::new(&config.prefix, events)),
        };
        let expiry_index = events.as_ref().map(|events| events.expiries.clone());
        let refresher = Arc::new(ExpiryRefresher::new(
            config.prefix.clone(),
            link.clone(),
            expiry_index,
        ));
        tasks.spawn(link.clone().watch(shutdown.clone()));
        tasks.spawn(settings::advise_on_hash_encoding(
            link.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(
            invalidations
                .clone()
                .run(link.pubsub_urls(), store.clone(), shutdown.clone()),
        );
        tasks.spawn(refresher.clone().run(
            {
                let store = store.clone();
                move || store.now_ms()
            },
            drained.clone(),
        ));
        let cacher = match config.consistency {
            Consistency::Cached => hex(node_id),
            Consistency::Strong => String::new(),
        };
        // Not with Redis Cluster: the heartbeat keys are in other slots than
        // the session's. (In write-behind mode the invalidation telling
        // dropped nodes may reach a copy whose write is still queued: that
        // node answers its queued write on the next read, as after any
        // other node's write.)
        let pruning_prefix = match &config.target {
            RedisTarget::Single(_) => invalidations.heartbeat_prefix().to_owned(),
            RedisTarget::Cluster { .. } => String::new(),
        };
        let redis = Arc::new(Self {
            store,
            link,
            scripts,
            invalidations,
            refresher,
            config,
            retention: events
                .as_ref()
                .map(|events| events.config.retention.to_string())
                .unwrap_or_default(),
            events,
            newest_event: tokio::sync::watch::Sender::new(String::new()),
            cacher,
            pruning_prefix,
            queued,
            max_lifetime_ms,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            changes: tasks.clone(),
        });
        tasks.spawn(redis.clone().keep_log(shutdown.clone()));
        Ok(redis)
    }

    /// A call of `script` on `keys` and, if the log is on, the event log's
    /// keys (stream, expiry index), with room for `arg_bytes` bytes of
    /// arguments.
    pub(super) fn call_with_events<'s>(
        &self,
        script: &'s redis::Script,
        keys: &[&str],
        arg_bytes: usize,
    ) -> ScriptCall<'s> {
        let events = self
            .events
            .as_ref()
            .map(|events| [events.stream.as_str(), events.expiries.as_str()]);
        let keys = keys.iter().copied().chain(events.into_iter().flatten());
        ScriptCall::new(script, keys, arg_bytes)
    }

    /// A call of a script that stores `session` whole (STORE_NEW,
    /// STORE_ANY): on its key, its tombstone and the event log's keys, with
    /// its fields ([`session_args`]) and `cacher` recorded as holding a copy.
    pub(super) fn store_call<'s>(
        &self,
        script: &'s redis::Script,
        session: &Session,
        cacher: &str,
    ) -> ScriptCall<'s> {
        let key = self.key(&session.id);
        let arg_bytes = 256 + session.data.len();
        let mut call = self.call_with_events(script, &[&key, &tombstone(&key)], arg_bytes);
        session_args(&mut call, session, cacher);
        call
    }

    /// The event log's retention as the scripts take it ('' when off).
    pub(super) fn retention(&self) -> &str {
        &self.retention
    }

    /// Whether data writes are logged as `updated`.
    pub(super) fn logs_updates(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|events| events.config.include_updates)
    }

    /// The link, for readiness checks.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// The invalidation subscription (its state, for the status page).
    pub fn invalidations(&self) -> &Arc<Invalidations> {
        &self.invalidations
    }

    /// The lock that orders this node's fills and writes of `id`.
    pub(super) async fn lock(&self, id: &SessionId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = (id.as_u128() >> 64) as usize % STRIPES;
        self.stripes[stripe].lock().await
    }

    pub(super) fn key(&self, id: &SessionId) -> String {
        key(&self.config.prefix, id)
    }

    /// `id`, or while its Redis Cluster master is down a freshly drawn id
    /// whose master is up (a new session can live anywhere).
    pub(super) fn usable_id(&self, id: SessionId) -> SessionId {
        std::iter::once(id)
            .chain(std::iter::repeat_with(SessionId::random))
            .take(MAX_ID_DRAWS)
            .find(|id| self.link.serves(&self.key(id)))
            .unwrap_or(id)
    }

    pub(super) fn now(&self) -> u64 {
        self.store.now_ms()
    }

    /// The session in Redis, if it is there and live; with `cache`, this
    /// node is recorded among its cachers if there is room.
    pub(super) async fn read_redis(
        &self,
        id: &SessionId,
        cache: bool,
    ) -> Result<Option<Session>, ReplicationError> {
        Ok(self
            .read_stored(id, cache)
            .await?
            .map(|(session, _)| session))
    }

    /// [`Self::read_redis`], and whether this node was recorded among the
    /// session's cachers (only then may it keep the copy). When Redis is
    /// out of memory, recording the node (a write) is refused: the session
    /// is then read without it, so the read is served and nothing is kept.
    async fn read_stored(
        &self,
        id: &SessionId,
        cache: bool,
    ) -> Result<Option<(Session, bool)>, ReplicationError> {
        match self.read_listing(id, cache).await {
            Err(ReplicationError::OutOfMemory(reason)) if cache => {
                tracing::debug!(%id, %reason, "Redis is full: read without caching");
                self.read_listing(id, false).await
            }
            read => read,
        }
    }

    /// [`Self::read_stored`] in one attempt. When the cacher list is full
    /// but holds nodes without a heartbeat key, it is read again by the
    /// script that drops them.
    async fn read_listing(
        &self,
        id: &SessionId,
        cache: bool,
    ) -> Result<Option<(Session, bool)>, ReplicationError> {
        let mut conn = self.link.conn()?;
        let cacher = if cache { self.cacher.as_str() } else { "" };
        let key = self.key(id);
        let mut result = ScriptCall::new(&self.scripts.read, [key.as_str()], 64)
            .arg(cacher)
            .arg(&self.pruning_prefix)
            .invoke_async::<Option<StoredSession>>(&mut conn)
            .await;
        if matches!(&result, Ok(Some(stored)) if stored.lapsed_cachers) {
            let pruned = ScriptCall::new(&self.scripts.read_pruning, [key.as_str()], 128)
                .arg(cacher)
                .arg(&self.pruning_prefix)
                .arg(&self.invalidations.channel)
                .arg(self.invalidations.broadcast(id))
                .invoke_async::<Option<StoredSession>>(&mut conn)
                .await;
            // When it fails, the plain read stands: not recorded, not kept.
            if pruned.is_ok() {
                result = pruned;
            }
        }
        Ok(self.live(self.link.observe(result)?, id))
    }

    /// The session in Redis without its data (empty here), if it is there
    /// and live: what a listing, a revocation or a user's cap needs, not a
    /// copy of every session's data in this node's memory.
    pub(super) async fn read_summary(
        &self,
        id: &SessionId,
    ) -> Result<Option<Session>, ReplicationError> {
        let mut conn = self.link.conn()?;
        let key = self.key(id);
        let read = ScriptCall::new(&self.scripts.read_summary, [key.as_str()], 64)
            .arg("")
            .arg("")
            .invoke_async::<Option<StoredSession>>(&mut conn)
            .await;
        Ok(self
            .live(self.link.observe(read)?, id)
            .map(|(session, _)| session))
    }

    /// The session a read found, if it is live, and whether this node was
    /// recorded among its cachers.
    fn live(&self, stored: Option<StoredSession>, id: &SessionId) -> Option<(Session, bool)> {
        let now = self.now();
        stored
            .and_then(|stored| {
                let recorded = stored.recorded;
                stored.into_session(*id).map(|session| (session, recorded))
            })
            .filter(|(session, _)| session.expires_at_ms > now)
    }

    /// Whether `session`, read from Redis, is past this node's
    /// `--max-lifetime`: another node without the cap (or with a longer
    /// one) may have kept it alive there, but this node does not serve it.
    /// (Listings, revocations and the user cap go by Redis's expiry: the
    /// session is still there for the other nodes.)
    pub(super) fn past_lifetime(&self, session: &Session) -> bool {
        self.max_lifetime_ms
            .is_some_and(|cap| session.created_at_ms.saturating_add(cap) <= self.now())
    }

    /// Keeps a copy in memory unless an invalidation arrived since `epoch`
    /// (the copy could then be older than what Redis holds). In strong mode
    /// nothing is kept: every read goes to Redis.
    pub(super) fn cache(&self, session: &Session, epoch: u64) {
        let kept = !self.cacher.is_empty()
            && self.invalidations.epoch() == epoch
            && self.store.insert_copy(session.clone()).is_ok()
            // An invalidation applied between that check and the insert
            // found nothing to drop; it moves the epoch before it drops,
            // so a second look after the insert sees it.
            && self.invalidations.epoch() == epoch;
        if !kept {
            self.store.delete(&session.id);
        }
    }

    /// Tells the refresher that a read slid `session`'s expiry, Redis
    /// holding `held`; refreshes Redis before the read answers when its
    /// key would expire soon (otherwise the refresher pushes it later).
    pub(super) async fn slide(&self, session: &Session, held: Held) {
        let (id, push) = (&session.id, Push::of(session));
        let now = self.now();
        if self
            .refresher
            .slid(*id, held, push.expires_at_ms, push.ttl_ms, now)
            && let Err(err) = self.refresher.refresh_now(id, push).await
        {
            tracing::debug!(%err, "expiry refresh failed; queued for the next flush");
            self.refresher.note(*id, push);
        }
    }

    /// Read-through under the session's lock.
    pub(super) async fn load(&self, id: &SessionId) -> Result<Session, BackendError> {
        let _ordered = self.lock(id).await;
        self.load_locked(id).await
    }

    /// Whether `id` was deleted lately (its tombstone is in Redis); `false`
    /// when Redis cannot tell.
    pub(super) async fn deleted_lately(&self, id: &SessionId) -> bool {
        let tombstone = tombstone(&self.key(id));
        self.exists(&tombstone).await.unwrap_or_else(|err| {
            tracing::debug!(%id, %err, "cannot tell whether a session was deleted lately");
            false
        })
    }

    /// Whether a session is stored under `id` (expired or not).
    pub(super) async fn stored(&self, id: &SessionId) -> Result<bool, ReplicationError> {
        self.exists(&self.key(id)).await
    }

    /// Whether Redis holds `key`.
    async fn exists(&self, key: &str) -> Result<bool, ReplicationError> {
        let mut conn = self.link.conn()?;
        let mut command = redis::cmd("EXISTS");
        command.arg(key);
        self.link.observe(command.query_async(&mut conn).await)
    }

    /// Read-through: the session from Redis, its expiry slid (a read is a
    /// use), cached if this node is recorded among its cachers. The caller
    /// holds the session's lock.
    pub(super) async fn load_locked(&self, id: &SessionId) -> Result<Session, BackendError> {
        let epoch = self.invalidations.epoch();
        let Some((mut session, recorded)) = self
            .read_stored(id, true)
            .await?
            .filter(|(session, _)| !self.past_lifetime(session))
        else {
            self.store.delete(id);
            return Err(BackendError::NotFound);
        };
        let held = Held::Read(session.expires_at_ms);
        session.expires_at_ms =
            self.store
                .expiry(self.now(), session.ttl_ms, session.created_at_ms);
        self.slide(&session, held).await;
        if recorded {
            self.cache(&session, epoch);
        } else {
            // Writes will not tell this node: it must not keep a copy.
            self.store.delete(id);
        }
        Ok(session)
    }

    /// The id the tagged create or rotation `tag` (a write of the kind
    /// `by`) is to use: `fresh`, or the one another attempt of the same
    /// write claimed first. A write of the other kind that claimed the tag,
    /// or a rotation of another session, reused its key: refused. (The
    /// claim is `c:<id>`, or `r:<id>:<origin>`; a bare id, or a rotation's
    /// without its origin, claimed by a node from before them, is taken as
    /// a repeat.)
    pub(super) async fn claim(
        &self,
        tag: u64,
        fresh: SessionId,
        by: ClaimedBy,
    ) -> Result<SessionId, BackendError> {
        let mut conn = self.link.conn()?;
        let kind = claim_letter(by);
        let (claim, origin) = match by {
            ClaimedBy::Rotation { origin } => (format!("{kind}:{fresh}:{origin}"), Some(origin)),
            ClaimedBy::Create => (format!("{kind}:{fresh}"), None),
        };
        let claimed = redis::cmd("SET")
            .arg(claim_key(&self.config.prefix, tag))
            .arg(claim)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(CLAIM_TTL.as_millis() as u64)
            .query_async::<Option<String>>(&mut conn)
            .await;
        let Some(text) = self.link.observe(claimed).map_err(write_error)? else {
            return Ok(fresh);
        };
        let mut parts = text.split(':');
        let (letter, id, claimed_origin) = match (parts.next(), parts.next(), parts.next()) {
            (Some(letter), Some(id), origin) => (letter, id, origin),
            _ => ("", text.as_str(), None),
        };
        let other_origin = origin
            .zip(claimed_origin)
            .is_some_and(|(origin, claimed)| claimed != origin.to_string());
        if (!letter.is_empty() && letter != kind) || other_origin {
            return Err(BackendError::KeyReused);
        }
        id.parse().map_err(|_| {
            Unavailable::RedisDown {
                reason: format!("the claim of write {tag:x} holds no session id"),
            }
            .into()
        })
    }

    /// Whether this node's memory copy may be served: in cached mode while
    /// invalidations arrive (the node's beats come back), or while this
    /// node cannot reach Redis: availability first, as documented (if
    /// other nodes still reach it, the copy may be older than their writes).
    pub(super) fn trust_memory(&self) -> bool {
        self.config.consistency == Consistency::Cached
            && (self.invalidations.is_live() || !self.link.is_up())
    }

    /// Reads a session from memory when it may be served, sliding its
    /// expiry in memory and (coalesced) in Redis; `None` when Redis must
    /// be asked.
    pub(super) async fn get_from_memory(&self, id: &SessionId) -> Option<Session> {
        let (session, previous) = self.store.get_refreshing(id).ok()?;
        if self.link.is_up() {
            self.slide(&session, Held::Assumed(previous)).await;
        } else {
            self.refresher.note(*id, Push::of(&session));
        }
        Some(session)
    }

    /// Before a replay of a change of `id` is answered: if an earlier run
    /// announced a change to other cachers lately, announces it again and
    /// waits for their acks, at most as long as that run's writer does (it
    /// may not have answered yet, or died waiting).
    pub(super) async fn settle_replay(&self, id: &SessionId) -> Result<(), ReplicationError> {
        let mut conn = self.link.conn()?;
        let announcement = self.invalidations.announce(id);
        let key = self.key(id);
        let result = ScriptCall::new(&self.scripts.recall, [&*key, &tombstone(&key)], 128)
            .arg(&self.invalidations.channel)
            .arg(&announcement.message)
            .invoke_async::<String>(&mut conn)
            .await;
        let answered = Instant::now();
        let told = node_ids(&self.link.observe(result)?);
        announcement.acked_by(&told, answered).await;
        Ok(())
    }

    /// DELETE script (only at version `only_at`, if given): whether the key
    /// was deleted. Waits until the other nodes that may hold a copy
    /// dropped it, and takes the id out of its user's index. Drops this
    /// node's copy unless the delete surely did not run (even when the
    /// caller stops waiting midway).
    pub(super) async fn delete_in_redis(
        &self,
        id: &SessionId,
        only_at: Option<u64>,
        why: Gone<'_>,
    ) -> Result<bool, ReplicationError> {
        let redis = self;
        let mut conn = redis.link.conn()?;
        let announcement = redis.invalidations.announce(id);
        let key = redis.key(id);
        let copy = CopyInDoubt::new(&redis.store, id);
        let (kind, moved_to, user) = match why {
            Gone::Deleted => (EventKind::Deleted, String::new(), String::new()),
            Gone::Revoked => (EventKind::Revoked, String::new(), String::new()),
            Gone::Evicted => (EventKind::Evicted, String::new(), String::new()),
            Gone::RotatedTo(new_id, user) => (
                EventKind::Rotated,
                new_id.to_string(),
                user.map(ToString::to_string).unwrap_or_default(),
            ),
        };
        let result = redis
            .call_with_events(&redis.scripts.delete, &[&key, &tombstone(&key)], 128)
            .arg(&redis.invalidations.channel)
            .arg(&announcement.message)
            .arg(only_at.map(|v| v.to_string()).unwrap_or_default())
            .arg(hex(redis.invalidations.node_id))
            .arg(kind.as_str())
            .arg(moved_to)
            .arg(redis.retention())
            .arg(user)
            .invoke_async::<Deleted>(&mut conn)
            .await;
        let answered = Instant::now();
        // A delete whose answer was lost may have run: the copy from before
        // is not served.
        let deleted = match redis.link.observe(result) {
            Ok(deleted) => deleted,
            Err(err) if err.may_have_run() => return Err(err),
            Err(err) => {
                copy.settle();
                return Err(err);
            }
        };
        if deleted.deleted {
            count_logged(redis.events.as_ref(), kind);
        }
        // Deleted now, or by another run (this delete's first attempt, say)
        // whose writer may not have answered yet: the same wait.
        announcement.acked_by(&deleted.others, answered).await;
        if let Some(user) = &deleted.user {
            redis.index_remove(user, id).await;
        }
        Ok(deleted.deleted)
    }
}
