//! The sessions with a write acknowledged from memory that is not in Redis
//! yet (write-behind mode): for them the node's memory is the only place
//! the newest version lives, so a cache clear must not drop them, and a
//! read that misses memory (the copy evicted, or dropped by another node's
//! invalidation) is answered from the queue, not from an older version in
//! Redis.

use std::collections::HashMap;

use parking_lot::Mutex;
use sessiond_proto::SessionId;

use crate::store::Session;

/// The latest change of a session still queued for Redis.
#[derive(Debug, Clone)]
pub enum Latest {
    /// The session as written.
    Written(Session),
    /// Deleted: Redis may still hold the session.
    Deleted,
}

/// Session ids with their count of changes queued and not yet shipped,
/// and the latest of them.
#[derive(Debug, Default)]
pub struct QueuedIds {
    entries: Mutex<HashMap<SessionId, (u32, Latest)>>,
}

impl QueuedIds {
    /// A change of `id` was queued; `latest` is what it leaves.
    pub fn queued(&self, id: SessionId, latest: Latest) {
        let mut entries = self.entries.lock();
        let (count, held) = entries.entry(id).or_insert((0, Latest::Deleted));
        *count += 1;
        *held = latest;
    }

    /// Changes of `ids` (one per entry) reached Redis.
    pub fn shipped(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut entries = self.entries.lock();
        for id in ids {
            if let Some((count, _)) = entries.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    entries.remove(&id);
                }
            }
        }
    }

    /// Whether a change of `id` is still queued.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.entries.lock().contains_key(id)
    }

    /// The latest change of `id` still queued, if any.
    pub fn latest(&self, id: &SessionId) -> Option<Latest> {
        self.entries
            .lock()
            .get(id)
            .map(|(_, latest)| latest.clone())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::WriteLog;

    fn written(id: SessionId, version: u64) -> Latest {
        Latest::Written(Session {
            id,
            data: Bytes::from_static(b"{}"),
            version,
            created_at_ms: 0,
            updated_at_ms: 0,
            ttl_ms: 60_000,
            expires_at_ms: 60_000,
            writes: WriteLog::default(),
            user: None,
        })
    }

    #[test]
    fn an_id_stays_until_each_of_its_changes_shipped() {
        let queued = QueuedIds::default();
        let (id, other) = (SessionId::random(), SessionId::random());
        queued.queued(id, written(id, 1));
        queued.queued(id, Latest::Deleted);
        assert!(matches!(queued.latest(&id), Some(Latest::Deleted)));
        queued.shipped([id, other]);
        assert!(queued.contains(&id), "one change of it is still queued");
        assert!(!queued.contains(&other));
        queued.shipped([id]);
        assert!(!queued.contains(&id));
        assert!(queued.latest(&id).is_none());
    }
}
