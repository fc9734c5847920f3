//! sessiond: a session store service that lets web backends be stateless.
//!
//! The binary's subcommands live in [`config`]; a store node is assembled in
//! [`node`] from the [`store`] (sharded in-memory map), the [`service`] layer
//! (every operation once) and the [`http`] front end.

pub mod balance;
pub mod claims;
pub mod config;
pub mod descriptors;
pub mod health;
pub mod http;
pub mod merge;
pub mod node;
pub mod replication;
pub mod service;
pub mod store;
pub mod sweeper;
pub mod tcp;
