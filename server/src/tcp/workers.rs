//! The binary protocol's event-loop threads (`--tcp-workers`): each runs a
//! single-threaded runtime, and every connection is served start to end
//! on the one the accept loop hands it to (the one serving the fewest
//! connections), as memcached's worker threads do.
//!
//! A connection's wake-ups thus never cross threads: no work stealing and
//! no waking a second runtime thread to look for work, which on a busy
//! shared connection is a tenth of the node's CPU per request
//! (BENCHMARKS.md). The price: a thread the OS takes off its core holds
//! up every connection it serves, where the node's work-stealing runtime
//! lets another thread take them over; on cores shared with other busy
//! programs the tail latency grows. Off by default.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use metrics::Gauge;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The running event-loop threads.
#[derive(Debug)]
pub struct TcpWorkers {
    workers: Vec<Worker>,
    /// Lets the threads end.
    released: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Worker {
    runtime: Handle,
    /// Connections this worker serves now.
    serving: Arc<AtomicUsize>,
    /// The same, as `sessiond_tcp_worker_connections{worker}`.
    gauge: Gauge,
}

/// A connection's place on a worker; the worker counts one connection
/// fewer when it drops.
#[derive(Debug)]
pub struct Placed {
    serving: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.serving.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
    }
}

impl TcpWorkers {
    /// Starts `count` threads (none: connections are served on the
    /// runtime of the accept loop).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let released = CancellationToken::new();
        let mut threads = Vec::with_capacity(count);
        let start_one = |index| -> std::io::Result<Worker> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let worker = Worker {
                runtime: runtime.handle().clone(),
                serving: Arc::default(),
                gauge: metrics::gauge!("sessiond_tcp_worker_connections", "worker" => format!("{index}")),
            };
            let released = released.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sessiond-tcp-{index}"))
                    .spawn(move || runtime.block_on(released.cancelled()))?,
            );
            Ok(worker)
        };
        let workers = (0..count).map(start_one).collect::<Result<_, _>>()?;
        Ok(Self {
            workers,
            released,
            threads,
        })
    }

    /// The runtime of the worker serving the fewest connections, with the
    /// new connection counted on it; `None` without workers.
    pub fn place(&self) -> Option<(&Handle, Placed)> {
        let worker = self
            .workers
            .iter()
            .min_by_key(|worker| worker.serving.load(Ordering::Acquire))?;
        worker.serving.fetch_add(1, Ordering::AcqRel);
        worker.gauge.increment(1.0);
        let placed = Placed {
            serving: worker.serving.clone(),
            gauge: worker.gauge.clone(),
        };
        Some((&worker.runtime, placed))
    }

    /// Ends the threads. A task started on a worker's runtime (a Redis
    /// connection's driver, made on first use there) runs until this is
    /// called, so call it once the node's background tasks are done.
    pub async fn stop(self) {
        self.released.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(JoinHandle::join)
                .all(|joined| joined.is_ok())
        })
        .await;
        if !matches!(joined, Ok(true)) {
            tracing::error!("a binary-protocol worker thread panicked");
        }
    }
}
