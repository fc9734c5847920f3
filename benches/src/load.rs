//! The load tool's engine: closed-loop workers over N connections to
//! sessiond or Redis, one latency histogram per worker, merged at the end.
//! Workers and connections are counted apart: one worker per connection
//! (the default) measures the server under many independent clients; many
//! workers sharing one connection measures it the way an app server talks
//! to it, with requests pipelined on a multiplexed connection.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use redis::AsyncCommands;
use serde_json::value::RawValue;
use sessiond_client::{Client, SessionId};

use crate::probe::{Counters, Probe, Usage};

/// What the load is aimed at.
#[derive(Debug, Clone)]
pub enum Target {
    /// sessiond nodes (binary protocol addresses).
    Sessiond(Vec<String>),
    /// A Redis server URL.
    Redis(String),
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some(nodes) = text.strip_prefix("sessiond://") {
            Ok(Self::Sessiond(
                nodes.split(',').map(str::to_owned).collect(),
            ))
        } else if text.starts_with("redis://") {
            Ok(Self::Redis(text.to_owned()))
        } else {
            anyhow::bail!("target must start with sessiond:// or redis://")
        }
    }
}

/// What each operation of the load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A read or a write of an existing session.
    Rw,
    /// A new session.
    Create,
    /// A new id for one of the worker's sessions.
    Rotate,
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Connections: sessiond clients (one connection per node each) or
    /// Redis multiplexed connections.
    pub connections: usize,
    /// Closed-loop workers, spread evenly over the connections (worker `i`
    /// uses connection `i % connections`).
    pub workers: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before.
    pub warmup: Duration,
    /// Fraction of reads.
    pub get_ratio: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Keys created up front.
    pub keys: usize,
    /// What each operation is.
    pub scenario: Scenario,
    /// Sessions belong to one of this many users (0: none).
    pub users: usize,
    /// sessiond auth token.
    pub auth_token: Option<String>,
    /// Server processes whose CPU time the report counts.
    pub server_pids: Vec<u32>,
    /// A sessiond node's HTTP address, whose `/metrics` tell how many
    /// requests it answered per socket read (Redis's come from `INFO`).
    pub server_metrics: Option<String>,
}

/// The measured result.
#[derive(Debug)]
pub struct Report {
    /// Operations completed in the measured window.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency of every measured operation, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Latency of the measured writes alone (puts, creates, rotations).
    pub write_latency_us: Histogram<u64>,
    /// CPU time and pipelining in the measured window.
    pub usage: Usage,
}

impl Report {
    /// Throughput.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in microseconds.
    pub fn percentile_us(&self, percentile: f64) -> u64 {
        self.latency_us.value_at_percentile(percentile)
    }

    /// A latency percentile of the writes alone, in microseconds (`None`
    /// when the run made none).
    pub fn write_percentile_us(&self, percentile: f64) -> Option<u64> {
        (!self.write_latency_us.is_empty())
            .then(|| self.write_latency_us.value_at_percentile(percentile))
    }

    /// The server processes' CPU time per operation, in microseconds.
    pub fn server_cpu_us_per_op(&self) -> f64 {
        self.per_op_us(self.usage.server_cpu)
    }

    /// The kernel's part of [`Self::server_cpu_us_per_op`] (stime).
    pub fn server_system_us_per_op(&self) -> f64 {
        self.per_op_us(self.usage.server_system)
    }

    /// The load tool's own CPU time per operation, in microseconds.
    pub fn loader_cpu_us_per_op(&self) -> f64 {
        self.per_op_us(self.usage.loader_cpu)
    }

