//! Handlers of `/v1/events`: the log of session lifecycle events, read in
//! pages (with a long-poll) or followed as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use sessiond_proto::http::{EventJson, EventsBody};
use sessiond_proto::{ErrorCode, Event};

use super::error::ApiError;
use super::response::rfc3339;
use super::state::AppState;
use crate::service::SessionService;

/// How often an idle event stream sends a comment, so proxies keep it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long one read of a stream waits for events.
const STREAM_WAIT_SECS: u64 = 15;
/// Events one read of a stream takes at most.
const STREAM_BATCH: u64 = 100;

/// `?after=&limit=&wait_secs=`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<String>,
    limit: Option<u64>,
    wait_secs: Option<u64>,
}

/// Counts a reader waiting on the log while it lives.
struct Consumer;

impl Consumer {
    fn start() -> Self {
        metrics::gauge!("sessiond_event_consumers").increment(1.0);
        Self
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        metrics::gauge!("sessiond_event_consumers").decrement(1.0);
    }
}

fn query(query: Result<Query<EventsQuery>, QueryRejection>) -> Result<EventsQuery, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()))
}

/// An event as the HTTP API shows it.
fn json(event: Event) -> EventJson {
    EventJson {
        cursor: event.cursor,
        kind: event.kind,
        id: event.id.to_string(),
        user: event.user,
        at: rfc3339(event.at_ms),
        old_id: event.old_id.map(|id| id.to_string()),
    }
}

/// `GET /v1/events`
pub async fn page(
    State(state): State<AppState>,
    events_query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsBody>, ApiError> {
    let EventsQuery {
        after,
        limit,
        wait_secs,
    } = query(events_query)?;
    let _waiting = Consumer::start();
    let page = state
        .service
        .events(after.as_deref(), limit, wait_secs)
        .await?;
    Ok(Json(EventsBody {
        events: page.events.into_iter().map(json).collect(),
        next: page.next,
    }))
}

/// `GET /v1/events/stream`: every event from `Last-Event-ID` (or
/// `?after=`) on, as it is logged.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    events_query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let EventsQuery { after, .. } = query(events_query)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(after);
    // The first read answers a bad or expired cursor with an error, not an
    // empty stream.
    let first = state
        .service
        .events(resume.as_deref(), Some(STREAM_BATCH), Some(0))
        .await?;
    let follow = Follow {
        service: state.service.clone(),
        pending: first.events.into_iter().rev().collect(),
        cursor: first.next,
        _consumer: Consumer::start(),
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A stream's place in the log.
struct Follow {
    service: SessionService,
    /// Events read but not sent yet, last first.
    pending: Vec<Event>,
    cursor: String,
    _consumer: Consumer,
}

impl Follow {
    /// The next event to send (waiting for one), or the end of the stream
    /// when the log cannot be read (the client resumes with
    /// `Last-Event-ID`).
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop() {
                let cursor = event.cursor.clone();
                let data = serde_json::to_string(&json(event)).ok()?;
                return Some((Ok(SseEvent::default().id(cursor).data(data)), self));
            }
            let page = self
                .service
                .events(
                    Some(&self.cursor),
                    Some(STREAM_BATCH),
                    Some(STREAM_WAIT_SECS),
                )
                .await
                .ok()?;
            self.cursor = page.next;
            self.pending = page.events.into_iter().rev().collect();
        }
    }
}
