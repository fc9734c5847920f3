//! The write-behind queue (`--redis-mode async`): writes acknowledged from
//! memory are shipped to Redis from a bounded queue by one worker, each
//! session's in order, many per round trip; a session whose write fails is
//! retried alone while the others go ahead. A full queue refuses writes
//! (503) rather than growing; the queue is flushed on graceful shutdown.
//! What a SIGKILL loses: the writes still queued.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sessiond_proto::{EventKind, SessionId, UserName};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::event_log::count_logged;
use super::link::SHUTDOWN_FLUSH_DEADLINE;
use super::queued::{Latest, QueuedIds};
use super::scripts::{Deleted, STORE_ANY_EXPIRED, STORE_ANY_SUPERSEDED, hex, tombstone};
use super::shared::Redis;
use crate::backend::api::{BackendError, Unavailable};
use crate::store::Session;

/// Most writes sent in one round of the worker.
const BATCH: usize = 256;
/// How long writes keep failing before the worker warns (and how often).
const FAILING_WARN_EVERY: Duration = Duration::from_secs(5);

/// One replicated change.
#[derive(Debug, Clone)]
enum Change {
    /// The session as it now is.
    Upsert(Session),
    /// The session is gone.
    Delete(SessionId),
}

#[derive(Debug)]
struct Queued {
    change: Change,
    /// The bytes of its data, counted while it is queued or held.
    charge: Charge,
    enqueued: Instant,
    /// Whether a send of this session's change failed before (and may
    /// have stored it).
    resent: bool,
}

/// The bytes of a queued change's data, counted in the queue's total until
/// the change is dropped (shipped, or replaced by a later one).
#[derive(Debug)]
struct Charge {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The sending side of the queue.
#[derive(Debug)]
pub struct WriteBehind {
    sender: mpsc::Sender<Queued>,
    capacity: usize,
    /// Changes queued or held for a retry, and places reserved by writes
    /// in progress.
    depth: Arc<AtomicU64>,
    /// The bytes of session data the queued and held changes hold (the
    /// only copy of a session whose memory copy was evicted).
    bytes: Arc<AtomicU64>,
    /// The most `bytes` may reach before writes are refused: the node's
    /// memory bound.
    max_bytes: Option<u64>,
    /// Changes ever queued (the next one's number in [`QueuedIds`]); held
    /// while one is put in the channel, so the channel holds them in order.
    sent: Mutex<u64>,
    /// Goes up each time changes have shipped.
    shipped: watch::Receiver<u64>,
    /// The sessions with changes queued.
    ids: Arc<QueuedIds>,
}

/// A reserved place in the queue: take it before applying a write to
/// memory, so a full queue refuses the write instead of losing it. It
/// counts in the queue's depth from the start; dropped unsent (the write
/// failed), it gives the place back.
pub struct Slot<'a> {
    permit: Option<mpsc::Permit<'a, Queued>>,
    depth: &'a AtomicU64,
    bytes: &'a Arc<AtomicU64>,
    sent: &'a Mutex<u64>,
    ids: &'a QueuedIds,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Slot<'_> {
    /// Queues the session as it now is.
    pub fn upsert(self, session: Session) {
        let user = session.user.clone();
        self.send(
            Latest::Written(session.clone()),
            Change::Upsert(session),
            user,
        );
    }

    /// Queues the delete of `id`, a session of `user` as far as the node
    /// knows.
    pub fn delete(self, id: SessionId, user: Option<UserName>) {
        self.send(Latest::Deleted, Change::Delete(id), user);
    }

    fn send(mut self, latest: Latest, change: Change, user: Option<UserName>) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut sent = self.sent.lock();
        let held_already = self.ids.queued(change.id(), *sent, latest, user);
        // Data a queued change of the session holds already (a touch's) is
        // counted once.
        let bytes = match &change {
            Change::Upsert(session) if !held_already => session.data.len() as u64,
            Change::Upsert(_) | Change::Delete(_) => 0,
        };
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let charge = Charge {
            total: self.bytes.clone(),
            bytes,
        };
        permit.send(Queued {
            change,
            charge,
            enqueued: Instant::now(),
            resent: false,
        });
        *sent += 1;
    }
}

