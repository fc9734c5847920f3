//! Harness of the end-to-end tests: builds and starts the real `sessiond`
//! binary on ephemeral loopback ports, and stops whatever it started.

pub mod balance;
pub mod cart;
pub mod client;
pub mod process;
pub mod raw;
pub mod redis;
pub mod redis_support;
pub mod upstream;

pub use client::{build, builder_for, client_for};
pub use process::{Sessiond, binary};
pub use redis::{RedisCluster, RedisServer};

pub use balance::Balancer;
pub use cart::CartApp;
pub use upstream::TestUpstream;
