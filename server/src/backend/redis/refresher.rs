//! Sliding expiry in Redis: reads push a session's expiry in memory at
//! once; Redis is told lazily, because every read telling it (one
//! `PEXPIREAT ... GT` per session per 100 ms) cost Redis more than the
//! writes did.
//!
//! The refresher remembers, for each session a read slid, the expiry Redis
//! holds and the one this node wants. The wanted expiry goes out with the
//! next coalesced flush once it is ahead of Redis's by the session's drift
//! allowance (an eighth of its TTL, at most a minute), and in any case
//! before Redis's own expiry comes near; a read of a key that would expire
//! in Redis within [`SYNC_MARGIN_MS`] refreshes it before answering. So a
//! session used within its TTL never expires in Redis; only a node that
//! dies before its flush can leave Redis's expiry short, by at most the
//! drift allowance.
//!
//! A flush sends at most [`MAX_CONCURRENT`] refreshes at once, and the
//! refreshes that failed (their Redis master is down) wait for a backoff
//! that grows while they keep failing, so a failing Redis is never
//! flooded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use sessiond_proto::SessionId;
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::lagging::{Ahead, Lagging};
use super::link::{RedisLink, SHUTDOWN_FLUSH_DEADLINE};
use super::script_call::ScriptCall;
use super::scripts::{REFRESH, key};
use crate::store::Session;

/// What [`REFRESH`] answers when the session has another TTL in Redis.
const OTHER_TTL: i64 = -1;
/// How often coalesced expiry refreshes are flushed to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A read of a session whose Redis expiry is closer than this refreshes
/// Redis before answering.
pub const SYNC_MARGIN_MS: u64 = 2_000;
/// Refreshes one flush has in flight at most.
pub const MAX_CONCURRENT: usize = 8;
/// Longest wait before failed refreshes are tried again (the wait starts
/// at one flush interval and doubles per failed attempt).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Most a session's wanted expiry runs ahead of Redis's before it is
/// pushed (less for TTLs under 8 minutes: an eighth of the TTL).
const MAX_DRIFT_MS: u64 = 60_000;
/// Every this many flushes, the sessions whose Redis expiry comes within
/// [`DEADLINE_MARGIN_MS`] get their wanted expiry pushed.
const DEADLINE_SCAN_FLUSHES: u32 = 10;
/// How close to Redis's expiry a lagging one is pushed: the sync margin
/// plus three deadline scans (one second apart).
const DEADLINE_MARGIN_MS: u64 = SYNC_MARGIN_MS + 3_000;

/// How far a session's wanted expiry may run ahead of Redis's before a
/// flush pushes it.
fn drift_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 8).clamp(FLUSH_INTERVAL.as_millis() as u64, MAX_DRIFT_MS)
}

/// The expiry Redis holds for a session, as a caller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Just read from Redis.
    Read(u64),
    /// The session's expiry in memory before this read: what Redis holds,
    /// unless this node slid it since without pushing it (the refresher
    /// then knows better).
    Assumed(u64),
}

impl Ahead {
    /// The expiry this node wants, to push.
    fn push(&self) -> Push {
        Push {
            expires_at_ms: self.wanted,
            ttl_ms: self.ttl_ms,
        }
    }
}

/// An expiry to push to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// The session's expiry, as this node slid it.
    pub expires_at_ms: u64,
    /// The idle TTL it was slid by: Redis pushes nothing once a write gave
    /// the session another.
    pub ttl_ms: u64,
}

impl Push {
    /// The expiry of `session` as it is now.
    pub fn of(session: &Session) -> Self {
        Self {
            expires_at_ms: session.expires_at_ms,
            ttl_ms: session.ttl_ms,
        }
    }
}

/// Refreshes that failed, and when they are tried again.
#[derive(Debug)]
struct Failed {
    refreshes: HashMap<SessionId, Push>,
    attempts: u32,
    due: Instant,
}

