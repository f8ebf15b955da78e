//! `replica.*`: copies of every record on the owner's successors (served by
//! `gestor_replica`).

use crate::ring::KeyBody;
use crate::Empty;
use gestor_sdk::{Timestamp, UserRecord};
use serde::{Deserialize, Serialize};

/// Who is sending copies, so the holder can heartbeat back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySource {
    /// Request URL.
    pub addr: String,
    /// Signal URL (heartbeats go there).
    pub signal: String,
}

/// `replica.put`: records to store, last writer wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutBody {
    pub from: CopySource,
    pub records: Vec<UserRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReply {
    pub applied: u32,
    pub stale: u32,
}

/// `replica.sync`: the owner's digest of the range `(start, end]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBody {
    pub from: CopySource,
    pub start: u64,
    pub end: u64,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReply {
    pub in_sync: bool,
    /// When not in sync: every record the holder has in the range, with its version.
    pub versions: Vec<(String, Timestamp)>,
}

/// `replica.get`, `replica.versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    pub usernames: Vec<String>,
}

/// One entry of `replica.inventory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub username: String,
    pub version: Timestamp,
    pub deleted: bool,
}

/// The `replica.hb` signal body (topic [`crate::topics::REPLICA_HB`]): a
/// copy holder tells an owner it is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub addr: String,
}

kinds! {
    /// `replica.replicate` — **local**: copy a record the directory just
    /// wrote (not yet flushed); answers the number of gestores holding it
    /// once it is durable here too (this gestor's store is flushed while
    /// the copies travel) and the replication rule is met. Only the
    /// directory on the same gestor asks, and it relies on that flush: a
    /// directory plugin must not run beside a replica plugin built before
    /// this contract (the plugins of one build go together).
    Replicate = "replica.replicate", Local, UserRecord => u32;
    /// `replica.replicate_batch` — **local**: the same for a batch of
    /// records written together (`dir.import_owned`), copied with one
    /// `replica.put` per holder instead of one round per record.
    ReplicateBatch = "replica.replicate_batch", Local, Vec<UserRecord> => u32;
    /// `replica.put` — **internal**: records from their owner (or from a
    /// holder handing a newer version back), to store.
    Put = "replica.put", Internal + upkeep, PutBody => PutReply;
    /// `replica.sync` — **internal**: anti-entropy between an owner and a
    /// copy holder.
    Sync = "replica.sync", Internal + upkeep, SyncBody => SyncReply;
    /// `replica.get` — **internal**: anti-entropy pull of whole records
    /// (with password hashes) between gestores.
    Get = "replica.get", Internal + upkeep, Names => Vec<UserRecord>;
    /// `replica.versions` — **internal**: which versions another gestor
    /// holds, before a surplus copy is dropped.
    Versions = "replica.versions", Internal + upkeep, Names => Vec<(String, Option<Timestamp>)>;
    /// `replica.inventory` — **internal**: every record this gestor holds,
    /// with its version. Asked by `gestor copies` and the fault tests from
    /// outside the ring: an operator tool, which will need an operator
    /// credential once internal kinds are enforced. It lists every
    /// username, so it is not open to clients.
    Inventory = "replica.inventory", Internal, Empty => Vec<Held>;
    /// `replica.ready` — **local**: has this gestor merged the part of its
    /// range holding `key` with its successor? Only the directory on the
    /// same gestor asks (its owner check).
    Ready = "replica.ready", Local, KeyBody => bool;
}
