//! `sessiond balance` as a real process on ephemeral loopback ports, and
//! helpers that read its admin listener.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::process::{binary, spawn_listening, terminate_child};

/// Bound of one request to the admin listener.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `sessiond balance` process; killed (SIGKILL) and reaped when
/// dropped.
pub struct Balancer {
    child: Child,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin listener (`/`, `/stats.json`, `/metrics`, `/healthz`).
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Balancer {
    /// Starts `sessiond balance --listen 127.0.0.1:0 --admin 127.0.0.1:0`
    /// plus `args`, and waits until both listeners are up.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(binary("sessiond:sessiond"));
        command
            .args([
                "balance",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("SESSIOND_LOG", "info")
            .env_remove("SESSIOND_UPSTREAMS")
            .env_remove("SESSIOND_UPSTREAMS_FILE");
        let started = spawn_listening(command, &["balancer", "admin"]);
        Self {
            child: started.child,
            listen: started.addrs[0],
            admin: started.addrs[1],
            log: started.log,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(ADMIN_TIMEOUT)
                .build()
                .expect("HTTP client"),
        }
    }

    /// `http://<listen>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `http://<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines the process wrote so far, one per line.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 15 s) for the process to exit;
    /// returns its exit code (`None`: killed after the wait, or by a signal).
    /// Blocks the calling thread.
    pub fn terminate(&mut self) -> Option<i32> {
        terminate_child(&mut self.child)
    }

    /// `GET /stats.json` of the admin listener, parsed.
    pub async fn stats(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/stats.json", self.admin_url()))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET /stats.json failed: {err}\n{}", self.log()));
        assert_eq!(response.status(), 200, "GET /stats.json");
        response.json().await.expect("/stats.json is JSON")
    }

    /// The `/stats.json` entry of the upstream `url`.
    pub async fn upstream_stats(&self, url: &str) -> Value {
        let stats = self.stats().await;
        stats["upstreams"]
            .as_array()
            .and_then(|upstreams| upstreams.iter().find(|u| u["url"] == url).cloned())
            .unwrap_or_else(|| panic!("no upstream {url} in /stats.json: {stats}"))
    }

    /// Waits (at most `within`) until `/stats.json` shows the upstream `url`
    /// up (`true`) or down (`false`); panics with the stats otherwise.
    pub async fn wait_until_up(&self, url: &str, up: bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.upstream_stats(url).await;
            if stats["up"] == up {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} is not {} after {within:?}: {stats}",
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `within`) until `/stats.json` counts `healthy`
    /// upstreams in rotation.
    pub async fn wait_until_healthy(&self, healthy: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats().await;
            if stats["healthy"] == healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {healthy} healthy upstreams after {within:?}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.kill();
    }
}
