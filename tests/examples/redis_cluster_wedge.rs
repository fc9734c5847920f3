//! Minimal reproduction of a deadlock in the `redis` crate's async cluster
//! client (`redis` 1.8.1 with `cluster-async`; 2.0.0-rc.2 has the same
//! code), without sessiond: a 3-master cluster, one `ClusterConnection`,
//! concurrent commands over every master (as any busy client sends), then
//! SIGKILL one master. The connection's driver starts a slot refresh that
//! waits for its connection-map lock forever (a request future waiting on
//! that lock was granted it but is never polled again while the refresh
//! runs), so every later command through that connection times out, also
//! on the live masters and after the killed master is back; a fresh
//! connection works at once.
//!
//! `cargo run -p sessiond-e2e --example redis_cluster_wedge [concurrency]`
//! prints what each step answered and exits 1 while the defect is there.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use sessiond_e2e::redis::key_slot;
use sessiond_e2e::{ClusterOptions, RedisCluster, RedisServer};

/// Longest wait for any one command.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one command through `conn`, bounded by [`TIMEOUT`].
async fn run(conn: &mut ClusterConnection, command: &redis::Cmd) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, command.query_async::<redis::Value>(conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let concurrency: usize = std::env::args()
        .nth(1)
        .map_or(300, |n| n.parse().expect("concurrency is a number"));
    let mut cluster = tokio::task::block_in_place(|| {
        RedisCluster::start_with(ClusterOptions {
            require_full_coverage: false,
            ..ClusterOptions::default()
        })
    });
    let urls: Vec<String> = cluster.nodes.iter().map(RedisServer::url).collect();
    let client = ClusterClient::builder(urls)
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("cluster client");
    let mut conn = client.get_async_connection().await.expect("connect");
    let keys: Vec<String> = (0..concurrency).map(|n| format!("key:{n}")).collect();
    for key in &keys {
        run(&mut conn, redis::cmd("SET").arg(key).arg("v"))
            .await
            .expect("SET before the kill");
    }
    let live = keys
        .iter()
        .find(|key| RedisCluster::master_of_slot(key_slot(key)) == 0)
        .expect("a key on master 0")
        .clone();

    tokio::task::block_in_place(|| cluster.nodes[2].kill());
    println!("master 2 killed; {concurrency} concurrent PEXPIREs every 100 ms for 3 s");
    let flood_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < flood_until {
        let commands = keys.iter().map(|key| {
            let mut conn = conn.clone();
            let command = redis::cmd("PEXPIRE").arg(key).arg(600_000).clone();
            async move { run(&mut conn, &command).await }
        });
        futures_util::future::join_all(commands).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = run(&mut conn, redis::cmd("SET").arg(&live).arg("during")).await;
    println!("SET {live} (master 0, alive) while master 2 is down: {during:?}");

    tokio::task::block_in_place(|| cluster.nodes[2].restart());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = run(&mut conn, redis::cmd("SET").arg(&live).arg("after")).await;
    println!("SET {live} through the same connection 5 s after master 2 is back: {after:?}");
    let mut fresh = client
        .get_async_connection()
        .await
        .expect("fresh connection");
    let fresh_set = run(&mut fresh, redis::cmd("SET").arg(&live).arg("fresh")).await;
    println!("SET {live} through a fresh connection: {fresh_set:?}");
    // The servers stop when `cluster` is dropped, before the exit.
    if during.is_err() && after.is_err() && fresh_set.is_ok() {
        println!("the old connection is wedged for good: the defect is present");
        return ExitCode::FAILURE;
    }
    println!("the old connection recovered: the defect is absent");
    ExitCode::SUCCESS
}
