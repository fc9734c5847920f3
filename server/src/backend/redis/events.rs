//! The event log in Redis: one stream, `{<prefix>events}`, that the write
//! scripts append to in the same atomic step as the change they log, and
//! the expiry index, `{<prefix>events}:expiries` (`<id>:<user>` scored by
//! the session's expiry), that every node reaps: Redis expires keys
//! silently, so a node finds the sessions whose time has come and reports
//! each one `expired` exactly once, whichever node (or nodes) reap it and
//! whether or not any node ever held it.
//!
//! Cursors are the stream's entry ids and its epoch (`<ms>-<seq>-<epoch>`;
//! `<ms>-<seq>`, without an epoch, from versions before epochs, is still
//! read). A cursor of another epoch is of a stream Redis lost (with its
//! epoch key), and refused with the new stream's resume point, whatever
//! its id: a new stream's ids can be at or below it (a new Redis whose
//! clock is behind, or a loss and new events within one millisecond). A
//! cursor from before
//! what the stream still holds (trimmed by count or age, down to nothing
//! after a quiet spell) is refused with the oldest cursor to resume from,
//! and so is one the stream never handed out, before its first entry or
//! past the newest id it generated: a cursor of a stream Redis lost
//! (`FLUSHALL`, a restart without persistence, a failover to a replica
//! behind), which would otherwise skip, once the new stream's ids pass
//! it, what the new stream logged before.

use std::time::Duration;

use redis::Value;
use sessiond_proto::{Event, EventKind, EventPage, SessionId};
use tokio_util::sync::CancellationToken;

use super::event_log::RedisEvents;
use super::script_call::ScriptCall;
use super::shared::Redis;
use crate::backend::api::{BackendError, EventsError};

/// How often each node reaps the expiry index.
const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// Most sessions one reap step reports.
const REAP_BATCH: usize = 500;
/// How often a node looks for new events while readers wait on it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest a waiting reader sleeps without reading the stream itself.
const MAX_QUIET: Duration = Duration::from_secs(1);

/// A stream entry id, compared as numbers.
fn entry_id(text: &str) -> Option<(u64, u64)> {
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A cursor a reader sends: an entry id, and the epoch of the stream that
/// handed it out (`None`: a cursor of a version before epochs).
fn parse_cursor(text: &str) -> Option<((u64, u64), Option<u64>)> {
    match text.rsplit_once('-') {
        Some((id, epoch)) if id.contains('-') => Some((entry_id(id)?, Some(epoch.parse().ok()?))),
        _ => Some((entry_id(text)?, None)),
    }
}

/// A stream entry as `XRANGE` gives it: its id and fields.
type Entry = (String, Vec<(String, String)>);

/// `<ms>-<seq>`.
fn id_text((ms, seq): (u64, u64)) -> String {
    format!("{ms}-{seq}")
}

/// The cursor of the entry `id` of the stream of `epoch`.
fn cursor_text(id: (u64, u64), epoch: u64) -> String {
    format!("{}-{epoch}", id_text(id))
}

/// One stream entry of the stream of `epoch` as an event.
fn event(id: &str, epoch: u64, fields: Vec<(String, String)>) -> Option<Event> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    Some(Event {
        kind: EventKind::parse(field("k")?)?,
        id: field("i")?.parse().ok()?,
        user: field("u")
            .filter(|user| !user.is_empty())
            .map(str::to_owned),
        at_ms: field("t")?.parse().ok()?,
        old_id: field("o").and_then(|old| old.parse::<SessionId>().ok()),
        cursor: format!("{id}-{epoch}"),
    })
}

/// What `XINFO STREAM` tells about what the stream kept.
#[derive(Debug, Default)]
struct StreamShape {
    /// Entries it holds.
    length: Option<u64>,
    /// Entries ever added (Redis 7 and later).
    added: Option<u64>,
    /// The first entry it holds.
    first: Option<(u64, u64)>,
    /// The id of the newest entry it ever held (kept when trimmed).
    newest: Option<(u64, u64)>,
    /// When trimming by age last left it empty: its newest id then (the
    /// last entry dropped), and the entries ever added by then.
    emptied: Option<((u64, u64), u64)>,
}

