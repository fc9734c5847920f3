//! One binary-protocol operation, carried out through the service layer.

use serde_json::value::RawValue;
use sessiond_proto::wire::{Op, Outcome, Placement, SessionRecord, WireError, WriteTag};

use crate::service::{JsonData, ServiceError, SessionService};
use crate::store::Session;

/// Runs `op` (a write identified by `write`) and turns its result into the
/// outcome the client gets.
pub async fn execute(
    service: &SessionService,
    op: Op,
    write: Option<WriteTag>,
    placement: Option<&Placement>,
) -> Outcome {
    let result = match op {
        Op::Create { data, ttl_secs } => match JsonData::parse(data) {
            Ok(data) => service
                .create(data, ttl_secs, placement, write)
                .await
                .map(session),
            Err(err) => Err(err),
        },
        Op::Get { id } => service.get(&id).await.map(session),
        Op::Put {
            id,
            data,
            ttl_secs,
            expected_version,
        } => match JsonData::parse(data) {
            Ok(data) => service
                .put(&id, data, ttl_secs, expected_version, write)
                .await
                .map(session),
            Err(err) => Err(err),
        },
        Op::Patch {
            id,
            patch,
            ttl_secs,
            expected_version,
        } => match serde_json::from_slice::<&RawValue>(&patch) {
            Ok(patch) => service
                .patch(&id, patch, ttl_secs, expected_version, write)
                .await
                .map(session),
            Err(err) => Err(ServiceError::InvalidPatch(err.to_string())),
        },
        Op::Delete { id } => service.delete(&id).await.map(|()| Outcome::Deleted),
        Op::Touch { id, ttl_secs } => service.touch(&id, ttl_secs).await.map(session),
        Op::Rotate { id } => service.rotate(&id, placement, write).await.map(session),
        Op::Ping => Ok(Outcome::Pong),
        Op::Stats => Ok(Outcome::Stats(service.stats())),
    };
    result.unwrap_or_else(|err| {
        Outcome::Error(WireError {
            code: err.code(),
            message: err.to_string(),
            current_version: err.current_version(),
        })
    })
}

fn session(session: Session) -> Outcome {
    Outcome::Session(SessionRecord {
        id: session.id,
        version: session.version,
        data: session.data,
        created_at_ms: session.created_at_ms,
        updated_at_ms: session.updated_at_ms,
        expires_at_ms: session.expires_at_ms,
        ttl_secs: session.ttl_ms / 1000,
    })
}
