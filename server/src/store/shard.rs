//! One independently locked slice of the keyspace.

use sessiond_proto::SessionId;

use super::record::Record;
use super::session_set::SessionSet;

/// What a sweep pass freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    pub sessions: u64,
    pub bytes: u64,
}

/// The sessions whose ids hash to this shard. The set gives O(1) lookup
/// plus positional access, which the sweeper's cursor and the eviction
/// sampler both need.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub sessions: SessionSet,
    sweep_cursor: usize,
}

impl Shard {
    /// Up to `want` sessions of this shard other than `protect`, with their
    /// eviction priority (expired sessions first, then least recently
    /// used): every one when the shard holds at most `want`, else `want`
    /// distinct ones spread evenly over the shard from a random start (its
    /// order roughly follows when sessions came, so every age is sampled).
    pub fn sample(
        &self,
        protect: Option<SessionId>,
        now_ms: u64,
        want: usize,
    ) -> impl Iterator<Item = (SessionId, u64)> + '_ {
        let len = self.sessions.len();
        let taken = len.min(want);
        let start = fastrand::usize(..len.max(1));
        (0..taken)
            .map(move |step| (start + step * len / taken) % len)
            .filter_map(|index| self.sessions.get_index(index))
            .filter(move |record| Some(record.id()) != protect)
            .map(move |record| {
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
            let expired = self
                .sessions
                .get_index(self.sweep_cursor)
                .is_some_and(|record| record.is_expired(now_ms));
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
