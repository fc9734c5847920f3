//! The sessions whose expiry this node slid past Redis's, by id and by
//! when Redis's expiry comes: the refresher finds the ones about to expire
//! in Redis without walking all of them (a walk of every session read in
//! the last TTL, under the lock every read takes, held up reads for
//! milliseconds on a busy node).

use std::collections::{BTreeSet, HashMap};

use sessiond_proto::SessionId;

/// A session whose expiry this node slid further than Redis's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    /// The expiry Redis holds, as far as this node knows.
    pub redis: u64,
    /// The expiry this node wants.
    pub wanted: u64,
    /// The idle TTL the session had when it was slid.
    pub ttl_ms: u64,
}

/// A session ahead, and the second of Redis's expiry it is filed under in
/// the deadline index (`None`: taken out as due, not filed again since).
#[derive(Debug, Clone, Copy)]
struct Filed {
    ahead: Ahead,
    second: Option<u64>,
}

/// Width of the deadline index's steps.
const SECOND_MS: u64 = 1_000;

/// The sessions ahead of Redis.
#[derive(Debug, Default)]
pub struct Lagging {
    by_id: HashMap<SessionId, Filed>,
    /// Each filed session once, by the second of its Redis expiry.
    by_deadline: BTreeSet<(u64, SessionId)>,
}

impl Lagging {
    /// What is known of `id`.
    pub fn get(&self, id: &SessionId) -> Option<Ahead> {
        self.by_id.get(id).map(|filed| filed.ahead)
    }

    /// Records `ahead` for `id`, filed under the second of its Redis expiry
    /// (and no longer under the one before).
    pub fn set(&mut self, id: SessionId, ahead: Ahead) {
        let second = ahead.redis / SECOND_MS;
        let filed = self.by_id.entry(id).or_insert(Filed {
            ahead,
            second: None,
        });
        filed.ahead = ahead;
        if filed.second != Some(second) {
            if let Some(before) = filed.second.replace(second) {
                self.by_deadline.remove(&(before, id));
            }
            self.by_deadline.insert((second, id));
        }
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &SessionId) {
        if let Some(Filed {
            second: Some(second),
            ..
        }) = self.by_id.remove(id)
        {
            self.by_deadline.remove(&(second, *id));
        }
    }

    /// How many sessions are ahead.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Takes out of the deadline index every session whose Redis expiry is
    /// in a second up to `horizon_ms`'s (so up to a second past it) and
    /// returns them; they stay known until removed, and are filed again
    /// when set again.
    pub fn due_by(&mut self, horizon_ms: u64) -> Vec<(SessionId, Ahead)> {
        let last = horizon_ms / SECOND_MS;
        let mut due = Vec::new();
        while let Some(&(second, id)) = self.by_deadline.first() {
            if second > last {
                break;
            }
            self.by_deadline.pop_first();
            if let Some(filed) = self.by_id.get_mut(&id) {
                filed.second = None;
                due.push((id, filed.ahead));
            }
        }
        due
    }

    /// Entries in the deadline index (one per filed session).
    #[cfg(test)]
    fn filed(&self) -> usize {
        self.by_deadline.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ahead(redis: u64, wanted: u64) -> Ahead {
        Ahead {
            redis,
            wanted,
            ttl_ms: 60_000,
        }
    }

    #[test]
    fn each_session_is_due_once_by_its_latest_expiry() {
        let mut lagging = Lagging::default();
        let (a, b, c) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        lagging.set(a, ahead(10_500, 20_000));
        lagging.set(b, ahead(10_700, 20_000));
        lagging.set(c, ahead(30_000, 40_000));
        // Moved later: due by its new expiry only.
        lagging.set(b, ahead(50_000, 60_000));
        // Slid further in the same second: still filed once.
        lagging.set(a, ahead(10_600, 25_000));
        assert!(lagging.due_by(9_999).is_empty());
        assert_eq!(lagging.due_by(10_000), [(a, ahead(10_600, 25_000))]);
        assert!(lagging.due_by(20_000).is_empty(), "a is due once");
        // Set again after it was due (a push left it ahead): filed again,
        // also in the same second.
        lagging.set(a, ahead(10_600, 26_000));
        assert_eq!(lagging.due_by(20_000), [(a, ahead(10_600, 26_000))]);
        lagging.remove(&c);
        assert!(lagging.due_by(40_000).is_empty(), "c was forgotten");
        assert_eq!(lagging.due_by(u64::MAX), [(b, ahead(50_000, 60_000))]);
        assert_eq!(lagging.len(), 2);
    }

    /// A session pushed again and again (its Redis expiry moving each
    /// time) is filed once: each move left an entry behind, a whole TTL
    /// long, so a node's index grew with every push of every session.
    #[test]
    fn a_session_whose_expiry_moves_is_filed_once() {
        let mut lagging = Lagging::default();
        let id = SessionId::random();
        for push in 0..1_000 {
            lagging.set(id, ahead(100_000 + push * 60_000, u64::MAX));
        }
        assert_eq!(lagging.filed(), 1);
        lagging.remove(&id);
        assert_eq!((lagging.len(), lagging.filed()), (0, 0));
    }
}
