//! `--redis-mode sync`: every write is acknowledged after Redis has it
//! (one Lua script per write, version-checked and write-logged atomically);
//! memory is a cache of what Redis holds.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sessiond_proto::wire::WriteTag;
use sessiond_proto::{EventKind, EventPage, SessionId, UserName};

use super::copy_in_doubt::CopyInDoubt;
use super::error::write_error;
use super::event_log::count_logged;
use super::scripts::{STORE_ANY_EXPIRED, WriteOutcome, hex, rotated_to, tombstone};
use super::shared::{Gone, MAX_OPTIMISTIC_ATTEMPTS, Redis};
use crate::backend::api::{Backend, BackendError, Failed, Indeterminate, Unavailable};
use crate::backend::claims::{ClaimedBy, rotation_target};
use crate::store::{CLOCK_SKEW_MS, Owner, Session, StoreStats, Verdict};

/// The write-through, read-through Redis backend.
#[derive(Debug, Clone)]
pub struct SyncBackend {
    redis: Arc<Redis>,
}

/// What the WRITE script is to do.
struct Write<'a> {
    /// The version the session must be at.
    expected: Option<u64>,
    /// New data; `None` for a touch.
    data: Option<&'a Bytes>,
    /// A new idle TTL.
    ttl_ms: Option<u64>,
    /// The write's identity.
    tag: Option<WriteTag>,
}

impl SyncBackend {
    /// A backend over the shared Redis side.
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    /// The memory copy, if it may be served (without sliding its expiry).
    fn cached(&self, id: &SessionId) -> Option<Session> {
        let redis = &self.redis;
        redis.trust_memory().then(|| redis.store.peek(id)).flatten()
    }

    /// Runs the WRITE script (`data: None` is a touch) and waits until the
    /// other nodes that may hold a copy dropped it.
    async fn write(&self, id: &SessionId, write: Write<'_>) -> Result<WriteOutcome, BackendError> {
        let redis = &self.redis;
        let mut conn = redis.link.conn()?;
        let optional = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_default();
        let announcement = redis.invalidations.announce(id);
        // An untagged data write gets a tag of the node's own: a Redis
        // Cluster client re-sends a command whose connection dropped, and
        // the write, if it ran, must then find itself in the write log
        // instead of a version it does not expect.
        let client_tag = write.tag.filter(|tag| tag.id != 0);
        let own_tag = write.data.is_some() && client_tag.is_none();
        let tag = client_tag.or_else(|| {
            own_tag.then(|| WriteTag {
                id: fastrand::u64(1..),
                resent_after_ms: None,
                sent_at_ms: 0,
            })
        });
        let data = write.data.map_or(&b""[..], |data| data.as_ref());
        let mut call =
            redis.call_with_events(&redis.scripts.write, &[&redis.key(id)], 256 + data.len());
        let copy = CopyInDoubt::new(&redis.store, id);
        let started = Instant::now();
        let result = call
            .arg(optional(write.expected))
            .arg(data)
            .arg(redis.now())
            .arg(optional(write.ttl_ms))
            .arg(optional(redis.max_lifetime_ms))
            .arg(&redis.invalidations.channel)
            .arg(&announcement.message)
            .arg(if write.data.is_some() { "w" } else { "t" })
            .arg(tag.map(|tag| hex(tag.id)).unwrap_or_default())
            .arg(optional(tag.and_then(|tag| tag.resent_after_ms)))
            .arg(CLOCK_SKEW_MS)
            .arg(&redis.cacher)
            .arg(if redis.logs_updates() { "1" } else { "" })
            .arg(redis.retention())
            .arg(tag.map_or(0, |tag| tag.sent_at_ms))
            .arg(if own_tag { "1" } else { "" })
            .invoke_async::<WriteOutcome>(&mut conn)
            .await;
        let answered = Instant::now();
        // How long Redis took to answer, as this node saw it: on a loaded
        // machine mostly Redis's wait for a CPU, not the script's work.
        metrics::histogram!("sessiond_redis_write_duration_seconds").record(started.elapsed());
        // A data write whose command got no answer may have run: the
        // caller learns that (a touch is simply retried). Either may have
        // changed what Redis holds, so the copy from before is not served.
        let outcome = match redis.link.observe(result) {
            Ok(outcome) => outcome,
            Err(err) => {
                if !err.may_have_run() {
                    copy.settle();
                }
                return Err(if write.data.is_some() {
                    write_error(err)
                } else {
                    err.into()
                });
            }
        };
        match &outcome {
            WriteOutcome::Done { others, .. } => {
                if write.data.is_some() && redis.logs_updates() {
                    count_logged(redis.events.as_ref(), EventKind::Updated);
                }
                announcement.acked_by(others, answered).await;
            }
            // The run it replays may still wait for acks (or have died
            // waiting): the script announced it again; the same wait.
            WriteOutcome::Replayed { told, .. } => announcement.acked_by(told, answered).await,
            _ => {}
        }
        // The caller turns a `Done` into the copy without waiting; a replay
        // finds what an earlier run did, whose own copy in doubt (if it ran
        // here) was dropped when it was.
        copy.settle();
        Ok(outcome)
    }

