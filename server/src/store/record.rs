//! A session as a shard holds it: every field and the data in one
//! allocation, so a session costs its data, a small header and one
//! allocator chunk (no separate data buffer, handle or reference count).
//!
//! Layout (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..16 | id |
//! | 16..56 | version, created, updated, expires, idle TTL (u64 each) |
//! | 56 | how many write-log tags follow (trailing zero tags are not stored) |
//! | 57 | which of the write log's horizon and fence follow |
//! | 58..60 | the user name's length (u16; 0: no user) |
//! | 60.. | the tags, the horizon and the fence (u64 each, as present), the user name, then the data |
//!
//! A session that has only been created holds one tag and neither time, a
//! busy one four tags and the horizon: 68 to 108 header bytes.

use bytes::Bytes;
use sessiond_proto::id::ID_BYTES;
use sessiond_proto::{SessionId, UserName};

use super::session::Session;
use super::write_log::{WRITE_LOG_LEN, WriteLog};

const VERSION: usize = ID_BYTES;
const CREATED: usize = VERSION + 8;
const UPDATED: usize = CREATED + 8;
const EXPIRES: usize = UPDATED + 8;
const TTL: usize = EXPIRES + 8;
const TAG_COUNT: usize = TTL + 8;
const TIMES: usize = TAG_COUNT + 1;
const USER_LEN: usize = TIMES + 1;
const VARIABLE: usize = USER_LEN + 2;

const HAS_HORIZON: u8 = 1;
const HAS_FENCE: u8 = 2;

/// The most header bytes a record has (four tags, horizon and fence; the
/// user name not counted).
pub const MAX_HEADER_BYTES: usize = VARIABLE + (WRITE_LOG_LEN + 2) * 8;

/// A session in one allocation (see the module's doc for the layout).
#[derive(Debug)]
pub struct Record(Box<[u8]>);

impl Record {
    /// The record of `session`.
    pub fn new(session: &Session) -> Self {
        let tags = session.writes.tags();
        let tag_count = tags
            .iter()
            .rposition(|&tag| tag != 0)
            .map_or(0, |last| last + 1);
        let horizon = session.writes.horizon_ms();
        let fence = session.writes.fence_ms();
        let user = session.user.as_ref().map_or("", UserName::as_str);
        let mut bytes =
            Vec::with_capacity(VARIABLE + (tag_count + 2) * 8 + user.len() + session.data.len());
        bytes.extend_from_slice(session.id.as_bytes());
        for field in [
            session.version,
            session.created_at_ms,
            session.updated_at_ms,
            session.expires_at_ms,
            session.ttl_ms,
        ] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        let mut times = 0;
        if horizon != 0 {
            times |= HAS_HORIZON;
        }
        if fence != 0 {
            times |= HAS_FENCE;
        }
        // At most 4 tags; a user name has at most 256 bytes.
        bytes.extend_from_slice(&[tag_count as u8, times]);
        bytes.extend_from_slice(&(user.len() as u16).to_le_bytes());
        for tag in &tags[..tag_count] {
            bytes.extend_from_slice(&tag.to_le_bytes());
        }
        for time in [horizon, fence].into_iter().filter(|&time| time != 0) {
            bytes.extend_from_slice(&time.to_le_bytes());
        }
        bytes.extend_from_slice(user.as_bytes());
        bytes.extend_from_slice(&session.data);
        Self(bytes.into_boxed_slice())
    }

    /// The session this record holds, its data copied out.
    pub fn session(&self) -> Session {
        self.session_with(Bytes::copy_from_slice(self.data()))
    }

    /// The session this record holds, with `data` in place of its own.
    pub fn session_with(&self, data: Bytes) -> Session {
        Session {
            id: self.id(),
            data,
            version: self.version(),
            created_at_ms: self.u64_at(CREATED),
            updated_at_ms: self.u64_at(UPDATED),
            ttl_ms: self.ttl_ms(),
            expires_at_ms: self.expires_at_ms(),
            writes: self.writes(),
            user: self.user(),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        SessionId::from_bytes(self.id_bytes().try_into().unwrap_or_default())
    }

    /// The session id's bytes.
    pub fn id_bytes(&self) -> &[u8] {
        &self.0[..ID_BYTES]
    }

    /// The session's version.
    pub fn version(&self) -> u64 {
        self.u64_at(VERSION)
    }

    /// When the session was created (ms since the Unix epoch).
    pub fn created_at_ms(&self) -> u64 {
        self.u64_at(CREATED)
    }

    /// When the session expires unless used (ms since the Unix epoch).
    pub fn expires_at_ms(&self) -> u64 {
        self.u64_at(EXPIRES)
    }

    /// The session's idle TTL.
    pub fn ttl_ms(&self) -> u64 {
        self.u64_at(TTL)
    }

    /// Sets when the session expires unless used.
    pub fn set_expires_at_ms(&mut self, at_ms: u64) {
        self.set_u64_at(EXPIRES, at_ms);
    }

    /// Sets the session's idle TTL.
    pub fn set_ttl_ms(&mut self, ttl_ms: u64) {
        self.set_u64_at(TTL, ttl_ms);
    }

    /// Whether the session has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms() <= now_ms
    }

