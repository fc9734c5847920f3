//! The `sessiond` binary: parses the command line, sets up logging and
//! metrics, and runs the chosen subcommand until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sessiond::config::{Cli, Command};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How long the process waits at exit for blocking work left behind (a
/// write stuck on an access-log pipe nobody reads).
const EXIT_GRACE: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run(Cli::parse()));
    // Dropping the runtime would wait for blocking tasks without a limit.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
                sessiond::balance::check_files(&config)?;
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

fn install_metrics() -> anyhow::Result<sessiond::prometheus::MetricsHandle> {
    sessiond::prometheus::install().context("cannot install the metrics recorder")
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
