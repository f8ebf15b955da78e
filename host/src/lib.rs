//! The gestor host: configuration, plugin loading, the node runtime that
//! implements the SDK's [`Host`](gestor_sdk::Host), and the CLI's commands
//! (their client side is the `gestor-client` crate).

pub mod bench;
pub mod boundary;
pub mod chat_cli;
pub mod config;
pub mod copies;
pub mod demo;
pub mod faults;
pub mod http;
pub mod import;
pub mod json;
pub mod loader;
pub mod local_ring;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod out;
pub mod record_cache;
pub mod runtime;
pub mod security;