/// Expiry refreshes waiting to be sent.
#[derive(Debug)]
pub struct ExpiryRefresher {
    prefix: String,
    link: Arc<RedisLink>,
    /// The event log's expiry index, moved along with each expiry.
    expiry_index: Option<String>,
    script: redis::Script,
    /// Sessions whose wanted expiry is later than Redis's.
    ahead: Mutex<Lagging>,
    /// Refreshes due at the next flush.
    pending: Mutex<HashMap<SessionId, Push>>,
    failed: Mutex<Failed>,
}

impl ExpiryRefresher {
    /// A refresher writing through `link` (and moving each session in the
    /// event log's expiry index, if there is one).
    pub fn new(prefix: String, link: Arc<RedisLink>, expiry_index: Option<String>) -> Self {
        Self {
            prefix,
            link,
            expiry_index,
            script: redis::Script::new(REFRESH),
            ahead: Mutex::new(Lagging::default()),
            pending: Mutex::new(HashMap::new()),
            failed: Mutex::new(Failed {
                refreshes: HashMap::new(),
                attempts: 0,
                due: Instant::now(),
            }),
        }
    }

    /// Queues `push` of `id`'s expiry for the next flush (a refresh that
    /// could not be made now).
    pub fn note(&self, id: SessionId, push: Push) {
        self.pending.lock().insert(id, push);
    }

    /// Records that a read at `now_ms` slid `id`'s expiry to `wanted` (its
    /// idle TTL being `ttl_ms`), Redis holding `held`. Returns whether
    /// Redis must be refreshed before the read answers (its key would
    /// expire within [`SYNC_MARGIN_MS`]); otherwise the refresh is queued
    /// when the drift allowance is used up, or left for a deadline scan.
    pub fn slid(&self, id: SessionId, held: Held, wanted: u64, ttl_ms: u64, now_ms: u64) -> bool {
        let mut ahead = self.ahead.lock();
        let entry = match (held, ahead.get(&id)) {
            // The session as Redis holds it now: what this node wanted
            // before came from an older copy (whose TTL may since have been
            // shortened by another node's write).
            (Held::Read(expiry), _) | (Held::Assumed(expiry), None) => Ahead {
                redis: expiry,
                wanted,
                ttl_ms,
            },
            (Held::Assumed(_), Some(known)) => Ahead {
                wanted: known.wanted.max(wanted),
                ttl_ms,
                ..known
            },
        };
        if entry.wanted <= entry.redis {
            ahead.remove(&id);
            return false;
        }
        ahead.set(id, entry);
        if entry.redis.saturating_sub(now_ms) < SYNC_MARGIN_MS {
            return true;
        }
        if entry.wanted - entry.redis >= drift_ms(entry.ttl_ms) {
            drop(ahead);
            self.note(id, entry.push());
        }
        false
    }

    /// Forgets what reads slid of `id`: this node has just written the
    /// session, setting the expiry Redis holds (or will hold, once a
    /// write-behind write ships) to that of its copy. A refresh still
    /// queued would push an expiry from before the write, which may have
    /// shortened the TTL.
    pub fn forget(&self, id: &SessionId) {
        self.ahead.lock().remove(id);
        self.pending.lock().remove(id);
        self.failed.lock().refreshes.remove(id);
    }

    /// Records that Redis holds `expires_at_ms` for `id` (a refresh
    /// pushed it).
    fn synced(&self, id: &SessionId, expires_at_ms: u64) {
        let mut ahead = self.ahead.lock();
        if let Some(mut entry) = ahead.get(id) {
            entry.redis = entry.redis.max(expires_at_ms);
            if entry.wanted <= entry.redis {
                ahead.remove(id);
            } else {
                ahead.set(*id, entry);
            }
        }
    }

    /// Queues the wanted expiry of every session whose Redis expiry comes
    /// within [`DEADLINE_MARGIN_MS`] of `now_ms` (up to a second more),
    /// once per expiry it was noted with.
    fn queue_deadlines(&self, now_ms: u64) {
        let due = self
            .ahead
            .lock()
            .due_by(now_ms.saturating_add(DEADLINE_MARGIN_MS));
        if !due.is_empty() {
            let due = due.into_iter().map(|(id, entry)| (id, entry.push()));
            self.pending.lock().extend(due);
        }
    }

