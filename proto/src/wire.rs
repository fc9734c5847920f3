//! Messages of the binary protocol. Each travels in one frame (see
//! [`crate::codec`]). A connection starts with the client's [`Hello`] and
//! the server's [`Welcome`]; after that the client sends [`Request`]s, each
//! with a request id the matching [`Response`] carries back, so requests can
//! be pipelined and answered out of order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, SessionId};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// Hard ceiling on the largest frame, whatever the configuration says.
pub const MAX_FRAME_BYTES_CAP: usize = 64 << 20;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The handshake; must be the first frame, and only the first.
    Hello(Hello),
    /// An operation.
    Request(Request),
}

/// Frames a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The handshake was accepted.
    Welcome(Welcome),
    /// The answer to one request.
    Response(Response),
    /// A connection-level error; the server closes the connection after it.
    Fatal(WireError),
}

/// The client's handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// The bearer token, when the server needs one.
    #[serde(deserialize_with = "crate::copied::optional_string")]
    pub auth_token: Option<String>,
    /// Where sessions created or rotated on this connection must live, for
    /// clients that spread sessions over several nodes.
    pub placement: Option<Placement>,
}

/// A client's node ring and this node's place in it: the server issues new
/// ids that rendezvous hashing maps to this node (see [`crate::ring`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The seed of every node of the ring, in the client's order.
    pub ring: Vec<u64>,
    /// The index of the node this connection talks to.
    pub owner: u32,
}

/// The server's handshake answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the server speaks.
    pub protocol: u32,
    /// The server's software version.
    #[serde(deserialize_with = "crate::copied::string")]
    pub server_version: String,
    /// The largest frame the server accepts.
    pub max_frame_bytes: u64,
    /// Whether every node of this deployment can serve every session (the
    /// server replicates to Redis), so a client may fail over to another
    /// node for a session whose owner is down.
    pub shared_sessions: bool,
    /// The largest idle TTL the server accepts (`--max-ttl`), in seconds.
    pub max_ttl_secs: u64,
    /// Whether the server writes behind to Redis (`--redis-mode async`):
    /// a write it acknowledged may still be in its queue, which no other
    /// node sees, so only it can judge a re-send of a write it may have
    /// applied.
    pub write_behind: bool,
}

/// One operation with the id its response will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What to do.
    pub op: Op,
    /// The identity of a write, so that a write sent again after its
    /// answer was lost is applied at most once (see [`WriteTag`]).
    pub write: Option<WriteTag>,
}

/// How long after a write's first attempt a client may still send it again
/// (nodes remember the ids that tagged creates and rotations took for at
/// least twice as long).
pub const RESEND_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The identity of one logical write (create, put, patch, rotate).
///
/// The node that applies a write records its tag with the session, in the
/// same atomic step as the write. The same write sent again (to the same or
/// another node, after its answer was lost) carries the same tag: if the
/// tag is recorded, the node answers what the write produced instead of
/// applying it a second time; if the node cannot tell whether the first
/// attempt landed, it answers [`ErrorCode::Indeterminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteTag {
    /// Random and non-zero, chosen once per logical write (a node refuses
    /// 0 as `invalid_request`).
    pub id: u64,
    /// `None` on the first attempt; on a re-send, milliseconds since the
    /// first attempt was sent (how far back the node must be able to see).
    pub resent_after_ms: Option<u64>,
    /// When the first attempt was sent, by the client's clock (ms since
    /// the Unix epoch; 0: unknown), the same on every attempt. A first
    /// attempt that reaches a session late (held up in a stalled node) is
    /// judged by it, so a copy re-sent and applied elsewhere meanwhile is
    /// not applied again.
    pub sent_at_ms: u64,
}

/// The operations, the same as HTTP API v1's. Session data is JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a session (`POST /v1/sessions`).
    Create {
        /// JSON text.
        #[serde(deserialize_with = "crate::copied::bytes")]
        data: Bytes,
        /// Idle TTL; the server's default when `None`.
        ttl_secs: Option<u64>,
        /// The user the session belongs to (1 to 256 bytes).
        #[serde(deserialize_with = "crate::copied::optional_string")]
        user: Option<String>,
    },
    /// Read a session, refreshing its expiry.
    Get {
        /// The session.
        id: SessionId,
    },
    /// Replace a session's data.
    Put {
        /// The session.
        id: SessionId,
        /// JSON text.
        #[serde(deserialize_with = "crate::copied::bytes")]
        data: Bytes,
        /// A new idle TTL.
        ttl_secs: Option<u64>,
        /// Only write if the session is at this version.
        expected_version: Option<u64>,
    },
    /// Apply an RFC 7386 JSON merge patch.
    Patch {
        /// The session.
        id: SessionId,
        /// JSON text of the merge patch.
        #[serde(deserialize_with = "crate::copied::bytes")]
        patch: Bytes,
        /// A new idle TTL.
        ttl_secs: Option<u64>,
        /// Only write if the session is at this version.
        expected_version: Option<u64>,
    },
    /// Delete a session (idempotent).
    Delete {
        /// The session.
        id: SessionId,
    },
    /// Extend a session's expiry without writing it.
    Touch {
        /// The session.
        id: SessionId,
        /// A new idle TTL.
        ttl_secs: Option<u64>,
    },
    /// Move a session to a new id; the old id dies at once.
    Rotate {
        /// The session.
        id: SessionId,
        /// Bind the session to this user in the same step (a login); the
        /// session keeps its user when `None`.
        #[serde(deserialize_with = "crate::copied::optional_string")]
        user: Option<String>,
    },
    /// The live sessions of a user, oldest first.
    ListUser {
        /// The user.
        #[serde(deserialize_with = "crate::copied::string")]
        user: String,
    },
    /// Deletes every session of a user, but `except`.
    RevokeUser {
        /// The user.
        #[serde(deserialize_with = "crate::copied::string")]
        user: String,
        /// A session to keep ("sign out other devices").
        except: Option<SessionId>,
    },
    /// Events of the log after `after` (from the oldest retained when
    /// `None`; `"now"` is the end), waiting up to `wait_ms` for one.
    Events {
        /// The cursor to resume after.
        #[serde(deserialize_with = "crate::copied::optional_string")]
        after: Option<String>,
        /// Most events in the answer (1 to 1000).
        limit: u32,
        /// How long to wait for an event when there is none yet.
        wait_ms: u32,
    },
    /// Liveness check.
    Ping,
    /// The node's counters.
    Stats,
}

