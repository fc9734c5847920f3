//! Expired sessions give their memory back without being read: a whole
//! store node (`node::run`, with its sweeper task) in process, on a manual
//! clock, driven over loopback HTTP.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use sessiond::config::{Cli, Command};
use sessiond::node;
use sessiond::prometheus::{self, MetricsHandle};
use sessiond::store::ManualClock;
use sessiond_e2e::api::Api;
use sessiond_e2e::metrics::{Metrics, scrape};
use tokio_util::sync::CancellationToken;

use super::START_MS;

/// The metrics recorder of this test process (there can be one only).
fn metrics_handle() -> MetricsHandle {
    static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| prometheus::install().expect("cannot install the metrics recorder"))
        .clone()
}

/// A loopback address with a port free a moment ago.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").to_string()
}

/// Data of the same size for every `n` below 1000.
fn padded(n: usize) -> Value {
    json!({"n": format!("{n:03}"), "pad": "p".repeat(100)})
}

/// Waits (bounded) until something listens at `address`.
async fn wait_until_listening(address: &str) {
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens at {address}");
}

/// Scrapes `url` until `done` holds of the metrics (bounded: the node's
/// tasks run on the real runtime, only its sessions' time is manual).
async fn scrape_until(url: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    for _ in 0..200 {
        let metrics = scrape(url).await;
        if done(&metrics) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    scrape(url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_give_their_memory_back_without_being_read() {
    let http = free_address();
    let tcp = free_address();
    let cli = Cli::parse_from([
        "sessiond",
        "serve",
        "--http",
        &http,
        "--tcp",
        &tcp,
        "--max-memory",
        "4KiB",
        "--sweep-interval",
        "10ms",
    ]);
    let Command::Serve(args) = cli.command else {
        panic!("serve parses as serve")
    };
    let config = args.node_config().expect("a valid configuration");
    let clock = Arc::new(ManualClock::new(START_MS));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(node::run(
        config,
        clock.clone(),
        Some(metrics_handle()),
        shutdown.clone(),
    ));
    wait_until_listening(&http).await;
    let url = format!("http://{http}");
    let api = Api::remote(&url);
    let up = scrape(&url).await;
    assert_eq!(up.value("sessiond_sessions", &[]), Some(0.0), "{up}");

    let mut created = 0;
    let mut full = false;
    for n in 0..200 {
        let answer = api
            .create(&json!({ "data": padded(n), "ttl_secs": 1 }))
            .await;
        if answer.status == 507 {
            answer.assert_error(507, "store_full");
            full = true;
            break;
        }
        answer.assert_session(201);
        created += 1;
    }
    assert!(full && created > 0, "4 KiB never filled up");
    let held = scrape(&url).await;
    assert_eq!(held.value("sessiond_sessions", &[]), Some(created as f64));

    // Nobody reads them; once their TTL has passed, the sweeper alone
    // frees them.
    clock.advance(Duration::from_secs(1));
    let metrics = scrape_until(&url, |metrics| {
        metrics.value("sessiond_sessions", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        metrics.value("sessiond_sessions", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.value("sessiond_memory_used_bytes", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.value("sessiond_expirations_total", &[]),
        Some(created as f64),
        "{metrics}"
    );
    for n in 0..created {
        api.create(&json!({ "data": padded(n) }))
            .await
            .assert_session(201);
    }

    shutdown.cancel();
    running
        .await
        .expect("the node task")
        .expect("the node ran and stopped cleanly");
}
