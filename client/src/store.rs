//! A tower-sessions [`SessionStore`] backed by sessiond: add one layer and
//! an axum app keeps its sessions in sessiond instead of its own memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sessiond_proto::SessionId;
use time::{OffsetDateTime, PrimitiveDateTime};
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::{Client, Error};

/// Session data as tower-sessions keeps it.
type Data = std::collections::HashMap<String, Value>;

/// The key under which a loaded record carries what it was loaded as, so
/// that `save` can send only what the request changed. Apps never see it
/// unless they ask for it by name.
const LOADED: &str = "__sessiond_loaded";
/// The key under which a login names the user the next created session
/// belongs to ([`SessiondStore::bind_user`]).
const BIND_USER: &str = "__sessiond_user";

/// tower-sessions storage in sessiond (tower-sessions 0.15).
///
/// - **Ids** are issued by sessiond (never by the app): `create` asks the
///   server for a new session and writes its id into the record, so
///   tower-sessions' `cycle_id` after a login also gets a fresh
///   server-issued id. The cookie's text is the sessiond id's text, so an
///   operator can take a cookie and `curl /v1/sessions/<cookie>`.
/// - **Saves send only what changed.** A request's `save` writes the
///   top-level keys it changed since it loaded the session, each replaced
///   whole (removed keys removed), atomically on the server: as a merge
///   patch when no changed value is an object, else (a merge patch would
///   merge an object into the one stored, keeping the members the request
///   dropped) by a read and a write conditional on the version read,
///   again on a conflict. Two requests of one user that change different
///   keys at once both land; two that change the same key: the later save
///   wins for that key (use [`Client::update`] for a value that must not
///   lose increments). A key set to JSON `null` is removed. After
///   `Session::clear`, the save replaces the whole data.
/// - **A save never brings a session back.** If the session was deleted
///   (logout elsewhere) or rotated away after this request loaded it, the
///   save changes nothing and the cookie is dead.
/// - **Users**: at a login, call `session.cycle_id()` (a new id, against
///   session fixation) and then [`SessiondStore::bind_user`]: the session
///   is created under its new id belonging to the user, so it shows in
///   [`Client::list_user_sessions`] and [`Client::revoke_user_sessions`]
///   ("sign out everywhere") reaches it, and the server's
///   `--max-sessions-per-user` applies.
/// - **Expiry**: the session's idle TTL follows tower-sessions' expiry,
///   capped at the server's `--max-ttl` (tower-sessions defaults to two
///   weeks, sessiond to 24 h), with a warning logged once when the cap
///   applies. Every load slides it, as any sessiond read does:
///   `Expiry::OnInactivity` sessions live while they are used, and an
///   `Expiry::AtDateTime` date only sets the idle TTL of each save (a
///   session used within each TTL outlives the date; the browser drops the
///   cookie at the date, a replayed cookie keeps it alive). For an
///   absolute end, run the nodes with `--max-lifetime`.
///
/// ```no_run
/// # async fn run() -> Result<(), sessiond_client::Error> {
/// use sessiond_client::{Client, SessiondStore};
/// use tower_sessions::SessionManagerLayer;
/// let client = Client::builder().nodes(["127.0.0.1:7701"]).build().await?;
/// let layer = SessionManagerLayer::new(SessiondStore::new(client));
/// let app: axum::Router = axum::Router::new().layer(layer);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SessiondStore {
    client: Client,
    warned_ttl_cap: Arc<AtomicBool>,
}

impl SessiondStore {
    /// A store that keeps sessions through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            warned_ttl_cap: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Binds the session to `user` when it is next created: call it after
    /// `session.cycle_id()` at a login (the record is then created anew,
    /// under a fresh id, belonging to the user). A session loaded from the
    /// store stays its user's through a later `cycle_id()`: sign the user
    /// out with `session.flush()` (or `delete()`), which ends it.
    pub async fn bind_user(
        session: &tower_sessions_core::Session,
        user: &str,
    ) -> Result<(), tower_sessions_core::session::Error> {
        session.insert(BIND_USER, user).await
    }

    /// The sessiond id of a tower-sessions session id (the same 16 bytes:
    /// both print as the same text).
    pub fn session_id(id: &Id) -> SessionId {
        session_id(id)
    }

    /// The idle TTL that makes a session expire at `expiry` (at least 1 s),
    /// capped at the server's largest TTL.
    fn ttl_until(&self, expiry: OffsetDateTime) -> Duration {
        let left = Duration::try_from(expiry - OffsetDateTime::now_utc())
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        match self.client.max_ttl() {
            Some(max) if left > max => {
                if !self.warned_ttl_cap.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        asked = ?left,
                        max = ?max,
                        "the session expiry is beyond the server's --max-ttl; sessions expire \
                         after the server's maximum idle TTL instead"
                    );
                }
                max
            }
            _ => left,
        }
    }

    /// Writes `changes` (keys with their new values, `null` to remove)
    /// into the session as it is now, each key replaced whole: a read and
    /// a write conditional on its version, again on a conflict. The keys
    /// it does not change go back as the text they were stored as.
    async fn replace_keys(
        &self,
        id: &SessionId,
        changes: &Map<String, Value>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let attempts = REPLACE_ATTEMPTS;
        for _ in 0..attempts {
            let current = self
                .client
                .get::<BTreeMap<String, Box<RawValue>>>(id)
                .await?;
            let version = current.version();
            let mut data = current.data;
            for (key, value) in changes {
                match value {
                    Value::Null => data.remove(key),
                    value => data.insert(key.clone(), serde_json::value::to_raw_value(value)?),
                };
            }
            match self
                .client
                .put_with_ttl(id, &data, ttl, Some(version))
                .await
            {
                Err(Error::Conflict { .. }) => tokio::task::yield_now().await,
                written => return written.map(drop),
            }
        }
        Err(Error::TooManyConflicts { attempts })
    }
}

