//! One upstream app server: its address, whether it is in rotation (health,
//! drain, slow start), how many requests it has in flight, and what it has
//! served.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::uri::Authority;
use metrics::{Counter, Gauge, Histogram};
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::capacity::Capacity;

/// Why an upstream address is refused.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    /// Not `http://`.
    #[error("upstream {text:?} must start with http://")]
    NotHttp {
        /// What was given.
        text: String,
    },
    /// It has a path.
    #[error("upstream {text:?} must be http://host:port, without a path")]
    HasPath {
        /// What was given.
        text: String,
    },
    /// The authority does not parse.
    #[error("upstream {text:?} is not host:port: {source}")]
    NotHostPort {
        /// What was given.
        text: String,
        /// Why it does not parse.
        source: axum::http::uri::InvalidUri,
    },
    /// No port, or port 0.
    #[error("upstream {text:?} needs a port from 1 to 65535")]
    NoPort {
        /// What was given.
        text: String,
    },
    /// No host (`http://:80`).
    #[error("upstream {text:?} names no host")]
    NoHost {
        /// What was given.
        text: String,
    },
    /// A user name or password: the balancer sends no credentials, and the
    /// address is shown on the status page, `/stats.json` and metrics.
    #[error("an upstream must be http://host:port, without a user or password")]
    HasUserinfo,
}

/// An upstream's address, checked: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `host:port`.
    pub authority: Authority,
}

impl UpstreamUrl {
    /// Parses `http://host:port` (a trailing `/` is allowed, a path is not),
    /// written one way for each address (the host in lower case, the port
    /// without leading zeros): one upstream is never two.
    pub fn parse(text: &str) -> Result<Self, UpstreamUrlError> {
        // First, as every other error repeats the text: a password in it
        // must not reach an answer or the log.
        let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
        if after_scheme
            .split('/')
            .next()
            .is_some_and(|authority| authority.contains('@'))
        {
            return Err(UpstreamUrlError::HasUserinfo);
        }
        let given = || text.to_owned();
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| UpstreamUrlError::NotHttp { text: given() })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(UpstreamUrlError::HasPath { text: given() });
        }
        let authority: Authority =
            rest.parse()
                .map_err(|source| UpstreamUrlError::NotHostPort {
                    text: given(),
                    source,
                })?;
        if authority.host().is_empty() {
            return Err(UpstreamUrlError::NoHost { text: given() });
        }
        let port = authority
            .port_u16()
            .filter(|port| *port != 0)
            .ok_or_else(|| UpstreamUrlError::NoPort { text: given() })?;
        let canonical = format!("{}:{port}", authority.host().to_ascii_lowercase());
        let authority =
            Authority::try_from(canonical).map_err(|source| UpstreamUrlError::NotHostPort {
                text: given(),
                source,
            })?;
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
    /// Passing its health checks.
    pub up: bool,
    /// `active`, or `draining` (no new requests; removed once idle).
    pub state: &'static str,
    /// Share of a full upstream it gets now (below 1 while slow-starting).
    pub weight: f64,
    /// Requests answered by this upstream (any status).
    pub requests: u64,
    /// Requests that failed here (connect errors, resets, timeouts, 5xx).
    pub errors: u64,
    /// Requests (and upgraded connections) being served now.
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

/// Sentinel of [`Upstream`]'s ramp start: not ramping.
const NOT_RAMPING: u64 = u64::MAX;

