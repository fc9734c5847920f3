//! Commands Redis refused, or answered in a shape this node cannot read:
//! not an outage (those mark Redis down and say so) but a misconfiguration
//! or a bug (an ACL that denies a command, a key another program wrote
//! with another type, a script that fails), which no retry mends. Each is
//! counted in `sessiond_redis_command_errors_total` and the first of a
//! kind is logged as a warning: a background task's failure (the event
//! reaper's, the write-behind queue's) shows without a debug log.

use std::collections::HashSet;

use parking_lot::Mutex;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// How many kinds of refusal are remembered as logged: Redis's error codes
/// are a short list, and a longer one is not worth a line each.
const KINDS_REMEMBERED: usize = 64;

/// The kinds of refusal seen and logged.
#[derive(Debug)]
pub struct Refusals {
    /// Each logged refusal's kind and code (`WRONGTYPE`, `NOPERM`, ...):
    /// its text names values and keys, which differ from one to the next.
    logged: Mutex<HashSet<String>>,
}

impl Default for Refusals {
    fn default() -> Self {
        metrics::counter!("sessiond_redis_command_errors_total").absolute(0);
        Self {
            logged: Mutex::default(),
        }
    }
}

impl Refusals {
    /// Counts `err` when it is a refusal (see the module's doc), and logs
    /// it when it is the first of its kind (a refusal repeated on every
    /// round, or two taking turns, is a line each, not one a round).
    pub fn note(&self, err: &RedisError) {
        if !is_refusal(err) {
            return;
        }
        metrics::counter!("sessiond_redis_command_errors_total").increment(1);
        if self.first_of_kind(err) {
            tracing::warn!(error = %err, "Redis refused a command (a misconfiguration or a bug; retrying will not mend it)");
        }
    }

    /// Whether `err` is the first refusal of its kind and code.
    fn first_of_kind(&self, err: &RedisError) -> bool {
        let mut logged = self.logged.lock();
        let kind = format!("{:?} {}", err.kind(), err.code().unwrap_or_default());
        logged.len() < KINDS_REMEMBERED && logged.insert(kind)
    }
}

/// Whether `err` is Redis refusing the command, or an answer this node
/// cannot read, rather than the passing states of a server or a cluster
/// (loading, a failover, a slot moving) or a lost connection.
fn is_refusal(err: &RedisError) -> bool {
    match err.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::NoPerm
        ),
        // `OOM` (Redis's memory, reported apart), `BUSY` (a script
        // running past Redis's busy threshold), `NOREPLICAS` (too few
        // replicas for now) and `MISCONF` (snapshots failing) come as
        // extensions and pass.
        ErrorKind::Extension | ErrorKind::UnexpectedReturnType | ErrorKind::Parse => {
            !matches!(err.code(), Some("OOM" | "BUSY" | "NOREPLICAS" | "MISCONF"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(kind: ServerErrorKind) -> RedisError {
        RedisError::from((ErrorKind::Server(kind), "refused"))
    }

    #[test]
    fn refusals_are_told_from_passing_states() {
        assert!(is_refusal(&server(ServerErrorKind::ResponseError)));
        assert!(is_refusal(&server(ServerErrorKind::NoPerm)));
        assert!(is_refusal(&RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "not a pair"
        ))));
        for passing in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::Moved,
            ServerErrorKind::NoScript,
        ] {
            assert!(!is_refusal(&server(passing)), "{passing:?}");
        }
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!is_refusal(&RedisError::from(io)));
    }

    #[test]
    fn a_refusal_is_logged_once_a_kind_whatever_its_text() {
        let refusals = Refusals::default();
        let parse = |value: &str| {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "not a version",
                value.to_owned(),
            ))
        };
        let denied = server(ServerErrorKind::NoPerm);
        let logged = [parse("a"), denied.clone(), parse("b"), denied, parse("c")]
            .iter()
            .filter(|err| refusals.first_of_kind(err))
            .count();
        assert_eq!(logged, 2);
    }
}