    /// When the session was last used, as its sliding expiry tells (an
    /// absolute lifetime cap makes a session near its end look older, so
    /// eviction takes it first).
    pub fn last_use_ms(&self) -> u64 {
        self.expires_at_ms().saturating_sub(self.ttl_ms())
    }

    /// The tags of the writes that produced the latest versions.
    pub fn writes(&self) -> WriteLog {
        let count = usize::from(self.0[TAG_COUNT]);
        let mut tags = [0; WRITE_LOG_LEN];
        for (index, tag) in tags.iter_mut().enumerate().take(count) {
            *tag = self.u64_at(VARIABLE + 8 * index);
        }
        let mut at = VARIABLE + 8 * count;
        let mut time = |flag| {
            if self.0[TIMES] & flag == 0 {
                return 0;
            }
            at += 8;
            self.u64_at(at - 8)
        };
        let horizon = time(HAS_HORIZON);
        let fence = time(HAS_FENCE);
        WriteLog::from_parts(tags, horizon, fence)
    }

    /// The user the session belongs to.
    pub fn user(&self) -> Option<UserName> {
        // The name was checked before it was stored.
        let name = std::str::from_utf8(self.user_bytes()).ok()?;
        UserName::parse(name).ok()
    }

    /// The length of the session's user name (0: no user).
    pub fn user_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.0[USER_LEN], self.0[USER_LEN + 1]]))
    }

    /// The session's data.
    pub fn data(&self) -> &[u8] {
        &self.0[self.user_start() + self.user_len()..]
    }

    fn user_bytes(&self) -> &[u8] {
        let start = self.user_start();
        &self.0[start..start + self.user_len()]
    }

    /// Where the user name begins: after the tags and times.
    fn user_start(&self) -> usize {
        let times = self.0[TIMES];
        let words = usize::from(self.0[TAG_COUNT])
            + usize::from(times & HAS_HORIZON != 0)
            + usize::from(times & HAS_FENCE != 0);
        VARIABLE + 8 * words
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(word)
    }

    fn set_u64_at(&mut self, at: usize, value: u64) {
        self.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(
        tags: [u64; WRITE_LOG_LEN],
        horizon: u64,
        fence: u64,
        user: Option<&str>,
    ) -> Session {
        Session {
            id: SessionId::random(),
            data: Bytes::from_static(br#"{"cart":[1,2,3]}"#),
            version: 7,
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_001_000,
            ttl_ms: 1_800_000,
            expires_at_ms: 1_700_001_801_000,
            writes: WriteLog::from_parts(tags, horizon, fence),
            user: user.map(|name| UserName::parse(name).unwrap()),
        }
    }

    #[test]
    fn a_record_gives_back_the_session_it_was_made_of() {
        let cases = [
            session([9, 0, 0, 0], 0, 0, None),
            session([0, 0, 0, 0], 0, 0, Some("alice")),
            session([1, 0, 3, 0], 1_700_000_000_500, 0, None),
            session(
                [1, 2, 3, 4],
                1_700_000_000_500,
                1_700_000_000_900,
                Some("Zoë"),
            ),
            session([1, 2, 3, 4], 0, 1_700_000_000_900, Some(&"b".repeat(256))),
        ];
        for case in cases {
            let record = Record::new(&case);
            assert_eq!(record.session(), case);
            assert_eq!(record.id(), case.id);
            assert_eq!(record.data(), &case.data[..]);
            assert_eq!(
                record.user_len(),
                case.user.as_ref().map_or(0, |u| u.as_str().len())
            );
        }
    }

    #[test]
    fn a_created_session_holds_one_tag_and_a_busy_one_at_most_the_whole_header() {
        let created = Record::new(&session([5, 0, 0, 0], 0, 0, None));
        assert_eq!(created.0.len() - created.data().len(), VARIABLE + 8);
        let busy = Record::new(&session([1, 2, 3, 4], 1, 2, None));
        assert_eq!(busy.0.len() - busy.data().len(), MAX_HEADER_BYTES);
    }

    #[test]
    fn expiry_and_ttl_change_in_place() {
        let mut record = Record::new(&session([1, 2, 3, 4], 5, 6, Some("bob")));
        record.set_expires_at_ms(1_700_000_100_000);
        record.set_ttl_ms(60_000);
        let read = record.session();
        assert_eq!(read.expires_at_ms, 1_700_000_100_000);
        assert_eq!(read.ttl_ms, 60_000);
        assert_eq!(record.last_use_ms(), 1_700_000_040_000);
        assert!(record.is_expired(1_700_000_100_000));
        assert!(!record.is_expired(1_700_000_099_999));
        assert_eq!(read.writes, WriteLog::from_parts([1, 2, 3, 4], 5, 6));
        assert_eq!(read.user.unwrap().as_str(), "bob");
    }
}
