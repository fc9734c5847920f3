//! Cross-node cache coherence.
//!
//! Redis records, in each session's hash, which nodes may hold a cached
//! copy (field `o`: a node adds itself when it reads the session through,
//! a write leaves only the writer). A write that finds other nodes there
//! publishes an invalidation from inside its Lua script, and the writer
//! does not acknowledge the write until each of those nodes has dropped
//! its copy and said so (an ack on the same channel), or until a silent
//! node can no longer trust its copy.
//!
//! A node trusts its cached copies only while its own heartbeat comes back
//! to it: every [`HEARTBEAT_INTERVAL`] it publishes a beat on the channel
//! (with its heartbeat key, in one script), and it serves copies only while
//! a beat it sent less than [`HEARTBEAT_TRUST`] ago has come back through
//! its subscription. Messages on the channel arrive in the order Redis
//! took them and are applied in that order, so by then every invalidation
//! published before that beat has been applied. A writer whose write was
//! answered at `t` and that has no ack from a node by `t +
//! HEARTBEAT_TRUST` answers anyway: the node's trust now rests on a beat
//! sent before the write ran, older than that, or on one sent after it,
//! which came back behind the invalidation. A node frozen, overloaded or
//! cut off from its subscription therefore reads through to Redis instead
//! of answering a copy a write has replaced, and so a read never returns
//! a version older than one a write already acknowledged.
//!
//! Each announcement is recorded with the session (`a`: when, and to whom;
//! a deletion's in its tombstone). A later write announces to, and waits
//! for, the nodes of an announcement that may still be owed an ack as well
//! as the cachers listed since, and a replay (a write or delete found
//! already done by an earlier run, whose writer may not have answered yet)
//! publishes it again and waits for the same acks.
//!
//! A read that finds a session's cacher list full drops the nodes without
//! a heartbeat key from it, and tells them as a write would (publishes an
//! invalidation and records the announcement): a node that only seemed
//! dead still drops its copy, in order, before its next beat comes back.
//!
//! While the subscription is down the cache is not trusted, and it is
//! cleared when the subscription comes back, so no copy that missed an
//! invalidation is ever served. A subscription through which the node's
//! own beats stop coming back (silently dead) is made again. (The backend
//! also serves its memory while its link to Redis is down: see
//! `trust_memory`.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use sessiond_proto::SessionId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::link::{RedisLink, redacted, within};
use super::queued::QueuedIds;
use super::script_call::ScriptCall;
use crate::store::Store;

/// How long connecting the subscriber, and its `SUBSCRIBE`, may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A subscribed node beats this often: it refreshes its heartbeat key and
/// publishes a beat on the channel (one script)...
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// ...trusts its cached copies only while a beat it sent this recently has
/// come back through its subscription, and a writer waits this long after
/// its write's answer for an ack before it answers anyway.
pub const HEARTBEAT_TRUST: Duration = Duration::from_millis(250);
/// A node's heartbeat key lives this long after its latest beat, longer
/// than the trust a beat gives: a writer does not wait for a node without
/// one (it died, or lost Redis, and trusts no copy).
const HEARTBEAT_TTL: Duration = Duration::from_millis(1000);
/// While Redis answers, a subscription through which none of the node's
/// own beats came back for this long is given up and made again: it
/// silently stopped delivering (a half-open connection), and without it
/// the node would read every session through, and stay listed among
/// cachers that writers wait for, for good.
const SILENCE_LIMIT: Duration = Duration::from_secs(2);

/// Refreshes the heartbeat key KEYS[1] for ARGV[1] ms and publishes the
/// beat ARGV[3] on the channel ARGV[2], in one step: a beat that comes
/// back always comes with a key that outlives the trust it gives.
const BEAT: &str = r"
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
";

