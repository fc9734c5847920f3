//! Handlers of `/v1/events`: the log of session lifecycle events, read in
//! pages (with a long-poll) or followed as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use sessiond_proto::Event;
use sessiond_proto::http::{EventJson, EventsBody};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::ApiError;
use super::extract::{ApiQuery, single_header};
use super::openapi::errors;
use super::response::rfc3339;
use super::state::AppState;
use crate::service::SessionService;

/// How often an idle event stream sends a comment, so proxies keep it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long one read of a stream waits for events.
const STREAM_WAIT: Duration = Duration::from_secs(15);
/// Events one read of a stream takes at most.
const STREAM_BATCH: u64 = 100;

/// `?after=&limit=&wait_secs=`
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Start after this cursor (`now`: only what happens from now on;
    /// without it, from the oldest event kept).
    // The pattern is the cursors the logs write (a number in memory, a
    // stream entry id and the stream's epoch `<ms>-<seq>-<epoch>` in
    // Redis, `<ms>-<seq>` from before epochs), `now`, or empty (as none);
    // a well-formed cursor this log never wrote is still refused (400
    // `invalid_cursor`), as a well-formed id names no session.
    #[param(pattern = "^(now|[0-9]{1,20}(-[0-9]{1,20}){0,2})?$")]
    after: Option<String>,
    /// Most events in the page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// With no event after the cursor, wait up to this many seconds (0 to
    /// 30, default 0) for one before answering an empty page.
    #[param(minimum = 0, maximum = 30)]
    wait_secs: Option<u64>,
}

/// `?after=` of a stream (which pages and waits by itself).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this cursor (`now`: only what happens from now on;
    /// without it, from the oldest event kept); `Last-Event-ID` wins.
    #[param(pattern = "^(now|[0-9]{1,20}(-[0-9]{1,20}){0,2})?$")]
    after: Option<String>,
}

errors!(
    /// Failures of an events read.
    EventsErrors: InvalidCursor, InvalidRequest, Unauthorized, EventsOff, CursorExpired, Unavailable
);

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

/// A cursor given as text: an empty one is none.
fn cursor(text: Option<String>) -> Option<String> {
    text.filter(|cursor| !cursor.is_empty())
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

/// `GET /v1/events`: a page of events after a cursor, waiting for one up
/// to `wait_secs` (a long-poll).
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "events_page",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "The events after the cursor, in commit order (empty when \
            none came within `wait_secs`), and the cursor to pass as `after` next.",
            body = EventsBody),
        EventsErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn page(
    State(state): State<AppState>,
    ApiQuery(EventsQuery {
        after,
        limit,
        wait_secs,
    }): ApiQuery<EventsQuery>,
) -> Result<Json<EventsBody>, ApiError> {
    let _waiting = Consumer::start();
    let page = state
        .service
        .events(after.as_deref(), limit, wait_secs.map(Duration::from_secs))
        .await?;
    Ok(Json(EventsBody {
        events: page.events.into_iter().map(json).collect(),
        next: page.next,
    }))
}

/// `GET /v1/events/stream`: every event from `Last-Event-ID` (or
/// `?after=`) on, as it is logged.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "The cursor of the last event received: resume after it (wins over `after`)."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: per event an `id: <cursor>` line and a \
            `data:` line with the event's JSON; a keep-alive comment every 15 s.",
            content_type = "text/event-stream", body = StreamedEvent),
        EventsErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn stream(
    State(state): State<AppState>,
    ApiQuery(StreamQuery { after }): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Bytes that are not text are no cursor: kept (as U+FFFD) for the
    // check of every cursor to refuse, as `?after=%FF` is, not dropped.
    let last_event_id = single_header(&headers, "Last-Event-ID")?
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let resume = cursor(last_event_id).or(cursor(after));
    // The first read answers a bad or expired cursor with an error, not an
    // empty stream.
    let first = state
        .service
        .events(resume.as_deref(), Some(STREAM_BATCH), None)
        .await?;
    let follow = Follow {
        service: state.service.clone(),
        // Without an event to carry it, the stream's place is sent at once
        // as an event with an id and no data (which a client does not
        // dispatch but resumes from): a client that opened it `after=now`
        // and lost it before the first event misses nothing in between.
        announce: first.events.is_empty().then(|| first.next.clone()),
        pending: first.events.into_iter().rev().collect(),
        cursor: first.next,
        _consumer: Consumer::start(),
    };
    let events = futures_util::stream::unfold(follow, Follow::next);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One Server-Sent Event of `GET /v1/events/stream`, described as its
/// fields (OpenAPI 3.2's `itemSchema` way): `id` is the event's cursor,
/// `data` its JSON; a stream with nothing to send yet first sends its
/// place as an `id` alone.
pub struct StreamedEvent;

impl PartialSchema for StreamedEvent {
    fn schema() -> RefOr<Schema> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "id",
                text().description(Some("The event's cursor (resume with `Last-Event-ID`).")),
            )
            .property("event", text().enum_values(Some(["message"])))
            .property(
                "data",
                text()
                    .description(Some(
                        "The event as JSON (absent from the first message of a stream \
                         with no event to send yet: it only names the stream's place).",
                    ))
                    .content_media_type("application/json")
                    .content_schema(Some(EventJson::schema())),
            )
            .required("id")
            .into()
    }
}

impl ToSchema for StreamedEvent {}

/// A stream's place in the log.
struct Follow {
    service: SessionService,
    /// A place to send before any event, as an id alone.
    announce: Option<String>,
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
        if let Some(cursor) = self.announce.take() {
            return Some((Ok(SseEvent::default().id(cursor)), self));
        }
        loop {
            if let Some(event) = self.pending.pop() {
                let cursor = event.cursor.clone();
                let data = serde_json::to_string(&json(event)).ok()?;
                return Some((Ok(SseEvent::default().id(cursor).data(data)), self));
            }
            if self.service.shutting_down() {
                // The client resumes on another node with Last-Event-ID.
                return None;
            }
            let page = self
                .service
                .events(Some(&self.cursor), Some(STREAM_BATCH), Some(STREAM_WAIT))
                .await
                .ok()?;
            self.cursor = page.next;
            self.pending = page.events.into_iter().rev().collect();
        }
    }
}
