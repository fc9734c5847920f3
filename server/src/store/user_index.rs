//! Which sessions belong to each user, for listing and revoking them.
//!
//! Locks are taken in one order only: a session shard's lock first, then
//! the user index's; never a session shard while holding the index. Every
//! change of a session's presence (create, rotate, delete, expiry,
//! eviction) updates the index while the session's shard is still locked,
//! so the index never holds an id its session has already left, and never
//! misses a live one.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sessiond_proto::{SessionId, UserName};

/// Independently locked parts of the index.
const INDEX_SHARDS: usize = 16;

/// Bytes charged to the memory budget for a session's place in the index,
/// as one user of one session takes them (the map's slot at its usual
/// load, the list of one id, the key's allocation less the name); the
/// user's name is charged on top. A user's further sessions take less
/// (an id each in the list): the charge errs on the side of the bound.
/// Measured: 300,000 sessions of 512 bytes, each of its own user, grew a
/// node's RSS 169 bytes a session more than as many without a user.
pub const INDEX_ENTRY_BYTES: u64 = 144;

/// Sessions a user's list holds before it becomes a set.
const LIST_MAX: usize = 16;

/// One independently locked part of the index: users and their sessions.
type IndexShard = Mutex<HashMap<UserName, UserSessions>>;

/// One user's sessions: a list while they are few (most users have one
/// or two, and a list of one id takes the least room), a set once they
/// are many, so that finding or removing one costs as little for a user
/// of 100,000 sessions as for a user of one (a revocation of all of them
/// removes each in turn, under the shards' locks).
#[derive(Debug)]
enum UserSessions {
    List(Vec<SessionId>),
    #[expect(
        clippy::box_collection,
        reason = "boxed, the set leaves every user the room of a list"
    )]
    Set(Box<HashSet<SessionId>>),
}

impl UserSessions {
    /// Puts `new` in place of `old` if listed, or adds it; whether it was
    /// added.
    fn replace(&mut self, old: Option<&SessionId>, new: SessionId) -> bool {
        match self {
            Self::List(ids) => {
                if let Some(known) = old.and_then(|old| ids.iter_mut().find(|id| **id == *old)) {
                    *known = new;
                    return false;
                }
                if ids.len() < LIST_MAX {
                    ids.push(new);
                } else {
                    let mut set: HashSet<SessionId> = ids.drain(..).collect();
                    set.insert(new);
                    *self = Self::Set(Box::new(set));
                }
                true
            }
            Self::Set(ids) => {
                let replaced = old.is_some_and(|old| ids.remove(old));
                ids.insert(new) && !replaced
            }
        }
    }

    /// Removes `id`; whether it was there.
    fn remove(&mut self, id: &SessionId) -> bool {
        match self {
            Self::List(ids) => match ids.iter().position(|known| known == id) {
                Some(position) => {
                    ids.swap_remove(position);
                    true
                }
                None => false,
            },
            Self::Set(ids) => {
                let removed = ids.remove(id);
                // Back to a list well below the size that made the set,
                // so a user's sessions do not switch at every change.
                if ids.len() <= LIST_MAX / 2 {
                    *self = Self::List(ids.drain().collect());
                }
                removed
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::List(ids) => ids.is_empty(),
            Self::Set(ids) => ids.is_empty(),
        }
    }

    fn to_vec(&self) -> Vec<SessionId> {
        match self {
            Self::List(ids) => ids.clone(),
            Self::Set(ids) => ids.iter().copied().collect(),
        }
    }
}

/// The sessions of every user.
#[derive(Debug)]
pub struct UserIndex {
    shards: Box<[IndexShard]>,
    hasher: RandomState,
    users: AtomicU64,
    entries: AtomicU64,
}

impl Default for UserIndex {
    fn default() -> Self {
        Self {
            shards: (0..INDEX_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            users: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        }
    }
}

impl UserIndex {
    fn shard(&self, user: &UserName) -> &IndexShard {
        let hash = self.hasher.hash_one(user.as_str()) as usize;
        &self.shards[hash % INDEX_SHARDS]
    }

