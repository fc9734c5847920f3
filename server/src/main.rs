//! The `sessiond` binary: parses the command line, sets up logging and
//! metrics, and runs the chosen subcommand until SIGINT or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessiond::config::{Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Latency buckets (seconds) of every `*_duration_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The operator's command line prints its own results; only warnings go
    // to its log.
    let level = if matches!(cli.command, Command::Ctl(_)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SESSIOND_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::Serve(args) => {
            let config = args.node_config()?;
            if args.check_config {
                println!("configuration ok: {config:#?}");
                return Ok(());
            }
            let shutdown = shutdown_on_signal();
            let clock = std::sync::Arc::new(sessiond::store::SystemClock);
            sessiond::node::run(config, clock, Some(install_metrics()?), shutdown).await?;
        }
        Command::Balance(args) => {
            let config = args.balance_config()?;
            if args.check_config {
                println!("configuration ok: {config:#?}");
                return Ok(());
            }
            let shutdown = shutdown_on_signal();
            sessiond::balance::run(config, Some(install_metrics()?), shutdown).await?;
        }
        Command::Ctl(args) => {
            std::process::exit(sessiond_ctl::run(args, sessiond::config::ctl_token()).await);
        }
    }
    Ok(())
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)
        .context("invalid latency buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            () = terminate => tracing::info!("SIGTERM received"),
        }
        cancel.cancel();
    });
    token
}
