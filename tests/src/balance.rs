//! `sessiond balance` as a real process on ephemeral loopback ports, and
//! helpers that read its admin listener.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::{Process, binary, spawn_listening};

/// Bound of one request to the admin listener.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `sessiond balance` process; killed (SIGKILL) and reaped when
/// dropped.
pub struct Balancer {
    process: Process,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The admin listener (`/`, `/stats.json`, `/metrics`, `/healthz`).
    pub admin: SocketAddr,
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
        let (process, addrs) = spawn_listening(command, &["balancer", "admin"]);
        Self {
            process,
            listen: addrs[0],
            admin: addrs[1],
            http: crate::http_client(ADMIN_TIMEOUT),
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

impl std::ops::Deref for Balancer {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Balancer {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