    /// Turns a WRITE outcome into the session it produced, caching it.
    async fn written(
        &self,
        id: &SessionId,
        outcome: WriteOutcome,
        data: Option<Bytes>,
        expected: u64,
        epoch: u64,
    ) -> Result<Session, BackendError> {
        let redis = &self.redis;
        match outcome {
            WriteOutcome::Missing => {
                redis.store.delete(id);
                Err(BackendError::NotFound)
            }
            WriteOutcome::Mismatch { current } => {
                redis.store.delete(id);
                Err(BackendError::VersionMismatch { expected, current })
            }
            WriteOutcome::Indeterminate => Err(Indeterminate::Resent.into()),
            WriteOutcome::Reused => Err(BackendError::KeyReused),
            WriteOutcome::Replayed { version, .. } => {
                let current = redis.load_locked(id).await?;
                Ok(Session { version, ..current })
            }
            WriteOutcome::Done {
                version,
                created_at_ms,
                updated_at_ms,
                ttl_ms,
                expires_at_ms,
                writes,
                others: _,
                user,
                data: touched,
            } => {
                let session = Session {
                    id: *id,
                    data: data.or(touched).unwrap_or_default(),
                    version,
                    created_at_ms,
                    updated_at_ms,
                    ttl_ms,
                    expires_at_ms,
                    writes,
                    user,
                };
                redis.refresher.forget(id);
                redis.cache(&session, epoch);
                Ok(session)
            }
        }
    }
}

