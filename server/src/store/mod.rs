//! The sharded in-memory session store: versions, sliding expiry with an
//! optional absolute cap, a memory bound with an explicit when-full policy,
//! and a sweeper that frees expired sessions in bounded steps.
//!
//! A pure data structure: no HTTP, no Redis, no runtime. Time comes from an
//! injected [`Clock`].

mod budget;
mod clock;
mod shard;
mod write_log;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use sessiond_proto::SessionId;
use sessiond_proto::wire::WriteTag;

pub use budget::MemoryBudget;
pub use clock::{Clock, ManualClock, SystemClock};
use shard::{Shard, Slot};
pub use write_log::{CLOCK_SKEW_MS, Verdict, WRITE_LOG_LEN, WriteLog};

/// Bytes charged per session on top of its data: the id, the session's
/// fields, the map's index and the data buffer's header.
pub const ENTRY_OVERHEAD: u64 = (std::mem::size_of::<SessionId>()
    + std::mem::size_of::<Slot>()
    + 2 * std::mem::size_of::<usize>()
    + 48) as u64;

/// How many sessions eviction samples to pick the least recently used one.
const EVICTION_SAMPLES: usize = 16;
/// How often a write retries after making room before it gives up.
const MAX_ROOM_ATTEMPTS: usize = 8;

/// A session as the store hands it out: a snapshot, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// The session's data (JSON text).
    pub data: Bytes,
    /// 1 on create, +1 on every write.
    pub version: u64,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Time of the last write (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// Idle TTL: every use pushes the expiry to now + this.
    pub ttl_ms: u64,
    /// When the session expires unless used (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The tags of the writes that produced the latest versions.
    pub writes: WriteLog,
}

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            max_memory: None,
            when_full: WhenFull::Reject,
            max_lifetime_ms: None,
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
    /// A re-sent write whose first attempt may or may not have been applied.
    #[error(
        "this write was sent again after its answer was lost, and the session has changed \
         too much since to tell whether the first attempt was applied; read it to find out"
    )]
    Indeterminate,
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
    Expired,
    Evicted,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a session of `data_len` bytes of data is charged.
pub fn charge_of(data_len: usize) -> u64 {
    ENTRY_OVERHEAD + data_len as u64
}

