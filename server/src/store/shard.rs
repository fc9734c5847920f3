//! One independently locked slice of the keyspace.

use std::hash::{BuildHasherDefault, Hash, Hasher};

use indexmap::{Equivalent, IndexSet};
use sessiond_proto::SessionId;

use super::record::Record;

// A shard finds a record by its session's id (it hashes and compares as
// that id), so the id is stored once, not again as a map key.

impl Hash for Record {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.id_bytes());
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.id_bytes() == other.id_bytes()
    }
}

impl Eq for Record {}

impl Equivalent<Record> for SessionId {
    fn equivalent(&self, record: &Record) -> bool {
        self.as_bytes() == record.id_bytes()
    }
}

/// Hashes a session id by taking 8 of its bytes: ids are 128 bits from the
/// OS CSPRNG and only server-made ids are ever inserted, so they need no
/// keyed hash (clients cannot choose colliding keys). The shard is picked
/// from the other 8 bytes ([`SessionId::spread`]), so the two stay
/// independent.
#[derive(Debug, Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.rchunks(8).take(1) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The sessions of one shard, looked up by id.
pub(super) type SessionSet = IndexSet<Record, BuildHasherDefault<IdHasher>>;

/// What a sweep pass freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    pub sessions: u64,
    pub bytes: u64,
}

/// The sessions whose ids hash to this shard. An `IndexSet` gives O(1)
/// lookup plus positional access, which the sweeper's cursor and the
/// eviction sampler both need.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub sessions: SessionSet,
    sweep_cursor: usize,
}

impl Shard {
    /// A random session of this shard other than `protect`, with its
    /// eviction priority (expired sessions first, then least recently used).
    pub fn sample(&self, protect: Option<SessionId>, now_ms: u64) -> Option<(SessionId, u64)> {
        let len = self.sessions.len();
        if len == 0 {
            return None;
        }
        let start = fastrand::usize(..len);
        (0..len.min(2))
            .map(|step| (start + step) % len)
            .filter_map(|index| self.sessions.get_index(index))
            .find(|record| Some(record.id()) != protect)
            .map(|record| {
                let priority = if record.is_expired(now_ms) {
                    0
                } else {
                    record.last_use_ms()
                };
                (record.id(), priority)
            })
    }

    /// Examines at most `budget` sessions (each at most once) from where
    /// the last pass stopped and removes the expired ones; `charge` says
    /// what each one weighed.
    pub fn sweep(&mut self, now_ms: u64, budget: usize, charge: impl Fn(&Record) -> u64) -> Swept {
        let mut swept = Swept::default();
        for _ in 0..budget.min(self.sessions.len()) {
            if self.sessions.is_empty() {
                break;
            }
            if self.sweep_cursor >= self.sessions.len() {
                self.sweep_cursor = 0;
            }
            let expired = self.sessions[self.sweep_cursor].is_expired(now_ms);
            if expired {
                // The last entry moves into the cursor's place and is examined next.
                if let Some(record) = self.sessions.swap_remove_index(self.sweep_cursor) {
                    swept.sessions += 1;
                    swept.bytes += charge(&record);
                }
            } else {
                self.sweep_cursor += 1;
            }
        }
        self.release_spare_capacity();
        swept
    }

    /// Gives memory back after a shard shrank a lot, so the process tracks
    /// what sessions use rather than its high-water mark.
    fn release_spare_capacity(&mut self) {
        let len = self.sessions.len();
        if self.sessions.capacity() > 1024 && self.sessions.capacity() > len * 4 {
            self.sessions.shrink_to(len * 2);
        }
    }
}