/// Milliseconds since the first call: the clock of slow starts.
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One upstream and its health.
#[derive(Debug)]
pub struct Upstream {
    /// Unique in this process (a re-added URL gets a new one).
    pub id: u64,
    /// Where it is.
    pub url: UpstreamUrl,
    /// Cancelled when it leaves the pool: its health checks stop and its
    /// upgraded connections close.
    pub closed: CancellationToken,
    /// Set as it leaves the pool, for checks on busy paths (the token's
    /// own check takes a lock).
    left: AtomicBool,
    capacity: Arc<Capacity>,
    slow_start: Duration,
    ramp_start_ms: AtomicU64,
    draining: AtomicBool,
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
    /// An upstream, in rotation until it fails. With `ramp`, its share
    /// rises from nothing to full over `slow_start` (one added at run time);
    /// without, it starts at full share (one there from the start).
    pub fn new(
        url: UpstreamUrl,
        capacity: Arc<Capacity>,
        slow_start: Duration,
        ramp: bool,
    ) -> Self {
        let meters = Meters::new(&url.to_string());
        meters.up.set(1.0);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            url,
            closed: CancellationToken::new(),
            left: AtomicBool::new(false),
            capacity,
            slow_start,
            ramp_start_ms: AtomicU64::new(if ramp && !slow_start.is_zero() {
                clock_ms()
            } else {
                NOT_RAMPING
            }),
            draining: AtomicBool::new(false),
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

    /// Whether it passes its health checks.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether new requests may go to it: up and not draining.
    pub fn is_routable(&self) -> bool {
        self.is_up() && !self.is_draining()
    }

    /// Whether it is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts (`true`) or cancels (`false`) a drain: a draining upstream
    /// gets no new requests. Cancelling restarts its slow start and wakes
    /// the queue (it has room again).
    pub fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::AcqRel) && !draining {
            self.start_ramp();
            self.capacity.room_made();
        }
    }

    /// It leaves the pool: [`closed`](Self::closed) is cancelled.
    pub fn leave(&self) {
        self.left.store(true, Ordering::Release);
        self.closed.cancel();
    }

    /// Whether it has left the pool (without the token's lock).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    fn start_ramp(&self) {
        if !self.slow_start.is_zero() {
            self.ramp_start_ms.store(clock_ms(), Ordering::Release);
        }
    }

    /// Its share of a full upstream's traffic now: rises linearly from 0
    /// to 1 over `--slow-start` after it joined or came back.
    pub fn weight(&self) -> f64 {
        let start = self.ramp_start_ms.load(Ordering::Acquire);
        if start == NOT_RAMPING {
            return 1.0;
        }
        let elapsed = clock_ms().saturating_sub(start) as f64;
        let weight = elapsed / self.slow_start.as_millis().max(1) as f64;
        if weight >= 1.0 {
            self.ramp_start_ms.store(NOT_RAMPING, Ordering::Release);
            return 1.0;
        }
        weight
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.meters.up.set(if up { 1.0 } else { 0.0 });
            if up {
                self.start_ramp();
                tracing::info!(upstream = %self.url, "upstream back in rotation");
            } else {
                tracing::warn!(upstream = %self.url, error = ?self.last_error.lock(), "upstream out of rotation");
            }
            // Either way the queue may move: one back has room, and the
            // last one out turns every upstream out of rotation into a
            // candidate (`Pool::pick`'s panic mode), some with room.
            self.capacity.room_made();
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

    /// Marks a request as started, unless `max` are in flight already;
    /// the guard ends it.
    pub fn try_start(self: &Arc<Self>, max: Option<u64>) -> Option<InFlight> {
        match max {
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
            }
            Some(max) => {
                self.in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                        (now < max).then_some(now + 1)
                    })
                    .ok()?;
            }
        }
        Some(InFlight(self.clone()))
    }

    /// Requests (and upgraded connections) in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
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
            self.meters.errors.increment(1);
        }
    }

    /// Records a response body the upstream broke off (closed mid-body,
    /// malformed framing) and takes it out of rotation: the client got a
    /// cut answer, the upstream's fault.
    pub fn broke_mid_body(&self, why: &str) {
        tracing::warn!(upstream = %self.url, error = %why, "upstream broke off a response body");
        self.record_failure(why);
        self.eject(why);
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
            state: if self.is_draining() {
                "draining"
            } else {
                "active"
            },
            weight: self.weight(),
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

/// A request (or upgraded connection) in flight at an upstream: counts
/// against `--max-conns` and keeps a drain waiting until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream it is at.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.capacity.freed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(UpstreamUrl::parse("http://127.0.0.1:3000").is_ok());
        assert!(UpstreamUrl::parse("http://app:3000/").is_ok());
        assert!(matches!(
            UpstreamUrl::parse("https://app:3000"),
            Err(UpstreamUrlError::NotHttp { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://app"),
            Err(UpstreamUrlError::NoPort { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://app:3000/x"),
            Err(UpstreamUrlError::HasPath { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://:9"),
            Err(UpstreamUrlError::NoHost { .. })
        ));
        assert!(matches!(
            UpstreamUrl::parse("http://127.0.0.1:0"),
            Err(UpstreamUrlError::NoPort { .. })
        ));
        for text in [
            "http://user:pw@127.0.0.1:9",
            "http://user:pw@127.0.0.1:9/x",
            "https://user:pw@h:1",
            "user:pw@h:1",
        ] {
            let with_password = UpstreamUrl::parse(text);
            assert!(
                matches!(with_password, Err(UpstreamUrlError::HasUserinfo)),
                "{text}: {with_password:?}"
            );
        }
    }

    #[test]
    fn one_address_is_written_one_way() {
        let written = |text: &str| UpstreamUrl::parse(text).unwrap().to_string();
        assert_eq!(written("http://127.0.0.1:009"), "http://127.0.0.1:9");
        assert_eq!(written("http://App.Example:80/"), "http://app.example:80");
        assert_eq!(written("http://[::1]:0080"), "http://[::1]:80");
        assert_eq!(
            UpstreamUrl::parse("http://127.0.0.1:009").unwrap(),
            UpstreamUrl::parse("http://127.0.0.1:9").unwrap()
        );
    }

    #[test]
    fn health_flips_after_rise_and_fall_streaks() {
        let upstream = Upstream::new(
            UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            Arc::default(),
            Duration::ZERO,
            false,
        );
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

    #[test]
    fn a_capped_upstream_takes_no_more_than_its_share_in_flight() {
        let upstream = Arc::new(Upstream::new(
            UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            Arc::default(),
            Duration::ZERO,
            false,
        ));
        let first = upstream.try_start(Some(2)).unwrap();
        let _second = upstream.try_start(Some(2)).unwrap();
        assert!(upstream.try_start(Some(2)).is_none());
        drop(first);
        let third = upstream.try_start(Some(2));
        assert!(third.is_some());
        assert_eq!(upstream.in_flight(), 2);
    }

    #[test]
    fn a_ramping_upstream_starts_near_zero() {
        let upstream = Upstream::new(
            UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            Arc::default(),
            Duration::from_secs(3600),
            true,
        );
        assert!(upstream.weight() < 0.01);
        upstream.set_draining(true);
        assert!(!upstream.is_routable());
    }
}
