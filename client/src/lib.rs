//! Rust client of [sessiond](https://example.invalid/sessiond): session
//! storage for stateless web backends.
//!
//! - One multiplexed, pipelined connection per node over sessiond's binary
//!   protocol; any number of tasks share it.
//! - Sessions spread over several nodes by rendezvous hashing, with
//!   failover to the next node and background probing of down nodes.
//! - Typed data through serde, typed errors ([`Error`]), conditional writes
//!   and a retrying read-modify-write ([`Client::update`]).
//! - With the `tower-sessions` feature, a [`SessiondStore`] for axum apps.
//!
//! # Write guarantees
//!
//! Every create, put, patch and rotate is applied **at most once**, and the
//! call returns its true outcome. Each write carries a random identity; a
//! write whose answer was lost (a timeout, a dropped connection, a node
//! killed mid-request) is sent again with the same identity, and the node
//! answers from the session's write log whether it was applied (and at
//! which version), applies it if it was not, or says it cannot tell. The
//! nodes are asked twice round before the call gives up: then it ends with
//! [`Error::Indeterminate`]: the write may or
//! may not have landed; read the session before acting again. An attempt
//! held up in a stalled node can still land after the call gave up: an
//! unconditional write then replaces what was written since, one with an
//! expected version ([`Client::update`] sends one) changes nothing. Send
//! the writes a late landing must not replace with an expected version. A write never
//! ends with [`Error::Timeout`], and [`Error::is_retryable`] is false for
//! `Indeterminate`. [`Client::update`] never applies its change twice.
//!
//! One slow answer does not take a node out of rotation for every caller:
//! [`ClientBuilder::fall`] timeouts in a row do (default 3).
//!
//! # Quick start
//!
//! ```no_run
//! # async fn run() -> Result<(), sessiond_client::Error> {
//! use sessiond_client::Client;
//! let client = Client::builder().nodes(["127.0.0.1:7701"]).build().await?;
//! let cart = vec!["apple".to_string()];
//! let created = client.create(&cart, None).await?;
//! client.update(&created.id, |cart: &mut Vec<String>| cart.push("pear".into())).await?;
//! let session = client.get::<Vec<String>>(&created.id).await?;
//! assert_eq!(session.data, ["apple", "pear"]);
//! client.delete(&created.id).await?;
//! # Ok(()) }
//! ```

mod client;
mod connection;
mod error;
mod events;
mod node;
mod session;
#[cfg(feature = "tower-sessions")]
mod store;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use session::{Session, SessionInfo};
pub use sessiond_proto::wire::NodeStats;
pub use sessiond_proto::{Event, EventKind, SessionId};
#[cfg(feature = "tower-sessions")]
pub use store::SessiondStore;
