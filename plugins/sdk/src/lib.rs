//! # gestor-sdk — the contracts of gestor
//!
//! Everything that crosses a boundary in gestor is defined here, and nothing
//! else: the host, the transports, the stores and the plugins all depend on
//! this crate and on no one else's internals.
//!
//! * [`transport`] — REQ-REP and PUB-SUB as trait objects (nng, ZeroMQ).
//! * [`store`] — the directory table and per-plugin key-value space (SQLite, sled).
//! * [`plugin`] — the plugin trait, the context a plugin gets from the host,
//!   the declaration macro and the ABI fingerprint.
//! * [`kind`] — typed request kinds ([`Kind`]) and who may send them
//!   ([`KindClass`]); the gestor's own kinds are declared in `gestor-api`.
//! * [`wire`] — the CBOR request/reply envelope every endpoint speaks.
//! * [`hlc`] — hybrid logical clock stamps that version every record.
//! * [`logging`] — forwards a plugin's `tracing` events to the host.
//! * `testing` (cargo feature `testing`) — an in-memory store and an
//!   in-process transport, for simulators and unit tests.

pub mod error;
pub mod group_commit;
pub mod hash;
pub mod hlc;
pub mod kind;
pub mod logging;
pub mod plugin;
pub mod store;
// Always built for the SDK's own tests, so `cargo test -p gestor-sdk`
// checks the doubles too.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod wire;

pub use ciborium;
pub use ciborium::Value;
pub use error::{CallError, ErrorCode, HandlerError, PluginError, StoreError, TransportError};
pub use hlc::{Clock, ClockError, Timestamp};
pub use kind::{Empty, Kind, KindClass};
pub use plugin::{
    AbiFingerprint, Host, Plugin, PluginContext, PluginDeclaration, RequestMeta, ABI_MAGIC,
};
pub use store::{PutOutcome, Store, UserRecord};
pub use transport::{
    Endpoint, Publisher, Replier, RequestHandler, Requester, Subscriber, Transport,
    TransportOptions, Triage,
};
pub use wire::{Reply, Request};

/// Version of this SDK; part of the ABI fingerprint.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
