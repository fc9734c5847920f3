//! The `cart` example app (axum + tower-sessions through `SessiondStore`)
//! as a real process in front of harness-started store nodes.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::Sessiond;
use crate::process::{Process, binary, spawn_listening};

/// How long a started app may take until its `/healthz` answers.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// The cart example's binary target, for [`binary`].
pub const CART_BINARY: &str = "sessiond-client:example:cart:tower-sessions";

/// A running cart app; killed (SIGKILL) and reaped when dropped.
pub struct CartApp {
    process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub url: String,
}

impl CartApp {
    /// Starts the example on a free loopback port with `--name name` and
    /// `--sessiond` listing the binary-protocol address of every store in
    /// `stores`, then waits (bounded) until its `/healthz` answers 200.
    pub async fn start(stores: &[&Sessiond], name: &str) -> Self {
        Self::start_with(stores, name, &[]).await
    }

    /// [`start`](Self::start) with extra flags.
    pub async fn start_with(stores: &[&Sessiond], name: &str, args: &[&str]) -> Self {
        let path = tokio::task::spawn_blocking(|| binary(CART_BINARY))
            .await
            .expect("building the cart example panicked");
        let nodes: Vec<String> = stores.iter().map(|store| store.tcp.to_string()).collect();
        let mut command = Command::new(path);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--sessiond", &nodes.join(",")])
            .args(["--name", name])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("APP_LISTEN")
            .env_remove("APP_SESSIOND")
            .env_remove("APP_NAME");
        let started = tokio::task::spawn_blocking(move || spawn_listening(command, &["cart app"]))
            .await
            .expect("starting the cart example panicked");
        let (process, addrs) = started;
        let app = Self {
            process,
            addr: addrs[0],
            url: format!("http://{}", addrs[0]),
        };
        app.wait_healthy().await;
        app
    }

    async fn wait_healthy(&self) {
        let http = crate::http_client(Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let answer = http.get(format!("{}/healthz", self.url)).send().await;
            if answer.is_ok_and(|answer| answer.status() == 200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cart app did not get healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl std::ops::Deref for CartApp {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for CartApp {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
