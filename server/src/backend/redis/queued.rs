//! The sessions with a write acknowledged from memory that is not in Redis
//! yet (write-behind mode): for them the node's memory is the only place
//! the newest version lives, so a cache clear must not drop them.

use std::collections::HashMap;

use parking_lot::Mutex;
use sessiond_proto::SessionId;

/// Session ids with their count of changes queued and not yet shipped.
#[derive(Debug, Default)]
pub struct QueuedIds {
    counts: Mutex<HashMap<SessionId, u32>>,
}

impl QueuedIds {
    /// A change of `id` was queued.
    pub fn queued(&self, id: SessionId) {
        *self.counts.lock().entry(id).or_default() += 1;
    }

    /// Changes of `ids` (one per entry) reached Redis.
    pub fn shipped(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut counts = self.counts.lock();
        for id in ids {
            if let Some(count) = counts.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&id);
                }
            }
        }
    }

    /// Whether a change of `id` is still queued.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.counts.lock().contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_stays_until_each_of_its_changes_shipped() {
        let queued = QueuedIds::default();
        let (id, other) = (SessionId::random(), SessionId::random());
        queued.queued(id);
        queued.queued(id);
        queued.shipped([id, other]);
        assert!(queued.contains(&id), "one change of it is still queued");
        assert!(!queued.contains(&other));
        queued.shipped([id]);
        assert!(!queued.contains(&id));
    }
}
