//! gestor-client: talking to a gestor ring as a client, without the node.
//!
//! * [`client`] — one request with fallback to other gestores ([`Client`]);
//! * [`directory`] — the typed `user.*` calls and the alive-signal sender;
//! * [`sessions`] — the one session store (tokens, initial gestors) on disk;
//! * [`trust`] — which cluster a client believes, and its secure layer;
//! * [`chat`] — the chat client library: outbox and inbox on disk, the
//!   receiving endpoint, the background loops.
//!
//! Transports are built with `gestor-backends`; nothing here links the node
//! runtime or a store backend.

pub mod chat;
pub mod client;
pub mod directory;
pub mod sessions;
pub mod trust;

pub use client::{Client, ClientError};
pub use gestor_backends::TransportKind;
