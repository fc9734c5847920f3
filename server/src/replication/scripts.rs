//! The Lua scripts that make every Redis-side operation on a session one
//! atomic step, and their typed results.
//!
//! Layout: one Redis hash per session at `<prefix><id>` with the fields
//! `v` (version), `d` (data, the JSON text), `c` (created, ms), `u`
//! (updated, ms) and `t` (idle TTL, ms); the key's PEXPIREAT is the
//! session's expiry. Small hashes are stored compactly by Redis (listpack),
//! and the fields stay readable by the scripts that check versions.

use bytes::Bytes;
use redis::{FromRedisValue, ParsingError, Script, Value};
use sessiond_proto::SessionId;

use crate::store::Session;

/// Reads a session with its expiry: nil, or `[v, d, c, u, t, pexpiretime]`.
const READ: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'd', 'c', 'u', 't')
if not r[1] then return false end
return {r[1], r[2], r[3], r[4], r[5], redis.call('PEXPIRETIME', KEYS[1])}
";

/// Stores a whole session if its key is free: 1, or 0 when taken.
/// ARGV: v, d, c, u, t, expires_at.
const STORE_NEW: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'c', ARGV[3], 'u', ARGV[4], 't', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return 1
";

/// Stores a whole session unconditionally (write-behind) and announces it.
/// ARGV: v, d, c, u, t, expires_at, channel, message.
const STORE_ANY: &str = r"
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'c', ARGV[3], 'u', ARGV[4], 't', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
";

/// Writes data (mode 'w') or only refreshes the expiry and TTL (mode 't'),
/// checking the expected version atomically, then announces the change.
/// ARGV: expected ('' = any), data, now, ttl ('' = keep), max lifetime
/// ('' = none), channel, message, mode.
/// Returns {-1} (missing), {-2, v} (version mismatch) or {v, c, u, t,
/// expires_at}, with the data appended for a touch.
const WRITE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'c', 't', 'u')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= v then return {-2, v} end
local now = tonumber(ARGV[3])
local created = tonumber(cur[2])
local ttl = tonumber(cur[3])
if ARGV[4] ~= '' then ttl = tonumber(ARGV[4]) end
local exp = now + ttl
if ARGV[5] ~= '' then exp = math.min(exp, created + tonumber(ARGV[5])) end
if exp <= now then
  redis.call('DEL', KEYS[1])
  return {-1}
end
local updated = tonumber(cur[4])
if ARGV[8] == 'w' then
  v = v + 1
  updated = now
  redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2], 'u', now, 't', ttl)
else
  redis.call('HSET', KEYS[1], 't', ttl)
end
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('PUBLISH', ARGV[6], ARGV[7])
if ARGV[8] == 'w' then return {v, created, updated, ttl, exp} end
return {v, created, updated, ttl, exp, redis.call('HGET', KEYS[1], 'd')}
";

/// Deletes a session (only at version ARGV[3] unless it is '') and
/// announces it: 1 deleted, 0 not there (or at another version).
const DELETE: &str = r"
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'v') ~= ARGV[3] then return 0 end
local n = redis.call('DEL', KEYS[1])
if n == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return n
";

/// The scripts, loaded once (Redis caches them by SHA).
#[derive(Debug)]
pub struct Scripts {
    pub read: Script,
    pub store_new: Script,
    pub store_any: Script,
    pub write: Script,
    pub delete: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            read: Script::new(READ),
            store_new: Script::new(STORE_NEW),
            store_any: Script::new(STORE_ANY),
            write: Script::new(WRITE),
            delete: Script::new(DELETE),
        }
    }
}

/// What [`WRITE`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// No such session in Redis.
    Missing,
    /// The session is at `current`, not the expected version.
    Mismatch {
        /// The version in Redis.
        current: u64,
    },
    /// Written.
    Done {
        /// New (or, for a touch, unchanged) version.
        version: u64,
        /// Creation time.
        created_at_ms: u64,
        /// Last data write.
        updated_at_ms: u64,
        /// Idle TTL now in force.
        ttl_ms: u64,
        /// New expiry.
        expires_at_ms: u64,
        /// The session's data, for a touch.
        data: Option<Bytes>,
    },
}

impl FromRedisValue for WriteOutcome {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut fields: Vec<Value> = FromRedisValue::from_redis_value(value)?;
        let data = if fields.len() == 6 {
            fields.pop().map(Vec::<u8>::from_redis_value).transpose()?
        } else {
            None
        };
        let numbers: Vec<i64> = fields
            .into_iter()
            .map(i64::from_redis_value)
            .collect::<Result<_, _>>()?;
        let unsigned = |index: usize| numbers.get(index).map_or(0, |&n| n.max(0) as u64);
        Ok(match numbers.first() {
            Some(-1) => Self::Missing,
            Some(-2) => Self::Mismatch {
                current: unsigned(1),
            },
            _ => Self::Done {
                version: unsigned(0),
                created_at_ms: unsigned(1),
                updated_at_ms: unsigned(2),
                ttl_ms: unsigned(3),
                expires_at_ms: unsigned(4),
                data: data.map(Bytes::from),
            },
        })
    }
}

/// A session as [`READ`] returns it.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub version: u64,
    pub data: Vec<u8>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub ttl_ms: u64,
    /// PEXPIRETIME: the key's expiry (negative when it has none).
    pub expires_at_ms: i64,
}

impl FromRedisValue for StoredSession {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let (version, data, created_at_ms, updated_at_ms, ttl_ms, expires_at_ms) =
            FromRedisValue::from_redis_value(value)?;
        Ok(Self {
            version,
            data,
            created_at_ms,
            updated_at_ms,
            ttl_ms,
            expires_at_ms,
        })
    }
}

impl StoredSession {
    /// The session, or `None` when it has no expiry set (not written by us).
    pub fn into_session(self, id: SessionId) -> Option<Session> {
        Some(Session {
            id,
            data: Bytes::from(self.data),
            version: self.version,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            ttl_ms: self.ttl_ms,
            expires_at_ms: u64::try_from(self.expires_at_ms).ok()?,
        })
    }
}

/// The arguments that store a whole session: v, d, c, u, t, expires_at.
pub fn session_args<'a>(
    script: &'a Script,
    key: &str,
    session: &Session,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(key);
    invocation
        .arg(session.version)
        .arg(session.data.as_ref())
        .arg(session.created_at_ms)
        .arg(session.updated_at_ms)
        .arg(session.ttl_ms)
        .arg(session.expires_at_ms);
    invocation
}
