//! This node's ordered log of session lifecycle events (memory-only mode):
//! the store appends an event while the session's shard is still locked, so
//! the log's order is the order the changes were made in, and a consumer
//! resuming after a cursor sees each later event once.
//!
//! Cursors are the events' sequence numbers as text; the log keeps at most
//! `retention` events and none older than `max_age`. A cursor from before
//! the oldest kept event is refused with the oldest cursor instead of
//! silently skipping what was dropped. Sequence numbers start from the
//! node's start time (ms shifted left by 20 bits), so after a restart a
//! cursor of the lost log is older than anything kept and refused the same
//! way, and a cursor the log never handed out (another node's, say) is
//! refused as unknown.

use std::collections::VecDeque;

use parking_lot::Mutex;
use sessiond_proto::{Event, EventKind, SessionId, UserName};
use tokio::sync::watch;

/// How the log keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLogConfig {
    /// Most events kept.
    pub retention: usize,
    /// Oldest event kept, in ms.
    pub max_age_ms: u64,
    /// Whether data writes are events (`updated`).
    pub include_updates: bool,
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Before the oldest event kept.
    Oldest,
    /// After the newest event (only later events).
    Now,
    /// After the event with this cursor.
    After(u64),
}

/// Why a read cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Events after the cursor were dropped.
    #[error("events after this cursor are no longer kept; resume from {oldest}")]
    Expired {
        /// The cursor before the oldest event kept.
        oldest: String,
    },
    /// The cursor is past anything this log handed out.
    #[error("this log never handed out that cursor")]
    Unknown,
}

/// Room for this many events is made when a log starts (pages are only
/// used as events arrive), so a full log holds exactly its retention, not
/// the next power of two; a larger retention grows as it fills.
const PREALLOCATED_EVENTS: usize = 1 << 20;

/// An event as the log keeps it; its sequence number is its place (see
/// [`Entries`]).
#[derive(Debug)]
struct Entry {
    kind: EventKind,
    id: SessionId,
    user: Option<UserName>,
    at_ms: u64,
    old_id: Option<SessionId>,
}

/// The events kept, whose sequence numbers run without a gap from
/// `dropped + 1` to `last`.
#[derive(Debug)]
struct Entries {
    events: VecDeque<Entry>,
    /// The last sequence number handed out.
    last: u64,
    /// The newest sequence number dropped (the start, before any drop).
    dropped: u64,
}

/// `sessiond_events_total` of each kind, registered once (a `counter!`
/// per event builds its key and looks it up every time).
#[derive(Debug, Clone)]
pub struct EventCounters([(EventKind, metrics::Counter); EventKind::ALL.len()]);

impl EventCounters {
    /// Registers the counters with the installed recorder.
    pub fn register() -> Self {
        Self(EventKind::ALL.map(|kind| {
            let counter = metrics::counter!("sessiond_events_total", "kind" => kind.as_str());
            (kind, counter)
        }))
    }

    /// Counts `events` events of `kind` this node logged.
    pub fn add(&self, kind: EventKind, events: u64) {
        if let Some((_, counter)) = self.0.iter().find(|(counted, _)| *counted == kind) {
            counter.increment(events);
        }
    }
}

/// The log.
#[derive(Debug)]
pub struct EventLog {
    config: EventLogConfig,
    entries: Mutex<Entries>,
    newest: watch::Sender<u64>,
    appended: EventCounters,
}

impl EventLog {
    /// An empty log started at `now_ms`.
    pub fn new(config: EventLogConfig, now_ms: u64) -> Self {
        let start = now_ms << 20;
        Self {
            config,
            entries: Mutex::new(Entries {
                events: VecDeque::with_capacity(config.retention.clamp(1, PREALLOCATED_EVENTS)),
                last: start,
                dropped: start,
            }),
            newest: watch::Sender::new(start),
            appended: EventCounters::register(),
        }
    }

    /// Whether data writes are logged.
    pub fn includes_updates(&self) -> bool {
        self.config.include_updates
    }

    /// Appends an event.
    pub fn append(
        &self,
        kind: EventKind,
        id: SessionId,
        user: Option<&UserName>,
        old_id: Option<SessionId>,
        at_ms: u64,
    ) {
        let seq = {
            let mut entries = self.entries.lock();
            // Room first, so a log at its retention never grows.
            while entries.events.len() >= self.config.retention.max(1) {
                Self::drop_oldest(&mut entries);
            }
            entries.events.push_back(Entry {
                kind,
                id,
                user: user.cloned(),
                at_ms,
                old_id,
            });
            entries.last += 1;
            entries.last
        };
        self.appended.add(kind, 1);
        self.newest.send_replace(seq);
    }

    fn drop_oldest(entries: &mut Entries) {
        if entries.events.pop_front().is_some() {
            entries.dropped += 1;
        }
    }

