//! A session as the store hands it out.

use bytes::Bytes;
use sessiond_proto::{SessionId, UserName};

use super::write_log::WriteLog;

/// A session as the store hands it out: a snapshot, cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// The session's data (JSON text).
    pub data: Bytes,
    /// 1 on create, +1 on every write.
    pub version: u64,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Time of the last write (ms since the Unix epoch).
    pub updated_at_ms: u64,
    /// Idle TTL: every use pushes the expiry to now + this.
    pub ttl_ms: u64,
    /// When the session expires unless used (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The tags of the writes that produced the latest versions.
    pub writes: WriteLog,
    /// The user the session belongs to.
    pub user: Option<UserName>,
}