impl WriteBehind {
    /// A queue of `capacity` writes holding at most about `max_bytes` of
    /// session data, and its worker's receiving end; `ids` follows which
    /// sessions have changes in it.
    pub fn new(capacity: usize, max_bytes: Option<u64>, ids: Arc<QueuedIds>) -> (Self, Worker) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let depth = Arc::new(AtomicU64::new(0));
        let (shipped, watched) = watch::channel(0);
        let writer = Self {
            sender,
            capacity,
            depth: depth.clone(),
            bytes: Arc::default(),
            max_bytes,
            sent: Mutex::new(0),
            shipped: watched,
            ids: ids.clone(),
        };
        let worker = Worker {
            receiver,
            depth,
            shipped,
            ids,
        };
        (writer, worker)
    }

    /// Waits (at most `within`) until every change of `id` queued so far
    /// is in Redis (however other sessions' writes fare, and whatever is
    /// queued meanwhile): what goes to Redis directly next then sees this
    /// node's writes of it.
    pub async fn caught_up_with(
        &self,
        id: &SessionId,
        within: Duration,
    ) -> Result<(), BackendError> {
        self.caught_up(within, |before| self.ids.holds_before(id, before))
            .await
    }

    /// Waits (at most `within`) until every change of `user`'s sessions
    /// queued so far is in Redis (however other users' writes fare, and
    /// whatever is queued meanwhile): a login or revocation then sees this
    /// node's writes of them.
    pub async fn caught_up_with_user(
        &self,
        user: &UserName,
        within: Duration,
    ) -> Result<(), BackendError> {
        self.caught_up(within, |before| self.ids.holds_user_before(user, before))
            .await
    }

    /// Waits (at most `within`) until `holds(n)` is false, `n` the number
    /// the next change queued gets now; checked again each time changes
    /// have shipped.
    async fn caught_up(
        &self,
        within: Duration,
        holds: impl Fn(u64) -> bool,
    ) -> Result<(), BackendError> {
        let before = *self.sent.lock();
        let mut shipped = self.shipped.clone();
        let waited = tokio::time::timeout(within, shipped.wait_for(|_| !holds(before))).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Unavailable::QueueBehind.into()),
        }
    }

    /// Places taken now: changes queued or held for a retry, and places
    /// reserved by writes still in progress.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// A place in the queue for a write, or [`Unavailable::QueueMemoryFull`]
    /// once the queued changes hold `max_bytes` of data (the writes in
    /// progress when it is reached may pass it by their own sizes), or
    /// what [`Self::reserve_for_delete`] refuses.
    pub fn reserve(&self) -> Result<Slot<'_>, BackendError> {
        if let Some(limit) = self.max_bytes
            && self.bytes.load(Ordering::Relaxed) >= limit
        {
            return Err(Unavailable::QueueMemoryFull { limit }.into());
        }
        self.reserve_for_delete()
    }

    /// A place in the queue for a delete (which holds no data: a logout is
    /// taken while writes are refused for their bytes), or
    /// [`Unavailable::QueueFull`] (the changes the worker holds for a retry
    /// count too, and so do places reserved by writes still in progress:
    /// concurrent writes never take more than the capacity).
    pub fn reserve_for_delete(&self) -> Result<Slot<'_>, BackendError> {
        let capacity = self.capacity;
        let full = || BackendError::from(Unavailable::QueueFull { capacity });
        self.depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |depth| {
                (depth < capacity as u64).then_some(depth + 1)
            })
            .map_err(|_| full())?;
        let Ok(permit) = self.sender.try_reserve() else {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(full());
        };
        Ok(Slot {
            permit: Some(permit),
            depth: &self.depth,
            bytes: &self.bytes,
            sent: &self.sent,
            ids: &self.ids,
        })
    }
}

/// The worker that drains the queue into Redis.
#[derive(Debug)]
pub struct Worker {
    receiver: mpsc::Receiver<Queued>,
    depth: Arc<AtomicU64>,
    shipped: watch::Sender<u64>,
    ids: Arc<QueuedIds>,
}

