//! The sessions of one shard, found by id and by position.
//!
//! Records sit in a dense vector (positions for the sweeper's cursor and
//! the eviction sampler) and a hash table holds each one's position as a
//! `u32`, found by the session's id. Unlike an `IndexSet`, no hash is
//! stored beside each record (a session id's hash is 8 of its own bytes,
//! read from the record) and a position takes 4 bytes, not 8: a session
//! costs the set its 16-byte pointer and a 5-byte slot at the table's load.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use sessiond_proto::SessionId;
use sessiond_proto::id::ID_BYTES;

use super::record::Record;

/// The most sessions one set holds (positions are `u32`, below `u32::MAX`).
pub const MAX_SESSIONS: usize = u32::MAX as usize;

/// A session id's hash: 8 of its bytes. Ids are 128 bits from the OS
/// CSPRNG and only server-made ids are ever inserted, so they need no
/// keyed hash (clients cannot choose colliding keys). The shard is picked
/// from the other 8 bytes ([`SessionId::spread`]), so the two stay
/// independent.
fn id_hash(id: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    if let Some(tail) = id.get(ID_BYTES - 8..ID_BYTES) {
        word.copy_from_slice(tail);
    }
    u64::from_le_bytes(word)
}

/// Sessions by id, with positional access.
#[derive(Debug, Default)]
pub struct SessionSet {
    records: Vec<Record>,
    positions: HashTable<u32>,
}

impl SessionSet {
    /// How many sessions the set holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the set holds no session.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether the set holds [`MAX_SESSIONS`] and takes no more.
    pub fn is_full(&self) -> bool {
        self.records.len() >= MAX_SESSIONS
    }

    /// How many sessions the set holds before its table grows.
    pub fn capacity(&self) -> usize {
        self.positions.capacity()
    }

    /// The record of `id`.
    pub fn get(&self, id: &SessionId) -> Option<&Record> {
        self.position_of(id).and_then(|at| self.records.get(at))
    }

    /// The record of `id`, mutable, with its position.
    pub fn get_full_mut(&mut self, id: &SessionId) -> Option<(usize, &mut Record)> {
        let at = self.position_of(id)?;
        self.records.get_mut(at).map(|record| (at, record))
    }

    /// The record at position `at`.
    pub fn get_index(&self, at: usize) -> Option<&Record> {
        self.records.get(at)
    }

    /// The record at position `at`, mutable.
    pub fn get_index_mut(&mut self, at: usize) -> Option<&mut Record> {
        self.records.get_mut(at)
    }

    /// Adds `record`, or puts it in place of the record with its id, which
    /// it returns. Hands `record` back when the set already holds
    /// [`MAX_SESSIONS`].
    pub fn replace(&mut self, record: Record) -> Result<Option<Record>, Record> {
        let records = &mut self.records;
        let entry = self.positions.entry(
            id_hash(record.id_bytes()),
            |&at| same_id(records, at, record.id_bytes()),
            |&at| hash_at(records, at),
        );
        match entry {
            Entry::Occupied(entry) => match records.get_mut(*entry.get() as usize) {
                Some(slot) => Ok(Some(std::mem::replace(slot, record))),
                None => Err(record),
            },
            Entry::Vacant(entry) => match u32::try_from(records.len()) {
                // Below `MAX_SESSIONS`, as `is_full` says.
                Ok(at) if at < u32::MAX => {
                    entry.insert(at);
                    records.push(record);
                    Ok(None)
                }
                _ => Err(record),
            },
        }
    }

    /// Removes and returns the record of `id`; the last record takes its
    /// position.
    pub fn swap_take(&mut self, id: &SessionId) -> Option<Record> {
        let records = &self.records;
        let (at, _) = self
            .positions
            .find_entry(id_hash(id.as_bytes()), |&at| {
                same_id(records, at, id.as_bytes())
            })
            .ok()?
            .remove();
        self.swap_out(at as usize)
    }

    /// Removes and returns the record at position `at`; the last record
    /// takes its place.
    pub fn swap_remove_index(&mut self, at: usize) -> Option<Record> {
        let hash = id_hash(self.records.get(at)?.id_bytes());
        self.positions
            .find_entry(hash, |&slot| slot as usize == at)
            .ok()?
            .remove();
        self.swap_out(at)
    }