impl Op {
    /// Whether the operation changes a session in a way that must not be
    /// applied twice, so it carries a [`WriteTag`].
    pub fn is_tagged_write(&self) -> bool {
        matches!(
            self,
            Self::Create { .. } | Self::Put { .. } | Self::Patch { .. } | Self::Rotate { .. }
        )
    }

    /// Every name [`Op::name`] gives: the operations on sessions first
    /// (the first [`Op::SESSION_OPS`]), then the event log's and the node's.
    pub const NAMES: [&'static str; 12] = [
        "create",
        "get",
        "put",
        "patch",
        "delete",
        "touch",
        "rotate",
        "list_user",
        "revoke_user",
        "events",
        "ping",
        "stats",
    ];
    /// How many of [`Op::NAMES`] name operations on sessions.
    pub const SESSION_OPS: usize = 9;

    /// The operation's place in [`Op::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            Self::Create { .. } => 0,
            Self::Get { .. } => 1,
            Self::Put { .. } => 2,
            Self::Patch { .. } => 3,
            Self::Delete { .. } => 4,
            Self::Touch { .. } => 5,
            Self::Rotate { .. } => 6,
            Self::ListUser { .. } => 7,
            Self::RevokeUser { .. } => 8,
            Self::Events { .. } => 9,
            Self::Ping => 10,
            Self::Stats => 11,
        }
    }

    /// The operation's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// What a request produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The session after the operation.
    Session(SessionRecord),
    /// The session is gone (or was never there).
    Deleted,
    /// The answer to [`Op::Ping`].
    Pong,
    /// The answer to [`Op::Stats`].
    Stats(NodeStats),
    /// The answer to [`Op::ListUser`]: the user's live sessions, oldest
    /// first (their data left out).
    UserSessions(Vec<SessionRecord>),
    /// The answer to [`Op::RevokeUser`]: how many sessions were deleted.
    Revoked(u64),
    /// The answer to [`Op::Events`].
    Events(crate::EventPage),
    /// The operation failed.
    Error(WireError),
}

/// A session as the binary protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session id.
    pub id: SessionId,
    /// 1 on create, +1 on every write.
    pub version: u64,
    /// JSON text.
    #[serde(deserialize_with = "crate::copied::bytes")]
    pub data: Bytes,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last write, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// Expiry unless used again, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Idle TTL in seconds.
    pub ttl_secs: u64,
    /// The user the session belongs to.
    #[serde(deserialize_with = "crate::copied::optional_string")]
    pub user: Option<String>,
}

/// A node's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Sessions held (expired ones not yet swept included).
    pub sessions: u64,
    /// Bytes charged against the memory bound.
    pub bytes_used: u64,
    /// The memory bound.
    pub bytes_limit: Option<u64>,
    /// Sessions freed because they expired.
    pub expirations: u64,
    /// Sessions evicted to make room.
    pub evictions: u64,
    /// Writes refused because the store was full.
    pub rejections: u64,
    /// Users with sessions in this node's user index (memory only).
    pub user_index_users: u64,
    /// Sessions in this node's user index (memory only).
    pub user_index_entries: u64,
}

/// An error as the binary protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for people.
    #[serde(deserialize_with = "crate::copied::string")]
    pub message: String,
    /// The session's current version, on `version_mismatch`.
    pub current_version: Option<u64>,
    /// The oldest cursor still retained, on `cursor_expired`.
    #[serde(deserialize_with = "crate::copied::optional_string")]
    pub oldest: Option<String>,
}

impl WireError {
    /// An error without a version.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            current_version: None,
            oldest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_place_in_the_names() {
        let id = SessionId::random();
        let ops = [
            Op::Create {
                data: Bytes::new(),
                ttl_secs: None,
                user: None,
            },
            Op::Get { id },
            Op::Put {
                id,
                data: Bytes::new(),
                ttl_secs: None,
                expected_version: None,
            },
            Op::Patch {
                id,
                patch: Bytes::new(),
                ttl_secs: None,
                expected_version: None,
            },
            Op::Delete { id },
            Op::Touch { id, ttl_secs: None },
            Op::Rotate { id, user: None },
            Op::ListUser { user: "ann".into() },
            Op::RevokeUser {
                user: "ann".into(),
                except: None,
            },
            Op::Events {
                after: None,
                limit: 1,
                wait_ms: 0,
            },
            Op::Ping,
            Op::Stats,
        ];
        let indices: Vec<usize> = ops.iter().map(Op::index).collect();
        assert_eq!(indices, (0..Op::NAMES.len()).collect::<Vec<_>>());
        assert_eq!(ops[Op::SESSION_OPS - 1].name(), "revoke_user");
    }
}
