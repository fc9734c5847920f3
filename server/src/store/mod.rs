//! The sharded in-memory session store: versions, sliding expiry with an
//! optional absolute cap, a memory bound with an explicit when-full policy,
//! and a sweeper that frees expired sessions in bounded steps.
//!
//! A pure data structure: no HTTP, no Redis, no runtime. Time comes from an
//! injected [`Clock`].

mod budget;
mod clock;
mod event_log;
mod record;
mod session;
mod session_set;
mod shard;
mod user_index;
mod write_log;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventKind, SessionId, UserName};

pub use budget::MemoryBudget;
pub use clock::{Clock, ManualClock, SystemClock};
pub use event_log::{EventCounters, EventLog, EventLogConfig, Position, ReadError};
use record::{MAX_HEADER_BYTES, Record};
pub use session::Session;
use shard::Shard;
use user_index::{INDEX_ENTRY_BYTES, UserIndex};
pub use write_log::{CLOCK_SKEW_MS, Verdict, WRITE_LOG_LEN, WriteLog};

/// Bytes charged per session on top of its data: its record's largest
/// header and the allocator's, the set's pointer to the record and its
/// table slot (a `u32` position and a control byte) at the table's usual
/// load (about half full, after a doubling).
pub const ENTRY_OVERHEAD: u64 = (MAX_HEADER_BYTES
    + std::mem::size_of::<usize>()
    + std::mem::size_of::<Record>()
    + 2 * (std::mem::size_of::<u32>() + 1)) as u64;

/// How many sessions eviction samples to pick the least recently used one.
const EVICTION_SAMPLES: usize = 16;
/// How often a write retries after making room before it gives up.
const MAX_ROOM_ATTEMPTS: usize = 8;
/// Sessions per shard a write refused for room examines for expired ones.
const SWEEP_FOR_ROOM_PER_SHARD: usize = 256;
/// Least pause after such a sweep that found no room before the next.
const SWEEP_FOR_ROOM_EVERY_MS: u64 = 10;
/// Most sessions one such sweep examines (the writes that need room wait
/// for it; a few milliseconds): the next one goes on from where it stopped.
const SWEEP_FOR_ROOM_MAX_SESSIONS: usize = 65_536;

/// What the store does when a write does not fit in `max_memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the write and keep every existing session.
    #[default]
    Reject,
    /// Evict least recently used sessions (sampled, like Redis's
    /// `allkeys-lru`) until the write fits.
    EvictLru,
}

/// What creating or binding one more session does to a user already at
/// the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUserFull {
    /// Remove the user's least recently used session in the same step.
    #[default]
    EvictOldest,
    /// Refuse, and change nothing.
    Reject,
}

/// The cap on one user's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserLimit {
    /// Most live sessions per user (0: no cap).
    pub max_sessions: usize,
    /// What happens past it.
    pub when_full: WhenUserFull,
}

/// Who a new or rebound session belongs to, and the cap on that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The user.
    pub user: UserName,
    /// The cap on the user's sessions.
    pub limit: UserLimit,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of independently locked shards (rounded up to a power of two).
    pub shards: usize,
    /// Bytes sessions may use in all (`None`: unbounded).
    pub max_memory: Option<u64>,
    /// What to do when a write does not fit.
    pub when_full: WhenFull,
    /// Absolute lifetime cap from creation, whatever the sliding expiry says.
    pub max_lifetime_ms: Option<u64>,
    /// The event log this store keeps (memory-only nodes; with Redis the
    /// log lives in Redis).
    pub events: Option<EventLogConfig>,
    /// Whether it indexes its sessions' users (memory-only nodes; with
    /// Redis the index lives in Redis, and a session's user costs the
    /// store only its name).
    pub user_index: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            max_memory: None,
            when_full: WhenFull::Reject,
            max_lifetime_ms: None,
            user_index: true,
            events: None,
        }
    }
}

/// Why a store operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No live session has this id.
    #[error("no live session has this id (it never existed, was deleted or expired)")]
    NotFound,
    /// The caller expected another version.
    #[error("the session is at version {current}, not the expected {expected}")]
    VersionMismatch {
        /// The version the caller expected.
        expected: u64,
        /// The session's version now.
        current: u64,
    },
    /// The user is at the cap and the policy is to reject.
    #[error("the user already has {max} sessions (--max-sessions-per-user)")]
    TooManySessions {
        /// The cap.
        max: usize,
    },
    /// A re-sent write whose first attempt may or may not have been applied.
    #[error(
        "this write was sent again after its answer was lost, and the session has changed \
         too much since to tell whether the first attempt was applied; read it to find out"
    )]
    Indeterminate,
    /// The session's shard holds the most sessions a shard can.
    #[error(
        "the shard this session belongs to holds {max} sessions, the most a shard can; \
         start the node with more --shards"
    )]
    ShardFull {
        /// The most sessions a shard holds.
        max: usize,
    },
    /// The id a session was to move to holds another live session.
    #[error("the id this rotation was to move the session to holds another session")]
    IdTaken,
    /// A change of a session sent with the tag of the create that made it.
    #[error("this write's tag is the one that created the session")]
    KeyReused,
    /// The write does not fit in the memory bound.
    #[error("the store is full: {needed} more bytes do not fit in the {limit}-byte memory bound")]
    Full {
        /// Bytes the write needed.
        needed: u64,
        /// The memory bound.
        limit: u64,
    },
}