    /// Lowers the capacity to `min` sessions or what the set holds, if more.
    pub fn shrink_to(&mut self, min: usize) {
        let records = &self.records;
        self.positions.shrink_to(min, |&at| hash_at(records, at));
        self.records.shrink_to(min);
    }

    fn position_of(&self, id: &SessionId) -> Option<usize> {
        self.positions
            .find(id_hash(id.as_bytes()), |&at| {
                same_id(&self.records, at, id.as_bytes())
            })
            .map(|&at| at as usize)
    }

    /// Moves the last record into position `at` (whose table entry is
    /// already gone) and returns the record that was there.
    fn swap_out(&mut self, at: usize) -> Option<Record> {
        let last = self.records.len().checked_sub(1)?;
        if at != last {
            let hash = id_hash(self.records.get(last)?.id_bytes());
            let moved = self
                .positions
                .find_mut(hash, |&slot| slot as usize == last)?;
            // `at` < `last`, which is a `u32`.
            *moved = at as u32;
        }
        (at <= last).then(|| self.records.swap_remove(at))
    }
}

fn same_id(records: &[Record], at: u32, id: &[u8]) -> bool {
    records
        .get(at as usize)
        .is_some_and(|record| record.id_bytes() == id)
}

fn hash_at(records: &[Record], at: u32) -> u64 {
    records
        .get(at as usize)
        .map_or(0, |record| id_hash(record.id_bytes()))
}

impl IntoIterator for SessionSet {
    type Item = Record;
    type IntoIter = std::vec::IntoIter<Record>;

    /// The records, in position order.
    fn into_iter(self) -> Self::IntoIter {
        self.records.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use sessiond_proto::SessionId;

    use super::SessionSet;
    use crate::store::record::Record;
    use crate::store::session::Session;

    fn record(id: SessionId, data: &str) -> Record {
        let session = Session {
            id,
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            version: 1,
            created_at_ms: 1,
            updated_at_ms: 1,
            ttl_ms: 1_000,
            expires_at_ms: 1_001,
            writes: Default::default(),
            user: None,
        };
        Record::new(&session, 1)
    }

    /// Every way a record leaves keeps every other one findable by id and
    /// at the position the set reports.
    #[test]
    fn removals_keep_every_other_record_findable() {
        let ids: Vec<SessionId> = (0..500).map(|_| SessionId::random()).collect();
        let mut set = SessionSet::default();
        for id in &ids {
            assert!(matches!(set.replace(record(*id, "\"a\"")), Ok(None)));
        }
        let replaced = set.replace(record(ids[7], "\"b\"")).ok().flatten();
        assert_eq!(
            replaced.map(|old| old.data().to_vec()),
            Some(b"\"a\"".to_vec())
        );
        assert_eq!(set.len(), 500);
        assert_eq!(set.get(&ids[7]).map(Record::data), Some(&b"\"b\""[..]));

        let mut gone = std::collections::HashSet::new();
        for (step, id) in ids.iter().enumerate().step_by(3) {
            let taken = if step % 2 == 0 {
                set.swap_take(id)
            } else {
                let (at, _) = set.get_full_mut(id).expect("present");
                set.swap_remove_index(at)
            };
            assert_eq!(taken.map(|record| record.id()), Some(*id));
            gone.insert(*id);
        }
        assert_eq!(set.len(), 500 - gone.len());
        for id in &ids {
            let found = set.get(id).map(Record::id);
            assert_eq!(found, (!gone.contains(id)).then_some(*id), "{id}");
        }
        for at in 0..set.len() {
            let id = set.get_index(at).expect("in range").id();
            assert_eq!(set.get_full_mut(&id).map(|(found, _)| found), Some(at));
        }
        assert!(set.swap_take(&ids[0]).is_none(), "taken already");
        assert!(set.swap_remove_index(set.len()).is_none(), "past the end");
    }

    #[test]
    fn shrinking_keeps_every_record() {
        let ids: Vec<SessionId> = (0..5_000).map(|_| SessionId::random()).collect();
        let mut set = SessionSet::default();
        for id in &ids {
            assert!(set.replace(record(*id, "1")).is_ok());
        }
        for id in &ids[100..] {
            assert!(set.swap_take(id).is_some());
        }
        let before = set.capacity();
        set.shrink_to(200);
        assert!(set.capacity() < before, "{} -> {}", before, set.capacity());
        assert_eq!(set.len(), 100);
        for id in &ids[..100] {
            assert_eq!(set.get(id).map(Record::id), Some(*id));
        }
    }
}
