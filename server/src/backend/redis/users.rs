//! The user index in Redis: one sorted set per user, `<prefix>user:<user>`,
//! of session ids scored by the time they were added.
//!
//! The index is kept a superset of the user's live sessions: an id is
//! added *before* its session key is written (create, login, rotation) and
//! removed only *after* its key is gone (delete, revocation). A listing
//! reads each indexed session's key and returns only the live ones that
//! still name the user; ids whose key is gone (expired in Redis, or whose
//! node died between the two steps) are removed as they are read, once
//! they are older than a short grace (a key may still be on its way).
//! Every change of a user's sessions that the index must see takes the
//! user's lock in Redis (`<prefix>ulock:<user>`, expiring), so logins,
//! rotations and revocations of one user are serialised on every node and
//! the cap (`--max-sessions-per-user`) holds exactly. The two keys may live
//! on different Redis Cluster nodes: nothing here needs them in one slot.

use std::convert::Infallible;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use sessiond_proto::{SessionId, UserName};

use super::error::{ReplicationError, write_error};
use super::script_call::ScriptCall;
use super::scripts::USER_FIELD;
use super::shared::{Gone, Redis};
use crate::backend::api::{BackendError, Unavailable};
use crate::store::{Owner, Session, WhenUserFull};

/// How long a user's lock lives if its holder dies.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How often a held lock's life is renewed, while its change runs (a
/// revocation of many sessions may take longer than `LOCK_TTL`).
const LOCK_RENEWAL: Duration = Duration::from_millis(1_500);
/// How long a change waits for a user's lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// An indexed id without a session key is kept this long (its key may be
/// on its way), then pruned.
const GRACE_MS: u64 = 10_000;
/// Oldest index entries checked (and pruned if dead) each time one is added.
const PRUNE_ON_ADD: isize = 4;
/// Sessions of a listing read from Redis at once.
const READS_IN_FLIGHT: usize = 32;

/// Releases a lock only if it is still ours (its SHA1 hashed once, not
/// per login).
static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Removes from a user's index (KEYS[1]) each entry ARGV[2i-1] still
/// added at ARGV[2i]: one added again since (a retried create or login
/// re-adds its id before it writes the key) is kept.
static PRUNE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local pruned = 0
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    pruned = pruned + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return pruned
",
    )
});

/// Renews a lock for ARGV[2] ms only if it is still ours (ARGV[1]).
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
",
    )
});

impl Redis {
    fn index_key(&self, user: &UserName) -> String {
        format!("{}user:{user}", self.config.prefix)
    }