fn charge(slot: &Slot) -> u64 {
    charge_of(slot.session.data.len())
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        let count = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let shards = (0..count).map(|_| PaddedShard::default()).collect();
        Self {
            shards,
            shard_mask: count as u64 - 1,
            budget: MemoryBudget::new(config.max_memory),
            clock,
            config,
            counters: Counters::default(),
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

    /// A new session (version 1, created now by the write `tag`) without
    /// storing it.
    pub fn new_session(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
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
        }
    }

    /// Creates a session under the fresh id `id`, version 1, by the write
    /// `tag`. If a live session already has the id (a create completed
    /// twice), that session is returned and nothing changes.
    pub fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
    ) -> Result<Session, StoreError> {
        let charge = charge_of(data.len());
        self.reserve(charge, None)?;
        let session = self.new_session(id, data, ttl_ms, tag);
        let now = session.created_at_ms;
        let mut shard = self.shard(&id).lock();
        if let Ok(existing) = self.live_slot(&mut shard, &id, now) {
            let existing = existing.session.clone();
            drop(shard);
            self.budget.release(charge);
            return Ok(existing);
        }
        shard.map.insert(
            id,
            Slot {
                session: session.clone(),
                last_access_ms: now,
            },
        );
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// Holds a copy of a session that Redis or another node has (same id,
    /// version and times), replacing this store's older copy. For a cache:
    /// fails with [`StoreError::Full`] when there is no room.
    pub fn insert_copy(&self, session: Session) -> Result<(), StoreError> {
        self.reserve(charge_of(session.data.len()), Some(session.id))?;
        let now = self.now_ms();
        let id = session.id;
        let slot = Slot {
            session,
            last_access_ms: now,
        };
        let previous = self.shard(&id).lock().map.insert(id, slot);
        match previous {
            Some(old) => self.budget.release(charge(&old)),
            None => {
                self.counters.sessions.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Drops every session: a cache that can no longer be trusted. Returns
    /// how many were dropped.
    pub fn clear(&self) -> u64 {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let slots = std::mem::take(&mut shard.lock().map);
            for slot in slots.values() {
                self.budget.release(charge(slot));
            }
            dropped += slots.len() as u64;
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
        let now = self.now_ms();
        let mut shard = self.shard(id).lock();
        let slot = self.live_slot(&mut shard, id, now)?;
        let previous = slot.session.expires_at_ms;
        slot.session.expires_at_ms =
            self.expiry(now, slot.session.ttl_ms, slot.session.created_at_ms);
        slot.last_access_ms = now;
        Ok((slot.session.clone(), previous))
    }

    /// Reads a session without touching its expiry or recency.
    pub fn peek(&self, id: &SessionId) -> Option<Session> {
        let now = self.now_ms();
        let shard = self.shard(id).lock();
        shard
            .map
            .get(id)
            .filter(|slot| !slot.is_expired(now))
            .map(|slot| slot.session.clone())
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
        mut compute: impl FnMut(&Bytes) -> Result<Bytes, E>,
    ) -> Result<Session, E> {
        let mut needed = 0;
        for _ in 0..MAX_ROOM_ATTEMPTS {
            let now = self.now_ms();
            let mut shard = self.shard(id).lock();
            let slot = self.live_slot(&mut shard, id, now)?;
            match slot
                .session
                .writes
                .judge(slot.session.version, write, expected, now)
            {
                Verdict::Apply => {}
                Verdict::Replay { version } => {
                    return Ok(Session {
                        version,
                        ..slot.session.clone()
                    });
                }
                Verdict::Indeterminate => return Err(StoreError::Indeterminate.into()),
            }
            if let Some(expected) = expected.filter(|&v| v != slot.session.version) {
                return Err(StoreError::VersionMismatch {
                    expected,
                    current: slot.session.version,
                }
                .into());
            }
            let data = compute(&slot.session.data)?;
            let (old, new) = (charge(slot), charge_of(data.len()));
            if new > old && !self.budget.try_reserve(new - old) {
                drop(shard);
                needed = new - old;
                self.make_room(needed, Some(*id))?;
                continue;
            }
            if old > new {
                self.budget.release(old - new);
            }
            let session = &mut slot.session;
            session.data = data;
            session.version += 1;
            session
                .writes
                .record(write.map(|write| write.id), session.version, now);
            session.updated_at_ms = now;
            if let Some(ttl) = ttl_ms {
                session.ttl_ms = ttl;
            }
            session.expires_at_ms = self.expiry(now, session.ttl_ms, session.created_at_ms);
            slot.last_access_ms = now;
            return Ok(slot.session.clone());
        }
        Err(self.full(needed).into())
    }

    /// Extends a session's expiry (optionally with a new idle TTL) without
    /// changing its data or version.
    pub fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, StoreError> {
        let now = self.now_ms();
        let mut shard = self.shard(id).lock();
        let slot = self.live_slot(&mut shard, id, now)?;
        if let Some(ttl) = ttl_ms {
            slot.session.ttl_ms = ttl;
        }
        slot.session.expires_at_ms =
            self.expiry(now, slot.session.ttl_ms, slot.session.created_at_ms);
        slot.last_access_ms = now;
        Ok(slot.session.clone())
    }

    /// Removes a session; returns whether a live one was there.
    pub fn delete(&self, id: &SessionId) -> bool {
        let now = self.now_ms();
        let removed = self.shard(id).lock().map.swap_remove(id);
        match removed {
            Some(slot) if slot.is_expired(now) => {
                self.forget(&slot, Removal::Expired);
                false
            }
            Some(slot) => {
                self.forget(&slot, Removal::Deleted);
                true
            }
            None => false,
        }
    }

    /// Moves a session to the fresh id `new_id`; the old id is gone at
    /// once. Data, version and creation time are kept (so `--max-lifetime`
    /// still counts from the first login), the expiry is refreshed.
    pub fn rotate(&self, id: &SessionId, new_id: SessionId) -> Result<Session, StoreError> {
        let now = self.now_ms();
        let (from, to) = (self.shard_index(id), self.shard_index(&new_id));
        let moved = |mut slot: Slot| {
            slot.session.id = new_id;
            slot.session.expires_at_ms =
                self.expiry(now, slot.session.ttl_ms, slot.session.created_at_ms);
            slot.last_access_ms = now;
            slot
        };
        let session = if from == to {
            let mut shard = self.shards[from].lock();
            let slot = moved(self.take_live(&mut shard, id, now)?);
            let session = slot.session.clone();
            shard.map.insert(new_id, slot);
            session
        } else {
            // Both shards are locked, lower index first, so the move is
            // atomic and cannot deadlock with another two-shard move.
            let (mut low, mut high) = (
                self.shards[from.min(to)].lock(),
                self.shards[from.max(to)].lock(),
            );
            let (source, target) = if from < to {
                (&mut low, &mut high)
            } else {
                (&mut high, &mut low)
            };
            let slot = moved(self.take_live(source, id, now)?);
            let session = slot.session.clone();
            target.map.insert(new_id, slot);
            session
        };
        Ok(session)
    }

    /// Frees expired sessions, examining at most `per_shard` sessions in
    /// each shard. Returns how many were freed.
    pub fn sweep(&self, per_shard: usize) -> u64 {
        let now = self.now_ms();
        let mut freed = 0;
        for shard in self.shards.iter() {
            let swept = shard.lock().sweep(now, per_shard, charge);
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
        }
    }

    /// The live slot of `id`; an expired one is removed on the way.
    fn live_slot<'a>(
        &self,
        shard: &'a mut Shard,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<&'a mut Slot, StoreError> {
        let index = shard.map.get_index_of(id).ok_or(StoreError::NotFound)?;
        if shard.map[index].is_expired(now_ms) {
            if let Some((_, slot)) = shard.map.swap_remove_index(index) {
                self.forget(&slot, Removal::Expired);
            }
            return Err(StoreError::NotFound);
        }
        Ok(&mut shard.map[index])
    }

    /// Removes and returns the live slot of `id`, without releasing its bytes.
    fn take_live(
        &self,
        shard: &mut Shard,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<Slot, StoreError> {
        let slot = shard.map.swap_remove(id).ok_or(StoreError::NotFound)?;
        if slot.is_expired(now_ms) {
            self.forget(&slot, Removal::Expired);
            return Err(StoreError::NotFound);
        }
        Ok(slot)
    }

    fn forget(&self, slot: &Slot, why: Removal) {
        self.budget.release(charge(slot));
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
        let counter = match why {
            Removal::Deleted => return,
            Removal::Expired => &self.counters.expirations,
            Removal::Evicted => &self.counters.evictions,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
    fn make_room(&self, needed: u64, protect: Option<SessionId>) -> Result<(), StoreError> {
        let limit = self.budget.limit().unwrap_or(u64::MAX);
        if self.config.when_full == WhenFull::Reject || needed > limit {
            return Err(self.full(needed));
        }
        while limit - self.budget.used().min(limit) < needed {
            if !self.evict_one(protect) {
                return Err(self.full(needed));
            }
        }
        Ok(())
    }

    fn full(&self, needed: u64) -> StoreError {
        self.counters.rejections.fetch_add(1, Ordering::Relaxed);
        StoreError::Full {
            needed,
            limit: self.budget.limit().unwrap_or(u64::MAX),
        }
    }

    /// Evicts the least recently used of a random sample of sessions
    /// (expired ones first). Returns false when nothing can be evicted.
    fn evict_one(&self, protect: Option<SessionId>) -> bool {
        let now = self.now_ms();
        let sample_of = |index: usize| {
            self.shards[index]
                .lock()
                .sample(protect, now)
                .map(|(id, priority)| (index, id, priority))
        };
        let mut oldest = (0..EVICTION_SAMPLES)
            .filter_map(|_| sample_of(fastrand::usize(..self.shards.len())))
            .min_by_key(|&(_, _, priority)| priority);
        if oldest.is_none() {
            // A sparse store: the random picks all hit empty shards.
            oldest = (0..self.shards.len()).find_map(sample_of);
        }
        let Some((index, id, _)) = oldest else {
            return false;
        };
        if let Some(slot) = self.shards[index].lock().map.swap_remove(&id) {
            let why = if slot.is_expired(now) {
                Removal::Expired
            } else {
                Removal::Evicted
            };
            self.forget(&slot, why);
        }
        true
    }
}

#[cfg(test)]
mod tests;
