//! One independently locked slice of the keyspace.

use std::hash::{BuildHasherDefault, Hasher};

use indexmap::IndexMap;
use sessiond_proto::SessionId;

use super::session::Session;

/// A session as held in a shard, with what eviction needs to know.
#[derive(Debug)]
pub(super) struct Slot {
    pub session: Session,
    pub last_access_ms: u64,
}

impl Slot {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.session.expires_at_ms <= now_ms
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

/// The map of one shard.
pub(super) type SessionMap = IndexMap<SessionId, Slot, BuildHasherDefault<IdHasher>>;

/// What a sweep pass freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    pub sessions: u64,
    pub bytes: u64,
}

/// The sessions whose ids hash to this shard. An `IndexMap` gives O(1)
/// lookup plus positional access, which the sweeper's cursor and the
/// eviction sampler both need.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub map: SessionMap,
    sweep_cursor: usize,
}

impl Shard {
    /// A random session of this shard other than `protect`, with its
    /// eviction priority (expired sessions first, then least recently used).
    pub fn sample(&self, protect: Option<SessionId>, now_ms: u64) -> Option<(SessionId, u64)> {
        let len = self.map.len();
        if len == 0 {
            return None;
        }
        let start = fastrand::usize(..len);
        (0..len.min(2))
            .map(|step| (start + step) % len)
            .filter_map(|index| self.map.get_index(index))
            .find(|(id, _)| Some(**id) != protect)
            .map(|(id, slot)| {
                let priority = if slot.is_expired(now_ms) {
                    0
                } else {
                    slot.last_access_ms
                };
                (*id, priority)
            })
    }

    /// Examines at most `budget` sessions from where the last pass stopped
    /// and removes the expired ones; `charge` says what each one weighed.
    pub fn sweep(&mut self, now_ms: u64, budget: usize, charge: impl Fn(&Slot) -> u64) -> Swept {
        let mut swept = Swept::default();
        for _ in 0..budget {
            if self.map.is_empty() {
                break;
            }
            if self.sweep_cursor >= self.map.len() {
                self.sweep_cursor = 0;
            }
            let expired = self.map[self.sweep_cursor].is_expired(now_ms);
            if expired {
                // The last entry moves into the cursor's place and is examined next.
                if let Some((_, slot)) = self.map.swap_remove_index(self.sweep_cursor) {
                    swept.sessions += 1;
                    swept.bytes += charge(&slot);
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
        let len = self.map.len();
        if self.map.capacity() > 1024 && self.map.capacity() > len * 4 {
            self.map.shrink_to(len * 2);
        }
    }
}
