//! The event log in Redis: one stream, `{<prefix>events}`, that the write
//! scripts append to in the same atomic step as the change they log, and
//! the expiry index, `{<prefix>events}:expiries` (`<id>:<user>` scored by
//! the session's expiry), that every node reaps: Redis expires keys
//! silently, so a node finds the sessions whose time has come and reports
//! each one `expired` exactly once, whichever node (or nodes) reap it and
//! whether or not any node ever held it.
//!
//! Cursors are the stream's entry ids (`<ms>-<seq>`). A cursor from before
//! what the stream still holds (trimmed by count or age) is refused with
//! the oldest cursor to resume from.

use std::time::Duration;

use redis::Value;
use sessiond_proto::{Event, EventKind, EventPage, SessionId};
use tokio_util::sync::CancellationToken;

use super::event_log::RedisEvents;
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

/// One stream entry as an event.
fn event(id: String, fields: Vec<(String, String)>) -> Option<Event> {
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
        cursor: id,
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

    /// The cursor just before the first entry kept.
    fn oldest_cursor(&self) -> Option<String> {
        let (ms, seq) = self.first?;
        Some(match seq.checked_sub(1) {
            Some(seq) => format!("{ms}-{seq}"),
            None => format!("{}-{}", ms.checked_sub(1)?, u64::MAX),
        })
    }
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
        let invalid = |cursor: &str| EventsError::InvalidCursor {
            cursor: cursor.to_owned(),
        };
        let mut conn = self.link.conn()?;
        let mut cursor = match after {
            Some("now") => self
                .newest_entry(&events.stream)
                .await?
                .unwrap_or_else(|| "0-0".to_owned()),
            Some(cursor) => {
                entry_id(cursor).ok_or_else(|| invalid(cursor))?;
                self.check_kept(&events.stream, cursor).await?;
                cursor.to_owned()
            }
            None => "0-0".to_owned(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Subscribed before the read, so an entry appended after it
            // wakes this reader.
            let mut appended = self.newest_event.subscribe();
            let entries = redis::cmd("XRANGE")
                .arg(&events.stream)
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut conn)
                .await;
            let entries = self.link.observe(entries)?;
            if let Some((last, _)) = entries.last() {
                cursor = last.clone();
            }
            let found: Vec<Event> = entries
                .into_iter()
                .filter_map(|(id, fields)| event(id, fields))
                .collect();
            let now = tokio::time::Instant::now();
            if !found.is_empty() || now >= deadline {
                return Ok(EventPage {
                    events: found,
                    next: cursor,
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
            .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut conn)
            .await;
        Ok(self
            .link
            .observe(last)?
            .into_iter()
            .next()
            .map(|(id, _)| id))
    }

    /// Refuses a cursor from before the entries the stream still holds,
    /// once trimming (by count or age) has dropped any: Redis does not
    /// record the last trimmed id, so the cursor just before the first
    /// entry kept is the oldest one that loses nothing.
    async fn check_kept(&self, stream: &str, cursor: &str) -> Result<(), BackendError> {
        let mut conn = self.link.conn()?;
        let info = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(stream)
            .query_async::<Value>(&mut conn)
            .await;
        let info = match self.link.observe(info) {
            Ok(info) => info,
            // No stream yet: nothing was dropped.
            Err(_) => return Ok(()),
        };
        let shape = StreamShape::of(&info);
        match shape.oldest_cursor() {
            Some(oldest) if shape.trimmed() && entry_id(cursor) < entry_id(&oldest) => {
                Err(EventsError::CursorExpired { oldest }.into())
            }
            _ => Ok(()),
        }
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
        let reaped = self
            .scripts
            .reap
            .key(&events.expiries)
            .key(&events.stream)
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
        assert_eq!(shape("17-3", 5, 9).oldest_cursor().as_deref(), Some("17-2"));
        assert_eq!(
            shape("17-0", 5, 9).oldest_cursor().as_deref(),
            Some("16-18446744073709551615")
        );
        assert_eq!(shape("0-0", 5, 9).oldest_cursor(), None);
    }

    #[test]
    fn a_stream_that_kept_every_entry_was_not_trimmed() {
        assert!(!shape("17-3", 9, 9).trimmed());
        assert!(shape("17-3", 5, 9).trimmed());
        assert!(StreamShape::of(&Value::Nil).trimmed());
    }
}
