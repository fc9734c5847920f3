//! How the shop learns that a session ended: it follows sessiond's event
//! log and logs each end (an inactivity timeout above all), the place where
//! a real app would free what it keeps per session or write an audit line.
//!
//! The follower resumes where it stopped: its cursor is kept in a file
//! (when `--events-cursor-file` is given), so a restarted app sees each
//! event once, including those that happened while it was down; an event
//! reported just before a crash that left no time to save the cursor past
//! it is reported again (at least once: a report and a file cannot change
//! in one step). Without a file it starts with what happens from now on.

use std::path::PathBuf;

use futures_util::StreamExt;
use sessiond_client::{Client, Error, Event, EventKind};

/// Follows the log until it ends for good (the log turned off, say).
pub async fn follow(client: Client, cursor_file: Option<PathBuf>) {
    let mut cursor = match &cursor_file {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty()),
        None => None,
    }
    .or_else(|| Some("now".to_owned()));
    loop {
        let mut events = Box::pin(client.events(cursor.clone()));
        while let Some(next) = events.next().await {
            match next {
                Ok(event) => {
                    report(&event);
                    cursor = Some(event.cursor.clone());
                    if let Some(path) = &cursor_file {
                        save(path, &event.cursor).await;
                    }
                }
                Err(Error::CursorExpired { oldest }) => {
                    tracing::warn!(
                        %oldest,
                        "session events were dropped before this app read them; resuming from the oldest kept"
                    );
                    cursor = Some(oldest);
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, "stopped following session events");
                    return;
                }
            }
        }
    }
}

/// Logs the end of a session; other events are not this app's business.
fn report(event: &Event) {
    let user = event.user.as_deref().unwrap_or("-");
    let why = match event.kind {
        EventKind::Expired => "signed out due to inactivity",
        EventKind::Deleted => "signed out",
        EventKind::Revoked => "signed out from another device",
        EventKind::Evicted => "dropped by the store (memory full, or the user's session cap)",
        _ => return,
    };
    tracing::info!(
        session = %event.id,
        user,
        kind = event.kind.as_str(),
        cursor = %event.cursor,
        "session ended: {why}"
    );
}

/// Writes the cursor next to the file and renames it over, so a crash
/// leaves the old cursor or the new one, never half of one (off the
/// runtime's threads: a slow disk does not hold up the app's requests).
async fn save(path: &PathBuf, cursor: &str) {
    let partial = path.with_extension("partial");
    let written = match tokio::fs::write(&partial, cursor).await {
        Ok(()) => tokio::fs::rename(&partial, path).await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        tracing::warn!(%err, path = %path.display(), "cannot keep the events cursor");
    }
}