/// Counters and gauges of the store: the same figures the binary
/// protocol's `Stats` answer carries.
pub use sessiond_proto::wire::NodeStats as StoreStats;

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicU64,
    expirations: AtomicU64,
    evictions: AtomicU64,
    rejections: AtomicU64,
}

/// Why a session left the store.
#[derive(Debug, Clone, Copy)]
enum Removal {
    Deleted,
    Revoked,
    Expired,
    Evicted,
}

impl Removal {
    fn event(self) -> EventKind {
        match self {
            Self::Deleted => EventKind::Deleted,
            Self::Revoked => EventKind::Revoked,
            Self::Expired => EventKind::Expired,
            Self::Evicted => EventKind::Evicted,
        }
    }
}

/// A shard lock on its own cache lines, so neighbouring shards' locks do
/// not contend through false sharing.
#[repr(align(128))]
#[derive(Debug, Default)]
struct PaddedShard(Mutex<Shard>);

impl std::ops::Deref for PaddedShard {
    type Target = Mutex<Shard>;

    fn deref(&self) -> &Mutex<Shard> {
        &self.0
    }
}

/// The sharded session store.
pub struct Store {
    shards: Box<[PaddedShard]>,
    /// `shards.len() - 1`; the shard count is a power of two.
    shard_mask: u64,
    budget: MemoryBudget,
    clock: Arc<dyn Clock>,
    config: StoreConfig,
    counters: Counters,
    users: UserIndex,
    events: Option<EventLog>,
    /// Until when no sweep for room runs, after one found nothing to free
    /// (ms since the Unix epoch); held while such a sweep runs, so one runs
    /// at a time.
    no_sweep_for_room_until_ms: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Why a session's shard took no more sessions.
fn shard_full() -> StoreError {
    StoreError::ShardFull {
        max: session_set::MAX_SESSIONS,
    }
}

/// What a session of `data_len` bytes of data is charged.
pub fn charge_of(data_len: usize) -> u64 {
    ENTRY_OVERHEAD + data_len as u64
}

/// What belonging to a user whose name has `user_len` bytes (0: to none)
/// adds to a session's charge in a store that indexes users: its place in
/// the user index and the name twice (in the session's record and as the
/// index's key).
fn owner_charge(user_len: usize) -> u64 {
    match user_len {
        0 => 0,
        len => INDEX_ENTRY_BYTES + 2 * len as u64,
    }
}

/// The length of `user`'s name (0: no user).
fn name_len(user: Option<&UserName>) -> usize {
    user.map_or(0, |user| user.as_str().len())
}

/// How many times a user-index step retries after the user's sessions
/// changed between reading the index and locking their shards.
const MAX_INDEX_ATTEMPTS: usize = 32;

/// What [`Store::admit`] did.
enum Admitted {
    /// Stored the new session.
    Stored(Session),
    /// A live session already had the id; this is it.
    Existing(Session),
}

/// Session shards locked together, in ascending order (so two groups
/// never deadlock), for a step that spans several sessions.
struct Locked<'a> {
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
}

