//! What `sessiond ctl` prints: text for people, or one JSON document.

use std::time::SystemTime;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use sessiond_client::{NodeStats, Session, SessionInfo};

/// Prints a line to stdout; a reader that went away (`sessiond ctl ... |
/// head`) is not an error (`println!` panics on it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned `name: value` lines.
    Text,
    /// One JSON document on one line.
    Json,
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn info_json(info: &SessionInfo) -> Value {
    json!({
        "id": info.id.to_string(),
        "version": info.version,
        "created_at": time(info.created_at),
        "updated_at": time(info.updated_at),
        "expires_at": time(info.expires_at),
        "ttl_secs": info.ttl.as_secs(),
    })
}

fn lines(rows: &[(&str, String)]) {
    for (name, value) in rows {
        say!("{:<13}{value}", format!("{name}:"));
    }
}

impl Format {
    /// A session read with `get`.
    pub fn session(self, session: &Session<Box<RawValue>>) {
        let info = &session.info;
        match self {
            Self::Json => {
                let mut body = info_json(info);
                body["user"] = json!(session.user);
                // The data spliced in as stored (an object's text ends in
                // its closing brace).
                let head = body.to_string();
                let head = head.strip_suffix('}').unwrap_or(&head);
                say!("{head},\"data\":{}}}", session.data.get());
            }
            Self::Text => lines(&[
                ("id", info.id.to_string()),
                ("version", info.version.to_string()),
                ("user", session.user.clone().unwrap_or_else(|| "-".into())),
                ("created", time(info.created_at)),
                ("updated", time(info.updated_at)),
                ("expires", time(info.expires_at)),
                ("idle ttl", format!("{}s", info.ttl.as_secs())),
                ("data", session.data.get().to_owned()),
            ]),
        }
    }

    /// A session that is not there (stdout stays empty in text).
    pub fn not_found(self, id: &str) {
        match self {
            Self::Json => say!("{}", json!({"id": id, "found": false})),
            Self::Text => eprintln!("no live session has the id {id}"),
        }
    }

    /// A session deleted.
    pub fn deleted(self, id: &str) {
        match self {
            Self::Json => say!("{}", json!({"id": id, "deleted": true})),
            Self::Text => say!("deleted {id}"),
        }
    }

    /// A node's counters.
    pub fn stats(self, node: &str, stats: &NodeStats) {
        match self {
            Self::Json => {
                let mut body = json!(stats);
                body["node"] = json!(node);
                say!("{body}");
            }
            Self::Text => {
                let memory = match stats.bytes_limit {
                    Some(limit) if limit > 0 => format!(
                        "{} of {} bytes ({:.1}%)",
                        stats.bytes_used,
                        limit,
                        stats.bytes_used as f64 * 100.0 / limit as f64
                    ),
                    _ => format!("{} bytes", stats.bytes_used),
                };
                lines(&[
                    ("node", node.to_owned()),
                    ("sessions", stats.sessions.to_string()),
                    ("memory", memory),
                    ("expirations", stats.expirations.to_string()),
                    ("evictions", stats.evictions.to_string()),
                    ("rejections", stats.rejections.to_string()),
                    (
                        "users",
                        format!(
                            "{} ({} sessions indexed)",
                            stats.user_index_users, stats.user_index_entries
                        ),
                    ),
                ]);
            }
        }
    }

    /// A user's sessions.
    pub fn user_sessions(self, user: &str, sessions: &[SessionInfo]) {
        match self {
            Self::Json => {
                let sessions: Vec<Value> = sessions.iter().map(info_json).collect();
                say!("{}", json!({"user": user, "sessions": sessions}));
            }
            Self::Text if sessions.is_empty() => eprintln!("{user} has no live sessions"),
            Self::Text => {
                say!("{:<24}{:>8}  {:<26}EXPIRES", "ID", "VERSION", "CREATED");
                for session in sessions {
                    say!(
                        "{:<24}{:>8}  {:<26}{}",
                        session.id.to_string(),
                        session.version,
                        time(session.created_at),
                        time(session.expires_at)
                    );
                }
            }
        }
    }

    /// A revocation.
    pub fn revoked(self, user: &str, revoked: u64) {
        match self {
            Self::Json => say!("{}", json!({"user": user, "revoked": revoked})),
            Self::Text => say!("revoked {revoked} session(s) of {user}"),
        }
    }
}
