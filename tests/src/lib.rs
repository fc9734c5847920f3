//! Harness of the end-to-end tests: builds and starts the real `sessiond`
//! binary on ephemeral loopback ports, and stops whatever it started.

pub mod process;

pub use process::{Sessiond, binary};