impl StreamShape {
    /// Reads the fields this log needs from an `XINFO STREAM` reply.
    fn of(info: &Value) -> Self {
        let mut shape = Self::default();
        let Value::Array(fields) = info else {
            return shape;
        };
        let number = |value: &Value| match value {
            Value::Int(number) => u64::try_from(*number).ok(),
            _ => None,
        };
        for pair in fields.chunks(2) {
            let [Value::BulkString(name), value] = pair else {
                continue;
            };
            match name.as_slice() {
                b"length" => shape.length = number(value),
                b"entries-added" => shape.added = number(value),
                b"last-generated-id" => {
                    if let Value::BulkString(id) = value {
                        shape.newest = std::str::from_utf8(id).ok().and_then(entry_id);
                    }
                }
                b"first-entry" => {
                    if let Value::Array(entry) = value
                        && let Some(Value::BulkString(id)) = entry.first()
                    {
                        shape.first = std::str::from_utf8(id).ok().and_then(entry_id);
                    }
                }
                _ => {}
            }
        }
        shape
    }

    /// Whether trimming dropped any entry (assumed on Redis before 7,
    /// which does not count the entries added).
    fn trimmed(&self) -> bool {
        match (self.added, self.length) {
            (Some(added), Some(length)) => added > length,
            _ => true,
        }
    }

    /// Notes `note`, the reaper's `<id> <added>` of the stream's last
    /// emptying.
    fn with_emptied(mut self, note: Option<&str>) -> Self {
        self.emptied = note
            .and_then(|note| note.split_once(' '))
            .and_then(|(id, added)| Some((entry_id(id)?, added.parse().ok()?)));
        self
    }

    /// The oldest cursor that loses nothing: the last entry dropped when
    /// known (the stream's newest while it is empty; the one noted when it
    /// was last emptied, if nothing was dropped since), else just before
    /// the first entry kept (trimming drops whole blocks of the oldest).
    fn oldest_cursor(&self) -> Option<(u64, u64)> {
        let Some((ms, seq)) = self.first else {
            return self.newest;
        };
        if let (Some((last_dropped, dropped_then)), Some(added), Some(length)) =
            (self.emptied, self.added, self.length)
            && added.checked_sub(length) == Some(dropped_then)
        {
            return Some(last_dropped);
        }
        Some(match seq.checked_sub(1) {
            Some(seq) => (ms, seq),
            None => (ms.checked_sub(1)?, u64::MAX),
        })
    }
}

/// The cursor a read resumes after to lose nothing the stream of this
/// `shape` holds (`None`: it does not exist): `0-0` while it dropped
/// nothing, else [`StreamShape::oldest_cursor`].
fn resume_point(shape: Option<&StreamShape>) -> (u64, u64) {
    shape
        .filter(|shape| shape.trimmed())
        .and_then(StreamShape::oldest_cursor)
        .unwrap_or((0, 0))
}

/// Whether a read after the cursor `at` of the stream of this `shape`
/// (`None`: it does not exist) is sound: only from its
/// [`resume_point`] or from its first entry kept up to the newest id it
/// generated. Any other cursor is expired, with the resume point (the
/// error): one before it was dropped by trimming (Redis does not record
/// the last entry trimmed); one before the first entry of a stream that
/// dropped nothing, or past the newest id, was never handed out by this
/// stream (Redis lost the one that did, or it is another log's).
fn judge(shape: Option<&StreamShape>, at: (u64, u64)) -> Result<(), (u64, u64)> {
    let oldest = resume_point(shape);
    let kept = shape.is_some_and(|shape| {
        let newest = shape.newest.unwrap_or((0, 0));
        shape
            .first
            .is_some_and(|first| (first..=newest).contains(&at))
    });
    if at == oldest || kept {
        Ok(())
    } else {
        Err(oldest)
    }
}

