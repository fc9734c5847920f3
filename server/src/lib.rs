//! sessiond: a session store service that lets web backends be stateless.
//!
//! Layers, top to bottom (a module only uses the ones below it):
//! - [`config`]: the command line and environment, turned into each
//!   subsystem's own configuration;
//! - [`node`] assembles a store node; [`balance`] is the front balancer;
//! - [`http`] and [`tcp`]: the front ends (HTTP/JSON API, binary protocol);
//! - [`service`]: every session operation once, with the API's policies;
//! - [`backend`]: where sessions live (memory, Redis sync, Redis
//!   write-behind), behind one trait;
//! - [`store`]: the sharded in-memory map;
//! - [`net`], [`descriptors`], [`readiness`], [`secret`], [`sparkline`]:
//!   what listeners, nodes and the balancer share.

pub mod backend;
pub mod balance;
pub mod config;
pub mod descriptors;
pub mod http;
pub mod net;
pub mod node;
pub mod prometheus;
pub mod readiness;
pub mod secret;
pub mod service;
pub mod sparkline;
pub mod store;
pub mod tcp;