/// First byte of an invalidation: `I`, writer (8), session (16), nonce (8).
const INVALIDATION: u8 = b'I';
const INVALIDATION_BYTES: usize = 33;
/// First byte of an ack: `A`, to (8), from (8), nonce (8).
const ACK: u8 = b'A';
const ACK_BYTES: usize = 25;
/// First byte of a beat: `B`, node (8), when it was sent (8: nanoseconds
/// since the node's clock started, never 0).
const BEAT_MARK: u8 = b'B';
const BEAT_BYTES: usize = 17;

/// A writer waiting for acks of one invalidation.
#[derive(Debug, Default)]
struct Waiter {
    acked: Mutex<HashSet<u64>>,
    notify: Notify,
}

/// This node's view of invalidations.
#[derive(Debug)]
pub struct Invalidations {
    /// Channel name.
    pub channel: String,
    /// This node's id, so it ignores its own messages.
    pub node_id: u64,
    /// Prefix of the nodes' heartbeat keys.
    heartbeats: String,
    link: Arc<RedisLink>,
    live: AtomicBool,
    received: AtomicU64,
    waiters: Mutex<HashMap<u64, Arc<Waiter>>>,
    beat_script: redis::Script,
    /// Where the node's beat times count from.
    clock: Instant,
    /// When the latest beat that came back was sent (nanoseconds since
    /// `clock`; 0: none yet).
    confirmed_beat: AtomicU64,
    /// Sessions whose newest write is queued for Redis (write-behind): a
    /// cache clear keeps them.
    queued: Arc<QueuedIds>,
}

/// One announced change: the message the write script publishes, and the
/// registration that collects the acks to it.
pub struct Announcement<'a> {
    invalidations: &'a Invalidations,
    nonce: u64,
    waiter: Arc<Waiter>,
    /// The message to publish.
    pub message: Vec<u8>,
}

impl Announcement<'_> {
    /// Waits until every live node of `others` (but this one) acked, or
    /// until [`HEARTBEAT_TRUST`] after `answered` (when Redis's answer to
    /// the write, or to a replay that published the change again, arrived):
    /// a node silent until then no longer trusts the copy it was not told
    /// to drop. Nodes without a heartbeat are not waited for.
    pub async fn acked_by(self, others: &[u64], answered: Instant) {
        let node_id = self.invalidations.node_id;
        let others: Vec<u64> = others
            .iter()
            .copied()
            .filter(|&node| node != node_id)
            .collect();
        if others.is_empty() {
            return;
        }
        let others = self.invalidations.alive(&others).await;
        self.wait_for(&others, answered + HEARTBEAT_TRUST).await;
    }

    /// Waits until every node of `others` acked, at most until `deadline`.
    async fn wait_for(&self, others: &[u64], deadline: Instant) {
        if others.is_empty() {
            return;
        }
        let all_acked = || {
            let acked = self.waiter.acked.lock();
            others.iter().all(|node| acked.contains(node))
        };
        let wait = async {
            loop {
                let notified = self.waiter.notify.notified();
                if all_acked() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline.into(), wait)
            .await
            .is_err()
        {
            metrics::counter!("sessiond_invalidation_ack_timeouts_total").increment(1);
            tracing::warn!(?others, "some cachers did not ack an invalidation in time");
        }
    }
}

impl Drop for Announcement<'_> {
    fn drop(&mut self) {
        self.invalidations.waiters.lock().remove(&self.nonce);
    }
}

impl Invalidations {
    /// Invalidations of the sessions under `prefix` for the node
    /// `node_id`, acked and announced through `link`; a cache clear keeps
    /// the sessions `queued` holds.
    pub fn new(prefix: &str, node_id: u64, link: Arc<RedisLink>, queued: Arc<QueuedIds>) -> Self {
        Self {
            channel: format!("{prefix}invalidations"),
            node_id,
            heartbeats: format!("{prefix}node:"),
            link,
            live: AtomicBool::new(false),
            received: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            beat_script: redis::Script::new(BEAT),
            clock: Instant::now(),
            confirmed_beat: AtomicU64::new(0),
            queued,
        }
    }

