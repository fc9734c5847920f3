//! Session lifecycle events, as the event log hands them out.

use serde::{Deserialize, Serialize};

use crate::SessionId;

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A session was created.
    Created,
    /// A session moved to a new id (`old_id` is the id it had).
    Rotated,
    /// A session was deleted.
    Deleted,
    /// A session expired (its idle TTL or lifetime cap passed).
    Expired,
    /// A session was evicted (memory full, or its user over the cap).
    Evicted,
    /// A session was deleted by a user-wide revocation.
    Revoked,
    /// A session's data was written (with `--events-include-updates`).
    Updated,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Created,
        Self::Rotated,
        Self::Deleted,
        Self::Expired,
        Self::Evicted,
        Self::Revoked,
        Self::Updated,
    ];

    /// The kind as it appears in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated => "rotated",
            Self::Deleted => "deleted",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Revoked => "revoked",
            Self::Updated => "updated",
        }
    }

    /// The kind from its text.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Where the log stands after this event: resume after it.
    #[serde(deserialize_with = "crate::copied::string")]
    pub cursor: String,
    /// What happened.
    pub kind: EventKind,
    /// The session.
    pub id: SessionId,
    /// The user the session belonged to.
    #[serde(deserialize_with = "crate::copied::optional_string")]
    pub user: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// The id a rotated session had.
    pub old_id: Option<SessionId>,
}

/// Events after a cursor, and where to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// The events, in commit order.
    pub events: Vec<Event>,
    /// The cursor to resume after (the last event's, or the one asked for
    /// when there were none).
    #[serde(deserialize_with = "crate::copied::string")]
    pub next: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_as_snake_case() {
        for kind in [EventKind::Created, EventKind::Rotated, EventKind::Revoked] {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }
}