impl Locked<'_> {
    /// The locked shard `index`, which the caller locked in this group.
    fn locked_shard(&mut self, index: usize) -> &mut Shard {
        self.shard(index)
            .unwrap_or_else(|| unreachable!("shard {index} was locked with the group"))
    }

    /// The locked shard `index`, if it is in the group.
    fn shard(&mut self, index: usize) -> Option<&mut Shard> {
        let at = self
            .guards
            .binary_search_by_key(&index, |(locked, _)| *locked)
            .ok()?;
        Some(&mut *self.guards[at].1)
    }
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        let count = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..count).map(|_| PaddedShard::default()).collect();
        let events = config
            .events
            .map(|events| EventLog::new(events, clock.now_ms()));
        Self {
            shards,
            shard_mask: count as u64 - 1,
            budget: MemoryBudget::new(config.max_memory),
            clock,
            events,
            config,
            counters: Counters::default(),
            no_sweep_for_room_until_ms: Mutex::new(None),
            users: UserIndex::default(),
        }
    }

    /// The store's clock reading now.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn shard_index(&self, id: &SessionId) -> usize {
        (id.spread() & self.shard_mask) as usize
    }

    fn shard(&self, id: &SessionId) -> &Mutex<Shard> {
        &self.shards[self.shard_index(id)]
    }

    /// Locks the shards of `ids` together with, for a capped `owner`, the
    /// shard that stands for its user: two logins of a user who has no
    /// session yet lock none of the user's sessions, and without a lock in
    /// common each would find room under the cap.
    fn lock_for_owner<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a SessionId>,
        capped: Option<&Owner>,
    ) -> Locked<'_> {
        let user_shard = capped.map(|owner| {
            let mut hasher = std::hash::DefaultHasher::new();
            owner.user.as_str().hash(&mut hasher);
            (hasher.finish() & self.shard_mask) as usize
        });
        let ids = ids.into_iter().map(|id| self.shard_index(id));
        self.lock_shards(ids.chain(user_shard))
    }

    /// Locks the shards of `ids` and of `user`'s indexed sessions (and, for
    /// a `capped` owner, its user's shard: see [`Self::lock_for_owner`])
    /// once the index held still while they were locked; returns `user`'s
    /// indexed sessions with the locks. The index only changes under the lock of
    /// the shard of a session it names, so when it changed under each of
    /// [`MAX_INDEX_ATTEMPTS`] attempts (a storm of the user's logins and
    /// logouts) every shard is locked: slower, but the step always happens.
    fn lock_with_users_sessions(
        &self,
        ids: &[&SessionId],
        user: Option<&UserName>,
        capped: Option<&Owner>,
    ) -> (Vec<SessionId>, Locked<'_>) {
        let indexed = || user.map(|user| self.users.ids(user)).unwrap_or_default();
        for _ in 0..MAX_INDEX_ATTEMPTS {
            let owned = indexed();
            let locked = self.lock_for_owner(owned.iter().chain(ids.iter().copied()), capped);
            if user.is_none() || indexed() == owned {
                return (owned, locked);
            }
        }
        let locked = self.lock_shards(0..self.shards.len());
        (indexed(), locked)
    }

    /// Locks the shards at `indices` together, in index order.
    fn lock_shards(&self, indices: impl IntoIterator<Item = usize>) -> Locked<'_> {
        let mut indices: Vec<usize> = indices.into_iter().collect();
        indices.sort_unstable();
        indices.dedup();
        Locked {
            guards: indices
                .into_iter()
                .map(|index| (index, self.shards[index].lock()))
                .collect(),
        }
    }

    /// When a session created at `created_at_ms` with idle TTL `ttl_ms`
    /// expires if it is used at `now_ms` (the sliding expiry, capped by the
    /// absolute lifetime).
    pub fn expiry(&self, now_ms: u64, ttl_ms: u64, created_at_ms: u64) -> u64 {
        let idle = now_ms.saturating_add(ttl_ms);
        match self.config.max_lifetime_ms {
            Some(cap) => idle.min(created_at_ms.saturating_add(cap)),
            None => idle,
        }
    }

    /// Records a use of `record` at `now_ms`: its sliding expiry moves on.
    fn slide(&self, record: &mut Record, now_ms: u64) {
        let expires_at_ms = self.expiry(now_ms, record.ttl_ms(), record.created_at_ms());
        record.slide(now_ms, expires_at_ms);
    }

    /// A new session (version 1, created now by the write `tag`) without
    /// storing it.
    pub fn new_session(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        user: Option<UserName>,
    ) -> Session {
        let now = self.now_ms();
        Session {
            id,
            data,
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
            ttl_ms,
            expires_at_ms: self.expiry(now, ttl_ms, now),
            writes: WriteLog::created(tag),
            user,
        }
    }

    /// Creates a session under the fresh id `id`, version 1, by the write
    /// `tag`, belonging to `owner`'s user if given (whose cap is applied in
    /// the same step). If a live session already has the id (a create
    /// completed twice), that session is returned and nothing changes.
    pub fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<&Owner>,
    ) -> Result<Session, StoreError> {
        let user = owner.map(|owner| owner.user.clone());
        let charge = charge_of(data.len()) + self.owner_charge(name_len(user.as_ref()));
        if !self.budget.try_reserve(charge) {
            // Room is made only for a create that stores: one sent again
            // answers what its first attempt made, one its user's cap
            // refuses is refused, and neither evicts anybody.
            if let Some(existing) = self.peek(&id) {
                return Ok(existing);
            }
            if let Some(refused) = owner.and_then(|owner| self.cap_refuses(owner)) {
                return Err(refused);
            }
            let fits = self.budget.limit().is_some_and(|limit| charge <= limit);
            if let Some(owner) =
                owner.filter(|_| fits && self.config.when_full == WhenFull::EvictLru)
            {
                self.cap_ahead(owner);
            }
            self.reserve(charge, None)?;
        }
        let session = self.new_session(id, data, ttl_ms, tag, user);
        match self.admit(session, owner) {
            Ok(Admitted::Stored(session)) => Ok(session),
            Ok(Admitted::Existing(session)) => {
                self.budget.release(charge);
                Ok(session)
            }
            Err(err) => {
                self.budget.release(charge);
                Err(err)
            }
        }
    }

    /// Stores a new session (in the same step as its owner's cap), unless a
    /// live one has its id.
    fn admit(&self, session: Session, owner: Option<&Owner>) -> Result<Admitted, StoreError> {
        let id = session.id;
        // Without a cap there is nothing to count: only the new session's
        // shard is locked.
        let capped = owner.filter(|owner| owner.limit.max_sessions > 0);
        let user = capped.map(|owner| &owner.user);
        let (owned, mut locked) = self.lock_with_users_sessions(&[&id], user, capped);
        // Liveness is judged when the locks are held, not when the session
        // was made before waiting for them.
        let now = self.now_ms().max(session.created_at_ms);
        let shard = locked.locked_shard(self.shard_index(&id));
        if let Ok(existing) = self.live_record(shard, &id, now) {
            return Ok(Admitted::Existing(existing.session()));
        }
        if shard.sessions.is_full() {
            // Before the cap makes way: a refused create costs nothing.
            return Err(shard_full());
        }
        if let Some(owner) = capped {
            self.make_way(&mut locked, owner, &owned, None, now)?;
        }
        locked
            .locked_shard(self.shard_index(&id))
            .sessions
            .replace(Record::new(&session, now))
            .map_err(|_| shard_full())?;
        if let Some(owner) = owner {
            self.users.add(&owner.user, id);
        }
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        self.log_event(EventKind::Created, id, session.user.as_ref(), None);
        Ok(Admitted::Stored(session))
    }

    /// Applies `owner`'s cap ahead of a create that found no room, under
    /// `--when-full evict-lru` (where a create that fits the bound is
    /// never refused for room): the user's own oldest sessions, which the
    /// cap evicts anyway, make the room before another user's is evicted
    /// for it. [`Self::admit`] applies the cap again in the create's step.
    fn cap_ahead(&self, owner: &Owner) {
        if owner.limit.max_sessions == 0 || owner.limit.when_full != WhenUserFull::EvictOldest {
            return;
        }
        let (owned, mut locked) =
            self.lock_with_users_sessions(&[], Some(&owner.user), Some(owner));
        let now = self.now_ms();
        // Evicting never fails: only a rejecting cap refuses.
        let _ = self.make_way(&mut locked, owner, &owned, None, now);
    }

    /// The refusal of one more session by `owner`'s cap under `reject`, if
    /// the user holds that many live sessions now. A check before room is
    /// made, without the user's locks: [`Self::admit`] applies the cap.
    fn cap_refuses(&self, owner: &Owner) -> Option<StoreError> {
        let max = owner.limit.max_sessions;
        if max == 0 || owner.limit.when_full != WhenUserFull::Reject {
            return None;
        }
        let live = self
            .users
            .ids(&owner.user)
            .iter()
            .filter(|id| self.holds(id))
            .count();
        (live >= max).then_some(StoreError::TooManySessions { max })
    }

    /// Makes room for one more session of `owner`'s user among `owned`
    /// (the user's indexed sessions, all in `locked`): drops the expired
    /// ones, then applies the cap (`keep`, a session moving to this user
    /// anyway, is not counted).
    fn make_way(
        &self,
        locked: &mut Locked<'_>,
        owner: &Owner,
        owned: &[SessionId],
        keep: Option<SessionId>,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut live = Vec::new();
        for id in owned.iter().filter(|id| Some(**id) != keep) {
            let Some(shard) = locked.shard(self.shard_index(id)) else {
                continue;
            };
            match shard.sessions.get(id) {
                Some(record) if record.is_expired(now) => {
                    if let Some(record) = shard.sessions.swap_take(id) {
                        self.forget(&record, Removal::Expired);
                    }
                }
                Some(record) => live.push((record.last_use_ms(), *id)),
                None => self.users.remove(&owner.user, id),
            }
        }
        let max = owner.limit.max_sessions;
        if max == 0 || live.len() < max {
            return Ok(());
        }
        if owner.limit.when_full == WhenUserFull::Reject {
            return Err(StoreError::TooManySessions { max });
        }
        live.sort_unstable();
        for (_, id) in &live[..=live.len() - max] {
            if let Some(shard) = locked.shard(self.shard_index(id))
                && let Some(record) = shard.sessions.swap_take(id)
            {
                self.forget(&record, Removal::Evicted);
            }
        }
        Ok(())
    }

    /// What belonging to a user whose name has `user_len` bytes adds to a
    /// session's charge here: [`owner_charge`] in a store that indexes
    /// users, else the name once (in the session's record).
    fn owner_charge(&self, user_len: usize) -> u64 {
        if self.config.user_index {
            owner_charge(user_len)
        } else {
            user_len as u64
        }
    }

    /// What `record` is charged.
    fn charge(&self, record: &Record) -> u64 {
        charge_of(record.data().len()) + self.owner_charge(record.user_len())
    }

    /// Holds a copy of a session that Redis or another node has (same id,
    /// version and times), replacing this store's older copy. For a cache:
    /// fails with [`StoreError::Full`] when there is no room.
    pub fn insert_copy(&self, session: Session) -> Result<(), StoreError> {
        let bytes =
            charge_of(session.data.len()) + self.owner_charge(name_len(session.user.as_ref()));
        self.reserve(bytes, Some(session.id))?;
        let record = Record::new(&session, self.now_ms());
        let previous = self.shard(&session.id).lock().sessions.replace(record);
        match previous {
            Ok(Some(old)) => self.budget.release(self.charge(&old)),
            Ok(None) => {
                self.counters.sessions.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.budget.release(bytes);
                return Err(shard_full());
            }
        }
        Ok(())
    }

    /// Drops every session: a cache that can no longer be trusted. Returns
    /// how many were dropped.
    pub fn clear(&self) -> u64 {
        self.clear_except(|_| false)
    }

    /// Drops every session but those `keep` holds on to (copies no other
    /// place has yet). Returns how many were dropped.
    pub fn clear_except(&self, keep: impl Fn(&SessionId) -> bool) -> u64 {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let records = std::mem::take(&mut shard.sessions);
            for record in records {
                let id = record.id();
                if keep(&id) {
                    // Back in a set that held it: there is room.
                    let _ = shard.sessions.replace(record);
                    continue;
                }
                self.budget.release(self.charge(&record));
                if let Some(user) = record.user() {
                    self.users.remove(&user, &id);
                }
                dropped += 1;
            }
        }
        self.counters.sessions.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// Reads a session and refreshes its sliding expiry.
    pub fn get(&self, id: &SessionId) -> Result<Session, StoreError> {
        self.get_refreshing(id).map(|(session, _)| session)
    }

    /// Reads a session and refreshes its sliding expiry; also returns the
    /// expiry it had before this read.
    pub fn get_refreshing(&self, id: &SessionId) -> Result<(Session, u64), StoreError> {
        let mut shard = self.shard(id).lock();
        let now = self.now_ms();
        let record = self.live_record(&mut shard, id, now)?;
        let previous = record.expires_at_ms();
        self.slide(record, now);
        Ok((record.session(), previous))
    }

    /// Reads a session without touching its expiry or recency.
    pub fn peek(&self, id: &SessionId) -> Option<Session> {
        self.with_live(id, Record::session)
    }

    /// Whether memory holds a live `id` (without copying it out as
    /// [`Self::peek`] does).
    pub fn holds(&self, id: &SessionId) -> bool {
        self.with_live(id, |_| ()).is_some()
    }

    /// The user of the live session `id` (`None` inside when it has
    /// none), if memory holds it (without copying the session out).
    pub fn user_of(&self, id: &SessionId) -> Option<Option<UserName>> {
        self.with_live(id, Record::user)
    }

    /// `read` of the live record of `id`, if memory holds one; its expiry
    /// and recency stay as they are.
    fn with_live<T>(&self, id: &SessionId, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.shard(id).lock();
        let now = self.now_ms();
        shard
            .sessions
            .get(id)
            .filter(|record| !record.is_expired(now))
            .map(read)
    }

    /// When version `version` of `id` expires as memory holds it now (reads
    /// since it was written slide it), if memory holds that version.
    pub fn expiry_of(&self, id: &SessionId, version: u64) -> Option<u64> {
        let shard = self.shard(id).lock();
        shard
            .sessions
            .get(id)
            .filter(|record| record.version() == version)
            .map(Record::expires_at_ms)
    }

    /// Replaces a session's data. `expected`: the version the caller read
    /// (a compare-and-set); `ttl_ms`: a new idle TTL; `write`: the write's
    /// identity (see [`WriteLog`]).
    pub fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, StoreError> {
        self.update(id, expected, ttl_ms, write, |_| Ok(data.clone()))
    }

    /// Atomically computes a session's new data from its current data.
    /// `compute` may run more than once if the write has to wait for room.
    /// A write whose tag the session's log already holds is not applied
    /// again: the answer is the session with the version it produced.
    pub fn update<E: From<StoreError>>(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
        write: Option<WriteTag>,
        mut compute: impl FnMut(&[u8]) -> Result<Bytes, E>,
    ) -> Result<Session, E> {
        let mut needed = 0;
        for _ in 0..MAX_ROOM_ATTEMPTS {
            let mut shard = self.shard(id).lock();
            let now = self.now_ms();
            let record = self.live_record(&mut shard, id, now)?;
            let current = record.version();
            match record.writes().judge(current, write, expected, now) {
                Verdict::Apply => {}
                Verdict::Replay { version } => {
                    return Ok(Session {
                        version,
                        ..record.session()
                    });
                }
                Verdict::Indeterminate => return Err(StoreError::Indeterminate.into()),
                Verdict::Reused => return Err(StoreError::KeyReused.into()),
            }
            if let Some(expected) = expected.filter(|&v| v != current) {
                return Err(StoreError::VersionMismatch { expected, current }.into());
            }
            let data = compute(record.data())?;
            let owner = self.owner_charge(record.user_len());
            let (old, new) = (self.charge(record), charge_of(data.len()) + owner);
            if self.budget.limit().is_some_and(|limit| new > limit) {
                // Evicting every other session would not make it fit.
                return Err(self.full(new - old).into());
            }
            if new > old && !self.budget.try_reserve(new - old) {
                drop(shard);
                needed = new - old;
                self.make_room(needed, Some(*id))?;
                continue;
            }
            if old > new {
                self.budget.release(old - new);
            }
            let mut session = record.session_with(data);
            session.version += 1;
            session.writes.record(write, session.version, now);
            session.updated_at_ms = now;
            if let Some(ttl) = ttl_ms {
                session.ttl_ms = ttl;
            }
            session.expires_at_ms = self.expiry(now, session.ttl_ms, session.created_at_ms);
            record.rewrite(&session, now);
            if self.events.as_ref().is_some_and(EventLog::includes_updates) {
                self.log_event(EventKind::Updated, *id, session.user.as_ref(), None);
            }
            return Ok(session);
        }
        Err(self.full(needed).into())
    }

    /// Extends a session's expiry (optionally with a new idle TTL) without
    /// changing its data or version.
    pub fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, StoreError> {
        let mut shard = self.shard(id).lock();
        let now = self.now_ms();
        let record = self.live_record(&mut shard, id, now)?;
        if let Some(ttl) = ttl_ms {
            record.set_ttl_ms(ttl);
        }
        self.slide(record, now);
        Ok(record.session())
    }

    /// Removes a session; returns whether a live one was there.
    pub fn delete(&self, id: &SessionId) -> bool {
        let mut shard = self.shard(id).lock();
        let now = self.now_ms();
        match shard.sessions.swap_take(id) {
            Some(record) if record.is_expired(now) => {
                self.forget(&record, Removal::Expired);
                false
            }
            Some(record) => {
                self.forget(&record, Removal::Deleted);
                true
            }
            None => false,
        }
    }

    /// Moves a session to the fresh id `new_id`; the old id is gone at
    /// once. Data, version and creation time are kept (so `--max-lifetime`
    /// still counts from the first login), the expiry is refreshed. With
    /// `rebind`, the session belongs to that owner's user from now on (a
    /// login), whose cap is applied in the same step; otherwise it keeps
    /// its user. Binding a user charges its index entry: under
    /// `--when-full evict-lru` room is made for it as for any write.
    pub fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        rebind: Option<&Owner>,
    ) -> Result<Session, StoreError> {
        for _ in 0..MAX_ROOM_ATTEMPTS {
            match self.try_rotate(id, new_id, rebind) {
                // Room is made outside the shards' locks, then it is tried
                // again (the session itself is never the one evicted).
                Err(StoreError::Full { needed, .. }) => self.make_room(needed, Some(*id))?,
                result => return result,
            }
        }
        self.try_rotate(id, new_id, rebind)
            .map_err(|err| match err {
                StoreError::Full { needed, .. } => self.full(needed),
                other => other,
            })
    }

    /// [`Store::rotate`] with the room there is.
    fn try_rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        rebind: Option<&Owner>,
    ) -> Result<Session, StoreError> {
        let capped = rebind.filter(|owner| owner.limit.max_sessions > 0);
        let user = capped.map(|owner| &owner.user);
        let (owned, mut locked) = self.lock_with_users_sessions(&[id, &new_id], user, capped);
        let now = self.now_ms();
        if locked
            .locked_shard(self.shard_index(&new_id))
            .sessions
            .is_full()
        {
            return Err(shard_full());
        }
        let record = self.take_live(locked.locked_shard(self.shard_index(id)), id, now)?;
        let target = locked.locked_shard(self.shard_index(&new_id));
        if self.live_record(target, &new_id, now).is_ok() {
            self.put_back(&mut locked, record);
            return Err(StoreError::IdTaken);
        }
        let mut session = record.session();
        if let Some(owner) = rebind {
            let keep = (session.user.as_ref() == Some(&owner.user)).then_some(*id);
            let rebound = self
                .make_way(&mut locked, owner, &owned, keep, now)
                .and_then(|()| self.recharge(&record, owner.user.as_str().len()));
            if let Err(err) = rebound {
                self.put_back(&mut locked, record);
                return Err(err);
            }
            let listed_as = match &session.user {
                Some(old_user) if *old_user == owner.user => Some(id),
                Some(old_user) => {
                    self.users.remove(old_user, id);
                    None
                }
                None => None,
            };
            self.users.replace(&owner.user, listed_as, new_id);
            session.user = Some(owner.user.clone());
        } else if let Some(user) = &session.user {
            self.users.replace(user, Some(id), new_id);
        }
        session.id = new_id;
        session.expires_at_ms = self.expiry(now, session.ttl_ms, session.created_at_ms);
        // Checked above (under the same lock) to have room.
        let target = locked.locked_shard(self.shard_index(&new_id));
        if let Err(lost) = target.sessions.replace(Record::new(&session, now)) {
            self.forget(&lost, Removal::Evicted);
        }
        self.log_event(EventKind::Rotated, new_id, session.user.as_ref(), Some(*id));
        Ok(session)
    }

    /// Puts `record` back in its shard, out of which it was taken a moment
    /// ago under the same lock (so it fits).
    fn put_back(&self, locked: &mut Locked<'_>, record: Record) {
        let source = locked.locked_shard(self.shard_index(&record.id()));
        if let Err(lost) = source.sessions.replace(record) {
            self.forget(&lost, Removal::Evicted);
        }
    }

    /// Adjusts the budget for `record` belonging to a user whose name has
    /// `user_len` bytes from now on (only what fits without making room:
    /// the caller holds shard locks).
    fn recharge(&self, record: &Record, user_len: usize) -> Result<(), StoreError> {
        let old = self.charge(record);
        let new = charge_of(record.data().len()) + self.owner_charge(user_len);
        if new > old && !self.budget.try_reserve(new - old) {
            return Err(self.short_of_room(new - old));
        }
        if old > new {
            self.budget.release(old - new);
        }
        Ok(())
    }

    /// The live sessions of `user`, oldest first, without their data (a
    /// listing shows none, and copying it out under the shards' locks
    /// would hold up every other request to them).
    pub fn user_sessions(&self, user: &UserName) -> Vec<Session> {
        let (owned, mut locked) = self.lock_with_users_sessions(&[], Some(user), None);
        let now = self.now_ms();
        let mut sessions: Vec<Session> = owned
            .iter()
            .filter_map(|id| {
                let record = locked.shard(self.shard_index(id))?.sessions.get(id)?;
                (!record.is_expired(now)).then(|| record.session_with(Bytes::new()))
            })
            .collect();
        sessions.sort_by_key(|session| (session.created_at_ms, session.id));
        sessions
    }

    /// Deletes every live session of `user` but `except`, in one step;
    /// returns the ids deleted.
    pub fn revoke_user(&self, user: &UserName, except: Option<SessionId>) -> Vec<SessionId> {
        let (owned, mut locked) = self.lock_with_users_sessions(&[], Some(user), None);
        let now = self.now_ms();
        let mut revoked = Vec::new();
        for id in owned.iter().filter(|id| Some(**id) != except) {
            let shard = locked.locked_shard(self.shard_index(id));
            if let Some(record) = shard.sessions.swap_take(id) {
                if record.is_expired(now) {
                    self.forget(&record, Removal::Expired);
                } else {
                    self.forget(&record, Removal::Revoked);
                    revoked.push(*id);
                }
            }
        }
        revoked
    }

    /// Frees expired sessions, examining at most `per_shard` sessions in
    /// each shard. Returns how many were freed.
    pub fn sweep(&self, per_shard: usize) -> u64 {
        let now = self.now_ms();
        let mut freed = 0;
        for shard in self.shards.iter() {
            let swept = shard.lock().sweep(now, per_shard, |record| {
                self.unlink(record, Removal::Expired);
                self.charge(record)
            });
            if swept.sessions > 0 {
                self.budget.release(swept.bytes);
                self.counters
                    .sessions
                    .fetch_sub(swept.sessions, Ordering::Relaxed);
                self.counters
                    .expirations
                    .fetch_add(swept.sessions, Ordering::Relaxed);
                freed += swept.sessions;
            }
        }
        freed
    }

    /// The store's counters and gauges now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            sessions: self.counters.sessions.load(Ordering::Relaxed),
            bytes_used: self.budget.used(),
            bytes_limit: self.budget.limit(),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            rejections: self.counters.rejections.load(Ordering::Relaxed),
            user_index_users: self.users.users(),
            user_index_entries: self.users.entries(),
        }
    }

    /// The live record of `id`; an expired one is removed on the way. The
    /// set finds a record by its session's id: callers may change anything
    /// but that id through the reference (a rotation takes the record out
    /// first).
    fn live_record<'a>(
        &self,
        shard: &'a mut Shard,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<&'a mut Record, StoreError> {
        let (index, record) = shard
            .sessions
            .get_full_mut(id)
            .ok_or(StoreError::NotFound)?;
        if record.is_expired(now_ms) {
            if let Some(record) = shard.sessions.swap_remove_index(index) {
                self.forget(&record, Removal::Expired);
            }
            return Err(StoreError::NotFound);
        }
        shard
            .sessions
            .get_index_mut(index)
            .ok_or(StoreError::NotFound)
    }

    /// Removes and returns the live record of `id`, without releasing its
    /// bytes.
    fn take_live(
        &self,
        shard: &mut Shard,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<Record, StoreError> {
        let record = shard.sessions.swap_take(id).ok_or(StoreError::NotFound)?;
        if record.is_expired(now_ms) {
            self.forget(&record, Removal::Expired);
            return Err(StoreError::NotFound);
        }
        Ok(record)
    }

    /// Takes a session that left its shard out of its user's index and
    /// logs why it left (the caller still holds the shard's lock).
    fn unlink(&self, record: &Record, why: Removal) {
        let user = record.user();
        let id = record.id();
        if let Some(user) = &user {
            self.users.remove(user, &id);
        }
        self.log_event(why.event(), id, user.as_ref(), None);
    }

    /// Accounts for a session that left its shard (the caller still holds
    /// the shard's lock): its bytes, the counters, its user's index and
    /// the event log.
    fn forget(&self, record: &Record, why: Removal) {
        self.unlink(record, why);
        self.budget.release(self.charge(record));
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
        let counter = match why {
            Removal::Deleted | Removal::Revoked => return,
            Removal::Expired => &self.counters.expirations,
            Removal::Evicted => &self.counters.evictions,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends an event about the session `id` of `user` to this store's
    /// log, if it keeps one (the caller still holds the session's shard
    /// lock).
    fn log_event(
        &self,
        kind: EventKind,
        id: SessionId,
        user: Option<&UserName>,
        old_id: Option<SessionId>,
    ) {
        if let Some(events) = &self.events {
            events.append(kind, id, user, old_id, self.now_ms());
        }
    }

    /// This store's event log, if it keeps one.
    pub fn events(&self) -> Option<&EventLog> {
        self.events.as_ref()
    }

    /// Takes `bytes` from the budget, making room first if the policy allows.
    fn reserve(&self, bytes: u64, protect: Option<SessionId>) -> Result<(), StoreError> {
        for _ in 0..MAX_ROOM_ATTEMPTS {
            if self.budget.try_reserve(bytes) {
                return Ok(());
            }
            self.make_room(bytes, protect)?;
        }
        Err(self.full(bytes))
    }

    /// Applies the when-full policy for a write that needs `needed` bytes.
    /// Under reject, the expired sessions the sweeper has not reached yet
    /// are freed first: a store full of dead sessions is not full.
    fn make_room(&self, needed: u64, protect: Option<SessionId>) -> Result<(), StoreError> {
        let limit = self.budget.limit().unwrap_or(u64::MAX);
        if needed > limit {
            return Err(self.full(needed));
        }
        let has_room = || limit - self.budget.used().min(limit) >= needed;
        if self.config.when_full == WhenFull::Reject {
            if self.sweep_for_room(has_room) {
                return Ok(());
            }
            return Err(self.full(needed));
        }
        while !has_room() {
            if !self.evict_one(protect) {
                return Err(self.full(needed));
            }
        }
        Ok(())
    }

    /// Sweeps out expired sessions for a write that found no room, pass
    /// after pass while there is still no room, up to one look at every
    /// session or [`SWEEP_FOR_ROOM_MAX_SESSIONS`] of them, whichever is
    /// fewer (a store full of dead sessions takes the write, whatever its
    /// number of shards and wherever its dead sessions sit; the next sweep
    /// goes on where one stopped); whether there is room now. One such
    /// sweep runs at a time, and a write that waited for another's finds
    /// the room it made. After a sweep that found no room, none runs for
    /// ten times as long as it took, and at least
    /// [`SWEEP_FOR_ROOM_EVERY_MS`], so a flood of refused writes into a
    /// large full store costs little.
    fn sweep_for_room(&self, has_room: impl Fn() -> bool) -> bool {
        let mut no_sweep_until = self.no_sweep_for_room_until_ms.lock();
        if has_room() {
            return true;
        }
        let now = self.now_ms();
        if no_sweep_until.is_some_and(|until| now < until) {
            return false;
        }
        let started = std::time::Instant::now();
        let per_pass = SWEEP_FOR_ROOM_PER_SHARD * self.shards.len();
        let sessions = self.counters.sessions.load(Ordering::Relaxed) as usize;
        let examined = sessions.min(SWEEP_FOR_ROOM_MAX_SESSIONS);
        for _ in 0..examined.div_ceil(per_pass).max(1) {
            self.sweep(SWEEP_FOR_ROOM_PER_SHARD);
            if has_room() {
                *no_sweep_until = None;
                return true;
            }
        }
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let pause = took_ms.saturating_mul(10).max(SWEEP_FOR_ROOM_EVERY_MS);
        *no_sweep_until = Some(now.saturating_add(pause));
        // Room others made meanwhile (a delete) counts.
        has_room()
    }

    /// A write refused for room, counted in `rejections`.
    fn full(&self, needed: u64) -> StoreError {
        self.counters.rejections.fetch_add(1, Ordering::Relaxed);
        self.short_of_room(needed)
    }

    /// A try that found no room, not counted: its caller makes room and
    /// tries again, or counts the refusal with [`Store::full`].
    fn short_of_room(&self, needed: u64) -> StoreError {
        StoreError::Full {
            needed,
            limit: self.budget.limit().unwrap_or(u64::MAX),
        }
    }

    /// Evicts the least recently used of a random sample of sessions
    /// (expired ones first): [`EVICTION_SAMPLES`] of them, taken from the
    /// shards in turn from a random one, so a sparse store (a few large
    /// sessions over many shards) samples every session it holds. Returns
    /// false when nothing can be evicted.
    fn evict_one(&self, protect: Option<SessionId>) -> bool {
        let now = self.now_ms();
        let shards = self.shards.len();
        let first = fastrand::usize(..shards);
        let mut oldest: Option<(usize, SessionId, u64)> = None;
        let mut sampled = 0;
        for index in (first..shards).chain(0..first) {
            let shard = self.shards[index].lock();
            for (id, priority) in shard.sample(protect, now, EVICTION_SAMPLES - sampled) {
                sampled += 1;
                if oldest.is_none_or(|(_, _, least)| priority < least) {
                    oldest = Some((index, id, priority));
                }
            }
            if sampled >= EVICTION_SAMPLES {
                break;
            }
        }
        let Some((index, id, _)) = oldest else {
            return false;
        };
        let mut shard = self.shards[index].lock();
        if let Some(record) = shard.sessions.swap_take(&id) {
            let why = if record.is_expired(now) {
                Removal::Expired
            } else {
                Removal::Evicted
            };
            self.forget(&record, why);
        }
        true
    }
}

#[cfg(test)]
mod tests;
