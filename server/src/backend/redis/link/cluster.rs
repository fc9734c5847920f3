//! A Redis Cluster connection as sessiond uses it: the `redis` crate's
//! cluster connection behind a bound on commands in flight and a breaker
//! per master, so a dead master's slots fail fast (and are probed now and
//! then) instead of flooding the connection with commands that fail.
//!
//! Why: the crate's `ClusterConnection` (1.8.1) can deadlock for good when
//! a master dies under many concurrent commands (its slot refresh waits on
//! a lock that a request future holds but nobody polls any more; see
//! `tests/examples/redis_cluster_wedge.rs`). Fewer commands in flight and
//! no stream of failing commands make that rare; the link's watchdog
//! replaces a connection that wedged anyway. Scripts reach each node
//! through `EVAL` when it lacks them, never through a `SCRIPT LOAD` to
//! every node (see `scripts`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::Semaphore;

use scripts::{ScriptBodies, is_no_script};

mod scripts;

/// First wait before a failing master is tried again; it doubles per
/// failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before a failing master is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A failing master that has not been tried for this long past its
/// backoff counts as healthy again.
const FORGET_AFTER: Duration = Duration::from_secs(3);
/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The cluster slot of `key` (CRC16/XMODEM of the key, or of its
/// `{hash tag}`, modulo 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let crc = hashed.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    });
    crc % SLOTS as u16
}

/// The key a command works on: the first key of `EVALSHA`/`EVAL`, the
/// first argument of the others (`None` for keyless commands).
fn command_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()??;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        let keys = args.next()??;
        (keys != b"0").then(|| args.next().flatten()).flatten()
    } else if name.eq_ignore_ascii_case(b"PING") || name.eq_ignore_ascii_case(b"SCRIPT") {
        None
    } else {
        args.next().flatten()
    }
}

/// Whether `err` says the node serving the command is out of reach (as
/// opposed to an answer about the data). A `MOVED` that reaches us is one
/// whose target could not be reached within the client's retries.
fn is_node_failure(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::Moved)
        )
}

/// A master that failed: when it may be tried again.
#[derive(Debug)]
struct Failing {
    failures: u32,
    retry_at: Instant,
}

/// Which master serves each slot (as the cluster last said), and which
/// masters are failing.
#[derive(Debug)]
pub struct Masters {
    slots: RwLock<Vec<Option<Arc<str>>>>,
    failing: Mutex<HashMap<Arc<str>, Failing>>,
}

impl Default for Masters {
    fn default() -> Self {
        Self {
            slots: RwLock::new(vec![None; SLOTS]),
            failing: Mutex::default(),
        }
    }
}

impl Masters {
    /// Takes the slot ranges and masters of a `CLUSTER SLOTS` answer.
    pub fn update(&self, reply: &Value) {
        let mut slots = vec![None; SLOTS];
        for (first, last, master) in parse_cluster_slots(reply) {
            let master: Arc<str> = master.into();
            for slot in first..=last.min(SLOTS as u16 - 1) {
                slots[usize::from(slot)] = Some(master.clone());
            }
        }
        *self.slots.write() = slots;
    }

    /// Forgets every failure (a new connection starts afresh).
    pub fn reset(&self) {
        self.failing.lock().clear();
    }

    /// Masters failing now, for the log and readiness.
    pub fn failing(&self) -> Vec<String> {
        let mut masters: Vec<String> = self.failing.lock().keys().map(|m| m.to_string()).collect();
        masters.sort();
        masters
    }

    /// Whether the master of `slot` failed lately (new sessions avoid it).
    pub fn failed_lately(&self, slot: u16) -> bool {
        let Some(master) = self.slots.read()[usize::from(slot)].clone() else {
            return false;
        };
        self.failing
            .lock()
            .get(&master)
            .is_some_and(|state| Instant::now() < state.retry_at + FORGET_AFTER)
    }

    /// The master of `slot` if a command may go to it now: not failing,
    /// or failing but due for another try (then this command is the probe
    /// and the next ones wait for its outcome or the next backoff).
    fn admit(&self, slot: u16) -> Result<Option<Arc<str>>, RedisError> {
        let Some(master) = self.slots.read()[usize::from(slot)].clone() else {
            return Ok(None);
        };
        let mut failing = self.failing.lock();
        let now = Instant::now();
        if failing
            .get(&master)
            .is_some_and(|state| now >= state.retry_at + FORGET_AFTER)
        {
            failing.remove(&master);
        }
        if let Some(state) = failing.get_mut(&master) {
            if now < state.retry_at {
                // Not a kind that says "maybe sent": it was not sent.
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::HostUnreachable,
                    format!(
                        "the Redis Cluster master {master} serving slot {slot} is unreachable \
                         (tried again within {MAX_BACKOFF:?})"
                    ),
                )));
            }
            state.retry_at = now + backoff(state.failures);
        }
        Ok(Some(master))
    }

    /// Notes how a command sent to `master` went.
    fn record(&self, master: &Arc<str>, result: &RedisResult<Value>) {
        let mut failing = self.failing.lock();
        match result {
            Err(err) if is_node_failure(err) => {
                let state = failing.entry(master.clone()).or_insert(Failing {
                    failures: 0,
                    retry_at: Instant::now(),
                });
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Instant::now() + backoff(state.failures);
            }
            _ => {
                failing.remove(master);
            }
        }
    }
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(MAX_BACKOFF)
}

