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

    /// [`Store::put`] for each record, in order, with each one's outcome.
    /// Backends may apply the batch in one transaction, which is cheaper to
    /// make durable; then an error means none of it was applied. The
    /// default puts one at a time (an error leaves the earlier ones).
    fn put_batch(&self, records: &[UserRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        records.iter().map(|r| self.put(r)).collect()
    }

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

    /// One page of [`Store::kv_scan_prefix`]: at most `limit` pairs whose key
    /// starts with `prefix` and sorts strictly after `after` (from the first
    /// when `None`), in key order. Walk a prefix by passing the last key of
    /// each page as the next `after` until a page comes back empty or short,
    /// so memory per step stays bounded however large the prefix is.
    ///
    /// The default reads the whole prefix and cuts the page out of it: a
    /// fallback so every backend has the method. Real backends override it
    /// with a range query that reads only the page.
    fn kv_scan_page(
        &self,
        namespace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut all = self.kv_scan_prefix(namespace, prefix)?;
        let skip = match after {
            Some(a) => all.partition_point(|(k, _)| k.as_slice() <= a),
            None => 0,
        };
        all.drain(..skip);
        all.truncate(limit);
        Ok(all)
    }
}

/// The range a page of [`Store::kv_scan_page`] covers, for backends with
/// ordered keys: the lower bound (`(key, inclusive)`), and the exclusive upper
/// bound (`None` when the prefix has none: empty or all 0xFF). `None` overall
/// when `after` already lies past every key with `prefix`.
pub fn kv_page_bounds(prefix: &[u8], after: Option<&[u8]>) -> Option<KvPageBounds> {
    let upper = prefix_upper_bound(prefix);
    let lower = match after {
        Some(a) if a >= prefix => (a.to_vec(), false),
        _ => (prefix.to_vec(), true),
    };
    if let Some(u) = &upper {
        if lower.0.as_slice() >= u.as_slice() {
            return None;
        }
    }
    Some(KvPageBounds { lower, upper })
}

/// See [`kv_page_bounds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPageBounds {
    /// The first key that may be returned, and whether it is included.
    pub lower: (Vec<u8>, bool),
    /// Keys must sort before this one; `None`: no upper bound.
    pub upper: Option<Vec<u8>>,
}

/// Smallest byte string greater than every string starting with `prefix`,
/// or `None` when no such bound exists (empty or all-0xFF prefix).
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xFF {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
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
    use super::*;

    #[test]
    fn page_bounds() {
        let b = kv_page_bounds(b"p/", None).unwrap();
        assert_eq!(b.lower, (b"p/".to_vec(), true));
        assert_eq!(b.upper, Some(b"p0".to_vec()));
        // `after` inside the prefix: exclusive; before it: the prefix.
        let b = kv_page_bounds(b"p/", Some(b"p/x")).unwrap();
        assert_eq!(b.lower, (b"p/x".to_vec(), false));
        assert!(kv_page_bounds(b"p/", Some(b"a")).unwrap().lower.1);
        // Past the prefix: nothing left.
        assert_eq!(kv_page_bounds(b"p/", Some(b"p0")), None);
        assert_eq!(kv_page_bounds(b"p/", Some(b"q")), None);
        // No upper bound for an empty or all-0xFF prefix.
        assert_eq!(
            kv_page_bounds(b"", Some(&[0xFF, 0xFF])).unwrap().upper,
            None
        );
        assert_eq!(kv_page_bounds(&[0xFF], None).unwrap().upper, None);
        assert_eq!(prefix_upper_bound(&[b'a', 0xFF]), Some(b"b".to_vec()));
    }

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
