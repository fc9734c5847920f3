//! The sessions with a write acknowledged from memory that is not in Redis
//! yet (write-behind mode): for them the node's memory is the only place
//! the newest version lives, so a cache clear must not drop them, and a
//! read that misses memory (the copy evicted, or dropped by another node's
//! invalidation) is answered from the queue, not from an older version in
//! Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use sessiond_proto::{SessionId, UserName};
use tokio::sync::Notify;

use crate::store::Session;

/// The latest change of a session still queued for Redis.
#[derive(Debug, Clone)]
pub enum Latest {
    /// The session as written.
    Written(Session),
    /// Deleted: Redis may still hold the session.
    Deleted,
}

/// A session's changes not yet shipped.
#[derive(Debug)]
struct Pending {
    /// Their places in the order changes were queued in, oldest first.
    seqs: VecDeque<u64>,
    latest: Latest,
    /// The session's user, if it has one and the node knew it.
    user: Option<UserName>,
}

/// How long a step that goes to Redis directly waits for this node's
/// queued writes to be shipped.
pub const CATCH_UP: Duration = Duration::from_secs(2);

/// Session ids with their changes queued and not yet shipped, and the
/// latest of them.
#[derive(Debug, Default)]
pub struct QueuedIds {
    inner: Mutex<Inner>,
    /// Told each time changes shipped.
    shipped: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<SessionId, Pending>,
    /// The ids in `entries` of each user the node knew, so that a wait for
    /// a user's changes looks at that user's sessions only.
    by_user: HashMap<UserName, HashSet<SessionId>>,
}

impl QueuedIds {
    /// The change of `id` queued as number `seq` (higher than every one
    /// before); `latest` is what it leaves, `user` the session's user
    /// (kept from an earlier change when `None`). Returns whether the
    /// change queued before it holds the very data it holds (the same
    /// buffer: a touch's), which is then not held twice.
    pub fn queued(&self, id: SessionId, seq: u64, latest: Latest, user: Option<UserName>) -> bool {
        let mut inner = self.inner.lock();
        let Inner { entries, by_user } = &mut *inner;
        let pending = entries.entry(id).or_insert_with(|| Pending {
            seqs: VecDeque::new(),
            latest: Latest::Deleted,
            user: None,
        });
        pending.seqs.push_back(seq);
        let same_data = matches!((&pending.latest, &latest),
            (Latest::Written(before), Latest::Written(now))
                if before.data.as_ptr() == now.data.as_ptr() && before.data.len() == now.data.len());
        pending.latest = latest;
        if let Some(user) = user.filter(|user| pending.user.as_ref() != Some(user)) {
            if let Some(before) = pending.user.replace(user.clone()) {
                forget(by_user, &before, &id);
            }
            by_user.entry(user).or_default().insert(id);
        }
        same_data
    }

    /// Changes of `ids` (one per entry) reached Redis, the oldest of each
    /// session's first.
    pub fn shipped(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut inner = self.inner.lock();
        let Inner { entries, by_user } = &mut *inner;
        for id in ids {
            let Some(pending) = entries.get_mut(&id) else {
                continue;
            };
            pending.seqs.pop_front();
            if pending.seqs.is_empty()
                && let Some(Pending {
                    user: Some(user), ..
                }) = entries.remove(&id)
            {
                forget(by_user, &user, &id);
            }
        }
        drop(inner);
        self.shipped.notify_waiters();
    }

    /// Waits (at most [`CATCH_UP`]) until no change of `id` is queued;
    /// whether none is. The caller holds the session's lock, so none can
    /// be queued meanwhile.
    pub async fn shipped_all_of(&self, id: &SessionId) -> bool {
        let wait = async {
            loop {
                let shipped = self.shipped.notified();
                tokio::pin!(shipped);
                shipped.as_mut().enable();
                if !self.contains(id) {
                    return;
                }
                shipped.await;
            }
        };
        tokio::time::timeout(CATCH_UP, wait).await.is_ok()
    }

    /// A later change of each of `ids` (one per entry) took the place of
    /// the session's oldest unshipped change, which failed to ship: the
    /// later one's number is retired and the oldest one's stays, since
    /// the change to ship now carries both (a wait for changes queued
    /// before the later one still waits for it).
    pub fn merged(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut inner = self.inner.lock();
        for id in ids {
            if let Some(pending) = inner.entries.get_mut(&id)
                && pending.seqs.len() > 1
            {
                pending.seqs.remove(1);
            }
        }
    }

