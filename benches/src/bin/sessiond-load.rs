//! `sessiond-load`: drives N concurrent connections with a GET/PUT mix
//! against sessiond (through the Rust client) or against Redis (through the
//! `redis` crate's multiplexed connection, GET/SET), and prints throughput
//! and latency percentiles, so both are measured by the same tool on the
//! same machine.
//!
//! ```text
//! cargo run --release -p sessiond-benches --bin sessiond-load -- \
//!     --target sessiond://127.0.0.1:7701 --connections 50 --get-ratio 0.9 --value-size 1024
//! cargo run --release -p sessiond-benches --bin sessiond-load -- \
//!     --target redis://127.0.0.1:6379 --connections 50 --get-ratio 0.9 --value-size 1024
//! ```
//!
//! `--workers 200 --connections 1` runs 200 closed-loop workers over one
//! shared client (one multiplexed connection per node), or one shared
//! Redis multiplexed connection, as an app server's request handlers would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sessiond_benches::load::{Report, Scenario, Target, Workload, run};

/// Load generator for sessiond and Redis.
#[derive(Debug, Parser)]
#[command(name = "sessiond-load", version, about)]
struct Args {
    /// What to drive: `sessiond://host:port[,host:port...]` (binary
    /// protocol) or `redis://host:port`.
    #[arg(long, default_value = "sessiond://127.0.0.1:7701")]
    target: String,
    /// Connections: sessiond clients (one connection per node each) or
    /// Redis multiplexed connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Closed-loop workers, spread over the connections (default: one per
    /// connection); more workers than connections pipeline requests on
    /// the shared connections.
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// How long to measure.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring (not counted).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Fraction of operations that are reads; the rest are writes.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// Bytes of each session's data.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Sessions (keys) created before the run and picked at random.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// What each operation is: `rw` (a read or a write, by --get-ratio),
    /// `create` (a new session) or `rotate` (a new id for a session),
    /// the last two for sessiond only.
    #[arg(long, value_enum, default_value_t = Scenario::Rw)]
    scenario: Scenario,
    /// Sessions belong to one of this many users (0: to none), so creates
    /// and rotations go through the user index (sessiond only).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// sessiond's auth token, if it has one.
    #[arg(long, env = "SESSIOND_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// A server process whose CPU time (utime + stime) over the measured
    /// window is reported per operation; repeat for several (a node and
    /// its Redis).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// A sessiond node's HTTP address (`host:port`), whose `/metrics` tell
    /// how many requests it answered per socket read (for Redis targets
    /// this comes from `INFO stats`).
    #[arg(long)]
    server_metrics: Option<String>,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn workers(&self) -> usize {
        self.workers.unwrap_or(self.connections)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.get_ratio),
        "--get-ratio must be between 0 and 1"
    );
    anyhow::ensure!(
        args.connections > 0 && args.workers() > 0 && args.keys > 0,
        "--connections, --workers and --keys must be > 0"
    );
    let target: Target = args.target.parse().context("bad --target")?;
    let workload = Workload {
        connections: args.connections,
        workers: args.workers(),
        duration: args.duration,
        warmup: args.warmup,
        get_ratio: args.get_ratio,
        value_size: args.value_size,
        keys: args.keys,
        scenario: args.scenario,
        users: args.users,
        auth_token: args.auth_token.clone(),
        server_pids: args.server_pids.clone(),
        server_metrics: args.server_metrics.clone(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(show_progress(ops.clone(), done.clone()));
    let report = run(&target, &workload, ops).await?;
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    print_report(&args, &report);
    Ok(())
}

/// Prints the running operation count and rate every second to stderr.
async fn show_progress(ops: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut last = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while !done.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = ops.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4.0}s] {:>10} ops  {:>9} ops/s",
            started.elapsed().as_secs_f64(),
            now,
            now - last
        );
        last = now;
    }
}

fn print_report(args: &Args, report: &Report) {
    let server_cpu = (!args.server_pids.is_empty()).then(|| report.server_cpu_us_per_op());
    let server_system = server_cpu.map(|_| report.server_system_us_per_op());
    let depth = report.usage.requests_per_read;
    if args.json {
        let json = serde_json::json!({
            "target": args.target,
            "connections": args.connections,
            "workers": args.workers(),
            "get_ratio": args.get_ratio,
            "value_size": args.value_size,
            "ops": report.ops,
            "errors": report.errors,
            "ops_per_sec": report.ops_per_sec().round(),
            "p50_us": report.percentile_us(50.0),
            "p99_us": report.percentile_us(99.0),
            "p999_us": report.percentile_us(99.9),
            "write_p50_us": report.write_percentile_us(50.0),
            "write_p99_us": report.write_percentile_us(99.0),
            "server_cpu_us_per_op": server_cpu,
            "server_system_us_per_op": server_system,
            "loader_cpu_us_per_op": report.loader_cpu_us_per_op(),
            "requests_per_read": depth,
        });
        println!("{json}");
    } else {
        println!("target       {}", args.target);
        println!(
            "workload     {} workers on {} connections, {:.0}% get, {} B values, {} keys, {:?}",
            args.workers(),
            args.connections,
            args.get_ratio * 100.0,
            args.value_size,
            args.keys,
            args.duration
        );
        println!("operations   {} ({} errors)", report.ops, report.errors);
        println!("throughput   {:.0} ops/s", report.ops_per_sec());
        println!(
            "latency      p50 {} us   p99 {} us   p99.9 {} us",
            report.percentile_us(50.0),
            report.percentile_us(99.0),
            report.percentile_us(99.9)
        );
        if let (Some(p50), Some(p99)) = (
            report.write_percentile_us(50.0),
            report.write_percentile_us(99.0),
        ) {
            println!("  writes     p50 {p50} us   p99 {p99} us");
        }
        if let (Some(cpu), Some(system)) = (server_cpu, server_system) {
            println!("server CPU   {cpu:.2} us/op ({system:.2} in the kernel)");
        }
        println!("loader CPU   {:.2} us/op", report.loader_cpu_us_per_op());
        if let Some(depth) = depth {
            println!("pipelining   {depth:.2} requests per server read");
        }
    }
}
