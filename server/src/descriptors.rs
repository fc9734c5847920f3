//! File descriptors: the soft `RLIMIT_NOFILE` raised to the hard limit at
//! start, and shared between the two listeners so that clients of one can
//! never take the descriptors the other (and health checks) need.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::http::RESERVE_CONNECTIONS;

/// Descriptors kept for everything but client connections: standard
/// streams, listeners, the runtime's poller and wakers, Redis connections.
pub const FIXED_DESCRIPTORS: u64 = 64;

/// Raises the soft descriptor limit to the hard limit and logs both;
/// returns the limit in force (`None`: unlimited).
pub fn raise_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(
                from = ?limit.current,
                to = ?limit.maximum,
                "raised the soft descriptor limit (RLIMIT_NOFILE) to the hard limit"
            ),
            Err(err) => tracing::warn!(%err, soft = ?limit.current, hard = ?limit.maximum,
                "cannot raise the soft descriptor limit (RLIMIT_NOFILE)"),
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    tracing::info!(limit = ?current, "descriptor limit (RLIMIT_NOFILE)");
    current
}

/// Connection caps of the two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// HTTP connections (`--max-http-connections`).
    pub http: usize,
    /// Binary-protocol connections (`--max-connections`).
    pub tcp: usize,
}

impl Caps {
    /// The caps asked for, lowered to fit in `limit` descriptors (with
    /// [`FIXED_DESCRIPTORS`] and the HTTP health reserve set aside): each
    /// listener keeps at least half of what is left, so a flood on one
    /// leaves the other (and health checks) room.
    pub fn fit(self, limit: Option<u64>) -> Self {
        let Some(limit) = limit else {
            return self;
        };
        let set_aside = FIXED_DESCRIPTORS + RESERVE_CONNECTIONS as u64;
        let room = usize::try_from(limit.saturating_sub(set_aside)).unwrap_or(usize::MAX);
        if self.http.saturating_add(self.tcp) <= room {
            return self;
        }
        let half = room / 2;
        let http = self
            .http
            .min(half.max(room.saturating_sub(self.tcp)))
            .max(1);
        let tcp = self.tcp.min(room.saturating_sub(http)).max(1);
        Self { http, tcp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        let asked = Caps {
            http: 1024,
            tcp: 10_000,
        };
        assert_eq!(asked.fit(None), asked);
        assert_eq!(asked.fit(Some(1 << 20)), asked);
    }

    #[test]
    fn caps_share_a_small_limit() {
        let asked = Caps {
            http: 1024,
            tcp: 10_000,
        };
        // 256 - 64 fixed - 16 reserve = 176, half each.
        assert_eq!(asked.fit(Some(256)), Caps { http: 88, tcp: 88 });
        // A small ask on one side leaves the rest to the other.
        let small_http = Caps {
            http: 10,
            tcp: 10_000,
        };
        assert_eq!(small_http.fit(Some(256)), Caps { http: 10, tcp: 166 });
        let small_tcp = Caps {
            http: 1024,
            tcp: 10,
        };
        assert_eq!(small_tcp.fit(Some(256)), Caps { http: 166, tcp: 10 });
        let tiny = Caps { http: 5, tcp: 5 }.fit(Some(8));
        assert_eq!(tiny, Caps { http: 1, tcp: 1 });
    }
}
