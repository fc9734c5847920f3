//! Harness of the end-to-end tests: builds and starts the real `sessiond`
//! binary on ephemeral loopback ports, and stops whatever it started.

pub mod balance;
pub mod cart;
pub mod certs;
pub mod client;
pub mod process;
pub mod raw;
pub mod redis;
pub mod redis_support;
pub mod stack;
pub mod upstream;

pub use client::{build, builder_for, client_for};
pub use process::{Sessiond, binary};
pub use redis::{RedisCluster, RedisServer};

pub use balance::Balancer;
pub use cart::CartApp;
pub use upstream::TestUpstream;

/// An HTTP client for the tests: no proxies, every request bounded by
/// `timeout`.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("cannot build the HTTP client")
}
