//! Commands Redis refused, or answered in a shape this node cannot read:
//! not an outage (those mark Redis down and say so) but a misconfiguration
//! or a bug (an ACL that denies a command, a key another program wrote
//! with another type, a script that fails), which no retry mends. Each is
//! counted in `sessiond_redis_command_errors_total` and the first of a
//! kind is logged as a warning: a background task's failure (the event
//! reaper's, the write-behind queue's) shows without a debug log.

use parking_lot::Mutex;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The refusals seen, and the last one logged.
#[derive(Debug)]
pub struct Refusals {
    last_logged: Mutex<String>,
}

impl Default for Refusals {
    fn default() -> Self {
        metrics::counter!("sessiond_redis_command_errors_total").absolute(0);
        Self {
            last_logged: Mutex::default(),
        }
    }
}

impl Refusals {
    /// Counts `err` when it is a refusal (see the module's doc), and logs
    /// it when it differs from the last one logged (a refusal repeated on
    /// every round is one line, not one a round).
    pub fn note(&self, err: &RedisError) {
        if !is_refusal(err) {
            return;
        }
        metrics::counter!("sessiond_redis_command_errors_total").increment(1);
        let text = err.to_string();
        let mut last = self.last_logged.lock();
        if *last != text {
            tracing::warn!(error = %text, "Redis refused a command (a misconfiguration or a bug; retrying will not mend it)");
            *last = text;
        }
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
}
