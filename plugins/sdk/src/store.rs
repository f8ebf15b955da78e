//! The store contract: the directory table plus a key-value space per plugin.
//!
//! Backends (SQLite, sled) know nothing of Chord: a record's `ring_pos` is
//! just an unsigned 64-bit number the caller computed, and
//! [`Store::scan_ring`] returns the records whose position lies in the ring
//! interval `(start, end]`, wrapping past `u64::MAX` to 0 when `start >= end`
//! (`start == end` means the whole ring).
//!
//! Writes are last-writer-wins on [`Timestamp`]: a put applies only if its
//! version is strictly newer than what is stored, and deletes leave a
//! tombstone (a record with `deleted = true`) so that an older copy arriving
//! later cannot bring the user back.

use crate::error::StoreError;
use crate::hlc::Timestamp;
use serde::{Deserialize, Serialize};

/// Key-value pairs returned by a prefix scan, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One directory entry (or its tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    /// Position of the username's hash on the ring.
    pub ring_pos: u64,
    /// Where the user's client receives messages (`host:port`); empty when unknown.
    pub address: String,
    /// PHC-format argon2id hash; never the password itself.
    pub password_hash: String,
    pub online: bool,
    /// Wall-clock milliseconds of the last sign of life recorded in this version.
    pub last_seen_ms: u64,
    /// Version of this record; the newest wins.
    pub version: Timestamp,
    /// Tombstone marker.
    pub deleted: bool,
    /// SHA-256 (hex) of the user's current session token; empty when logged
    /// out. Replicated with the record so a gestor that takes over a user's
    /// range also recognises the session.
    #[serde(default)]
    pub session_hash: String,
}

/// Result of a last-writer-wins write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The write was newer and is now stored.
    Applied,
    /// A version at least as new was already stored; nothing changed.
    Stale { current: Timestamp },
}

impl PutOutcome {
    pub fn applied(&self) -> bool {
        matches!(self, PutOutcome::Applied)
    }
}

/// Storage backend. Safe to share between threads.
pub trait Store: Send + Sync {
    /// Short backend name (`"sqlite"`, `"sled"`).
    fn backend(&self) -> &'static str;

    /// Store `record` if its version is newer than the stored one (atomic
    /// compare-and-set). Tombstones go through here too.
    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError>;

    /// The stored record or tombstone for `username`.
    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Replace the record with a tombstone stamped `version` (if newer).
    fn delete(
        &self,
        username: &str,
        ring_pos: u64,
        version: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        self.put(&UserRecord {
            username: username.to_string(),
            ring_pos,
            address: String::new(),
            password_hash: String::new(),
            online: false,
            last_seen_ms: 0,
            version,
            deleted: true,
            session_hash: String::new(),
        })
    }

    /// Remove every trace of `username`, tombstone included (a copy this node
    /// no longer has to hold). Returns whether something was removed.
    fn purge(&self, username: &str) -> Result<bool, StoreError>;

    /// Records and tombstones with `ring_pos` in `(start, end]`, wrapping.
    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError>;

    /// Number of live (not deleted) records.
    fn count(&self) -> Result<u64, StoreError>;

    /// Make every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Returns whether the key existed.
    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError>;
    /// Pairs whose key starts with `prefix`, in key order.
    fn kv_scan_prefix(&self, namespace: &str, prefix: &[u8]) -> Result<KvPairs, StoreError>;
}

/// Whether `pos` lies in the ring interval `(start, end]` (whole ring when `start == end`).
pub fn in_ring_interval(pos: u64, start: u64, end: u64) -> bool {
    if start < end {
        start < pos && pos <= end
    } else {
        pos > start || pos <= end
    }
}

#[cfg(test)]
mod tests {
    use super::in_ring_interval;

    #[test]
    fn interval_with_and_without_wrap() {
        assert!(in_ring_interval(5, 1, 5));
        assert!(!in_ring_interval(1, 1, 5));
        assert!(in_ring_interval(u64::MAX, 10, 2));
        assert!(in_ring_interval(0, 10, 2));
        assert!(in_ring_interval(2, 10, 2));
        assert!(!in_ring_interval(5, 10, 2));
        assert!(in_ring_interval(7, 3, 3), "start == end is the whole ring");
    }
}
