//! Shared test support: port allocation, the conformance suites (written once,
//! instantiated per backend by the files in `tests/tests/`), and helpers that
//! run real `gestor` processes.

pub mod chat;
pub mod cluster;
pub mod ports;
pub mod relay;
pub mod ring;
pub mod store_suite;
pub mod transport_suite;
