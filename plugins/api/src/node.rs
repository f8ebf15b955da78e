//! `node.*`: answered by the host itself, whatever plugins it loaded. No
//! plugin may register a kind starting with [`PREFIX`].

use crate::{Empty, Kind};
use gestor_sdk::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Reserved for the host.
pub const PREFIX: &str = "node.";

/// `node.status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub id_hex: String,
    /// Request URL.
    pub address: String,
    /// Signal URL.
    pub signal: String,
    pub transport: String,
    pub storage: String,
    pub plugins: Vec<String>,
    /// Records in the store, or the text of the error counting them.
    pub records: Value,
    pub initial_gestors: Vec<String>,
    pub uptime_ms: u64,
    pub malformed_signals: u64,
    /// The secure layer: mode, credential, refused traffic.
    #[serde(default)]
    pub security: SecurityStatus,
    /// Every plugin's status section (`status.NAME` → `NAME`), or the text
    /// `error: …` when a section failed.
    pub sections: BTreeMap<String, Value>,
}

/// `node.status` → `security`: how this gestor takes part in its cluster,
/// and what the secure layer and the host refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityStatus {
    /// `secure`, or `insecure` (development only: no admission checked).
    pub mode: String,
    /// The name in this gestor's credential.
    pub credential: Option<String>,
    /// Fingerprint (first 8 bytes, hex) of the trusted cluster key.
    pub cluster: Option<String>,
    pub sessions: u64,
    pub handshakes: u64,
    /// Handshakes refused: invalid, foreign or revoked credentials.
    pub handshakes_refused: u64,
    /// Sealed frames that failed authentication.
    pub tampered: u64,
    /// Frames whose counter was already used or too old.
    pub replayed: u64,
    /// Frames naming a session this gestor does not know.
    pub unknown_session: u64,
    /// Frames that were not secure frames at all (e.g. plaintext).
    pub malformed_frames: u64,
    /// Requests refused with `forbidden` (wrong class for the caller).
    pub forbidden_requests: u64,
    /// Gestor signals sent by non-gestors, dropped.
    pub forbidden_signals: u64,
    /// Client work (any kind but the gestores' upkeep kinds: a client's
    /// request, or one a gestor forwarded) answered `busy` because every
    /// worker it may hold was taken (the rest are kept for upkeep).
    #[serde(default)]
    pub clients_turned_away: u64,
    /// Client work answered `busy` unrun because it had waited for a
    /// request worker longer than `transport.max_queue_wait_ms`.
    #[serde(default)]
    pub clients_shed: u64,
}

impl NodeStatus {
    /// The section served by the status kind `K` (e.g. [`crate::status::Ring`]),
    /// if this gestor has it and it reads as `K::Reply`.
    pub fn section<K: Kind>(&self) -> Option<K::Reply> {
        let name = K::NAME.strip_prefix(crate::status::PREFIX)?;
        self.sections.get(name)?.deserialized().ok()
    }
}

kinds! {
    /// `node.status` — **client**: what this gestor is (id, URLs,
    /// backends, plugins, record count, initial gestors) and every plugin's
    /// status section. Used by `gestor status`, `gestor copies`, the demo
    /// and the tests; gestores ask it of each other for the signal URL.
    Status = "node.status", Client, Empty => NodeStatus;
    /// `node.ping` — **client**: liveness; answers `"pong"` (on the I/O
    /// thread: fast path). Chat clients answer it too.
    Ping = "node.ping", Client + fast_path, Empty => String;
}