/// What one read of the stream found.
struct StreamPage {
    /// The stream's epoch.
    epoch: u64,
    /// What `XINFO STREAM` says of it (`None`: it does not exist).
    shape: Option<StreamShape>,
    /// The entries read.
    entries: Vec<Entry>,
}

impl Redis {
    /// Up to `limit` events after `after`, waiting up to `wait` for one.
    pub(super) async fn read_events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, BackendError> {
        let events = self.events.as_ref().ok_or(EventsError::Off)?;
        // The epoch of the stream `at` is a cursor of (`None`: any).
        let (mut at, mut of_epoch) = match after {
            Some("now") => {
                let page = self.events_page(events, (0, 0), 0).await?;
                let newest = page.shape.and_then(|shape| shape.newest);
                (newest.unwrap_or((0, 0)), Some(page.epoch))
            }
            // Nothing can follow the largest id: Redis refuses to read after it.
            Some(cursor) => match parse_cursor(cursor) {
                Some((at, epoch)) if at != (u64::MAX, u64::MAX) => (at, epoch),
                _ => {
                    return Err(EventsError::InvalidCursor {
                        cursor: cursor.to_owned(),
                    }
                    .into());
                }
            },
            None => ((0, 0), None),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Subscribed before the read, so an entry appended after it
            // wakes this reader.
            let mut appended = self.newest_event.subscribe();
            let StreamPage {
                epoch,
                shape,
                entries,
            } = self.events_page(events, at, limit).await?;
            if after.is_none() && at == (0, 0) {
                // From the oldest event kept, whatever trimming dropped
                // before it: the page read starts there, and so does the
                // cursor an empty one hands out.
                at = resume_point(shape.as_ref());
            }
            let expired = |oldest| EventsError::CursorExpired {
                oldest: cursor_text(oldest, epoch),
            };
            if of_epoch.is_some_and(|of_epoch| of_epoch != epoch) {
                // Of a stream Redis lost, also while this reader waited.
                return Err(expired(resume_point(shape.as_ref())).into());
            }
            judge(shape.as_ref(), at).map_err(expired)?;
            of_epoch = Some(epoch);
            if let Some((last, _)) = entries.last() {
                at = entry_id(last).unwrap_or(at);
            }
            let found: Vec<Event> = entries
                .into_iter()
                .filter_map(|(id, fields)| event(&id, epoch, fields))
                .collect();
            let now = tokio::time::Instant::now();
            if !found.is_empty() || now >= deadline {
                return Ok(EventPage {
                    events: found,
                    next: cursor_text(at, epoch),
                });
            }
            let wake = deadline.min(now + MAX_QUIET);
            // Woken by a new entry, or at the bound (if the tail watcher
            // could not read Redis, the next read says why).
            let _ = tokio::time::timeout_at(wake, appended.changed()).await;
        }
    }

    /// The id of the stream's newest entry (`None` while it is empty).
    async fn newest_entry(&self, stream: &str) -> Result<Option<String>, BackendError> {
        let mut conn = self.link.conn()?;
        let last = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async::<Vec<Entry>>(&mut conn)
            .await;
        Ok(self
            .link
            .observe(last)?
            .into_iter()
            .next()
            .map(|(id, _)| id))
    }

