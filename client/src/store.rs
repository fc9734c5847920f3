//! A tower-sessions [`SessionStore`] backed by sessiond: add one layer and
//! an axum app keeps its sessions in sessiond instead of its own memory.

use std::time::Duration;

use async_trait::async_trait;
use sessiond_proto::SessionId;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::{Client, Error};

/// Session data as tower-sessions keeps it.
type Data = std::collections::HashMap<String, serde_json::Value>;

/// tower-sessions storage in sessiond.
///
/// Ids are issued by sessiond (never by the app): `create` asks the server
/// for a new session and writes its id into the record, so tower-sessions'
/// `cycle_id` after a login also gets a fresh server-issued id. A session
/// id of 128 bits maps one to one onto tower-sessions' `Id(i128)`.
///
/// `save` writes the whole record (last writer wins, as with every
/// tower-sessions store); for counters that concurrent requests of one user
/// update, use [`Client::update`], which retries on version conflicts.
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
}

impl SessiondStore {
    /// A store that keeps sessions through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn session_id(id: &Id) -> SessionId {
    SessionId::from_u128(id.0 as u128)
}

/// The idle TTL that makes a session expire at `expiry` (at least 1 s).
fn ttl_until(expiry: OffsetDateTime) -> Duration {
    let left = expiry - OffsetDateTime::now_utc();
    Duration::try_from(left)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

fn backend(err: Error) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

#[async_trait]
impl SessionStore for SessiondStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let info = self
            .client
            .create(&record.data, Some(ttl_until(record.expiry_date)))
            .await
            .map_err(backend)?;
        record.id = Id(info.id.as_u128() as i128);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.client
            .put_with_ttl(
                &session_id(&record.id),
                &record.data,
                Some(ttl_until(record.expiry_date)),
                None,
            )
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self.client.get::<Data>(&session_id(id)).await {
            Ok(session) => Ok(Some(Record {
                id: *id,
                data: session.data,
                expiry_date: OffsetDateTime::from(session.info.expires_at),
            })),
            Err(Error::NotFound) => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.client.delete(&session_id(id)).await.map_err(backend)
    }
}
