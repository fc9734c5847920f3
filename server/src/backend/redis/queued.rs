//! The sessions with a write acknowledged from memory that is not in Redis
//! yet (write-behind mode): for them the node's memory is the only place
//! the newest version lives, so a cache clear must not drop them, and a
//! read that misses memory (the copy evicted, or dropped by another node's
//! invalidation) is answered from the queue, not from an older version in
//! Redis.

use std::collections::HashMap;

use parking_lot::Mutex;
use sessiond_proto::{SessionId, UserName};

use crate::store::Session;

/// The latest change of a session still queued for Redis.
#[derive(Debug, Clone)]
pub enum Latest {
    /// The session as written.
    Written(Session),
    /// Deleted: Redis may still hold the session.
    Deleted,
}

/// Whose session a queued change is, as far as this node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// A session without a user.
    Nobody,
    /// A session of this user.
    User(UserName),
    /// A delete of a session this node's memory did not hold: it may be
    /// any user's.
    Unknown,
}

impl Whose {
    /// Whose `session` is.
    pub fn of(session: &Session) -> Self {
        session.user.clone().map_or(Self::Nobody, Self::User)
    }
}

/// Session ids with their count of changes queued and not yet shipped,
/// and the latest of them; and, per user, how many of those sessions are
/// the user's.
#[derive(Debug, Default)]
pub struct QueuedIds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<SessionId, Entry>,
    /// Sessions in `entries` per user.
    users: HashMap<UserName, u32>,
    /// Sessions in `entries` whose user is unknown.
    unknown: u32,
}

#[derive(Debug)]
struct Entry {
    count: u32,
    latest: Latest,
    whose: Whose,
}

impl Inner {
    fn count(&mut self, whose: &Whose, up: bool) {
        let count = match whose {
            Whose::Nobody => return,
            Whose::Unknown => &mut self.unknown,
            Whose::User(user) => self.users.entry(user.clone()).or_default(),
        };
        if up {
            *count += 1;
        } else {
            *count -= 1;
        }
        if let Whose::User(user) = whose
            && *count == 0
        {
            self.users.remove(user);
        }
    }
}

impl QueuedIds {
    /// A change of `id`, a session of `whose`, was queued; `latest` is
    /// what it leaves.
    pub fn queued(&self, id: SessionId, latest: Latest, whose: Whose) {
        let mut inner = self.inner.lock();
        let before = match inner.entries.get_mut(&id) {
            Some(entry) => {
                entry.count += 1;
                entry.latest = latest;
                // A session keeps its user; what is known stays known.
                if whose == Whose::Unknown || entry.whose == whose {
                    return;
                }
                Some(std::mem::replace(&mut entry.whose, whose.clone()))
            }
            None => {
                let entry = Entry {
                    count: 1,
                    latest,
                    whose: whose.clone(),
                };
                inner.entries.insert(id, entry);
                None
            }
        };
        if let Some(before) = before {
            inner.count(&before, false);
        }
        inner.count(&whose, true);
    }

    /// Changes of `ids` (one per entry) reached Redis.
    pub fn shipped(&self, ids: impl IntoIterator<Item = SessionId>) {
        let mut inner = self.inner.lock();
        for id in ids {
            let Some(entry) = inner.entries.get_mut(&id) else {
                continue;
            };
            entry.count -= 1;
            if entry.count == 0
                && let Some(entry) = inner.entries.remove(&id)
            {
                inner.count(&entry.whose, false);
            }
        }
    }

    /// Whether a change of `id` is still queued.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.inner.lock().entries.contains_key(id)
    }

    /// Whether a change of a session of `user` may still be queued (one of
    /// a session whose user is unknown counts).
    pub fn holds_any_of(&self, user: &UserName) -> bool {
        let inner = self.inner.lock();
        inner.unknown > 0 || inner.users.contains_key(user)
    }

    /// The latest change of `id` still queued, if any.
    pub fn latest(&self, id: &SessionId) -> Option<Latest> {
        self.inner
            .lock()
            .entries
            .get(id)
            .map(|entry| entry.latest.clone())
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
        queued.queued(id, written(id, 1), Whose::Nobody);
        queued.queued(id, Latest::Deleted, Whose::Unknown);
        assert!(matches!(queued.latest(&id), Some(Latest::Deleted)));
        queued.shipped([id, other]);
        assert!(queued.contains(&id), "one change of it is still queued");
        assert!(!queued.contains(&other));
        queued.shipped([id]);
        assert!(!queued.contains(&id));
        assert!(queued.latest(&id).is_none());
    }

    #[test]
    fn a_user_counts_while_a_change_of_one_of_their_sessions_is_queued() {
        let queued = QueuedIds::default();
        let (alice, bob) = (
            UserName::parse("alice").unwrap(),
            UserName::parse("bob").unwrap(),
        );
        let (hers, unknown) = (SessionId::random(), SessionId::random());
        queued.queued(hers, written(hers, 1), Whose::User(alice.clone()));
        assert!(queued.holds_any_of(&alice));
        assert!(!queued.holds_any_of(&bob));

        queued.queued(unknown, Latest::Deleted, Whose::Unknown);
        assert!(
            queued.holds_any_of(&bob),
            "a delete of unknown user's session"
        );
        queued.shipped([unknown]);
        assert!(!queued.holds_any_of(&bob));

        // Her session's delete (memory no longer held it) keeps it hers.
        queued.queued(hers, Latest::Deleted, Whose::Unknown);
        assert!(!queued.holds_any_of(&bob));
        queued.shipped([hers]);
        assert!(queued.holds_any_of(&alice), "the delete is still queued");
        queued.shipped([hers]);
        assert!(!queued.holds_any_of(&alice));
    }
}