    /// Up to `limit` entries after `at`, the stream's shape and its epoch,
    /// read in one step.
    async fn events_page(
        &self,
        events: &RedisEvents,
        at: (u64, u64),
        limit: usize,
    ) -> Result<StreamPage, BackendError> {
        let mut conn = self.link.conn()?;
        let keys = [
            events.stream.as_str(),
            events.emptied.as_str(),
            events.epoch.as_str(),
        ];
        let page = ScriptCall::new(&self.scripts.events_page, keys, 96)
            .arg(format!("({}", id_text(at)))
            .arg(limit)
            // A new one each time: one this node set before may be the
            // one Redis lost.
            .arg(fastrand::u64(1..))
            .invoke_async::<(Option<Value>, Vec<Entry>, Option<String>, u64)>(&mut conn)
            .await;
        let (info, entries, emptied, epoch) = self.link.observe(page)?;
        let shape = info.map(|info| StreamShape::of(&info).with_emptied(emptied.as_deref()));
        Ok(StreamPage {
            epoch,
            shape,
            entries,
        })
    }

    /// Keeps the log until `shutdown`: reaps the expiry index every
    /// [`REAP_INTERVAL`] and, while readers wait on this node, looks for a
    /// new entry every [`POLL_INTERVAL`] and wakes them (one look for all
    /// of them, however many long-polls and streams are open).
    pub async fn keep_log(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let Some(events) = self.events.clone() else {
            return;
        };
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_reap = tokio::time::Instant::now() + REAP_INTERVAL;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.newest_event.receiver_count() > 0
                && let Ok(Some(newest)) = self.newest_entry(&events.stream).await
            {
                self.newest_event.send_if_modified(|known| {
                    let changed = *known != newest;
                    if changed {
                        known.clone_from(&newest);
                    }
                    changed
                });
            }
            if tokio::time::Instant::now() >= next_reap {
                next_reap += REAP_INTERVAL;
                self.reap(&events).await;
            }
        }
    }

    /// One reap step: reports the sessions whose time has come.
    async fn reap(&self, events: &RedisEvents) {
        let Ok(mut conn) = self.link.conn() else {
            return;
        };
        let keys = [
            events.expiries.as_str(),
            events.stream.as_str(),
            events.emptied.as_str(),
        ];
        let reaped = ScriptCall::new(&self.scripts.reap, keys, 64)
            .arg(&self.config.prefix)
            .arg(REAP_BATCH)
            .arg(events.config.retention)
            .arg(events.config.max_age_ms)
            .invoke_async::<(u64, u64)>(&mut conn)
            .await;
        match self.link.observe(reaped) {
            Ok((reaped, retained)) => {
                events.counters.add(EventKind::Expired, reaped);
                metrics::gauge!("sessiond_events_retained").set(retained as f64);
            }
            Err(err) => tracing::debug!(%err, "reaping the expiry index failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(first: &str, length: i64, added: i64) -> StreamShape {
        StreamShape::of(&Value::Array(vec![
            Value::BulkString(b"length".to_vec()),
            Value::Int(length),
            Value::BulkString(b"entries-added".to_vec()),
            Value::Int(added),
            Value::BulkString(b"first-entry".to_vec()),
            Value::Array(vec![Value::BulkString(first.as_bytes().to_vec())]),
        ]))
    }

    #[test]
    fn the_oldest_cursor_is_just_before_the_first_entry_kept() {
        assert_eq!(shape("17-3", 5, 9).oldest_cursor(), Some((17, 2)));
        assert_eq!(shape("17-0", 5, 9).oldest_cursor(), Some((16, u64::MAX)));
        assert_eq!(shape("0-0", 5, 9).oldest_cursor(), None);
    }

    /// What `XINFO STREAM` says of a stream trimmed down to nothing after
    /// `added` entries, the newest `newest`.
    fn emptied(newest: &str, added: i64) -> StreamShape {
        StreamShape::of(&Value::Array(vec![
            Value::BulkString(b"length".to_vec()),
            Value::Int(0),
            Value::BulkString(b"last-generated-id".to_vec()),
            Value::BulkString(newest.as_bytes().to_vec()),
            Value::BulkString(b"entries-added".to_vec()),
            Value::Int(added),
            Value::BulkString(b"first-entry".to_vec()),
            Value::Nil,
        ]))
    }

    #[test]
    fn a_cursor_before_what_the_stream_kept_is_expired_even_when_it_kept_nothing() {
        let expired = |oldest: &str| Err(entry_id(oldest).expect("an id"));
        let empty = emptied("40-1", 9);
        assert_eq!(judge(Some(&empty), (17, 3)), expired("40-1"));
        assert_eq!(judge(Some(&empty), (40, 1)), Ok(()));
        let mut kept = shape("17-3", 5, 9);
        kept.newest = Some((40, 1));
        assert_eq!(judge(Some(&kept), (17, 1)), expired("17-2"));
        assert_eq!(judge(Some(&kept), (17, 2)), Ok(()));
        // Nothing trimmed: every cursor up to the newest reads all.
        assert_eq!(judge(Some(&emptied("40-1", 0)), (0, 0)), Ok(()));
    }

    #[test]
    fn after_an_emptying_the_last_entry_dropped_is_the_oldest_cursor_until_more_are_dropped() {
        // Emptied at 40-1 after 9 entries; one more, 50-0, since.
        let mut refilled = shape("50-0", 1, 10).with_emptied(Some("40-1 9"));
        refilled.newest = Some((50, 0));
        assert_eq!(refilled.oldest_cursor(), Some((40, 1)));
        assert_eq!(judge(Some(&refilled), (40, 1)), Ok(()));
        // Then trimmed by count too: the note no longer tells.
        let trimmed_again = shape("60-0", 2, 12).with_emptied(Some("40-1 9"));
        assert_eq!(trimmed_again.oldest_cursor(), Some((59, u64::MAX)));
        // A note that does not parse is no note.
        assert_eq!(
            shape("50-0", 1, 10)
                .with_emptied(Some("40-1"))
                .oldest_cursor(),
            Some((49, u64::MAX))
        );
    }

    #[test]
    fn a_cursor_this_stream_never_handed_out_is_expired_with_its_resume_point() {
        let expired = |oldest: &str| Err(entry_id(oldest).expect("an id"));
        // Past the newest id: of a stream Redis lost, or another log's.
        assert_eq!(judge(Some(&emptied("40-1", 9)), (40, 2)), expired("40-1"));
        assert_eq!(judge(None, (0, 0)), Ok(()));
        assert_eq!(judge(None, (1, 0)), expired("0-0"));
        // A new stream that dropped nothing: from 0-0 or its entries only.
        let mut new = shape("50-0", 2, 2);
        new.newest = Some((50, 1));
        assert_eq!(judge(Some(&new), (0, 0)), Ok(()));
        assert_eq!(judge(Some(&new), (40, 1)), expired("0-0"));
        assert_eq!(judge(Some(&new), (50, 0)), Ok(()));
        assert_eq!(judge(Some(&new), (50, 1)), Ok(()));
        assert_eq!(judge(Some(&new), (60, 0)), expired("0-0"));
        // After an emptying: from the last entry dropped, not after it.
        let mut refilled = shape("50-0", 1, 10).with_emptied(Some("40-1 9"));
        refilled.newest = Some((50, 0));
        assert_eq!(judge(Some(&refilled), (45, 0)), expired("40-1"));
    }

    #[test]
    fn a_cursor_carries_its_streams_epoch_or_none_from_before_epochs() {
        assert_eq!(parse_cursor("17-3-99"), Some(((17, 3), Some(99))));
        assert_eq!(parse_cursor("17-3"), Some(((17, 3), None)));
        assert_eq!(
            parse_cursor(&cursor_text((17, 3), 99)),
            Some(((17, 3), Some(99)))
        );
        for text in ["17", "17-x", "17-3-x", "17-3-", "-3-99"] {
            assert_eq!(parse_cursor(text), None, "{text}");
        }
    }

    #[test]
    fn a_stream_that_kept_every_entry_was_not_trimmed() {
        assert!(!shape("17-3", 9, 9).trimmed());
        assert!(shape("17-3", 5, 9).trimmed());
        assert!(StreamShape::of(&Value::Nil).trimmed());
    }
}
