//! Active health checks: every interval, `GET <health path>` on each
//! upstream; `fall` failures in a row take it out of rotation, `rise`
//! successes in a row bring it back (passive ejection on connect failures
//! happens in the proxy).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, Uri};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::connector::UpstreamClient;
use super::replay::UpstreamBody;
use super::upstream::Upstream;

/// What the checker needs.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path requested on each upstream.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Good checks in a row that bring an upstream back.
    pub rise: u32,
    /// Bad checks in a row that take it out.
    pub fall: u32,
}

/// Checks `upstream` until `shutdown` or until it leaves the pool.
pub async fn run(
    upstream: Arc<Upstream>,
    client: UpstreamClient,
    check: HealthCheck,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = upstream.closed.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = probe(&upstream, &client, &check).await;
        upstream.record_check(result, check.rise, check.fall);
    }
}

async fn probe(
    upstream: &Upstream,
    client: &UpstreamClient,
    check: &HealthCheck,
) -> Result<(), String> {
    let uri: Uri = format!("{}{}", upstream.url, check.path)
        .parse()
        .map_err(|err| format!("bad health check URI: {err}"))?;
    let mut request = Request::new(UpstreamBody::Empty);
    *request.uri_mut() = uri;
    let timeout = check.timeout;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| format!("health check timed out after {timeout:?}"))?
        .map_err(|err| format!("health check failed: {err}"))?;
    let status = response.status();
    // Drain the body so the connection goes back to the pool.
    let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
    // 2xx and 3xx pass, as with nginx's and HAProxy's checks: a health
    // path that redirects (to a login page, say) is an app that answers.
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("health check answered {status}"))
    }
}
