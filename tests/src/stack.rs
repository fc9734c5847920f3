//! The whole stack of the docker-compose file as local processes: Redis
//! (AOF on) <- two `sessiond serve` store nodes <- three `cart` apps (each
//! listing both store nodes) <- `sessiond balance`, and a browser to drive
//! it.

use std::time::Duration;

use reqwest::header::SET_COOKIE;
use serde_json::Value;

use crate::{Balancer, CartApp, RedisServer, Sessiond, client_for};

/// Bound of any single exchange.
pub const STEP: Duration = Duration::from_secs(20);

/// Every process of the stack, stopped when dropped.
pub struct Stack {
    /// The balancer in front of the apps.
    pub balancer: Balancer,
    /// The cart apps.
    pub apps: Vec<CartApp>,
    /// The store nodes.
    pub stores: Vec<Sessiond>,
    _redis: RedisServer,
    /// Holds the balancer's access log.
    access_log_dir: tempfile::TempDir,
}

impl Stack {
    /// Starts Redis (AOF on), two store nodes, three cart apps and the
    /// balancer.
    pub async fn start() -> Self {
        let redis = RedisServer::start_with_aof();
        let url = redis.url();
        let stores = vec![
            Sessiond::start(&["--redis", &url]),
            Sessiond::start(&["--redis", &url]),
        ];
        let mut apps = Vec::new();
        for name in ["app-1", "app-2", "app-3"] {
            apps.push(CartApp::start(&[&stores[0], &stores[1]], name).await);
        }
        let upstreams = apps
            .iter()
            .map(|app| app.url.clone())
            .collect::<Vec<_>>()
            .join(",");
        let access_log_dir = tempfile::tempdir().expect("a temp dir for the access log");
        let access_log = access_log_dir.path().join("access.log");
        let balancer = Balancer::start(&[
            "--access-log",
            access_log.to_str().expect("a UTF-8 temp path"),
            "--upstream",
            &upstreams,
            "--health-interval",
            "100ms",
            "--rise",
            "2",
            "--fall",
            "3",
        ]);
        Self {
            balancer,
            apps,
            stores,
            _redis: redis,
            access_log_dir,
        }
    }

    /// `path` on the balancer.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.balancer.url())
    }

    /// Which store node holds the one session of a test in its memory.
    pub async fn session_owner(&self) -> usize {
        let client = client_for(&[&self.stores[0], &self.stores[1]]).await;
        let mut counts = Vec::new();
        for store in &self.stores {
            let stats = tokio::time::timeout(STEP, client.stats(&store.tcp.to_string()))
                .await
                .expect("stats in time")
                .expect("stats");
            counts.push(stats.sessions);
        }
        let owner = counts
            .iter()
            .position(|&count| count == 1)
            .unwrap_or_else(|| panic!("sessions per store node: {counts:?}"));
        assert_eq!(
            counts.iter().sum::<u64>(),
            1,
            "sessions per node: {counts:?}"
        );
        owner
    }

    /// Every process's log and the balancer's access log, for failure
    /// messages.
    pub fn logs(&self) -> String {
        let access_log = std::fs::read_to_string(self.access_log_dir.path().join("access.log"))
            .unwrap_or_else(|err| format!("(unreadable: {err})"));
        let mut logs = format!(
            "balancer:\n{}\nbalancer's access log:\n{access_log}\n",
            self.balancer.log()
        );
        for (index, app) in self.apps.iter().enumerate() {
            logs.push_str(&format!("app-{}:\n{}\n", index + 1, app.log()));
        }
        for (index, store) in self.stores.iter().enumerate() {
            logs.push_str(&format!("store {index}:\n{}\n", store.log()));
        }
        logs
    }
}

/// A browser: an HTTP client with a cookie jar.
pub fn browser() -> reqwest::Client {
    crate::http_client_builder(STEP)
        .cookie_store(true)
        .build()
        .expect("HTTP client with a cookie jar")
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The app that answered (`x-served-by`).
    pub served_by: Option<String>,
    /// The `sid` cookie it set, if any.
    pub sid: Option<String>,
    /// The body, as JSON when it is JSON.
    pub body: Value,
}

/// Sends `request` and reads the whole answer (bounded).
pub async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let exchange = async {
        let response = request.send().await.map_err(|err| format!("{err:?}"))?;
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let sid = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(|cookie| {
                let pair = cookie.split(';').next()?.trim();
                pair.strip_prefix("sid=").map(str::to_owned)
            });
        let text = response.text().await.map_err(|err| format!("{err:?}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            served_by,
            sid,
            body,
        })
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}
