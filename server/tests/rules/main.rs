//! Rules of HTTP API v1 checked in process, with time from a
//! [`ManualClock`] the tests move, so that expiry rules take no sleeps:
//! against `sessiond::http::router` (the real router, extractors, service,
//! memory backend and store), and against a whole `node::run` where a
//! background task is part of the rule (sweeping). What only the real
//! binary can show (auth on the wire, limits, garbage, metrics, shutdown)
//! is in the `tests` crate.

mod expiry;
mod openapi;
mod requests;
mod sessions;
mod sweeping;

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use sessiond::backend::AnyBackend;
use sessiond::http::{AppParts, AppState, NodeFacts, router};
use sessiond::readiness::Readiness;
use sessiond::secret::{ExpectedToken, Secret};
use sessiond::service::{ServiceConfig, SessionService};
use sessiond::store::{ManualClock, Store, StoreConfig};
use sessiond_e2e::api::{Api, Transport};
use sessiond_e2e::http::Answer;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Where every test's clock starts: 2026-01-01T00:00:00Z.
const START_MS: u64 = 1_767_225_600_000;
/// [`START_MS`] as the API writes it.
const START: &str = "2026-01-01T00:00:00.000Z";
/// `--http-body-timeout` of the router under test.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The router of a node, called in process.
#[derive(Clone)]
struct InProcess(axum::Router);

impl InProcess {
    /// Sends `request`, whatever its body, and reads the whole answer.
    async fn call(&self, request: Request<Body>) -> Answer {
        let response = match self.0.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("cannot read the answer body");
        Answer::new(status, headers, &body)
    }
}

impl Transport for InProcess {
    fn send(&self, request: Request<Vec<u8>>) -> impl Future<Output = Answer> + Send {
        self.call(request.map(Body::from))
    }
}

/// A store node's HTTP API in process, over a memory backend, with its
/// clock and service at hand.
struct Node {
    api: Api<InProcess>,
    router: InProcess,
    clock: Arc<ManualClock>,
    service: SessionService,
}

impl Node {
    /// A node with the default settings (those of `sessiond serve`).
    fn new() -> Self {
        Self::with(StoreConfig::default(), ServiceConfig::default())
    }

    /// A node with these store and service settings.
    fn with(store: StoreConfig, service: ServiceConfig) -> Self {
        Self::build(store, service, None)
    }

    /// A node with the default settings whose `/v1` needs `token`.
    fn with_token(token: &str) -> Self {
        Self::build(
            StoreConfig::default(),
            ServiceConfig::default(),
            Some(token),
        )
    }

    fn build(store: StoreConfig, service: ServiceConfig, token: Option<&str>) -> Self {
        let clock = Arc::new(ManualClock::new(START_MS));
        let store = Arc::new(Store::new(store, clock.clone()));
        let service =
            SessionService::new(AnyBackend::memory(store), service, CancellationToken::new());
        let state = AppState::new(AppParts {
            service: service.clone(),
            auth_token: token.map(|token| ExpectedToken::new(&Secret::new(token.to_owned()))),
            metrics: None,
            readiness: Readiness::default(),
            body_timeout: BODY_TIMEOUT,
            facts: NodeFacts::default(),
        });
        let router = InProcess(router(state));
        Self {
            api: Api::new(router.clone()),
            router,
            clock,
            service,
        }
    }

    /// Sends a request with any body (one that stalls, say).
    async fn call(&self, request: Request<Body>) -> Answer {
        self.router.call(request).await
    }

    /// Moves the node's clock forward.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Asserts that the node holds exactly `sessions` sessions.
    #[track_caller]
    fn assert_sessions_held(&self, sessions: u64, why: &str) {
        assert_eq!(self.service.stats().sessions, sessions, "{why}");
    }
}

impl Deref for Node {
    type Target = Api<InProcess>;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}