    /// Refreshes one session's expiry in Redis now; Redis leaves it as it
    /// is if the session has another TTL by now (a write changed it since
    /// the slide, and set the expiry), and this node then forgets its
    /// slides.
    pub async fn refresh_now(&self, id: &SessionId, push: Push) -> Result<(), ReplicationError> {
        let mut conn = self.link.conn()?;
        let key = key(&self.prefix, id);
        let keys = std::iter::once(key.as_str()).chain(self.expiry_index.as_deref());
        let result = ScriptCall::new(&self.script, keys, 48)
            .arg(push.expires_at_ms)
            .arg(push.ttl_ms)
            .invoke_async::<i64>(&mut conn)
            .await;
        if self.link.observe(result)? == OTHER_TTL {
            self.ahead.lock().remove(id);
        } else {
            self.synced(id, push.expires_at_ms);
        }
        Ok(())
    }

    /// Flushes every `FLUSH_INTERVAL` until `drained` (after the node's
    /// last request), pushing the lagging expiries that come near every
    /// [`DEADLINE_SCAN_FLUSHES`] flushes; then [`Self::flush_at_shutdown`].
    /// `now_ms` reads the sessions' clock.
    pub async fn run(self: Arc<Self>, now_ms: impl Fn() -> u64, drained: CancellationToken) {
        let mut flushes = 0u32;
        loop {
            tokio::select! {
                () = drained.cancelled() => break,
                () = tokio::time::sleep(FLUSH_INTERVAL) => {}
            }
            flushes = flushes.wrapping_add(1);
            if flushes.is_multiple_of(DEADLINE_SCAN_FLUSHES) {
                self.queue_deadlines(now_ms());
            }
            self.flush().await;
        }
        self.flush_at_shutdown().await;
    }