    /// What a node's id follows in its heartbeat key.
    pub fn heartbeat_prefix(&self) -> &str {
        &self.heartbeats
    }

    fn heartbeat_key(&self, node: u64) -> String {
        format!("{}{node:x}", self.heartbeats)
    }

    /// The nodes of `nodes` whose heartbeat key exists (all of them when
    /// Redis cannot say).
    async fn alive(&self, nodes: &[u64]) -> Vec<u64> {
        let Ok(conn) = self.link.conn() else {
            return nodes.to_vec();
        };
        let checks = nodes.iter().map(|&node| {
            let mut conn = conn.clone();
            async move {
                let exists = redis::cmd("EXISTS")
                    .arg(self.heartbeat_key(node))
                    .query_async::<i64>(&mut conn)
                    .await;
                (node, !matches!(exists, Ok(0)))
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(node, alive)| alive.then_some(node))
            .collect()
    }

    /// Refreshes this node's heartbeat key and publishes a beat (while
    /// subscribed); its trust is renewed when the beat comes back.
    async fn beat(self: Arc<Self>) {
        let Ok(mut conn) = self.link.conn() else {
            return;
        };
        // Taken before the script runs: the trust counts from no later
        // than the moment Redis publishes the beat.
        let message = self.beat_message(self.clock.elapsed());
        let beat = ScriptCall::new(&self.beat_script, [&*self.heartbeat_key(self.node_id)], 64)
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .arg(&self.channel)
            .arg(message)
            .invoke_async::<i64>(&mut conn)
            .await;
        if let Err(err) = beat {
            tracing::debug!(%err, "could not beat (heartbeat key and beat message)");
        }
    }

    /// This node's beat, sent `sent` after its clock started.
    fn beat_message(&self, sent: Duration) -> Vec<u8> {
        let sent = u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX).max(1);
        let mut message = Vec::with_capacity(BEAT_BYTES);
        message.push(BEAT_MARK);
        message.extend_from_slice(&self.node_id.to_be_bytes());
        message.extend_from_slice(&sent.to_be_bytes());
        message
    }

    /// The message announcing a change of `id` by this node, registered to
    /// collect acks. Register before the write runs: an ack can arrive
    /// before the write's own answer.
    pub fn announce(&self, id: &SessionId) -> Announcement<'_> {
        let nonce = fastrand::u64(1..);
        let waiter = Arc::new(Waiter::default());
        self.waiters.lock().insert(nonce, waiter.clone());
        let mut message = Vec::with_capacity(INVALIDATION_BYTES);
        message.push(INVALIDATION);
        message.extend_from_slice(&self.node_id.to_be_bytes());
        message.extend_from_slice(id.as_bytes());
        message.extend_from_slice(&nonce.to_be_bytes());
        Announcement {
            invalidations: self,
            nonce,
            waiter,
            message,
        }
    }

    /// A message announcing a change of `id` that nobody acks (write-behind).
    pub fn broadcast(&self, id: &SessionId) -> Vec<u8> {
        let mut message = Vec::with_capacity(INVALIDATION_BYTES);
        message.push(INVALIDATION);
        message.extend_from_slice(&self.node_id.to_be_bytes());
        message.extend_from_slice(id.as_bytes());
        message.extend_from_slice(&0u64.to_be_bytes());
        message
    }

    /// Whether cached copies can be trusted: the subscription is up and a
    /// beat sent less than [`HEARTBEAT_TRUST`] ago came back through it.
    pub fn is_live(&self) -> bool {
        let confirmed = self.confirmed_beat.load(Ordering::Acquire);
        self.live.load(Ordering::Acquire)
            && confirmed != 0
            && Duration::from_nanos(confirmed) + HEARTBEAT_TRUST > self.clock.elapsed()
    }

