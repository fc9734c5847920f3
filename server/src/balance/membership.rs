//! Changing the upstream set while serving: adding an upstream (it gets
//! health checks and slow-starts), draining one (no new requests; it leaves
//! the pool once its in-flight requests and upgraded connections are done,
//! or at `--drain-timeout`, which closes what is left), and SIGHUP's
//! reload, which makes the set the `--upstream` flags plus the
//! `--upstreams-file` as it is now.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connector::UpstreamClient;
use super::health::{self, HealthCheck};
use super::pool::{Joined, Pool};
use super::upstream::{Upstream, UpstreamUrl, UpstreamUrlError};

/// How often a drain looks whether its upstream is idle.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Why the upstream set cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// The upstreams file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An address in it is malformed.
    #[error(transparent)]
    Url(#[from] UpstreamUrlError),
}

/// Where the upstream set comes from.
#[derive(Debug, Clone)]
pub struct UpstreamSources {
    /// From `--upstream` (kept on every reload).
    pub flags: Vec<UpstreamUrl>,
    /// `--upstreams-file`, read again on SIGHUP.
    pub file: Option<PathBuf>,
}

impl UpstreamSources {
    /// The flags' upstreams and the file's, in that order, without repeats.
    pub fn read(&self) -> Result<Vec<UpstreamUrl>, SourcesError> {
        let mut urls = self.flags.clone();
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|source| SourcesError::Read {
                path: path.clone(),
                source,
            })?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    urls.push(UpstreamUrl::parse(line)?);
                }
            }
        }
        let mut unique: Vec<UpstreamUrl> = Vec::with_capacity(urls.len());
        for url in urls {
            if !unique.contains(&url) {
                unique.push(url);
            }
        }
        Ok(unique)
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The upstream joined (or a draining one was taken back).
    Added,
    /// It was there already.
    Present,
    /// It is draining now (or was already).
    Draining,
    /// It is not a member.
    Unknown,
}

/// Adds and drains upstreams, with their health checks.
#[derive(Debug, Clone)]
pub struct Membership {
    pool: Arc<Pool>,
    health_client: UpstreamClient,
    check: HealthCheck,
    drain_timeout: Duration,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Membership {
    /// Manages `pool`'s members; background tasks go on `tasks` and stop at
    /// `shutdown`.
    pub fn new(
        pool: Arc<Pool>,
        health_client: UpstreamClient,
        check: HealthCheck,
        drain_timeout: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            health_client,
            check,
            drain_timeout,
            tasks,
            shutdown,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Starts the health checks of `upstream`.
    pub fn watch(&self, upstream: &Arc<Upstream>) {
        self.tasks.spawn(health::run(
            upstream.clone(),
            self.health_client.clone(),
            self.check.clone(),
            self.shutdown.clone(),
        ));
    }

    /// Adds `url` (slow-starting), or takes it back if it is draining.
    pub fn add(&self, url: &UpstreamUrl) -> Change {
        match self.pool.add(url) {
            Joined::New(upstream) => {
                self.watch(&upstream);
                tracing::info!(upstream = %url, "upstream added");
                Change::Added
            }
            Joined::TakenBack => {
                tracing::info!(upstream = %url, "upstream taken back from draining");
                Change::Added
            }
            Joined::Present => Change::Present,
        }
    }

    /// Drains `url`: no new requests; it leaves the pool once idle.
    pub fn drain(&self, url: &UpstreamUrl) -> Change {
        let Some(upstream) = self.pool.find(url) else {
            return Change::Unknown;
        };
        if upstream.is_draining() {
            return Change::Draining;
        }
        upstream.set_draining(true);
        tracing::info!(upstream = %url, in_flight = upstream.in_flight(), "upstream draining");
        let (pool, timeout, shutdown) =
            (self.pool.clone(), self.drain_timeout, self.shutdown.clone());
        self.tasks.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if !upstream.is_draining() || shutdown.is_cancelled() {
                    return;
                }
                if upstream.in_flight() == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(upstream = %upstream.url, in_flight = upstream.in_flight(), "drain timed out; closing what is left");
                    break;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
            if pool.remove_drained(&upstream) {
                tracing::info!(upstream = %upstream.url, "upstream removed");
            }
        });
        Change::Draining
    }

    /// Makes the set exactly `wanted`: new ones are added, missing ones
    /// drained. Returns how many were added and drained.
    pub fn sync(&self, wanted: &[UpstreamUrl]) -> (usize, usize) {
        let added = wanted
            .iter()
            .filter(|url| self.add(url) == Change::Added)
            .count();
        let drained = self
            .pool
            .upstreams()
            .iter()
            .filter(|u| !u.is_draining() && !wanted.contains(&u.url))
            .filter(|u| self.drain(&u.url) == Change::Draining)
            .count();
        (added, drained)
    }
}
