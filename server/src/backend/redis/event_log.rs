//! The Redis event log's keys and settings, shared by every script that
//! appends to it, and the count of what this node appended.

use sessiond_proto::EventKind;

use crate::store::{EventCounters, EventLogConfig};

/// The event log's keys and settings.
#[derive(Debug, Clone)]
pub struct RedisEvents {
    /// The stream.
    pub stream: String,
    /// The expiry index.
    pub expiries: String,
    /// Where the reaper notes the stream's newest id when trimming by age
    /// leaves it empty (see `events`).
    pub emptied: String,
    /// The stream's epoch: a random number set by the first read of a
    /// stream that has none and written into every cursor, so a cursor of
    /// a stream Redis lost (with this key) is told apart from the new
    /// stream's whatever their ids.
    pub epoch: String,
    /// How the log keeps its events.
    pub config: EventLogConfig,
    /// What this node appended, by kind.
    pub counters: EventCounters,
}

impl RedisEvents {
    /// The log of the sessions under `prefix`.
    pub fn new(prefix: &str, config: EventLogConfig) -> Self {
        let stream = format!("{{{prefix}events}}");
        Self {
            expiries: format!("{stream}:expiries"),
            emptied: format!("{stream}:emptied"),
            epoch: format!("{stream}:epoch"),
            stream,
            config,
            counters: EventCounters::register(),
        }
    }
}

/// Counts an event this node appended to the log.
pub(super) fn count_logged(events: Option<&RedisEvents>, kind: EventKind) {
    if let Some(events) = events {
        events.counters.add(kind, 1);
    }
}
