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
//! | 56..60 | how much an absolute lifetime cap cut off the last use's sliding expiry (u32 ms) |
//! | 60..62 | the shape: write-log tag count (bits 0-2; trailing zero tags are not stored), horizon and fence present (bits 3, 4), the user name's length (bits 5-13; 0: no user) |
//! | 62.. | the tags, the horizon and the fence (u64 each, as present), the user name, then the data |
//!
//! A session that has only been created holds one tag and neither time, a
//! busy one four tags and the horizon: 70 to 110 header bytes.
//!
//! When the session was last used is not stored: it is its expiry minus
//! its idle TTL, plus what the lifetime cap cut off (so a capped session
//! used a moment ago still counts as just used when eviction ranks it).

use bytes::{BufMut, Bytes};
use sessiond_proto::id::ID_BYTES;
use sessiond_proto::{SessionId, UserName};

use super::session::Session;
use super::write_log::{WRITE_LOG_LEN, WriteLog};

const VERSION: usize = ID_BYTES;
const CREATED: usize = VERSION + 8;
const UPDATED: usize = CREATED + 8;
const EXPIRES: usize = UPDATED + 8;
const TTL: usize = EXPIRES + 8;
const CUT: usize = TTL + 8;
const SHAPE: usize = CUT + 4;
const VARIABLE: usize = SHAPE + 2;

const TAG_COUNT_MASK: u16 = 0b111;
const HAS_HORIZON: u16 = 1 << 3;
const HAS_FENCE: u16 = 1 << 4;
const USER_LEN_SHIFT: u16 = 5;

/// The most header bytes a record has (four tags, horizon and fence; the
/// user name not counted).
pub const MAX_HEADER_BYTES: usize = VARIABLE + (WRITE_LOG_LEN + 2) * 8;

/// A session in one allocation (see the module's doc for the layout).
#[derive(Debug)]
pub struct Record(Box<[u8]>);

impl Record {
    /// The record of `session`, last used at `used_at_ms`.
    pub fn new(session: &Session, used_at_ms: u64) -> Self {
        Self::build(&Shape::of(session), session, used_at_ms)
    }

    fn build(shape: &Shape, session: &Session, used_at_ms: u64) -> Self {
        // Exactly the record's length, so no reallocation makes it a box.
        let mut bytes = Vec::with_capacity(shape.len(session));
        shape.write(session, used_at_ms, &mut bytes);
        Self(bytes.into_boxed_slice())
    }

    /// Makes this the record of `session`, last used at `used_at_ms`: in
    /// place when the length is unchanged (a write of the same size
    /// neither allocates nor frees).
    pub fn rewrite(&mut self, session: &Session, used_at_ms: u64) {
        let shape = Shape::of(session);
        if shape.len(session) == self.0.len() {
            shape.write(session, used_at_ms, &mut &mut self.0[..]);
        } else {
            *self = Self::build(&shape, session, used_at_ms);
        }
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

    /// Records a use at `used_at_ms` that moved the expiry to
    /// `expires_at_ms` (set a new TTL first, if any).
    pub fn slide(&mut self, used_at_ms: u64, expires_at_ms: u64) {
        self.set_u64_at(EXPIRES, expires_at_ms);
        let cut = cut(used_at_ms, self.ttl_ms(), expires_at_ms);
        self.0[CUT..SHAPE].copy_from_slice(&cut.to_le_bytes());
    }

    /// Sets the session's idle TTL.
    pub fn set_ttl_ms(&mut self, ttl_ms: u64) {
        self.set_u64_at(TTL, ttl_ms);
    }

    /// Whether the session has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms() <= now_ms
    }

    /// When the session was last used: its expiry less its idle TTL, plus
    /// what a lifetime cap cut off (exact unless the cap cut more than
    /// `u32::MAX` ms, about 49 days; then the session looks older).
    pub fn last_use_ms(&self) -> u64 {
        let cut = u32::from_le_bytes([
            self.0[CUT],
            self.0[CUT + 1],
            self.0[CUT + 2],
            self.0[CUT + 3],
        ]);
        self.expires_at_ms()
            .saturating_add(u64::from(cut))
            .saturating_sub(self.ttl_ms())
    }

