//! The gestor host: configuration, plugin loading, the node runtime that
//! implements the SDK's [`Host`](gestor_sdk::Host), and a client used by the CLI.

pub mod client;
pub mod config;
pub mod json;
pub mod loader;
pub mod runtime;