/// Tries of a save that replaces object values before it gives up.
const REPLACE_ATTEMPTS: u32 = 16;

/// The sessiond id of a tower-sessions id: the same 16 bytes, so both
/// print as the same text.
fn session_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

/// The tower-sessions id of a sessiond id.
fn record_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

fn backend(err: Error) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

/// The app's data of a record, without what the store added.
fn app_data(record: &Record) -> Map<String, Value> {
    record
        .data
        .iter()
        .filter(|(key, _)| key.as_str() != LOADED && key.as_str() != BIND_USER)
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// The changes from `loaded` to `now`: changed and new keys with their
/// values, removed keys as `null`.
fn changes(loaded: &Map<String, Value>, now: &Map<String, Value>) -> Map<String, Value> {
    let mut patch: Map<String, Value> = now
        .iter()
        .filter(|(key, value)| loaded.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    for key in loaded.keys().filter(|key| !now.contains_key(*key)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

#[async_trait]
impl SessionStore for SessiondStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let ttl = Some(self.ttl_until(record.expiry_date));
        let data = app_data(record);
        let created = match record.data.get(BIND_USER).and_then(Value::as_str) {
            Some(user) => self.client.create_for_user(&data, ttl, user).await,
            None => self.client.create(&data, ttl).await,
        };
        let info = created.map_err(backend)?;
        record.id = record_id(&info.id);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let id = session_id(&record.id);
        let ttl = Some(self.ttl_until(record.expiry_date));
        let now = app_data(record);
        let loaded = record
            .data
            .get(LOADED)
            .and_then(|loaded| loaded.as_object());
        let written = match loaded {
            // Loaded in this request: send only what it changed.
            Some(loaded) => {
                let patch = changes(loaded, &now);
                if patch.is_empty() {
                    self.client.touch(&id, ttl).await.map(drop)
                } else if patch.values().any(Value::is_object) {
                    self.replace_keys(&id, &patch, ttl).await
                } else {
                    let patch = Value::Object(patch);
                    self.client
                        .patch_with_ttl(&id, &patch, ttl, None)
                        .await
                        .map(drop)
                }
            }
            // Cleared in this request: the data is replaced whole.
            None => self
                .client
                .put_with_ttl(&id, &now, ttl, None)
                .await
                .map(drop),
        };
        match written {
            // Deleted or rotated away since it was loaded: it stays gone.
            Err(Error::NotFound) => Ok(()),
            other => other.map_err(backend),
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self.client.get::<Data>(&session_id(id)).await {
            Ok(session) => {
                let mut data = session.data;
                let snapshot = data.clone().into_iter().collect::<Map<_, _>>();
                data.insert(LOADED.to_owned(), Value::Object(snapshot));
                // A later `cycle_id()` creates the record anew: it stays
                // the user's (a new binding in this request replaces it).
                if let Some(user) = session.user {
                    data.insert(BIND_USER.to_owned(), Value::String(user));
                }
                Ok(Some(Record {
                    id: *id,
                    data,
                    expiry_date: expiry_date(session.info.expires_at),
                }))
            }
            Err(Error::NotFound) => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.client.delete(&session_id(id)).await.map_err(backend)
    }
}

/// `at` as a date: the latest the `time` crate can spell for a later one
/// (`OffsetDateTime::from` panics past year 9999, on a node's answer).
fn expiry_date(at: SystemTime) -> OffsetDateTime {
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    i128::try_from(nanos)
        .ok()
        .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cookie_text_is_the_session_id_text() {
        for _ in 0..100 {
            let id = SessionId::random();
            let record = record_id(&id);
            assert_eq!(record.to_string(), id.to_string());
            assert_eq!(session_id(&record), id);
        }
    }

    #[test]
    fn an_expiry_past_what_a_date_spells_is_the_last_date() {
        let soon = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(expiry_date(soon), OffsetDateTime::from(soon));
        let far = UNIX_EPOCH + Duration::from_millis(u64::MAX);
        assert_eq!(expiry_date(far), PrimitiveDateTime::MAX.assume_utc());
    }

    #[test]
    fn changes_are_changed_new_and_removed_keys() {
        let as_map = |value: Value| value.as_object().cloned().unwrap_or_default();
        let loaded = as_map(json!({"a": 1, "b": [1], "c": "x"}));
        let now = as_map(json!({"a": 1, "b": [1, 2], "d": true}));
        assert_eq!(
            Value::Object(changes(&loaded, &now)),
            json!({"b": [1, 2], "c": null, "d": true})
        );
        assert!(changes(&loaded, &loaded).is_empty());
    }
}