    /// Drops the events older than the maximum age.
    pub fn trim(&self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.config.max_age_ms);
        let mut entries = self.entries.lock();
        while entries
            .events
            .front()
            .is_some_and(|oldest| oldest.at_ms < horizon)
        {
            Self::drop_oldest(&mut entries);
        }
    }

    /// Events kept.
    pub fn retained(&self) -> usize {
        self.entries.lock().events.len()
    }

    /// Up to `limit` events after `position`, and the cursor to resume
    /// after.
    pub fn read(
        &self,
        position: Position,
        limit: usize,
    ) -> Result<(Vec<Event>, String), ReadError> {
        let entries = self.entries.lock();
        let after = match position {
            Position::Oldest => entries.dropped,
            Position::Now => entries.last,
            Position::After(seq) if seq < entries.dropped => {
                return Err(ReadError::Expired {
                    oldest: entries.dropped.to_string(),
                });
            }
            Position::After(seq) if seq > entries.last => return Err(ReadError::Unknown),
            Position::After(seq) => seq,
        };
        // `after` is within the kept range, so this counts what it skips.
        let skip = usize::try_from(after - entries.dropped).unwrap_or(usize::MAX);
        let events: Vec<Event> = (after + 1..)
            .zip(entries.events.iter().skip(skip).take(limit))
            .map(|(seq, entry)| Event {
                cursor: seq.to_string(),
                kind: entry.kind,
                id: entry.id,
                user: entry.user.as_ref().map(ToString::to_string),
                at_ms: entry.at_ms,
                old_id: entry.old_id,
            })
            .collect();
        let next = events
            .last()
            .map_or_else(|| after.to_string(), |event| event.cursor.clone());
        Ok((events, next))
    }

    /// A receiver that sees the sequence number of every append.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(retention: usize) -> EventLogConfig {
        EventLogConfig {
            retention,
            max_age_ms: 1_000,
            include_updates: false,
        }
    }

    fn log(retention: usize) -> EventLog {
        EventLog::new(config(retention), 0)
    }

    /// A log keeping `retention` events that `count` sessions' creations
    /// were appended to, and those sessions' ids in order.
    fn log_of_creations(retention: usize, count: usize) -> (EventLog, Vec<SessionId>) {
        let log = log(retention);
        let ids: Vec<SessionId> = (0..count).map(|_| SessionId::random()).collect();
        for id in &ids {
            log.append(EventKind::Created, *id, None, None, 5);
        }
        (log, ids)
    }

    #[test]
    fn readers_resume_after_their_cursor_in_order() {
        let (log, ids) = log_of_creations(10, 3);
        let (first, next) = log.read(Position::Oldest, 2).unwrap();
        assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
        let seq: u64 = next.parse().unwrap();
        let (rest, next) = log.read(Position::After(seq), 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..]);
        assert_eq!(
            log.read(Position::After(next.parse().unwrap()), 10)
                .unwrap()
                .0,
            []
        );
        assert_eq!(log.read(Position::Now, 10).unwrap().0, []);
    }

    #[test]
    fn a_cursor_before_what_is_kept_is_refused_with_the_oldest() {
        let log = log(2);
        for _ in 0..5 {
            log.append(EventKind::Deleted, SessionId::random(), None, None, 5);
        }
        assert_eq!(
            log.read(Position::After(1), 10),
            Err(ReadError::Expired { oldest: "3".into() })
        );
        assert_eq!(log.read(Position::After(3), 10).unwrap().0.len(), 2);
        log.trim(2_000);
        assert_eq!(log.retained(), 0);
        assert!(log.read(Position::After(4), 10).is_err());
    }

    #[test]
    fn every_kept_cursor_resumes_at_the_next_event_and_the_log_keeps_its_size() {
        let (log, ids) = log_of_creations(10, 25);
        let (kept, _) = log.read(Position::Oldest, 100).unwrap();
        assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), ids[15..]);
        for (index, event) in kept.iter().enumerate() {
            let seq: u64 = event.cursor.parse().unwrap();
            let (rest, _) = log.read(Position::After(seq), 3).unwrap();
            let expected: Vec<SessionId> = ids[16 + index..].iter().take(3).copied().collect();
            assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
            let cursors: Vec<u64> = rest.iter().map(|e| e.cursor.parse().unwrap()).collect();
            let contiguous: Vec<u64> = (seq + 1..).take(rest.len()).collect();
            assert_eq!(cursors, contiguous);
        }
        assert_eq!(
            log.entries.lock().events.capacity(),
            10,
            "a full log never grew"
        );
    }

    #[test]
    fn a_cursor_of_the_log_before_a_restart_is_refused_not_skipped() {
        let before = EventLog::new(config(10), 1_000);
        before.append(EventKind::Created, SessionId::random(), None, None, 5);
        let (_, cursor) = before.read(Position::Oldest, 10).unwrap();
        let cursor: u64 = cursor.parse().unwrap();
        let after = EventLog::new(config(10), 2_000);
        after.append(EventKind::Created, SessionId::random(), None, None, 5);
        assert_eq!(
            after.read(Position::After(cursor), 10),
            Err(ReadError::Expired {
                oldest: (2_000u64 << 20).to_string()
            })
        );
        assert_eq!(
            before.read(Position::After(cursor + 5), 10),
            Err(ReadError::Unknown)
        );
    }
}
