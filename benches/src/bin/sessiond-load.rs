//! `sessiond-load`: drives N concurrent connections with a GET/PUT mix
//! against sessiond (through the Rust client) or against Redis (through the
//! `redis` crate, GET/SET), and prints throughput and latency percentiles,
//! so both are measured by the same tool on the same machine.
//!
//! ```text
//! cargo run --release -p sessiond-benches --bin sessiond-load -- \
//!     --target sessiond://127.0.0.1:7701 --connections 50 --get-ratio 0.9 --value-size 1024
//! cargo run --release -p sessiond-benches --bin sessiond-load -- \
//!     --target redis://127.0.0.1:6379 --connections 50 --get-ratio 0.9 --value-size 1024
//! ```

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
    /// Concurrent connections, each driven by one closed-loop worker.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
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
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.get_ratio),
        "--get-ratio must be between 0 and 1"
    );
    anyhow::ensure!(
        args.connections > 0 && args.keys > 0,
        "--connections and --keys must be > 0"
    );
    let target: Target = args.target.parse().context("bad --target")?;
    let workload = Workload {
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        get_ratio: args.get_ratio,
        value_size: args.value_size,
        keys: args.keys,
        scenario: args.scenario,
        users: args.users,
        auth_token: args.auth_token.clone(),
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
    if args.json {
        println!(
            "{{\"target\":\"{}\",\"connections\":{},\"get_ratio\":{},\"value_size\":{},\"ops\":{},\"errors\":{},\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
            args.target,
            args.connections,
            args.get_ratio,
            args.value_size,
            report.ops,
            report.errors,
            report.ops_per_sec(),
            report.percentile_us(50.0),
            report.percentile_us(99.0),
            report.percentile_us(99.9),
        );
    } else {
        println!("target       {}", args.target);
        println!(
            "workload     {} connections, {:.0}% get, {} B values, {} keys, {:?}",
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
    }
}
