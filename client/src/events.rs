//! Following the event log: a stream of events that resumes by itself
//! after a lost connection or a node's death.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use sessiond_proto::Event;
use sessiond_proto::wire::{Op, Outcome};

use crate::{Client, Error};

/// How long one read of the log waits for events.
const WAIT_MS: u32 = 10_000;
/// Events one read takes at most.
const BATCH: u32 = 100;
/// Longest pause between attempts while no node can be read.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a follower stands.
struct Follower {
    client: Client,
    cursor: Option<String>,
    pending: VecDeque<Event>,
    backoff: Duration,
    done: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Event, Error>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                self.cursor = Some(event.cursor.clone());
                return Some((Ok(event), self));
            }
            let op = Op::Events {
                after: self.cursor.clone(),
                limit: BATCH,
                wait_ms: WAIT_MS,
            };
            match self.client.read_events(op).await {
                Ok(Outcome::Events(page)) => {
                    self.backoff = Duration::from_millis(50);
                    self.cursor = Some(page.next);
                    self.pending.extend(page.events);
                }
                Ok(other) => {
                    self.done = true;
                    return Some((Err(crate::client::unexpected(&other)), self));
                }
                // A node down, Redis away, a timeout: try again (the
                // cursor says where), on whichever node answers.
                Err(Error::Unavailable(_) | Error::Timeout(_)) => {
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => {
                    self.done = true;
                    return Some((Err(err), self));
                }
            }
        }
    }
}

impl Client {
    /// Follows the log of session lifecycle events from after `after` (the
    /// oldest kept event when `None`; `Some("now")` for only what happens
    /// from now on): each event once, in order. The stream waits for new
    /// events and never ends by itself; it resumes after a lost connection
    /// or a node's death on its own (with Redis, on any node). It ends with
    /// an error only for what retrying cannot fix, such as
    /// [`Error::CursorExpired`] or a wrong token.
    ///
    /// Without Redis each node has its own log: the stream follows the
    /// first node of [`nodes`](Client::nodes).
    pub fn events(
        &self,
        after: Option<String>,
    ) -> impl Stream<Item = Result<Event, Error>> + use<> {
        let follower = Follower {
            client: self.clone(),
            cursor: after,
            pending: VecDeque::new(),
            backoff: Duration::from_millis(50),
            done: false,
        };
        futures_util::stream::unfold(follower, Follower::next)
    }
}