    /// Runs `change` holding `user`'s lock.
    pub(super) async fn locked_user<T>(
        &self,
        user: &UserName,
        change: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let key = format!("{}ulock:{user}", self.config.prefix);
        let token = format!("{:x}", fastrand::u64(..));
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let mut conn = self.link.conn()?;
            // GET: the holder's token when the lock was held, so a SET the
            // cluster client sent again after its answer was lost finds
            // its own first run (else it waited out its own lock).
            let held = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64)
                .arg("GET")
                .query_async::<Option<String>>(&mut conn)
                .await;
            match self.link.observe(held)? {
                None => break,
                Some(holder) if holder == token => break,
                Some(_) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Unavailable::Contention {
                    operation: "change the user's sessions",
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(2..10))).await;
        }
        // The change runs to its end (stopped midway, a rotation would
        // leave its copy behind) while the lock is renewed beside it.
        let result = tokio::select! {
            biased;
            result = change => result,
            never = self.keep_locked(&key, &token) => match never {},
        };
        let mut conn = self.link.conn()?;
        let released = ScriptCall::new(&UNLOCK, [key.as_str()], 64)
            .arg(&token)
            .invoke_async::<i64>(&mut conn)
            .await;
        if let Err(err) = self.link.observe(released) {
            tracing::debug!(%err, "could not release a user's lock; it expires on its own");
        }
        result
    }

    /// Renews the lock `key` (held with `token`) every [`LOCK_RENEWAL`]
    /// for as long as it is polled; once the lock turns out lost (its
    /// holder stalled past `LOCK_TTL`), only says so in the log.
    async fn keep_locked(&self, key: &str, token: &str) -> Infallible {
        loop {
            tokio::time::sleep(LOCK_RENEWAL).await;
            let renewed = match self.link.conn() {
                Ok(mut conn) => {
                    let renewal = ScriptCall::new(&RENEW, [key], 64)
                        .arg(token)
                        .arg(LOCK_TTL.as_millis() as u64)
                        .invoke_async::<i64>(&mut conn)
                        .await;
                    self.link.observe(renewal)
                }
                Err(err) => Err(err),
            };
            match renewed {
                Ok(1) => {}
                Ok(_) => break,
                Err(err) => tracing::debug!(%err, key, "could not renew a user's lock"),
            }
        }
        tracing::warn!(
            key,
            "a user's lock expired before its change ended; another node may have changed \
             the user's sessions meanwhile"
        );
        std::future::pending().await
    }

    /// Adds `id` to `user`'s index (before its key is written), and prunes
    /// the oldest entries whose sessions are gone.
    pub(super) async fn index_add(
        &self,
        user: &UserName,
        id: &SessionId,
    ) -> Result<(), BackendError> {
        // Sent together (the same key, so the same Redis node, in order).
        let (mut adding, mut reading) = (self.link.conn()?, self.link.conn()?);
        let mut add = redis::cmd("ZADD");
        add.arg(self.index_key(user))
            .arg(self.now())
            .arg(id.to_string());
        let mut oldest = redis::cmd("ZRANGE");
        oldest
            .arg(self.index_key(user))
            .arg(0)
            .arg(PRUNE_ON_ADD - 1)
            .arg("WITHSCORES");
        let (added, oldest) = futures_util::join!(
            add.query_async::<i64>(&mut adding),
            oldest.query_async::<Vec<(String, u64)>>(&mut reading)
        );
        self.link.observe(added).map_err(write_error)?;
        let oldest = self.link.observe(oldest)?;
        // Only whose each one is: its data is not needed to prune it.
        let owners: Vec<Option<String>> = stream::iter(entry_ids(&oldest))
            .map(|id| self.owner_of(id))
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let owned = owners
            .iter()
            .map(|owner| owner.as_deref() == Some(user.as_str()));
        self.prune(user, &oldest, owned).await?;
        Ok(())
    }

    /// Takes `id` out of `user`'s index again when the write that added
    /// it found no session to make (`NotFound`) and Redis holds no key
    /// under it: no key and no expiry are behind the entry, so nothing else
    /// would ever remove it. (A session past this node's `--max-lifetime`
    /// is not found here but lives on for other nodes: it keeps its entry.)
    pub(super) async fn unindex_if_gone(
        &self,
        user: &UserName,
        id: &SessionId,
        written: &Result<Session, BackendError>,
    ) {
        if matches!(written, Err(BackendError::NotFound)) && !self.stored(id).await.unwrap_or(true)
        {
            self.index_remove(user, id).await;
        }
    }

    /// Removes `id` from `user`'s index (after its key is gone).
    pub(super) async fn index_remove(&self, user: &UserName, id: &SessionId) {
        let removed = match self.link.conn() {
            Ok(mut conn) => {
                let removed = redis::cmd("ZREM")
                    .arg(self.index_key(user))
                    .arg(id.to_string())
                    .query_async::<i64>(&mut conn)
                    .await;
                self.link.observe(removed).map(drop)
            }
            Err(err) => Err(err),
        };
        if let Err(err) = removed {
            tracing::debug!(%err, "could not remove an id from a user index; listings prune it");
        }
    }

    /// The live sessions among `entries` (id, time added) that belong to
    /// `user`; the dead ones past the grace are pruned from the index.
    async fn verified(
        &self,
        user: &UserName,
        entries: Vec<(String, u64)>,
    ) -> Result<Vec<Session>, ReplicationError> {
        // The reads go out together on the multiplexed connection: one
        // round trip for a few sessions, not one each.
        let read: Vec<Option<Session>> = stream::iter(entry_ids(&entries))
            .map(|id| self.read_entry(id))
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let owned: Vec<bool> = read
            .iter()
            .map(|session| {
                session
                    .as_ref()
                    .is_some_and(|s| s.user.as_ref() == Some(user))
            })
            .collect();
        self.prune(user, &entries, owned.iter().copied()).await?;
        let mut live: Vec<Session> = read
            .into_iter()
            .zip(owned)
            .filter_map(|(session, owned)| session.filter(|_| owned))
            .collect();
        live.sort_by_key(|session| (session.created_at_ms, session.id));
        Ok(live)
    }

    /// Removes from `user`'s index the `entries` (id, time added) past the
    /// grace that are no session of the user (`owned`, in their order:
    /// whether each one is), unless added again since they were read.
    async fn prune(
        &self,
        user: &UserName,
        entries: &[(String, u64)],
        owned: impl Iterator<Item = bool>,
    ) -> Result<(), ReplicationError> {
        let now = self.now();
        let dead: Vec<&(String, u64)> = entries
            .iter()
            .zip(owned)
            .filter(|((_, added), owned)| !owned && added + GRACE_MS < now)
            .map(|(entry, _)| entry)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let mut conn = self.link.conn()?;
        let key = self.index_key(user);
        let mut prune = ScriptCall::new(&PRUNE, [key.as_str()], dead.len() * 40);
        for (text, added) in dead {
            prune.arg(text).arg(added);
        }
        let pruned = prune.invoke_async::<i64>(&mut conn).await;
        self.link.observe(pruned)?;
        Ok(())
    }

    /// The session of an index entry's id, without its data (`None` for
    /// an entry that is no id).
    async fn read_entry(&self, id: Option<SessionId>) -> Result<Option<Session>, ReplicationError> {
        match id {
            Some(id) => self.read_summary(&id).await,
            None => Ok(None),
        }
    }

    /// The user an index entry's session belongs to (`""` for none), if it
    /// is in Redis.
    async fn owner_of(&self, id: Option<SessionId>) -> Result<Option<String>, ReplicationError> {
        let Some(id) = id else {
            return Ok(None);
        };
        let mut conn = self.link.conn()?;
        let owner = redis::cmd("HGET")
            .arg(self.key(&id))
            .arg(USER_FIELD)
            .query_async::<Option<String>>(&mut conn)
            .await;
        self.link.observe(owner)
    }

    /// The live sessions of `user`, oldest first.
    pub(super) async fn user_sessions(
        &self,
        user: &UserName,
    ) -> Result<Vec<Session>, BackendError> {
        let mut conn = self.link.conn()?;
        let entries = redis::cmd("ZRANGE")
            .arg(self.index_key(user))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async::<Vec<(String, u64)>>(&mut conn)
            .await;
        let entries = self.link.observe(entries)?;
        Ok(self.verified(user, entries).await?)
    }

    /// Makes room for one more session of `owner`'s user (the caller holds
    /// the user's lock): applies the cap, `keep` (the session this change
    /// makes or moves, under any id it has or may already have) not
    /// counted; evicts by least recent use.
    pub(super) async fn make_way(
        &self,
        owner: &Owner,
        keep: &[SessionId],
    ) -> Result<(), BackendError> {
        let max = owner.limit.max_sessions;
        if max == 0 {
            return Ok(());
        }
        let mut live: Vec<Session> = self
            .user_sessions(&owner.user)
            .await?
            .into_iter()
            .filter(|session| !keep.contains(&session.id))
            .collect();
        if live.len() < max {
            return Ok(());
        }
        if owner.limit.when_full == WhenUserFull::Reject {
            return Err(BackendError::TooManySessions { max });
        }
        // Last use: the expiry the last read or write set, less the TTL.
        // Reads on a node reach Redis's expiry within a refresh flush; this
        // node's own copy may know a later use.
        let last_use = |session: &Session| {
            let local = self
                .store
                .peek(&session.id)
                .map_or(0, |copy| copy.expires_at_ms);
            session
                .expires_at_ms
                .max(local)
                .saturating_sub(session.ttl_ms)
        };
        live.sort_by_key(last_use);
        for victim in &live[..=live.len() - max] {
            self.delete_of_user(&victim.id, Gone::Evicted).await?;
        }
        Ok(())
    }

    /// Deletes every live session of `user` but `except` (the caller holds
    /// the user's lock); returns how many.
    pub(super) async fn revoke(
        &self,
        user: &UserName,
        except: Option<SessionId>,
    ) -> Result<u64, BackendError> {
        let mut revoked = 0;
        for session in self.user_sessions(user).await? {
            if Some(session.id) == except {
                continue;
            }
            let deleted = self.delete_of_user(&session.id, Gone::Revoked).await?;
            revoked += u64::from(deleted);
        }
        Ok(revoked)
    }

    /// Deletes a session of a user's (evicted or revoked) under the lock a
    /// read through of it takes, so a read whose answer from Redis predates
    /// the delete cannot put its copy back after it. Returns whether the
    /// session was there.
    async fn delete_of_user(&self, id: &SessionId, why: Gone<'_>) -> Result<bool, BackendError> {
        let _ordered = self.lock(id).await;
        self.delete_in_redis(id, None, why)
            .await
            .map_err(write_error)
    }
}

/// The session ids of index `entries` (`None` for an entry that is no id).
fn entry_ids(entries: &[(String, u64)]) -> Vec<Option<SessionId>> {
    entries.iter().map(|(text, _)| text.parse().ok()).collect()
}
