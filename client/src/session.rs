//! Sessions as the client hands them out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sessiond_proto::SessionId;
use sessiond_proto::wire::SessionRecord;

/// A session's metadata: what a write or touch returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub id: SessionId,
    /// 1 on create, +1 on every write; pass it back as `expected_version`.
    pub version: u64,
    /// When the session was created.
    pub created_at: SystemTime,
    /// When its data was last written.
    pub updated_at: SystemTime,
    /// When it expires unless used again.
    pub expires_at: SystemTime,
    /// Its idle TTL.
    pub ttl: Duration,
}

/// A session with its data decoded as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session<T> {
    /// Id, version and times.
    pub info: SessionInfo,
    /// The data.
    pub data: T,
    /// The user the session belongs to, if any.
    pub user: Option<String>,
}

impl<T> Session<T> {
    /// The session id.
    pub fn id(&self) -> SessionId {
        self.info.id
    }

    /// The session's version.
    pub fn version(&self) -> u64 {
        self.info.version
    }
}

fn time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

impl From<&SessionRecord> for SessionInfo {
    fn from(record: &SessionRecord) -> Self {
        Self {
            id: record.id,
            version: record.version,
            created_at: time(record.created_at_ms),
            updated_at: time(record.updated_at_ms),
            expires_at: time(record.expires_at_ms),
            ttl: Duration::from_secs(record.ttl_secs),
        }
    }
}