    /// Pushes every expiry this node slid past Redis's, retrying failures
    /// for at most [`SHUTDOWN_FLUSH_DEADLINE`], and stops as soon as Redis
    /// is unreachable: these are reads' slides, not acknowledged writes,
    /// and what is not pushed leaves a session's Redis expiry short by at
    /// most its drift allowance, as a node killed before its flush does.
    async fn flush_at_shutdown(&self) {
        self.queue_deadlines(u64::MAX);
        let pushing = async {
            loop {
                self.flush().await;
                if self.failed.lock().refreshes.is_empty() {
                    return true;
                }
                tokio::time::sleep(FLUSH_INTERVAL).await;
            }
        };
        // A frozen Redis answers nothing: each try would wait out its
        // response timeout.
        let unreachable = async {
            while self.link.is_up() {
                tokio::time::sleep(FLUSH_INTERVAL).await;
            }
            false
        };
        let pushed = tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE, async {
            tokio::select! {
                pushed = pushing => pushed,
                pushed = unreachable => pushed,
            }
        })
        .await;
        let why = match pushed {
            Ok(true) => return,
            Ok(false) => "Redis unreachable at shutdown",
            Err(_) => "the shutdown's flush deadline passed",
        };
        tracing::warn!(
            left = self.ahead.lock().len(),
            "{why}; slid expiries not pushed (a session's Redis expiry may be short \
             by up to an eighth of its TTL, at most a minute)"
        );
    }

    async fn flush(&self) {
        let mut batch = std::mem::take(&mut *self.pending.lock());
        {
            let mut failed = self.failed.lock();
            if Instant::now() >= failed.due {
                // Newer notes win.
                for (id, push) in std::mem::take(&mut failed.refreshes) {
                    batch.entry(id).or_insert(push);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let failures: Vec<(SessionId, Push)> = futures_util::stream::iter(batch)
            .map(|(id, push)| async move {
                let result = self.refresh_now(&id, push).await;
                result.is_err().then_some((id, push))
            })
            .buffer_unordered(MAX_CONCURRENT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut failed = self.failed.lock();
        if failures.is_empty() {
            if failed.refreshes.is_empty() {
                failed.attempts = 0;
            }
            return;
        }
        failed.attempts = failed.attempts.saturating_add(1);
        let delay = FLUSH_INTERVAL.saturating_mul(1 << failed.attempts.min(8));
        failed.due = Instant::now() + delay.min(MAX_RETRY_DELAY);
        tracing::debug!(
            failed = failures.len(),
            retry_in = ?delay.min(MAX_RETRY_DELAY),
            "expiry refreshes failed; retrying later"
        );
        for (id, push) in failures {
            failed.refreshes.entry(id).or_insert(push);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::redis::RedisTarget;

    const TTL: u64 = 3_600_000;

    fn refresher() -> ExpiryRefresher {
        // No Redis behind the link (its lazy connection needs a runtime):
        // only the bookkeeping is under test.
        let link =
            RedisLink::new(RedisTarget::Single("redis://127.0.0.1:1".into())).expect("a link");
        ExpiryRefresher::new("p:".into(), link, None)
    }

    /// The expiries queued, by session.
    fn queued(refresher: &ExpiryRefresher) -> HashMap<SessionId, u64> {
        let pending = refresher.pending.lock();
        pending
            .iter()
            .map(|(id, push)| (*id, push.expires_at_ms))
            .collect()
    }

    #[tokio::test]
    async fn reads_within_the_drift_allowance_send_nothing() {
        let refresher = refresher();
        let id = SessionId::random();
        let now = 1_000_000;
        // Redis expires the key in an hour; reads push the wanted expiry
        // by seconds: less than an eighth of the TTL (capped at a minute).
        for read in 1..=59 {
            let at = now + read * 1_000;
            let slid = refresher.slid(id, Held::Assumed(now + TTL), at + TTL, TTL, at);
            assert!(!slid, "no refresh before answering at {read} s");
        }
        assert!(queued(&refresher).is_empty());
        // A minute ahead: the next flush pushes the latest wanted expiry.
        let at = now + 60_000;
        assert!(!refresher.slid(id, Held::Assumed(now + TTL), at + TTL, TTL, at));
        assert_eq!(queued(&refresher), HashMap::from([(id, at + TTL)]));
    }

    #[tokio::test]
    async fn a_key_about_to_expire_in_redis_is_refreshed_before_answering() {
        let refresher = refresher();
        let id = SessionId::random();
        let now = 1_000_000;
        let ttl = 10_000;
        assert!(refresher.slid(id, Held::Read(now + 1_500), now + ttl, ttl, now));
    }

    #[tokio::test]
    async fn lagging_expiries_are_pushed_before_redis_expires_the_key() {
        let refresher = refresher();
        let (near, far) = (SessionId::random(), SessionId::random());
        let now = 1_000_000;
        refresher.slid(near, Held::Read(now + 4_000), now + 4_500, TTL, now);
        refresher.slid(far, Held::Read(now + TTL), now + TTL + 500, TTL, now);
        assert!(queued(&refresher).is_empty());
        refresher.queue_deadlines(now);
        assert_eq!(queued(&refresher), HashMap::from([(near, now + 4_500)]));
        // At shutdown every lagging expiry goes out.
        refresher.queue_deadlines(u64::MAX);
        assert_eq!(queued(&refresher).len(), 2);
    }

    #[tokio::test]
    async fn what_redis_was_read_to_hold_replaces_what_was_assumed() {
        let refresher = refresher();
        let id = SessionId::random();
        let now = 1_000_000;
        refresher.slid(id, Held::Assumed(now + TTL), now + TTL + 1_000, TTL, now);
        // Another node pushed the key far ahead: nothing is left to do.
        refresher.slid(id, Held::Read(now + 2 * TTL), now + TTL + 2_000, TTL, now);
        assert_eq!(refresher.ahead.lock().len(), 0);
        assert!(queued(&refresher).is_empty());
    }
}
