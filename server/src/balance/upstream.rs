//! One upstream app server: its address, whether it is in rotation, and
//! what it has served.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::uri::Authority;
use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use serde::Serialize;

/// An upstream's address, checked: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `host:port`.
    pub authority: Authority,
}

impl UpstreamUrl {
    /// Parses `http://host:port` (a trailing `/` is allowed, a path is not).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("upstream {text:?} must start with http://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!(
                "upstream {text:?} must be http://host:port, without a path"
            ));
        }
        let authority: Authority = rest
            .parse()
            .map_err(|err| format!("upstream {text:?} is not host:port: {err}"))?;
        if authority.port_u16().is_none() {
            return Err(format!("upstream {text:?} needs a port"));
        }
        Ok(Self { authority })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Counters of one upstream, as the status page and `/stats.json` show them.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStats {
    /// `http://host:port`.
    pub url: String,
    /// In rotation.
    pub up: bool,
    /// Requests answered by this upstream (any status).
    pub requests: u64,
    /// Requests that failed here (connect errors, resets, timeouts, 5xx).
    pub errors: u64,
    /// Requests being served now.
    pub in_flight: u64,
    /// Mean time to response headers, in milliseconds.
    pub mean_latency_ms: f64,
    /// Health checks run.
    pub checks: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Prometheus handles of one upstream, registered once.
#[derive(Debug)]
struct Meters {
    by_class: [Counter; 5],
    errors: Counter,
    latency: Histogram,
    up: Gauge,
}

impl Meters {
    fn new(name: &str) -> Self {
        let class = |class: &'static str| metrics::counter!("sessiond_balance_requests_total", "upstream" => name.to_owned(), "class" => class);
        Self {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            errors: metrics::counter!("sessiond_balance_upstream_errors_total", "upstream" => name.to_owned()),
            latency: metrics::histogram!("sessiond_balance_upstream_duration_seconds", "upstream" => name.to_owned()),
            up: metrics::gauge!("sessiond_balance_upstream_up", "upstream" => name.to_owned()),
        }
    }
}

/// One upstream and its health.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub url: UpstreamUrl,
    up: AtomicBool,
    good_streak: AtomicU32,
    bad_streak: AtomicU32,
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    latency_us: AtomicU64,
    checks: AtomicU64,
    last_error: Mutex<Option<String>>,
    meters: Meters,
}

impl Upstream {
    /// An upstream, in rotation until it fails.
    pub fn new(url: UpstreamUrl) -> Self {
        let meters = Meters::new(&url.to_string());
        meters.up.set(1.0);
        Self {
            url,
            up: AtomicBool::new(true),
            good_streak: AtomicU32::new(0),
            bad_streak: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            last_error: Mutex::new(None),
            meters,
        }
    }

    /// Whether it is in rotation.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.meters.up.set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(upstream = %self.url, "upstream back in rotation");
            } else {
                tracing::warn!(upstream = %self.url, error = ?self.last_error.lock(), "upstream out of rotation");
            }
        }
    }

    /// Takes the upstream out of rotation at once (a connection to it
    /// failed); the health check brings it back.
    pub fn eject(&self, why: &str) {
        self.note_error(why);
        self.good_streak.store(0, Ordering::Relaxed);
        self.set_up(false);
    }

    fn note_error(&self, why: &str) {
        *self.last_error.lock() = Some(why.to_owned());
    }

    /// Records an active health check: `fall` bad ones in a row take the
    /// upstream out, `rise` good ones in a row bring it back.
    pub fn record_check(&self, result: Result<(), String>, rise: u32, fall: u32) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.bad_streak.store(0, Ordering::Relaxed);
                let streak = self.good_streak.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= rise {
                    self.set_up(true);
                }
            }
            Err(why) => {
                self.note_error(&why);
                self.good_streak.store(0, Ordering::Relaxed);
                let streak = self.bad_streak.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= fall {
                    self.set_up(false);
                }
            }
        }
    }

    /// Marks a request as started; the guard ends it.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records a response with `status`, `latency` after the request left.
    pub fn record_response(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        self.meters.latency.record(latency.as_secs_f64());
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.meters.by_class[class].increment(1);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a request that got no response from this upstream.
    pub fn record_failure(&self, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.meters.errors.increment(1);
        self.note_error(why);
    }

    /// The counters now.
    pub fn stats(&self) -> UpstreamStats {
        let requests = self.requests.load(Ordering::Relaxed);
        let latency_us = self.latency_us.load(Ordering::Relaxed);
        UpstreamStats {
            url: self.url.to_string(),
            up: self.is_up(),
            requests,
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            mean_latency_ms: if requests == 0 {
                0.0
            } else {
                latency_us as f64 / requests as f64 / 1000.0
            },
            checks: self.checks.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// A request in flight at an upstream.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Upstream);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(UpstreamUrl::parse("http://127.0.0.1:3000").is_ok());
        assert!(UpstreamUrl::parse("http://app:3000/").is_ok());
        assert!(UpstreamUrl::parse("https://app:3000").is_err());
        assert!(UpstreamUrl::parse("http://app").is_err());
        assert!(UpstreamUrl::parse("http://app:3000/x").is_err());
    }

    #[test]
    fn health_flips_after_rise_and_fall_streaks() {
        let upstream = Upstream::new(UpstreamUrl::parse("http://127.0.0.1:1").unwrap());
        let bad = || Err("refused".to_owned());
        upstream.record_check(bad(), 2, 3);
        upstream.record_check(bad(), 2, 3);
        assert!(upstream.is_up());
        upstream.record_check(bad(), 2, 3);
        assert!(!upstream.is_up());
        upstream.record_check(Ok(()), 2, 3);
        assert!(!upstream.is_up());
        upstream.record_check(Ok(()), 2, 3);
        assert!(upstream.is_up());
        upstream.eject("connect refused");
        assert!(!upstream.is_up());
        assert_eq!(
            upstream.stats().last_error.as_deref(),
            Some("connect refused")
        );
    }
}