    /// Records that `id` belongs to `user`.
    pub fn add(&self, user: &UserName, id: SessionId) {
        self.replace(user, None, id);
    }

    /// Records that `new` belongs to `user` in place of `old` (if listed),
    /// in one step: a reader never finds the user without either, one
    /// session short (a rotation).
    pub fn replace(&self, user: &UserName, old: Option<&SessionId>, new: SessionId) {
        let mut shard = self.shard(user).lock();
        let ids = shard.entry(user.clone()).or_insert_with(|| {
            self.users.fetch_add(1, Ordering::Relaxed);
            // Most users have one session: room for one, not the four a
            // first push would make.
            UserSessions::List(Vec::with_capacity(1))
        });
        if ids.replace(old, new) {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets that `id` belongs to `user` (nothing if it did not).
    pub fn remove(&self, user: &UserName, id: &SessionId) {
        let mut shard = self.shard(user).lock();
        let Some(ids) = shard.get_mut(user) else {
            return;
        };
        if ids.remove(id) {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        if ids.is_empty() {
            shard.remove(user);
            self.users.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The ids recorded for `user`.
    pub fn ids(&self, user: &UserName) -> Vec<SessionId> {
        self.shard(user)
            .lock()
            .get(user)
            .map(UserSessions::to_vec)
            .unwrap_or_default()
    }

    /// Users with at least one session in the index.
    pub fn users(&self) -> u64 {
        self.users.load(Ordering::Relaxed)
    }

    /// Sessions in the index.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_entries_are_counted_and_emptied() {
        let index = UserIndex::default();
        let alice = UserName::parse("alice").unwrap();
        let bob = UserName::parse("bob").unwrap();
        let (a, b, c) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        index.add(&alice, a);
        index.add(&alice, b);
        index.add(&bob, c);
        assert_eq!((index.users(), index.entries()), (2, 3));
        index.remove(&alice, &a);
        index.remove(&alice, &a);
        assert_eq!(index.ids(&alice), [b]);
        index.remove(&alice, &b);
        assert_eq!((index.users(), index.entries()), (1, 1));
        assert!(index.ids(&alice).is_empty());
        index.remove(&bob, &c);
        assert_eq!((index.users(), index.entries()), (0, 0));
    }

    #[test]
    fn a_user_of_many_sessions_is_listed_removed_and_rotated_through_the_set() {
        let index = UserIndex::default();
        let carol = UserName::parse("carol").unwrap();
        let mut ids: Vec<SessionId> = (0..LIST_MAX * 4).map(|_| SessionId::random()).collect();
        for id in &ids {
            index.add(&carol, *id);
        }
        let sorted = |mut ids: Vec<SessionId>| {
            ids.sort();
            ids
        };
        assert_eq!(sorted(index.ids(&carol)), sorted(ids.clone()));
        let rotated = SessionId::random();
        index.replace(&carol, Some(&ids[0]), rotated);
        ids[0] = rotated;
        assert_eq!(index.entries(), ids.len() as u64);
        // Down through the size at which the set becomes a list again.
        while ids.len() > 3 {
            let gone = ids.pop().unwrap();
            index.remove(&carol, &gone);
            index.remove(&carol, &gone);
            assert_eq!(index.entries(), ids.len() as u64);
            assert_eq!(sorted(index.ids(&carol)), sorted(ids.clone()));
        }
        let rotated = SessionId::random();
        index.replace(&carol, Some(&ids[1]), rotated);
        ids[1] = rotated;
        assert_eq!(sorted(index.ids(&carol)), sorted(ids.clone()));
        for id in &ids {
            index.remove(&carol, id);
        }
        assert_eq!((index.users(), index.entries()), (0, 0));
    }

    #[test]
    fn a_users_sessions_take_the_room_of_a_list() {
        assert_eq!(
            std::mem::size_of::<UserSessions>(),
            std::mem::size_of::<Vec<SessionId>>()
        );
    }
}
