//! The load tool's engine: closed-loop workers over N connections to
//! sessiond or Redis, one latency histogram per worker, merged at the end.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use redis::AsyncCommands;
use serde_json::value::RawValue;
use sessiond_client::{Client, SessionId};

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

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent connections (one worker each).
    pub connections: usize,
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
    /// sessiond auth token.
    pub auth_token: Option<String>,
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
}

/// A JSON string value of exactly `size` bytes (at least 2).
pub fn json_value(size: usize) -> Box<RawValue> {
    let text = format!("\"{}\"", "x".repeat(size.max(2) - 2));
    RawValue::from_string(text).unwrap_or_else(|_| unreachable!("a quoted run of x is JSON"))
}

/// One worker's connection.
enum Conn {
    Sessiond(Client, Arc<Vec<SessionId>>),
    Redis(redis::aio::MultiplexedConnection),
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
            let mut ids = Vec::with_capacity(workload.keys);
            for _ in 0..workload.keys {
                ids.push(
                    seeder
                        .create(&*value, Some(Duration::from_secs(3600)))
                        .await?
                        .id,
                );
            }
            let ids = Arc::new(ids);
            for _ in 0..workload.connections {
                conns.push(Conn::Sessiond(connect().await?, ids.clone()));
            }
        }
        Target::Redis(url) => {
            let client = redis::Client::open(url.as_str()).context("bad Redis URL")?;
            let mut seeder = client.get_multiplexed_async_connection().await?;
            for key in 0..workload.keys {
                let () = seeder
                    .set_ex(redis_key(key), value.get().as_bytes(), 3600)
                    .await?;
            }
            for _ in 0..workload.connections {
                conns.push(Conn::Redis(
                    client.get_multiplexed_async_connection().await?,
                ));
            }
        }
    }

    let started = Instant::now();
    let measure_from = started + workload.warmup;
    let stop_at = measure_from + workload.duration;
    let workers = conns.into_iter().map(|mut conn| {
        let (value, ops) = (value.clone(), ops.clone());
        let (keys, get_ratio) = (workload.keys, workload.get_ratio);
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds"));
            let (mut done, mut errors) = (0u64, 0u64);
            loop {
                let key = fastrand::usize(..keys);
                let begin = Instant::now();
                if begin >= stop_at {
                    break;
                }
                let result = if fastrand::f64() < get_ratio {
                    conn.get(key).await
                } else {
                    conn.put(key, &value).await
                };
                ops.fetch_add(1, Ordering::Relaxed);
                if begin >= measure_from {
                    done += 1;
                    if result.is_err() {
                        errors += 1;
                    }
                    let micros = begin.elapsed().as_micros() as u64;
                    let _ = latency.record(micros.max(1));
                }
            }
            (done, errors, latency)
        })
    });
    let results = futures_util::future::join_all(workers).await;
    let mut report = Report {
        ops: 0,
        errors: 0,
        elapsed: workload.duration,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for result in results {
        let (done, errors, latency) = result?;
        report.ops += done;
        report.errors += errors;
        report.latency_us.add(latency)?;
    }
    Ok(report)
}