impl SyncBackend {
    /// Writes a new session to Redis (if its key is free) and caches it.
    async fn store_new(&self, session: Session, tag: Option<u64>) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let id = session.id;
        let epoch = redis.invalidations.epoch();
        let mut conn = redis.link.conn()?;
        let result = redis
            .store_call(&redis.scripts.store_new, &session, &redis.cacher)
            .arg(redis.retention())
            .invoke_async::<i64>(&mut conn)
            .await;
        let stored = redis.link.observe(result).map_err(write_error)?;
        if stored == -1 {
            // An earlier attempt of this create made it, and it ended since.
            return Err(BackendError::NotFound);
        }
        if stored == 0 {
            // The id is this create's alone (claimed by its tag, or drawn
            // fresh): the session under it is another attempt's of the
            // same create, or this command's own, run once already and
            // re-sent by a Redis Cluster client after its connection
            // dropped. Answer what it made, unless it is not this one's.
            let made = redis.load(&id).await?;
            if tag.is_some() || made.created_at_ms == session.created_at_ms {
                return Ok(made);
            }
            return Err(Unavailable::IdTaken.into());
        }
        count_logged(redis.events.as_ref(), EventKind::Created);
        redis.cache(&session, epoch);
        Ok(session)
    }

    /// Moves a session to `new_id` (belonging to `rebind` from now on, if
    /// given): copy, then delete the old key if it did not change. A copy
    /// whose move cannot finish (the old id went, or kept changing) is
    /// taken back: no session appears under an id its client never got.
    async fn move_session(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<UserName>,
    ) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let ordered = redis.lock(id).await;
        // This node's write-behind writes of the session go to Redis first
        // (no write of it can be queued under this lock): the move would take an
        // older version, and they would ship to the id it deletes.
        if !redis.queued.shipped_all_of(id).await {
            return Err(Unavailable::QueueBehind.into());
        }
        // Whether a copy may be under the new id: this call made one, or an
        // earlier attempt of the same tagged rotation may have.
        let mut copied = tag.is_some();
        for attempt in 0..=MAX_OPTIMISTIC_ATTEMPTS {
            // Past this node's `--max-lifetime` the session is gone here,
            // as for a read: it stays for the nodes that keep it.
            let read = redis.read_redis(id, false).await?;
            let Some(current) = read.filter(|session| !redis.past_lifetime(session)) else {
                redis.store.delete(id);
                // Only a rotation to `new_id` says another attempt of this
                // one finished (the new id is this rotation's alone: claimed
                // by its tag, or drawn fresh, its delete re-sent by a Redis
                // Cluster client after its connection dropped); a copy
                // under it may be an unfinished attempt's, of a session
                // deleted since.
                if copied && self.rotated_to(id, &new_id).await? {
                    redis.settle_replay(id).await?;
                    // The new id's lock may be this one's stripe.
                    drop(ordered);
                    return redis.load(&new_id).await;
                }
                if copied {
                    self.retract(&new_id).await?;
                }
                return Err(BackendError::NotFound);
            };
            if attempt == MAX_OPTIMISTIC_ATTEMPTS {
                break;
            }
            let moved = Session {
                id: new_id,
                expires_at_ms: redis.store.expiry(
                    redis.now(),
                    current.ttl_ms,
                    current.created_at_ms,
                ),
                user: rebind.clone().or_else(|| current.user.clone()),
                ..current.clone()
            };
            let epoch = redis.invalidations.epoch();
            let mut conn = redis.link.conn()?;
            let mut copy = redis.store_call(&redis.scripts.store_any, &moved, &redis.cacher);
            // No announcement, no tombstone check, no event: the rotation's
            // delete of the old id logs `rotated`. Never over a later
            // version's copy (another attempt of this rotation read the
            // session after a write this one missed): this attempt's delete
            // of the old id then fails, and the next one finds the move done.
            let copy_made = copy
                .arg("")
                .arg("")
                .arg("")
                .arg("")
                .arg(redis.retention())
                .arg("")
                .arg(current.version)
                .invoke_async::<i64>(&mut conn)
                .await;
            let copy_made = redis.link.observe(copy_made).map_err(write_error)?;
            copied = true;
            if copy_made == STORE_ANY_EXPIRED {
                // Its expiry passed by Redis's clock (this node's is
                // behind): nothing was stored, so nothing is moved.
                self.retract(&new_id).await?;
                return Err(BackendError::NotFound);
            }
            let gone = Gone::RotatedTo(&new_id, moved.user.as_ref());
            let deleted = redis.delete_in_redis(id, Some(current.version), gone).await;
            if deleted.map_err(write_error)? {
                redis.cache(&moved, epoch);
                return Ok(moved);
            }
        }
        self.retract(&new_id).await?;
        Err(Unavailable::Contention {
            operation: "rotate",
        }
        .into())
    }

    /// Whether `id` was deleted by a rotation that moved it to `new_id`
    /// (its tombstone says so).
    async fn rotated_to(&self, id: &SessionId, new_id: &SessionId) -> Result<bool, BackendError> {
        let redis = &self.redis;
        let mut conn = redis.link.conn()?;
        let mut command = redis::cmd("GET");
        command.arg(tombstone(&redis.key(id)));
        let text: Option<String> = redis.link.observe(command.query_async(&mut conn).await)?;
        Ok(text.as_deref().and_then(rotated_to) == Some(*new_id))
    }

    /// Takes back the copy an unfinished rotation made under `new_id`, if
    /// there is one (see the RETRACT script).
    async fn retract(&self, new_id: &SessionId) -> Result<(), BackendError> {
        let redis = &self.redis;
        let mut conn = redis.link.conn()?;
        let retracted = redis
            .call_with_events(&redis.scripts.retract, &[&redis.key(new_id)], 0)
            .invoke_async::<i64>(&mut conn)
            .await;
        redis.link.observe(retracted).map_err(write_error)?;
        Ok(())
    }
}

impl Backend for SyncBackend {
    fn shares_sessions(&self) -> bool {
        true
    }

