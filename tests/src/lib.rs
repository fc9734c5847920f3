//! Harness of the end-to-end tests: builds and starts the real `sessiond`
//! binary on ephemeral loopback ports, and stops whatever it started; and
//! what tests of the HTTP API share at any level ([`api`], [`http`],
//! [`raw_http`], [`metrics`], [`time`]), the server crate's router tests
//! included.

pub mod api;
pub mod balance;
pub mod browser;
pub mod cart;
pub mod certs;
pub mod client;
pub mod http;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod raw_http;
pub mod redis;
pub mod redis_support;
pub mod stack;
pub mod time;
pub mod upstream;

pub use client::{build, builder_for, client_for};
pub use http::{http_client, http_client_builder};
pub use process::{Sessiond, binary};
pub use redis::{ClusterOptions, RedisCluster, RedisServer};

pub use balance::Balancer;
pub use cart::CartApp;
pub use upstream::TestUpstream;
