//! `status.*`: each plugin's section of `node.status`. The host gathers
//! them itself, by calling every handler registered under [`PREFIX`]; they
//! are **local**: nobody sends them over the network (`node.status` is the
//! way to read them).

use crate::initial::InitialList;
use crate::ring::{Neighbourhood, PeerRef};
use crate::Empty;
use serde::{Deserialize, Serialize};

/// A status section is the handler of `status.NAME`, shown as `NAME`.
pub const PREFIX: &str = "status.";

/// One distinct entry of the finger table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerEntry {
    pub index: usize,
    pub id: u64,
    pub addr: String,
}

/// `status.ring`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingStatus {
    pub joined: bool,
    pub id: u64,
    pub predecessor: Option<PeerRef>,
    pub successors: Vec<PeerRef>,
    pub fingers: Vec<FingerEntry>,
    pub lookups: u64,
    pub lookup_hops: u64,
    /// Every virtual node of this gestor with its neighbours, the one
    /// above (`id`) first; one when `ring.virtual_nodes` is 1.
    #[serde(default)]
    pub virtual_nodes: Vec<Neighbourhood>,
    /// Leave notices from other gestors that changed a virtual node's
    /// neighbours, since start.
    #[serde(default)]
    pub leave_splices: u64,
    /// Requests to other gestores that timed out although the gestor then
    /// answered a ping (busy, not dead: not counted against it), since start.
    #[serde(default)]
    pub timeouts_alive: u64,
    /// Gestores dropped from the ring as unreachable, since start.
    #[serde(default)]
    pub gestors_dropped: u64,
}

/// `status.directory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryStatus {
    pub alive_users: u64,
    pub records: u64,
    /// Password hashes (argon2) being computed now.
    #[serde(default)]
    pub hash_running: u64,
    /// Password hashes waiting for a thread of the pool, or (when slots are
    /// shared with the machine's other gestores) for one of those; so it
    /// may exceed `hash_queue` by up to `hash_slots`.
    #[serde(default)]
    pub hash_waiting: u64,
    /// Hashes computed at once at most (`hash_slots`; 0 = not reported).
    #[serde(default)]
    pub hash_slots: u64,
    /// Hashes that may wait for a slot; beyond that, `busy`.
    #[serde(default)]
    pub hash_queue: u64,
    /// Password operations answered `busy` since start.
    #[serde(default)]
    pub hash_busy: u64,
    /// Slots shared with the other gestores of this machine
    /// (`machine_hash_slots`; 0 = not shared).
    #[serde(default)]
    pub machine_slots: u64,
    /// Hashes that held a shared slot, since start.
    #[serde(default)]
    pub machine_slots_taken: u64,
    /// Password operations answered `busy` because no shared slot freed
    /// within their wait, since start.
    #[serde(default)]
    pub machine_slots_missed: u64,
    /// Hashes run without a shared slot because its files could not be
    /// used, since start (then the machine's limit is not kept).
    #[serde(default)]
    pub machine_slots_without: u64,
}

/// `status.mailbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStatus {
    pub held: u64,
    pub watched_users: u64,
    pub watchers: u64,
    /// Removals in `mailbox.copy` refused because the sender was not the
    /// owner of the recipient in this gestor's ring view.
    #[serde(default)]
    pub removals_refused: u64,
}

/// The replica plugin's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStats {
    pub rounds: u64,
    /// Live records of all our ranges, as of the last round.
    pub primary_records: u64,
    /// Live records of our ranges held by fewer gestores than wanted, as of
    /// the last round (summed over the ranges).
    pub under_replicated: u64,
    /// Gestores that should hold each record, the owner included (the most
    /// over our ranges).
    pub wanted_holders: u64,
    /// Copy holders (URLs) that merged a whole range in the last round, any
    /// of our ranges.
    pub confirmed_holders: Vec<String>,
    pub purged: u64,
    pub last_round_ms: u64,
}

/// `status.replica`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub copies: usize,
    /// `(start, end]` merged with its first copy holder, in hex: the
    /// range of the first virtual node (the gestor's own id).
    pub ready_range: Option<(String, String)>,
    /// Ranges (virtual nodes) this gestor has; 0 from a replica plugin
    /// from before virtual nodes, or while the ring cannot be asked.
    #[serde(default)]
    pub ranges: u32,
    /// Of those, ranges merged with their first copy holder over the whole
    /// of their current range (one that grew is not, until merged again).
    #[serde(default)]
    pub ranges_ready: u32,
    pub stats: ReplicaStats,
}

kinds! {
    /// `status.ring` — **local**: section `ring` of `node.status`.
    Ring = "status.ring", Local, Empty => RingStatus;
    /// `status.directory` — **local**: section `directory`.
    Directory = "status.directory", Local, Empty => DirectoryStatus;
    /// `status.replica` — **local**: section `replica`.
    Replica = "status.replica", Local, Empty => ReplicaStatus;
    /// `status.mailbox` — **local**: section `mailbox`.
    Mailbox = "status.mailbox", Local, Empty => MailboxStatus;
    /// `status.initial` — **local**: section `initial`.
    Initial = "status.initial", Local, Empty => InitialList;
}
