//! One binary-protocol operation, carried out through the service layer.

use std::pin::Pin;
use std::time::Duration;

use serde_json::value::RawValue;
use sessiond_proto::wire::{Op, Outcome, Placement, SessionRecord, WireError, WriteTag};
use sessiond_proto::{ErrorCode, UserName};

use crate::service::{JsonData, ServiceError, SessionService};
use crate::store::Session;

/// Runs `op` (a write identified by `write`) and turns its result into the
/// outcome the client gets. A tag whose id is 0 is refused: it is no
/// write's own (every client that sent it would share the first one's
/// outcome, another client's session).
pub async fn execute(
    service: &SessionService,
    op: Op,
    write: Option<WriteTag>,
    placement: Option<&Placement>,
) -> Outcome {
    if write.is_some_and(|write| write.id == 0) {
        return Outcome::Error(WireError::new(
            ErrorCode::InvalidRequest,
            "a write tag's id must be a random non-zero number of the write's own",
        ));
    }
    run(service, op, write, placement)
        .await
        .unwrap_or_else(|err| {
            Outcome::Error(WireError {
                code: err.code(),
                message: err.to_string(),
                current_version: err.current_version(),
                oldest: err.oldest(),
            })
        })
}

async fn run(
    service: &SessionService,
    op: Op,
    write: Option<WriteTag>,
    placement: Option<&Placement>,
) -> Result<Outcome, ServiceError> {
    Ok(match op {
        Op::Create {
            data,
            ttl_secs,
            user,
        } => {
            let (data, user) = (JsonData::parse(data)?, user_name(user)?);
            session(
                service
                    .create(data, ttl_secs, placement, write, user)
                    .await?,
            )
        }
        Op::Get { id } => session(service.get(&id).await?),
        Op::Put {
            id,
            data,
            ttl_secs,
            expected_version,
        } => {
            let data = JsonData::parse(data)?;
            session(
                service
                    .put(&id, data, ttl_secs, expected_version, write)
                    .await?,
            )
        }
        Op::Patch {
            id,
            patch,
            ttl_secs,
            expected_version,
        } => {
            let patch = serde_json::from_slice::<&RawValue>(&patch)
                .map_err(|err| ServiceError::InvalidPatch(err.to_string()))?;
            session(cold(service.patch(&id, patch, ttl_secs, expected_version, write)).await?)
        }
        Op::Delete { id } => {
            cold(service.delete(&id)).await?;
            Outcome::Deleted
        }
        Op::Touch { id, ttl_secs } => session(cold(service.touch(&id, ttl_secs)).await?),
        Op::Rotate { id, user } => {
            let user = user_name(user)?;
            session(cold(service.rotate(&id, placement, write, user)).await?)
        }
        Op::ListUser { user } => {
            let user = UserName::parse(&user).map_err(ServiceError::InvalidUser)?;
            let sessions = cold(service.user_sessions(&user)).await?;
            Outcome::UserSessions(sessions.into_iter().map(summary).collect())
        }
        Op::RevokeUser { user, except } => {
            let user = UserName::parse(&user).map_err(ServiceError::InvalidUser)?;
            Outcome::Revoked(cold(service.revoke_user(&user, except)).await?)
        }
        Op::Events {
            after,
            limit,
            wait_ms,
        } => {
            let wait = Duration::from_millis(u64::from(wait_ms));
            let page =
                cold(service.events(after.as_deref(), Some(u64::from(limit)), Some(wait))).await?;
            Outcome::Events(page)
        }
        Op::Ping => Outcome::Pong,
        Op::Stats => Outcome::Stats(service.stats()),
    })
}

/// Boxes the future of an operation other than a get, a put or a create,
/// so that the future every request carries keeps the size of those and
/// costs little to set up (the backend boxes a create's Redis part).
fn cold<F: Future>(future: F) -> Pin<Box<F>> {
    Box::pin(future)
}

/// A user name from the wire, checked.
fn user_name(user: Option<String>) -> Result<Option<UserName>, ServiceError> {
    user.map(|user| UserName::parse(&user))
        .transpose()
        .map_err(ServiceError::InvalidUser)
}

/// A session in a user's listing: its record without its data.
fn summary(session: Session) -> SessionRecord {
    SessionRecord {
        data: bytes::Bytes::new(),
        ..record(session)
    }
}

fn session(session: Session) -> Outcome {
    Outcome::Session(record(session))
}

fn record(session: Session) -> SessionRecord {
    SessionRecord {
        id: session.id,
        version: session.version,
        data: session.data,
        created_at_ms: session.created_at_ms,
        updated_at_ms: session.updated_at_ms,
        expires_at_ms: session.expires_at_ms,
        ttl_secs: session.ttl_ms / 1000,
        user: session.user.map(|user| user.to_string()),
    }
}