    /// The tags of the writes that produced the latest versions.
    pub fn writes(&self) -> WriteLog {
        let shape = self.shape();
        let count = usize::from(shape & TAG_COUNT_MASK);
        let mut tags = [0; WRITE_LOG_LEN];
        for (index, tag) in tags.iter_mut().enumerate().take(count) {
            *tag = self.u64_at(VARIABLE + 8 * index);
        }
        let mut at = VARIABLE + 8 * count;
        let mut time = |flag| {
            if shape & flag == 0 {
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
        usize::from(self.shape() >> USER_LEN_SHIFT)
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
        VARIABLE + 8 * words(self.shape())
    }

    fn shape(&self) -> u16 {
        u16::from_le_bytes([self.0[SHAPE], self.0[SHAPE + 1]])
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

/// What of a session's variable part a record holds.
struct Shape {
    /// The write-log tags up to the last one set.
    tag_count: usize,
    horizon_ms: u64,
    fence_ms: u64,
    user_len: usize,
}

impl Shape {
    fn of(session: &Session) -> Self {
        Self {
            tag_count: session
                .writes
                .tags()
                .iter()
                .rposition(|&tag| tag != 0)
                .map_or(0, |last| last + 1),
            horizon_ms: session.writes.horizon_ms(),
            fence_ms: session.writes.fence_ms(),
            user_len: super::name_len(session.user.as_ref()),
        }
    }

    /// The record's length in bytes.
    fn len(&self, session: &Session) -> usize {
        VARIABLE + 8 * words(self.packed()) + self.user_len + session.data.len()
    }

    /// The packed shape field (at most 4 tags; a user name has at most 256
    /// bytes).
    fn packed(&self) -> u16 {
        let mut packed = self.tag_count as u16 | (self.user_len as u16) << USER_LEN_SHIFT;
        if self.horizon_ms != 0 {
            packed |= HAS_HORIZON;
        }
        if self.fence_ms != 0 {
            packed |= HAS_FENCE;
        }
        packed
    }

    /// Writes the record of `session` (exactly `self.len(session)` bytes).
    fn write(&self, session: &Session, used_at_ms: u64, out: &mut impl BufMut) {
        out.put_slice(session.id.as_bytes());
        for field in [
            session.version,
            session.created_at_ms,
            session.updated_at_ms,
            session.expires_at_ms,
            session.ttl_ms,
        ] {
            out.put_u64_le(field);
        }
        out.put_u32_le(cut(used_at_ms, session.ttl_ms, session.expires_at_ms));
        out.put_u16_le(self.packed());
        for &tag in &session.writes.tags()[..self.tag_count] {
            out.put_u64_le(tag);
        }
        for time in [self.horizon_ms, self.fence_ms] {
            if time != 0 {
                out.put_u64_le(time);
            }
        }
        out.put_slice(
            session
                .user
                .as_ref()
                .map_or("", UserName::as_str)
                .as_bytes(),
        );
        out.put_slice(&session.data);
    }
}

/// How many u64 words (tags, horizon, fence) the packed shape `shape`
/// says follow the fixed header.
fn words(shape: u16) -> usize {
    usize::from(shape & TAG_COUNT_MASK)
        + usize::from(shape & HAS_HORIZON != 0)
        + usize::from(shape & HAS_FENCE != 0)
}

/// How much of the sliding expiry a use at `used_at_ms` earned (`ttl_ms`
/// on) the lifetime cap cut off, given the expiry it got.
fn cut(used_at_ms: u64, ttl_ms: u64, expires_at_ms: u64) -> u32 {
    let cut = used_at_ms
        .saturating_add(ttl_ms)
        .saturating_sub(expires_at_ms);
    u32::try_from(cut).unwrap_or(u32::MAX)
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
            let record = Record::new(&case, 1_700_000_001_000);
            assert_eq!(record.session(), case);
            assert_eq!(record.last_use_ms(), 1_700_000_001_000);
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
        let created = Record::new(&session([5, 0, 0, 0], 0, 0, None), 0);
        assert_eq!(created.0.len() - created.data().len(), VARIABLE + 8);
        let busy = Record::new(&session([1, 2, 3, 4], 1, 2, None), 0);
        assert_eq!(busy.0.len() - busy.data().len(), MAX_HEADER_BYTES);
    }

    #[test]
    fn a_use_slides_the_expiry_in_place() {
        let mut record = Record::new(&session([1, 2, 3, 4], 5, 6, Some("bob")), 0);
        record.set_ttl_ms(60_000);
        record.slide(1_700_000_040_000, 1_700_000_100_000);
        let read = record.session();
        assert_eq!(read.expires_at_ms, 1_700_000_100_000);
        assert_eq!(read.ttl_ms, 60_000);
        assert_eq!(record.last_use_ms(), 1_700_000_040_000);
        assert!(record.is_expired(1_700_000_100_000));
        assert!(!record.is_expired(1_700_000_099_999));
        assert_eq!(read.writes, WriteLog::from_parts([1, 2, 3, 4], 5, 6));
        assert_eq!(read.user.unwrap().as_str(), "bob");
    }

    #[test]
    fn a_rewrite_of_the_same_length_stays_in_place_and_another_moves() {
        let first = session([1, 0, 0, 0], 0, 0, Some("bob"));
        let mut record = Record::new(&first, 5);
        let at = record.0.as_ptr();
        let same_length = Session {
            data: Bytes::from_static(br#"{"cart":[4,5,6]}"#),
            version: 8,
            writes: WriteLog::from_parts([2, 1, 0, 0], 0, 0),
            user: Some(UserName::parse("ann").unwrap()),
            ..first.clone()
        };
        // One more tag, eight bytes less data: the same length.
        let same_length = Session {
            data: same_length.data.slice(..same_length.data.len() - 8),
            ..same_length
        };
        record.rewrite(&same_length, 6);
        assert_eq!(record.0.as_ptr(), at);
        assert_eq!(record.session(), same_length);
        assert_eq!(record.last_use_ms(), 1_700_000_001_000);
        let longer = Session {
            data: Bytes::from_static(b"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]"),
            ..same_length
        };
        record.rewrite(&longer, 7);
        assert_eq!(record.session(), longer);
        assert_eq!(record.0.len(), VARIABLE + 16 + 3 + longer.data.len());
    }

    #[test]
    fn a_use_the_lifetime_cap_cut_short_still_counts_as_that_use() {
        let mut record = Record::new(&session([1, 0, 0, 0], 0, 0, None), 0);
        record.set_ttl_ms(60_000);
        // Used at 90 s, the expiry capped at 100 s instead of 150 s.
        record.slide(90_000, 100_000);
        assert_eq!(record.last_use_ms(), 90_000);
        assert_eq!(record.expires_at_ms(), 100_000);
        // A cut longer than u32::MAX ms is clamped: the use looks older.
        let day = 86_400_000;
        record.set_ttl_ms(100 * day);
        record.slide(200 * day, 200 * day + 1);
        assert_eq!(
            record.last_use_ms(),
            200 * day + 1 + u64::from(u32::MAX) - 100 * day
        );
    }

    /// Every shape of write log (each tag zero or not,
    /// horizon and fence each absent, small or u64::MAX), user names of 1
    /// and 256 bytes (ASCII, 2- and 4-byte UTF-8), empty and large data,
    /// extreme fields: the record is exactly as long as its layout says and
    /// gives the session back; the in-place setters touch nothing else.
    #[test]
    fn every_write_log_shape_user_and_data_round_trips() {
        let users: [Option<String>; 6] = [
            None,
            Some("a".into()),
            Some("b".repeat(256)),
            Some("é".repeat(128)),
            Some("😀".repeat(64)),
            Some("a b\u{a0}ü-é😀".into()),
        ];
        let big = vec![b'7'; 100_000];
        let datas: [&[u8]; 3] = [b"", b"{}", &big];
        let mut checked = 0;
        for mask in 0..16u32 {
            let tags: [u64; WRITE_LOG_LEN] = std::array::from_fn(|i| {
                if mask & (1 << i) != 0 {
                    if i % 2 == 0 {
                        u64::MAX - i as u64
                    } else {
                        i as u64 + 1
                    }
                } else {
                    0
                }
            });
            for horizon in [0, 1, u64::MAX] {
                for fence in [0, 5, u64::MAX] {
                    for user in &users {
                        for data in datas {
                            let case = Session {
                                id: SessionId::random(),
                                data: Bytes::copy_from_slice(data),
                                version: u64::MAX,
                                created_at_ms: 1,
                                updated_at_ms: u64::MAX - 1,
                                ttl_ms: u64::MAX,
                                expires_at_ms: 3,
                                writes: WriteLog::from_parts(tags, horizon, fence),
                                user: user.as_deref().map(|u| UserName::parse(u).unwrap()),
                            };
                            let count = tags.iter().rposition(|&t| t != 0).map_or(0, |l| l + 1);
                            let words = count + usize::from(horizon != 0) + usize::from(fence != 0);
                            let user_len = user.as_ref().map_or(0, String::len);
                            let mut record = Record::new(&case, 3);
                            assert_eq!(
                                record.0.len(),
                                VARIABLE + 8 * words + user_len + data.len()
                            );
                            assert_eq!(record.session(), case);
                            assert_eq!(record.writes(), case.writes);
                            assert_eq!(record.user(), case.user);
                            assert_eq!(record.user_len(), user_len);
                            assert_eq!(record.data(), data);
                            assert_eq!(record.last_use_ms(), 0, "saturates, no panic");
                            record.set_ttl_ms(7);
                            record.slide(u64::MAX - 7, u64::MAX);
                            assert_eq!(record.last_use_ms(), u64::MAX - 7);
                            let changed = Session {
                                expires_at_ms: u64::MAX,
                                ttl_ms: 7,
                                ..case.clone()
                            };
                            assert_eq!(record.session(), changed);
                            assert_eq!(
                                record.session_with(Bytes::from_static(b"x")).data,
                                &b"x"[..]
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 16 * 9 * 6 * 3);
    }
}
