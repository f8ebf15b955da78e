//! The gestor host: configuration, plugin loading, the node runtime that
//! implements the SDK's [`Host`](gestor_sdk::Host), and a client used by the CLI.

pub mod bench;
pub mod chat;
pub mod client;
pub mod config;
pub mod copies;
pub mod demo;
pub mod directory;
pub mod faults;
pub mod http;
pub mod import;
pub mod json;
pub mod loader;
pub mod memory;
pub mod local_ring;
pub mod metrics;
pub mod ops;
pub mod out;
pub mod runtime;
pub mod security;
pub mod sessions;