    /// Whether a change of `id` is still queued.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.inner.lock().entries.contains_key(id)
    }

    /// Slides the expiry of `id`'s queued write at `version` to
    /// `expires_at_ms` if that is later: a read answered from the queue
    /// (memory no longer holds the copy) is a use too.
    pub fn slide(&self, id: &SessionId, version: u64, expires_at_ms: u64) {
        if let Some(Pending {
            latest: Latest::Written(session),
            ..
        }) = self.inner.lock().entries.get_mut(id)
            && session.version == version
        {
            session.expires_at_ms = session.expires_at_ms.max(expires_at_ms);
        }
    }

    /// The expiry of `id`'s latest queued write, if it is at `version`.
    pub fn expiry_of(&self, id: &SessionId, version: u64) -> Option<u64> {
        match &self.inner.lock().entries.get(id)?.latest {
            Latest::Written(session) if session.version == version => Some(session.expires_at_ms),
            _ => None,
        }
    }

    /// The user of `id` as its queued changes know it (`None` inside when
    /// they know none), if a change of it is queued.
    pub fn user_of(&self, id: &SessionId) -> Option<Option<UserName>> {
        self.inner
            .lock()
            .entries
            .get(id)
            .map(|pending| pending.user.clone())
    }

    /// Whether a change of `id` queued before number `seq` is unshipped.
    pub fn holds_before(&self, id: &SessionId, seq: u64) -> bool {
        self.inner
            .lock()
            .entries
            .get(id)
            .is_some_and(|pending| pending.is_before(seq))
    }

    /// Whether a change of one of `user`'s sessions queued before number
    /// `seq` is unshipped. A delete of a session whose user the node did
    /// not know counts for nobody: shipped late it cannot bring a session
    /// back.
    pub fn holds_user_before(&self, user: &UserName, seq: u64) -> bool {
        let inner = self.inner.lock();
        inner.by_user.get(user).is_some_and(|ids| {
            ids.iter().any(|id| {
                inner
                    .entries
                    .get(id)
                    .is_some_and(|pending| pending.is_before(seq))
            })
        })
    }

    /// The latest change of `id` still queued, if any.
    pub fn latest(&self, id: &SessionId) -> Option<Latest> {
        self.inner
            .lock()
            .entries
            .get(id)
            .map(|pending| pending.latest.clone())
    }
}

/// Drops `id` from `user`'s ids, and the user once none is left.
fn forget(by_user: &mut HashMap<UserName, HashSet<SessionId>>, user: &UserName, id: &SessionId) {
    if let Some(ids) = by_user.get_mut(user) {
        ids.remove(id);
        if ids.is_empty() {
            by_user.remove(user);
        }
    }
}

impl Pending {
    fn is_before(&self, seq: u64) -> bool {
        self.seqs.front().is_some_and(|&oldest| oldest < seq)
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
        queued.queued(id, 0, written(id, 1), None);
        queued.queued(id, 1, Latest::Deleted, None);
        assert!(matches!(queued.latest(&id), Some(Latest::Deleted)));
        queued.shipped([id, other]);
        assert!(queued.contains(&id), "one change of it is still queued");
        assert!(!queued.contains(&other));
        queued.shipped([id]);
        assert!(!queued.contains(&id));
        assert!(queued.latest(&id).is_none());
    }

    #[test]
    fn a_wait_counts_only_changes_queued_before_it() {
        let queued = QueuedIds::default();
        let (alice, bob) = (
            UserName::parse("alice").unwrap(),
            UserName::parse("bob").unwrap(),
        );
        let (hers, his, unknown) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        queued.queued(hers, 0, written(hers, 1), Some(alice.clone()));
        queued.queued(his, 1, written(his, 1), Some(bob.clone()));
        queued.queued(unknown, 2, Latest::Deleted, None);
        // Her delete keeps the user her write named.
        queued.queued(hers, 3, Latest::Deleted, None);
        assert!(queued.holds_user_before(&alice, 4));
        assert!(
            !queued.holds_user_before(&alice, 0),
            "queued after the wait began"
        );
        queued.shipped([hers]);
        assert!(
            !queued.holds_user_before(&alice, 3),
            "only her later change is left"
        );
        assert!(queued.holds_user_before(&alice, 4));
        assert!(queued.holds_before(&hers, 4));
        assert!(!queued.holds_before(&hers, 3));
        queued.shipped([hers]);
        assert!(!queued.holds_user_before(&alice, u64::MAX));
        assert!(queued.holds_user_before(&bob, 2));
        assert!(queued.holds_before(&unknown, 3));
    }

    /// A failed change that a later one replaced in the retry is still
    /// waited for: the place kept is the oldest change's.
    #[test]
    fn a_merged_change_keeps_the_oldest_place() {
        let queued = QueuedIds::default();
        let id = SessionId::random();
        queued.queued(id, 0, written(id, 2), None);
        queued.queued(id, 1, written(id, 3), None);
        queued.merged([id]);
        assert!(
            queued.holds_before(&id, 1),
            "the write queued first is unshipped"
        );
        queued.shipped([id]);
        assert!(!queued.contains(&id));
    }

    /// The per-user index follows a session to its new user and forgets
    /// it once shipped: nothing of a shipped queue stays behind.
    #[test]
    fn the_user_index_follows_sessions_and_empties_with_the_queue() {
        let queued = QueuedIds::default();
        let (alice, bob) = (
            UserName::parse("alice").unwrap(),
            UserName::parse("bob").unwrap(),
        );
        let (moved, kept) = (SessionId::random(), SessionId::random());
        queued.queued(moved, 0, written(moved, 1), Some(alice.clone()));
        queued.queued(kept, 1, written(kept, 1), Some(alice.clone()));
        queued.queued(moved, 2, written(moved, 2), Some(bob.clone()));
        queued.shipped([kept]);
        assert!(
            !queued.holds_user_before(&alice, u64::MAX),
            "her one session left moved to bob"
        );
        assert!(queued.holds_user_before(&bob, 1));
        queued.shipped([moved, moved]);
        assert!(!queued.holds_user_before(&bob, u64::MAX));
        let inner = queued.inner.lock();
        assert!(
            inner.entries.is_empty() && inner.by_user.is_empty(),
            "{inner:?}"
        );
    }
}