    fn per_op_us(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// A JSON string value of exactly `size` bytes (at least 2).
pub fn json_value(size: usize) -> Box<RawValue> {
    let text = format!("\"{}\"", "x".repeat(size.max(2) - 2));
    RawValue::from_string(text).unwrap_or_else(|_| unreachable!("a quoted run of x is JSON"))
}

/// Creates sessions at most this many at once while seeding.
const SEED_CONCURRENCY: usize = 64;

/// A connection, shared by the workers that use it.
#[derive(Clone)]
enum Conn {
    Sessiond(Client, Arc<Vec<SessionId>>),
    Redis(redis::aio::MultiplexedConnection),
}

/// The user a session made by worker-wide operation `n` belongs to.
fn user_of(n: usize, users: usize) -> Option<String> {
    (users > 0).then(|| format!("user-{}", n % users))
}

/// Creates a session of `value` (for a user when `user` is given).
async fn create(
    client: &Client,
    value: &RawValue,
    user: Option<&str>,
) -> anyhow::Result<SessionId> {
    let ttl = Some(Duration::from_secs(3600));
    Ok(match user {
        Some(user) => client.create_for_user(value, ttl, user).await?.id,
        None => client.create(value, ttl).await?.id,
    })
}

/// The create and rotate scenarios' worker, with its own sessions.
struct Own {
    client: Client,
    ids: Vec<SessionId>,
    next: usize,
    scenario: Scenario,
    value: Arc<RawValue>,
    users: usize,
}

impl Worker for Own {
    async fn step(&mut self) -> (Kind, anyhow::Result<()>) {
        (Kind::Write, self.create_or_rotate().await)
    }
}

impl Own {
    async fn create_or_rotate(&mut self) -> anyhow::Result<()> {
        self.next += 1;
        let user = user_of(self.next, self.users);
        match self.scenario {
            Scenario::Create => {
                create(&self.client, &self.value, user.as_deref()).await?;
            }
            Scenario::Rotate | Scenario::Rw => {
                let slot = self.next % self.ids.len();
                self.ids[slot] = self.client.rotate(&self.ids[slot]).await?.id;
            }
        }
        Ok(())
    }
}

impl Conn {
    async fn get(&mut self, key: usize) -> anyhow::Result<()> {
        match self {
            Self::Sessiond(client, ids) => {
                client.get::<Box<RawValue>>(&ids[key]).await?;
            }
            Self::Redis(conn) => {
                let _: Vec<u8> = conn.get(redis_key(key)).await?;
            }
        }
        Ok(())
    }

    async fn put(&mut self, key: usize, value: &RawValue) -> anyhow::Result<()> {
        match self {
            Self::Sessiond(client, ids) => {
                client.put(&ids[key], value, None).await?;
            }
            Self::Redis(conn) => {
                let () = conn
                    .set_ex(redis_key(key), value.get().as_bytes(), 3600)
                    .await?;
            }
        }
        Ok(())
    }
}

fn redis_key(key: usize) -> String {
    format!("load:{key}")
}

/// Creates the keys, then runs the workload; `ops` counts completed
/// operations as they happen (for progress display).
pub async fn run(
    target: &Target,
    workload: &Workload,
    ops: Arc<AtomicU64>,
) -> anyhow::Result<Report> {
    let value: Arc<RawValue> = Arc::from(json_value(workload.value_size));
    let mut conns = Vec::with_capacity(workload.connections);
    let mut probe = Probe {
        server_pids: workload.server_pids.clone(),
        counters: workload.server_metrics.clone().map(Counters::Sessiond),
    };
    match target {
        Target::Sessiond(nodes) => {
            let connect = || {
                let mut builder = Client::builder().nodes(nodes.clone());
                if let Some(token) = &workload.auth_token {
                    builder = builder.auth_token(token.clone());
                }
                builder.build()
            };
            let seeder = connect().await.context("cannot connect to sessiond")?;
            let ids = futures_util::stream::iter(0..workload.keys)
                .map(|n| {
                    let (seeder, value) = (&seeder, &value);
                    async move {
                        let user = user_of(n, workload.users);
                        create(seeder, value, user.as_deref()).await
                    }
                })
                .buffered(SEED_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await?;
            let ids = Arc::new(ids);
            for _ in 0..workload.connections {
                conns.push(Conn::Sessiond(connect().await?, ids.clone()));
            }
        }
        Target::Redis(_) if workload.scenario != Scenario::Rw || workload.users > 0 => {
            anyhow::bail!("--scenario create/rotate and --users drive sessiond only")
        }
        Target::Redis(url) => {
            let client = redis::Client::open(url.as_str()).context("bad Redis URL")?;
            let seeder = client.get_multiplexed_async_connection().await?;
            futures_util::stream::iter(0..workload.keys)
                .map(|key| {
                    let (mut seeder, value) = (seeder.clone(), &value);
                    async move {
                        seeder
                            .set_ex::<_, _, ()>(redis_key(key), value.get().as_bytes(), 3600)
                            .await
                    }
                })
                .buffer_unordered(SEED_CONCURRENCY)
                .try_collect::<()>()
                .await?;
            probe.counters = Some(Counters::Redis(seeder));
            for _ in 0..workload.connections {
                conns.push(Conn::Redis(
                    client.get_multiplexed_async_connection().await?,
                ));
            }
        }
    }
    // Worker `i` uses connection `i % connections`.
    let conns: Vec<Conn> = (0..workload.workers)
        .map(|worker| conns[worker % conns.len()].clone())
        .collect();

    if workload.scenario != Scenario::Rw {
        return run_own(conns, workload, &value, ops, probe).await;
    }
    let workers = conns
        .into_iter()
        .map(|conn| Mixed {
            conn,
            value: value.clone(),
            keys: workload.keys,
            get_ratio: workload.get_ratio,
        })
        .collect();
    drive(workers, workload, ops, probe).await
}

/// What one operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// One closed-loop worker of a load.
trait Worker: Send + 'static {
    /// One operation: what it was, and whether it succeeded.
    fn step(&mut self) -> impl std::future::Future<Output = (Kind, anyhow::Result<()>)> + Send;
}

/// The `rw` scenario's worker: a read or a write of a random key.
struct Mixed {
    conn: Conn,
    value: Arc<RawValue>,
    keys: usize,
    get_ratio: f64,
}

impl Worker for Mixed {
    async fn step(&mut self) -> (Kind, anyhow::Result<()>) {
        let key = fastrand::usize(..self.keys);
        if fastrand::f64() < self.get_ratio {
            (Kind::Read, self.conn.get(key).await)
        } else {
            (Kind::Write, self.conn.put(key, &self.value).await)
        }
    }
}

/// An empty latency histogram: 1 us to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// Runs `workers` over the workload's warm-up and measured window; `ops`
/// counts completed operations as they happen.
async fn drive<W: Worker>(
    workers: Vec<W>,
    workload: &Workload,
    ops: Arc<AtomicU64>,
    probe: Probe,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let measure_from = started + workload.warmup;
    let stop_at = measure_from + workload.duration;
    let usage = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let first = probe.sample().await?;
        tokio::time::sleep_until(stop_at.into()).await;
        anyhow::Ok(first.until(&probe.sample().await?))
    });
    let tasks = workers.into_iter().map(|mut worker| {
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut latency = latency_histogram();
            let mut write_latency = latency_histogram();
            let (mut done, mut errors) = (0u64, 0u64);
            loop {
                let begin = Instant::now();
                if begin >= stop_at {
                    break;
                }
                let (kind, result) = worker.step().await;
                ops.fetch_add(1, Ordering::Relaxed);
                if begin >= measure_from {
                    done += 1;
                    errors += u64::from(result.is_err());
                    let micros = (begin.elapsed().as_micros() as u64).max(1);
                    let _ = latency.record(micros);
                    if kind == Kind::Write {
                        let _ = write_latency.record(micros);
                    }
                }
            }
            (done, errors, latency, write_latency)
        })
    });
    let mut report = Report {
        ops: 0,
        errors: 0,
        elapsed: workload.duration,
        latency_us: latency_histogram(),
        write_latency_us: latency_histogram(),
        usage: Usage::default(),
    };
    for result in futures_util::future::join_all(tasks).await {
        let (done, errors, latency, write_latency) = result?;
        report.ops += done;
        report.errors += errors;
        report.latency_us.add(latency)?;
        report.write_latency_us.add(write_latency)?;
    }
    report.usage = usage.await??;
    Ok(report)
}

/// The create and rotate scenarios: each worker works on its own share of
/// the sessions made up front.
async fn run_own(
    conns: Vec<Conn>,
    workload: &Workload,
    value: &Arc<RawValue>,
    ops: Arc<AtomicU64>,
    probe: Probe,
) -> anyhow::Result<Report> {
    let per_worker = (workload.keys / workload.workers.max(1)).max(1);
    let mut owns = Vec::with_capacity(conns.len());
    for (worker, conn) in conns.into_iter().enumerate() {
        let Conn::Sessiond(client, ids) = conn else {
            anyhow::bail!("--scenario create/rotate drive sessiond only");
        };
        let share = ids
            .iter()
            .skip(worker * per_worker)
            .take(per_worker)
            .copied()
            .collect::<Vec<_>>();
        anyhow::ensure!(!share.is_empty(), "--keys must be at least --workers");
        owns.push(Own {
            client,
            ids: share,
            next: worker * per_worker,
            scenario: workload.scenario,
            value: value.clone(),
            users: workload.users,
        });
    }
    drive(owns, workload, ops, probe).await
}