    async fn create(
        &self,
        id: SessionId,
        data: Bytes,
        ttl_ms: u64,
        tag: Option<u64>,
        owner: Option<Owner>,
    ) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let id = redis.usable_id(id);
        let fresh = id;
        let id = match tag {
            Some(tag) => redis.claim(tag, id, ClaimedBy::Create).await?,
            None => id,
        };
        let user = owner.as_ref().map(|owner| owner.user.clone());
        let session = redis.store.new_session(id, data, ttl_ms, tag, user);
        let Some(owner) = owner else {
            return self.store_new(session, tag).await;
        };
        if id != fresh && !redis.stored(&id).await? && redis.deleted_lately(&id).await {
            // A repeat of a create whose session ended since: it finds it
            // gone before making way for it (STORE_NEW would refuse it).
            return Err(BackendError::NotFound);
        }
        self.to_the_end(move |backend| async move {
            let redis = &backend.redis;
            redis
                .locked_user(&owner.user, async {
                    // A repeat of a create that made its session (the id
                    // is claimed) must not count it, or evict another.
                    let made = tag.map(|_| id);
                    redis.make_way(&owner, made.as_slice()).await?;
                    redis.index_add(&owner.user, &id).await?;
                    let stored = backend.store_new(session, tag).await;
                    redis.unindex_if_gone(&owner.user, &id, &stored).await;
                    stored
                })
                .await
        })
        .await
    }

    async fn get(&self, id: &SessionId) -> Result<Session, BackendError> {
        let redis = &self.redis;
        if redis.trust_memory()
            && let Some(session) = redis.get_from_memory(id).await
        {
            return Ok(session);
        }
        redis.load(id).await
    }

    async fn put(
        &self,
        id: &SessionId,
        data: Bytes,
        ttl_ms: Option<u64>,
        expected: Option<u64>,
        write: Option<WriteTag>,
    ) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let _ordered = redis.lock(id).await;
        let epoch = redis.invalidations.epoch();
        let outcome = self
            .write(
                id,
                Write {
                    expected,
                    data: Some(&data),
                    ttl_ms,
                    tag: write,
                },
            )
            .await?;
        self.written(id, outcome, Some(data), expected.unwrap_or(0), epoch)
            .await
    }

    /// A tagged write sent again is judged on the session as Redis holds
    /// it, never on a cached copy, and applied at most once.
    async fn update<E, F>(
        &self,
        id: &SessionId,
        expected: Option<u64>,
        ttl_ms: Option<u64>,
        write: Option<WriteTag>,
        compute: F,
    ) -> Result<Session, Failed<E>>
    where
        E: Send,
        F: Fn(&[u8]) -> Result<Bytes, E> + Send + Sync,
    {
        let redis = &self.redis;
        let _ordered = redis.lock(id).await;
        let resent = write.is_some_and(|write| write.resent_after_ms.is_some());
        let (mut current, mut fresh) = match self.cached(id).filter(|_| !resent) {
            Some(session) => (session, false),
            None => (redis.load_locked(id).await?, true),
        };
        for _ in 0..MAX_OPTIMISTIC_ATTEMPTS {
            match current
                .writes
                .judge(current.version, write, expected, redis.now())
            {
                Verdict::Apply => {}
                Verdict::Replay { version } => {
                    redis.settle_replay(id).await.map_err(BackendError::from)?;
                    return Ok(Session { version, ..current });
                }
                Verdict::Indeterminate => {
                    return Err(BackendError::from(Indeterminate::Resent).into());
                }
                Verdict::Reused => return Err(BackendError::KeyReused.into()),
            }
            if let Some(expected) = expected
                && expected != current.version
            {
                if fresh {
                    return Err(BackendError::VersionMismatch {
                        expected,
                        current: current.version,
                    }
                    .into());
                }
                // The cached copy may lag: decide on what Redis holds.
                (current, fresh) = (redis.load_locked(id).await?, true);
                continue;
            }
            let data = compute(&current.data).map_err(Failed::Compute)?;
            let epoch = redis.invalidations.epoch();
            let attempt = Write {
                expected: Some(current.version),
                data: Some(&data),
                ttl_ms,
                tag: write,
            };
            let outcome = self.write(id, attempt).await?;
            match self
                .written(id, outcome, Some(data), current.version, epoch)
                .await
            {
                // Another writer got in between: start again from Redis
                // (where a conditional write is judged again, and fails
                // if its expected version is gone).
                Err(BackendError::VersionMismatch { .. }) => {
                    (current, fresh) = (redis.load_locked(id).await?, true);
                }
                result => return Ok(result?),
            }
        }
        Err(BackendError::from(Unavailable::Contention { operation: "patch" }).into())
    }

    async fn touch(&self, id: &SessionId, ttl_ms: Option<u64>) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let _ordered = redis.lock(id).await;
        let epoch = redis.invalidations.epoch();
        let touch = Write {
            expected: None,
            data: None,
            ttl_ms,
            tag: None,
        };
        let outcome = self.write(id, touch).await?;
        self.written(id, outcome, None, 0, epoch).await
    }

    async fn delete(&self, id: &SessionId) -> Result<(), BackendError> {
        let redis = &self.redis;
        let _ordered = redis.lock(id).await;
        redis.delete_in_redis(id, None, Gone::Deleted).await?;
        Ok(())
    }

    /// In Redis the two keys may live on different cluster nodes, so the
    /// move is copy-then-delete-if-unchanged: a write that lands in between
    /// makes it copy again, none is lost. A session with a user (or bound
    /// to one now) moves under the user's lock, its new id indexed first.
    async fn rotate(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> Result<Session, BackendError> {
        let id = *id;
        self.to_the_end(
            move |backend| async move { backend.rotate_now(&id, new_id, tag, rebind).await },
        )
        .await
    }

    async fn user_sessions(&self, user: &UserName) -> Result<Vec<Session>, BackendError> {
        self.redis.user_sessions(user).await
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<EventPage, BackendError> {
        self.redis.read_events(after, limit, wait).await
    }

    async fn revoke_user(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, BackendError> {
        let user = user.clone();
        self.to_the_end(move |backend| async move {
            let redis = &backend.redis;
            redis.locked_user(&user, redis.revoke(&user, except)).await
        })
        .await
    }

    fn stats(&self) -> StoreStats {
        self.redis.store.stats()
    }
}

impl SyncBackend {
    /// Runs `change` on a task of its own, to its end even when the caller
    /// stops waiting (an HTTP client that hangs up drops its request's
    /// future) and the node is shutting down (it waits for the task): a
    /// change of a user's sessions stopped midway would leave the user's
    /// lock held until it expires and, for a rotation, the session under
    /// two ids.
    async fn to_the_end<T, F>(
        &self,
        change: impl FnOnce(SyncBackend) -> F,
    ) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        match self.redis.changes.spawn(change(self.clone())).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Only if the runtime shut down before the node's end.
            Err(_) => Err(Indeterminate::RedisNoAnswer {
                reason: "the node shut down during the change".into(),
            }
            .into()),
        }
    }

    /// [`Backend::rotate`], run to its end.
    async fn rotate_now(
        &self,
        id: &SessionId,
        new_id: SessionId,
        tag: Option<u64>,
        rebind: Option<Owner>,
    ) -> Result<Session, BackendError> {
        let redis = &self.redis;
        let new_id = redis.usable_id(new_id);
        let claimed = match tag {
            Some(tag) => {
                redis
                    .claim(tag, new_id, ClaimedBy::Rotation { origin: *id })
                    .await?
            }
            None => new_id,
        };
        let new_id = rotation_target(id, claimed)?;
        let user = match &rebind {
            Some(owner) => Some(owner.user.clone()),
            None => redis
                .read_redis(id, false)
                .await?
                .and_then(|session| session.user),
        };
        let Some(user) = user else {
            return self.move_session(id, new_id, tag, None).await;
        };
        redis
            .locked_user(&user, async {
                if let Some(owner) = &rebind {
                    // The session moves, under its old id or (an earlier
                    // attempt having moved it) its new one; if it is under
                    // neither, the login finds it gone before making way.
                    if !redis.stored(id).await? && !redis.stored(&new_id).await? {
                        return Err(BackendError::NotFound);
                    }
                    redis.make_way(owner, &[*id, new_id]).await?;
                }
                redis.index_add(&user, &new_id).await?;
                let rebound = rebind.as_ref().map(|owner| owner.user.clone());
                let moved = self.move_session(id, new_id, tag, rebound).await;
                redis.unindex_if_gone(&user, &new_id, &moved).await;
                moved
            })
            .await
    }
}
