//! `sessiond ctl`: the operator's command line. Reads, deletes and lists
//! sessions and reads a node's counters over the binary protocol, with
//! the `sessiond-client` crate, against one node (`--node host:port`).
//!
//! - The token comes from the environment (`SESSIOND_AUTH_TOKEN`), never
//!   from the command line, so it stays out of shell histories and `ps`.
//! - Output is for people by default, one JSON document with `--json`.
//! - Exit codes: [`FOUND`] (0), [`NOT_FOUND`] (1: no such session, or a
//!   user without sessions), [`ERROR`] (2: bad arguments, unreachable node,
//!   refused token...; clap's own usage errors exit 2 as well).

mod output;

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::value::RawValue;
use sessiond_client::{Client, Error, SessionId};

pub use output::Format;

/// Exit code: the session (or the user's sessions) exists; the command did
/// its job.
pub const FOUND: i32 = 0;
/// Exit code: no such session, or the user has no sessions.
pub const NOT_FOUND: i32 = 1;
/// Exit code: the command could not run.
pub const ERROR: i32 = 2;

/// Environment variable with the node's bearer token.
pub const TOKEN_VARIABLE: &str = "SESSIOND_AUTH_TOKEN";

/// `sessiond ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The node's binary-protocol address (its `--tcp`). The token, if the
    /// node needs one, is read from SESSIOND_AUTH_TOKEN.
    #[arg(long, global = true, default_value = "127.0.0.1:7701")]
    pub node: String,

    /// Print one JSON document (for scripts) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for the node's answer.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The operations of `sessiond ctl`.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Show a session: metadata and data (the read refreshes its expiry).
    Get {
        /// The session id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Delete a session (exit 1 when it was not there).
    Delete {
        /// The session id (it may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Show the node's counters: sessions, memory, expirations, evictions.
    Stats,
    /// List a user's live sessions, oldest first (exit 1 when none).
    ListUser {
        /// The user.
        user: String,
    },
    /// End every session of a user (exit 1 when there was none).
    RevokeUser {
        /// The user.
        user: String,
        /// Keep this session (its id may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        except: Option<String>,
    },
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// An argument is malformed.
    #[error("{0}")]
    Usage(String),
    /// The node refused or failed the request, or could not be reached.
    #[error("{node}: {source}")]
    Node {
        /// The node's address.
        node: String,
        /// What the client saw.
        source: Error,
    },
}

/// What a command found.
enum Found {
    Yes,
    No,
}

/// Runs `args` with the token `token`, prints the result on stdout (errors
/// on stderr) and returns the exit code.
pub async fn run(args: CtlArgs, token: Option<String>) -> i32 {
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    match execute(&args, token, format).await {
        Ok(Found::Yes) => FOUND,
        Ok(Found::No) => NOT_FOUND,
        Err(err) => {
            eprintln!("sessiond ctl: {err}");
            ERROR
        }
    }
}

async fn execute(args: &CtlArgs, token: Option<String>, format: Format) -> Result<Found, CtlError> {
    let node = args.node.clone();
    let failed = |source: Error| CtlError::Node {
        node: node.clone(),
        source,
    };
    let mut builder = Client::builder()
        .nodes([args.node.as_str()])
        .timeout(args.timeout)
        .connect_timeout(args.timeout);
    if let Some(token) = token.filter(|token| !token.is_empty()) {
        builder = builder.auth_token(token);
    }
    let client = builder.build().await.map_err(failed)?;
    match &args.command {
        // The data as stored, byte for byte: a `Value` would reorder its keys
        // and round its numbers.
        CtlCommand::Get { id } => match client.get::<Box<RawValue>>(&session_id(id)?).await {
            Ok(session) => {
                format.session(&session);
                Ok(Found::Yes)
            }
            Err(Error::NotFound) => not_found(format, id),
            Err(err) => Err(failed(err)),
        },
        CtlCommand::Delete { id } => {
            let id_parsed = session_id(id)?;
            // Deletes are idempotent on the wire; a read first tells the
            // operator whether there was anything to delete.
            let existed = match client.get::<Box<RawValue>>(&id_parsed).await {
                Ok(_) => true,
                Err(Error::NotFound) => false,
                Err(err) => return Err(failed(err)),
            };
            client.delete(&id_parsed).await.map_err(failed)?;
            if existed {
                format.deleted(id);
                Ok(Found::Yes)
            } else {
                not_found(format, id)
            }
        }
        CtlCommand::Stats => {
            let stats = client.stats(&args.node).await.map_err(failed)?;
            format.stats(&args.node, &stats);
            Ok(Found::Yes)
        }
        CtlCommand::ListUser { user } => {
            let sessions = client.list_user_sessions(user).await.map_err(failed)?;
            format.user_sessions(user, &sessions);
            Ok(if sessions.is_empty() {
                Found::No
            } else {
                Found::Yes
            })
        }
        CtlCommand::RevokeUser { user, except } => {
            let except = except.as_deref().map(session_id).transpose()?;
            let revoked = client
                .revoke_user_sessions(user, except.as_ref())
                .await
                .map_err(failed)?;
            format.revoked(user, revoked);
            Ok(if revoked == 0 { Found::No } else { Found::Yes })
        }
    }
}

fn session_id(text: &str) -> Result<SessionId, CtlError> {
    text.parse()
        .map_err(|err| CtlError::Usage(format!("{text:?} is not a session id: {err}")))
}

fn not_found(format: Format, id: &str) -> Result<Found, CtlError> {
    format.not_found(id);
    Ok(Found::No)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `sessiond ctl` as a command line of its own.
    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    #[test]
    fn session_ids_that_begin_with_a_hyphen_are_ids_not_flags() {
        // One id in 64 begins with '-' (base64url).
        let id = "-oGMr-Kpc8GZIzV3Orl_Ig";
        let parsed = |args: &[&str]| {
            Line::try_parse_from([&["ctl"], args].concat())
                .map(|line| line.ctl.command)
                .map_err(|err| err.to_string())
        };
        match parsed(&["revoke-user", "carol", "--except", id]) {
            Ok(CtlCommand::RevokeUser { except, .. }) => assert_eq!(except.as_deref(), Some(id)),
            other => panic!("{other:?}"),
        }
        match parsed(&["get", id]) {
            Ok(CtlCommand::Get { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        match parsed(&["delete", id]) {
            Ok(CtlCommand::Delete { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
    }
}