    /// How long no beat of this node has come back through a subscription
    /// made at `subscribed_at` (times since `clock`).
    fn silent_since(&self, subscribed_at: Duration) -> Duration {
        let confirmed = Duration::from_nanos(self.confirmed_beat.load(Ordering::Acquire));
        self.clock
            .elapsed()
            .saturating_sub(confirmed.max(subscribed_at))
    }

    /// A counter that moves whenever another node's change arrives (or the
    /// cache is cleared): a cache fill that began before a move must not be
    /// kept, it may hold what was just invalidated.
    pub fn epoch(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Applies one message; returns the ack to publish, if one is due.
    fn apply(&self, payload: &[u8], store: &Store) -> Option<Vec<u8>> {
        let word = |at: usize| {
            payload
                .get(at..at + 8)
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map(u64::from_be_bytes)
        };
        match (payload.first(), payload.len()) {
            (Some(&INVALIDATION), INVALIDATION_BYTES) => {
                let writer = word(1)?;
                if writer == self.node_id {
                    return None;
                }
                let id = <[u8; 16]>::try_from(payload.get(9..25)?).ok()?;
                self.received.fetch_add(1, Ordering::AcqRel);
                store.delete(&SessionId::from_bytes(id));
                let nonce = word(25)?;
                (nonce != 0).then(|| {
                    let mut ack = Vec::with_capacity(ACK_BYTES);
                    ack.push(ACK);
                    ack.extend_from_slice(&writer.to_be_bytes());
                    ack.extend_from_slice(&self.node_id.to_be_bytes());
                    ack.extend_from_slice(&nonce.to_be_bytes());
                    ack
                })
            }
            (Some(&BEAT_MARK), BEAT_BYTES) => {
                if word(1)? == self.node_id {
                    self.confirmed_beat.fetch_max(word(9)?, Ordering::AcqRel);
                }
                None
            }
            (Some(&ACK), ACK_BYTES) => {
                if word(1)? == self.node_id {
                    let (from, nonce) = (word(9)?, word(17)?);
                    let waiter = self.waiters.lock().get(&nonce).cloned();
                    if let Some(waiter) = waiter {
                        waiter.acked.lock().insert(from);
                        waiter.notify.notify_waiters();
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Subscribes (to one of `urls`, in turn) and applies invalidations to
    /// `store` until `shutdown`, resubscribing after any failure. While
    /// subscribed, the node's heartbeat key is kept alive.
    pub async fn run(
        self: Arc<Self>,
        urls: Vec<String>,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) {
        let mut attempt = 0usize;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            if let Err(err) = self.clone().subscribe(url, &store, &shutdown).await {
                let err = err.to_string();
                if err != last_error {
                    let url = redacted(url);
                    tracing::warn!(%url, %err, "invalidation subscription failed; retrying");
                    last_error = err;
                }
            }
            if self.live.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "lost the invalidation subscription; cache bypassed until it is back"
                );
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn subscribe(
        self: Arc<Self>,
        url: &str,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let client = redis::Client::open(url)?;
        // Neither step has a timeout of its own: a Redis (or a path to it)
        // gone silent would hold this task, and the node's shutdown with
        // it, for good.
        let mut pubsub = within(SUBSCRIBE_TIMEOUT, "connect", client.get_async_pubsub()).await?;
        within(
            SUBSCRIBE_TIMEOUT,
            "SUBSCRIBE",
            pubsub.subscribe(&self.channel),
        )
        .await?;
        // Writers wait for this node's acks only while its heartbeat is
        // alive: beat before any copy can be cached.
        self.clone().beat().await;
        // Copies cached before now may have missed invalidations (a write
        // of this node's still queued for Redis is newer than any). The
        // epoch moves first, as for an invalidation, so that a cache fill
        // whose copy the clear missed sees it move and drops its copy.
        self.received.fetch_add(1, Ordering::AcqRel);
        let dropped = store.clear_except(|id| self.queued.contains(id));
        self.live.store(true, Ordering::Release);
        let subscribed_at = self.clock.elapsed();
        tracing::info!(dropped, channel = %self.channel, "subscribed to invalidations");
        let mut messages = pubsub.on_message();
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        // After a stall, one beat, not one per missed tick.
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    if self.silent_since(subscribed_at) > SILENCE_LIMIT && self.link.is_up() {
                        return Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "none of this node's beats came back through the subscription",
                        )));
                    }
                    tokio::spawn(self.clone().beat());
                }
                message = messages.next() => match message {
                    Some(message) => {
                        if let Some(ack) = self.apply(message.get_payload_bytes(), store) {
                            tokio::spawn(publish(self.link.clone(), self.channel.clone(), ack));
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Publishes an ack; a lost ack only makes the writer wait its timeout.
async fn publish(link: Arc<RedisLink>, channel: String, message: Vec<u8>) {
    let Ok(mut conn) = link.conn() else {
        return;
    };
    let sent = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async::<i64>(&mut conn)
        .await;
    if let Err(err) = sent {
        tracing::debug!(%err, "could not publish an invalidation ack");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreConfig, SystemClock};

    /// A store, and a link with no Redis behind it (every node counts as
    /// alive).
    fn store_and_link() -> (Store, Arc<RedisLink>) {
        let store = Store::new(StoreConfig::default(), Arc::new(SystemClock));
        let link = RedisLink::new(super::super::RedisTarget::Single(
            "redis://127.0.0.1:1".into(),
        ))
        .expect("a link");
        (store, link)
    }

    #[tokio::test]
    async fn an_invalidation_drops_the_copy_and_is_acked_to_its_writer() {
        let (store, link) = store_and_link();
        let writer = Invalidations::new("p:", 1, link.clone(), Arc::default());
        let cacher = Invalidations::new("p:", 2, link, Arc::default());
        let id = SessionId::random();
        store
            .create(id, bytes::Bytes::from_static(b"{}"), 60_000, None, None)
            .unwrap();
        let announcement = writer.announce(&id);
        let ack = cacher.apply(&announcement.message, &store).expect("an ack");
        assert!(store.peek(&id).is_none(), "the copy is dropped");
        assert_eq!(cacher.epoch(), 1);
        // The writer ignores its own invalidation and takes the ack.
        assert_eq!(writer.apply(&announcement.message, &store), None);
        assert_eq!(writer.apply(&ack, &store), None);
        let wait = announcement.wait_for(&[2], Instant::now() + Duration::from_secs(5));
        tokio::time::timeout(Duration::from_millis(50), wait)
            .await
            .expect("acked without waiting for the timeout");
    }

    /// Copies are trusted only while the subscription is up and a beat this
    /// node sent less than `HEARTBEAT_TRUST` ago came back through it.
    #[tokio::test]
    async fn copies_are_trusted_only_while_a_recent_own_beat_came_back() {
        let (store, link) = store_and_link();
        let mut node = Invalidations::new("p:", 2, link.clone(), Arc::default());
        node.clock = Instant::now() - Duration::from_secs(5);
        let other = Invalidations::new("p:", 3, link, Arc::default());
        node.live.store(true, Ordering::Release);
        assert!(!node.is_live(), "no beat came back yet");
        let now = node.clock.elapsed();
        assert_eq!(node.apply(&other.beat_message(now), &store), None);
        assert!(
            !node.is_live(),
            "another node's beat says nothing of this one"
        );
        let late = now - HEARTBEAT_TRUST - Duration::from_millis(10);
        assert_eq!(node.apply(&node.beat_message(late), &store), None);
        assert!(!node.is_live(), "a beat sent longer ago than the trust");
        node.apply(&node.beat_message(now), &store);
        assert!(node.is_live(), "a beat sent just now");
        node.apply(&node.beat_message(late), &store);
        assert!(
            node.is_live(),
            "an older beat coming back late takes nothing away"
        );
        node.live.store(false, Ordering::Release);
        assert!(!node.is_live(), "the subscription is down");
    }
}