impl Worker {
    /// Ships queued changes to `redis`; once `drained` fires (no more
    /// writes can come) it flushes what is left, bounded by a deadline, and
    /// returns. Changes whose send failed are sent again together with
    /// those queued since, so one session's failing write (its Redis
    /// Cluster master down, say) holds up no other session's.
    pub async fn run(mut self, redis: Arc<Redis>, drained: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        // Changes held for a retry (each round takes up to `BATCH` more).
        let mut held = 0;
        let mut closing_since: Option<Instant> = None;
        let mut last_warned: Option<Instant> = None;
        metrics::gauge!("sessiond_redis_replication_lag_seconds").set(0.0);
        loop {
            if batch.is_empty() {
                let received = tokio::select! {
                    received = self.receiver.recv_many(&mut batch, BATCH) => received,
                    () = drained.cancelled(), if !self.receiver.is_closed() => {
                        self.receiver.close();
                        continue;
                    }
                };
                if received == 0 {
                    break;
                }
            } else {
                if drained.is_cancelled() && !self.receiver.is_closed() {
                    self.receiver.close();
                }
                while batch.len() < held + BATCH
                    && let Ok(queued) = self.receiver.try_recv()
                {
                    batch.push(queued);
                }
            }
            // The lag: how long the round's oldest change has waited, until
            // it reached Redis or, when its send failed, so far.
            let oldest = batch.iter().map(|queued| queued.enqueued).min();
            let failed = match ship(&batch, &redis).await {
                Ok(outcomes) => self.settle(&mut batch, outcomes, &redis),
                Err(err) => Some(err),
            };
            held = batch.len();
            let lag = oldest.map_or(0.0, |oldest| oldest.elapsed().as_secs_f64());
            metrics::gauge!("sessiond_redis_replication_lag_seconds").set(lag);
            if let Some(err) = failed {
                if self.receiver.is_closed() {
                    let since = *closing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > SHUTDOWN_FLUSH_DEADLINE {
                        let lost = self.depth.load(Ordering::Relaxed);
                        tracing::error!(lost, %err, "Redis unreachable at shutdown; queued writes lost");
                        return;
                    }
                }
                if last_warned.is_none_or(|at| at.elapsed() > FAILING_WARN_EVERY)
                    && lag > FAILING_WARN_EVERY.as_secs_f64()
                {
                    last_warned = Some(Instant::now());
                    tracing::warn!(held, lag_secs = lag, %err, "write-behind writes keep failing; retrying");
                } else {
                    tracing::debug!(held, %err, "write-behind writes failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                // A whole round got through: the shutdown deadline runs
                // again from the next failure (it bounds an outage, not
                // the flush of a long queue).
                closing_since = None;
            }
        }
    }

    /// Takes the changes of the sessions whose send succeeded out of
    /// `batch` (a write Redis refused, or found written over since, drops
    /// this node's copy); the others stay to be sent again, one per session
    /// (the latest, in the earliest one's place), so a retry never sends
    /// again a write that landed (it would undo another node's write made
    /// since) and a session that keeps failing holds one place. Returns the
    /// error of a send that failed, if any. A copy to drop is dropped on a
    /// task of its own, once the session's lock is free: the worker never
    /// waits for a lock whose holder may be waiting for the worker (a
    /// rotation waits for the session's queued writes under it).
    fn settle(
        &self,
        batch: &mut Vec<Queued>,
        outcomes: Vec<(SessionId, Result<Sent, ReplicationError>)>,
        redis: &Arc<Redis>,
    ) -> Option<ReplicationError> {
        let mut failed = HashSet::new();
        let mut not_stored = HashSet::new();
        let mut error = None;
        let changes = &redis.changes;
        for (id, outcome) in outcomes {
            match outcome {
                Ok(Sent::Stored) => {}
                Ok(Sent::Refused { version }) => {
                    not_stored.insert(id);
                    changes.spawn(forget_refused(redis.clone(), id, version));
                }
                // Stored, by the first send.
                Ok(Sent::Superseded) => {
                    changes.spawn(forget(redis.clone(), id));
                }
                Ok(Sent::Expired) => {
                    not_stored.insert(id);
                    changes.spawn(forget_expired(redis.clone(), id));
                }
                Err(err) => {
                    failed.insert(id);
                    error = Some(err);
                }
            }
        }
        let mut kept: Vec<Queued> = Vec::new();
        let mut places = HashMap::new();
        let mut done = Vec::new();
        let mut merged = Vec::new();
        for queued in std::mem::take(batch) {
            let id = queued.change.id();
            if !failed.contains(&id) {
                done.push(id);
                continue;
            }
            match places.entry(id) {
                Entry::Vacant(place) => {
                    place.insert(kept.len());
                    kept.push(Queued {
                        resent: true,
                        ..queued
                    });
                }
                Entry::Occupied(place) => {
                    // A later change of the session: it takes the place.
                    let held = &mut kept[*place.get()];
                    held.change = queued.change;
                    held.charge = queued.charge;
                    merged.push(id);
                }
            }
        }
        *batch = kept;
        let count = done.len() as u64;
        let replicated = done.iter().filter(|id| !not_stored.contains(id)).count();
        self.depth
            .fetch_sub(count + merged.len() as u64, Ordering::Relaxed);
        // Before the waiters wake: they look at the ids.
        self.ids.shipped(done);
        self.ids.merged(merged);
        if count > 0 {
            self.shipped.send_modify(|ships| *ships += 1);
        }
        metrics::counter!("sessiond_redis_replicated_total").increment(replicated as u64);
        error
    }
}

/// What became of a session's change that reached Redis.
enum Sent {
    /// Stored (or deleted).
    Stored,
    /// A write Redis refused: the session was deleted lately.
    Refused {
        /// The version the write would have stored.
        version: u64,
    },
    /// A write sent again found a later version written on it (after a
    /// first send that failed but had stored it).
    Superseded,
    /// A write held until its session's expiry had passed: not stored.
    Expired,
}

impl Change {
    fn id(&self) -> SessionId {
        match self {
            Self::Upsert(session) => session.id,
            Self::Delete(id) => *id,
        }
    }
}

/// A write Redis refused because another node deleted the session lately:
/// this node's copy goes too (it may have missed the delete's invalidation
/// while its subscription was down).
async fn forget_refused(redis: Arc<Redis>, id: SessionId, version: u64) {
    forget(redis, id).await;
    metrics::counter!("sessiond_redis_refused_writes_total").increment(1);
    tracing::debug!(%id, version, "a queued write of a session deleted elsewhere was dropped");
}

/// A write Redis did not store because its session's expiry had passed
/// (it was held in the queue that long): this node's copy goes too, so
/// it never serves what Redis does not hold.
async fn forget_expired(redis: Arc<Redis>, id: SessionId) {
    forget(redis, id).await;
    metrics::counter!("sessiond_redis_expired_writes_total").increment(1);
    tracing::debug!(%id, "a queued write of a session that had expired was not shipped");
}

/// Drops this node's copy of `id`, under the session's lock.
async fn forget(redis: Arc<Redis>, id: SessionId) {
    let _ordered = redis.lock(&id).await;
    redis.store.delete(&id);
}

/// `written` with the expiry reads have slid it to since (of the copy in
/// memory, or of the queued write once memory lost the copy): a write held
/// in the queue longer than its idle TTL must not ship an expiry that has
/// passed while the session was in use.
fn with_slid_expiry(redis: &Redis, written: &Session) -> Session {
    let (id, version) = (&written.id, written.version);
    let slid = [
        redis.store.expiry_of(id, version),
        redis.queued.expiry_of(id, version),
    ];
    Session {
        expires_at_ms: slid
            .into_iter()
            .flatten()
            .fold(written.expires_at_ms, u64::max),
        ..written.clone()
    }
}

/// The last change of each session in `batch`: a change carries the
/// session's whole state, so it supersedes the earlier ones, and sending
/// one per session lets the batch go out concurrently and each session's
/// changes be retried alone.
fn latest_per_session(batch: &[Queued]) -> Vec<&Queued> {
    let mut last = HashMap::with_capacity(batch.len());
    for (index, queued) in batch.iter().enumerate() {
        last.insert(queued.change.id(), index);
    }
    batch
        .iter()
        .enumerate()
        .filter(|(index, queued)| last.get(&queued.change.id()) == Some(index))
        .map(|(_, queued)| queued)
        .collect()
}

/// Sends one batch, the latest change of each session; the multiplexed
/// connection pipelines the scripts. Returns what became of each session's
/// change (an error when there is no connection at all).
async fn ship(
    batch: &[Queued],
    redis: &Redis,
) -> Result<Vec<(SessionId, Result<Sent, ReplicationError>)>, ReplicationError> {
    let (scripts, invalidations) = (&redis.scripts, &redis.invalidations);
    let events = redis.events.as_ref();
    let conn = redis.link.conn()?;
    let retention = redis.retention();
    let logs_updates = redis.logs_updates();
    let sends = latest_per_session(batch).into_iter().map(|queued| {
        let mut conn = conn.clone();
        let change = &queued.change;
        async move {
            let sent = match change {
                Change::Upsert(written) => {
                    let session = &with_slid_expiry(redis, written);
                    let cacher = hex(invalidations.node_id);
                    let mut call = redis.store_call(&scripts.store_any, session, &cacher);
                    call.arg(&invalidations.channel)
                        .arg(invalidations.broadcast(&session.id))
                        .arg("1")
                        .arg(EventKind::Created.as_str())
                        .arg(retention)
                        .arg(if logs_updates {
                            EventKind::Updated.as_str()
                        } else {
                            ""
                        });
                    if queued.resent {
                        call.arg(session.version);
                    }
                    let stored = call.invoke_async::<i64>(&mut conn).await;
                    stored.map(|stored| match stored {
                        0 => Sent::Refused {
                            version: session.version,
                        },
                        STORE_ANY_SUPERSEDED => Sent::Superseded,
                        STORE_ANY_EXPIRED => Sent::Expired,
                        logged => {
                            match logged {
                                2 => count_logged(events, EventKind::Created),
                                3 => count_logged(events, EventKind::Updated),
                                _ => {}
                            }
                            Sent::Stored
                        }
                    })
                }
                Change::Delete(id) => {
                    let key = redis.key(id);
                    let deleted = redis
                        .call_with_events(&scripts.delete, &[&key, &tombstone(&key)], 128)
                        .arg(&invalidations.channel)
                        .arg(invalidations.broadcast(id))
                        .arg("")
                        .arg("")
                        .arg(EventKind::Deleted.as_str())
                        .arg("")
                        .arg(retention)
                        .arg("")
                        .invoke_async::<Deleted>(&mut conn)
                        .await;
                    if let Ok(deleted) = &deleted {
                        if deleted.deleted {
                            count_logged(events, EventKind::Deleted);
                        }
                        // As a sync delete does: the key is gone, so is its
                        // entry in the user's index.
                        if let Some(user) = &deleted.user {
                            redis.index_remove(user, id).await;
                        }
                    }
                    deleted.map(|_| Sent::Stored)
                }
            };
            (change.id(), redis.link.observe(sent))
        }
    });
    Ok(futures_util::future::join_all(sends).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_full(reserved: Result<Slot<'_>, BackendError>) -> bool {
        matches!(
            reserved,
            Err(BackendError::Unavailable(Unavailable::QueueFull {
                capacity: 2
            }))
        )
    }

    /// A session touched again and again while its writes are queued
    /// holds one copy of its data: it is counted once, and a delete is
    /// taken at the byte bound.
    #[test]
    fn the_same_data_queued_again_is_counted_once() {
        let (queue, _worker) = WriteBehind::new(10, Some(1000), Arc::default());
        let session = crate::store::Session {
            id: SessionId::random(),
            data: bytes::Bytes::from(vec![b'x'; 400]),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            ttl_ms: 1000,
            expires_at_ms: 1000,
            writes: crate::store::WriteLog::default(),
            user: None,
        };
        for _ in 0..3 {
            queue.reserve().expect("a place").upsert(session.clone());
        }
        assert_eq!(queue.bytes.load(Ordering::Relaxed), 400);
        let other = Session {
            id: SessionId::random(),
            data: bytes::Bytes::from(vec![b'y'; 600]),
            ..session
        };
        queue.reserve().expect("a place").upsert(other);
        assert!(matches!(
            queue.reserve(),
            Err(BackendError::Unavailable(Unavailable::QueueMemoryFull {
                limit: 1000
            }))
        ));
        queue
            .reserve_for_delete()
            .expect("a delete holds no data")
            .delete(SessionId::random(), None);
    }

    #[test]
    fn reserved_places_count_until_sent_or_given_back() {
        let (queue, _worker) = WriteBehind::new(2, None, Arc::default());
        let first = queue.reserve().expect("a place");
        let second = queue.reserve().expect("a place");
        assert!(is_full(queue.reserve()), "a third place in a queue of 2");

        // A write that failed gives its place back.
        drop(first);
        let third = queue.reserve().expect("the place given back");
        second.delete(SessionId::random(), None);
        assert!(is_full(queue.reserve()), "the sent change keeps its place");
        assert_eq!(queue.depth.load(Ordering::Relaxed), 2);
        drop(third);
        assert_eq!(queue.depth.load(Ordering::Relaxed), 1);
    }
}