/// `(first slot, last slot, "host:port" of the master)` of a `CLUSTER
/// SLOTS` answer; entries it cannot read are left out.
fn parse_cluster_slots(reply: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let number = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(fields) = entry else {
                return None;
            };
            let Some(Value::Array(master)) = fields.get(2) else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = master.get(1).and_then(|port| match port {
                Value::Int(n) => Some(*n),
                _ => None,
            })?;
            Some((
                number(fields.first()?)?,
                number(fields.get(1)?)?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

/// Runs a keyless command on any one reachable node of the cluster,
/// outside the bound on commands in flight (health checks).
pub async fn on_any_node(conn: &ClusterConnection, cmd: Cmd) -> RedisResult<Value> {
    conn.clone()
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await
}

/// The crate's cluster connection with the bound and the breaker.
#[derive(Clone)]
pub struct ClusterConn {
    /// The connection itself.
    pub inner: ClusterConnection,
    masters: Arc<Masters>,
    in_flight: Arc<Semaphore>,
    scripts: Arc<ScriptBodies>,
}

impl ClusterConn {
    /// Wraps `inner`, sharing `masters`, with at most `max_in_flight`
    /// commands in flight (a bound of its own: a replaced connection's
    /// stuck commands do not hold up the new one).
    pub fn new(inner: ClusterConnection, masters: Arc<Masters>, max_in_flight: usize) -> Self {
        Self {
            inner,
            masters,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            scripts: Arc::default(),
        }
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if let Some(sha) = self.scripts.remember(cmd) {
                // Each node gets the body when it first needs it (see
                // `scripts`), so nothing is sent now.
                return Ok(Value::BulkString(sha.into_bytes()));
            }
            let master = match command_key(cmd) {
                Some(key) => self.masters.admit(key_slot(key))?,
                None => None,
            };
            let _turn = self.in_flight.acquire().await.map_err(|_| {
                RedisError::from((ErrorKind::Client, "the Redis Cluster connection was closed"))
            })?;
            let mut result = self.inner.req_packed_command(cmd).await;
            if is_no_script(&result)
                && let Some(eval) = self.scripts.as_eval(cmd)
            {
                result = self.inner.req_packed_command(&eval).await;
            }
            if let Some(master) = &master {
                self.masters.record(master, &result);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"bar"), 5_061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn keys_of_the_commands_sessiond_sends() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("abc").arg(1).arg("sessiond:x").arg("more");
        assert_eq!(command_key(&evalsha), Some(&b"sessiond:x"[..]));
        let mut pexpireat = redis::cmd("PEXPIREAT");
        pexpireat.arg("sessiond:y").arg(5).arg("GT");
        assert_eq!(command_key(&pexpireat), Some(&b"sessiond:y"[..]));
        assert_eq!(command_key(&redis::cmd("PING")), None);
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        assert_eq!(command_key(&keyless), None);
    }

    #[test]
    fn a_failing_master_is_probed_after_a_growing_backoff() {
        let masters = Masters::default();
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16_383),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
            ]),
        ])]);
        masters.update(&reply);
        let master = masters.admit(42).unwrap().expect("slot 42 has a master");
        assert_eq!(&*master, "127.0.0.1:7000");
        let refused: RedisResult<Value> =
            Err(RedisError::from((ErrorKind::Io, "connection refused")));
        masters.record(&master, &refused);
        assert!(masters.failed_lately(42));
        assert!(masters.admit(42).is_err(), "fails fast within the backoff");
        assert_eq!(masters.failing(), vec!["127.0.0.1:7000".to_owned()]);
        std::thread::sleep(FIRST_BACKOFF);
        assert!(masters.admit(42).is_ok(), "one probe after the backoff");
        assert!(masters.admit(42).is_err(), "only one");
        masters.record(&master, &Ok(Value::Okay));
        assert!(masters.admit(42).is_ok());
        assert!(masters.failing().is_empty());
        assert!(!masters.failed_lately(42));
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
