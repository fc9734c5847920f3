//! End-to-end tests of HTTP API v1: the real `sessiond` binary, started on
//! ephemeral loopback ports, driven with reqwest (and, where a test needs
//! bytes no HTTP client would send, a raw socket). What only the binary can
//! show lives here: the README's walkthrough over the wire, auth, limits,
//! garbage on the wire, health, metrics and shutdown. The API's rules
//! (bodies, codes, versions, expiry) are checked against the router in
//! process, on a manual clock, in the server crate (`server/tests/rules`).

mod auth;
mod errors;
mod limits;
mod operations;
mod sessions;

use sessiond_e2e::metrics::scrape;

/// Asserts that the node at `url` holds exactly `sessions` sessions
/// (`sessiond_sessions`), explaining a mismatch with `why`.
async fn assert_sessions_held(url: &str, sessions: f64, why: &str) {
    let metrics = scrape(url).await;
    assert_eq!(
        metrics.value("sessiond_sessions", &[]),
        Some(sessions),
        "{why}"
    );
}
