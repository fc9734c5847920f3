//! The sessions with a write acknowledged from memory that is not in Redis
//! yet (write-behind mode): for them the node's memory is the only place
//! the newest version lives, so a cache clear must not drop them.

use std::collections::HashMap;

use parking_lot::Mutex;
use sessiond_proto::SessionId;

/// Session ids with their count of changes queued and not yet shipped,
/// and whether the latest of them is a delete.
#[derive(Debug, Default)]
pub struct QueuedIds {
    counts: Mutex<HashMap<SessionId, (u32, bool)>>,
}

impl QueuedIds {
    /// A change of `id` was queued (`deleted`: a delete).
    pub fn queued(&self, id: SessionId, deleted: bool) {
        let mut counts = self.counts.lock();
        let entry = counts.entry(id).or_default();
        *entry = (entry.0 + 1, deleted);
    }

    /// Changes of `ids` (one per entry) reached Redis.
    pub fn shipped(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut counts = self.counts.lock();
        for id in ids {
            if let Some((count, _)) = counts.get_mut(&id) {
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

    /// Whether the latest change of `id` still queued is a delete: Redis
    /// may still hold the session this node deleted.
    pub fn deleted(&self, id: &SessionId) -> bool {
        self.counts
            .lock()
            .get(id)
            .is_some_and(|&(_, deleted)| deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_stays_until_each_of_its_changes_shipped() {
        let queued = QueuedIds::default();
        let (id, other) = (SessionId::random(), SessionId::random());
        queued.queued(id, false);
        queued.queued(id, true);
        assert!(queued.deleted(&id), "the latest change is a delete");
        queued.shipped([id, other]);
        assert!(queued.contains(&id), "one change of it is still queued");
        assert!(!queued.contains(&other));
        queued.shipped([id]);
        assert!(!queued.contains(&id));
        assert!(!queued.deleted(&id));
    }
}
