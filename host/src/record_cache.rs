//! A bounded cache of user records in front of whichever store the node
//! runs, so a lookup of a recently read user does not go to SQLite or sled.
//!
//! Every change to a record (put, delete, purge) goes through this wrapper
//! and drops the cached copy; the next read fetches it again. A read that
//! raced with a change must not put back what it read before the change, so
//! every change bumps a counter and a read only fills the cache when no
//! change happened while it read. Changes to *other* users also stop the
//! fill, which costs a miss but never a stale answer.
//!
//! The cache holds at most `capacity` records and forgets the oldest filled
//! first. Everything else (scans, counts, flushes, the key-value space)
//! goes straight to the store.

use gestor_sdk::store::KvPairs;
use gestor_sdk::{PutOutcome, Store, StoreError, Timestamp, UserRecord};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Cached {
    records: HashMap<String, UserRecord>,
    /// Usernames in fill order, oldest first; may name records already
    /// dropped (skipped when evicting, compacted when it grows).
    order: VecDeque<String>,
    /// Bumped by every change; a fill started before a change is dropped.
    changes: u64,
    hits: u64,
    misses: u64,
}

pub struct CachedStore {
    inner: Arc<dyn Store>,
    capacity: usize,
    cached: Mutex<Cached>,
    /// Lets a test land a change after a read and before its fill.
    #[cfg(test)]
    between_read_and_fill: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("backend", &self.inner.backend())
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What the cache has done (the tests read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub records: usize,
    pub hits: u64,
    pub misses: u64,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, capacity: usize) -> Self {
        CachedStore {
            inner,
            capacity: capacity.max(1),
            cached: Mutex::new(Cached::default()),
            #[cfg(test)]
            between_read_and_fill: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cached> {
        // Plain maps and counters: consistent after any panic.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> CacheStats {
        let c = self.lock();
        CacheStats {
            records: c.records.len(),
            hits: c.hits,
            misses: c.misses,
        }
    }

    /// Drop `username`'s copy once its change is in the store.
    fn changed(&self, username: &str) {
        let mut c = self.lock();
        c.changes += 1;
        c.records.remove(username);
    }

    fn fill(&self, record: &UserRecord, read_after_change: u64) {
        let mut c = self.lock();
        if c.changes != read_after_change {
            return;
        }
        if c.records.len() >= self.capacity {
            while let Some(oldest) = c.order.pop_front() {
                if c.records.remove(&oldest).is_some() {
                    break;
                }
            }
        }
        if c.records
            .insert(record.username.clone(), record.clone())
            .is_none()
        {
            c.order.push_back(record.username.clone());
        }
        // Dropped records leave their names behind in `order`.
        if c.order.len() > 2 * self.capacity {
            let Cached { records, order, .. } = &mut *c;
            order.retain(|name| records.contains_key(name));
        }
    }
}

impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        let outcome = self.inner.put(record);
        self.changed(&record.username);
        outcome
    }

    fn put_batch(&self, records: &[UserRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        let outcomes = self.inner.put_batch(records);
        for record in records {
            self.changed(&record.username);
        }
        outcomes
    }

    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let before = {
            let mut c = self.lock();
            if let Some(hit) = c.records.get(username).cloned() {
                c.hits += 1;
                return Ok(Some(hit));
            }
            c.misses += 1;
            c.changes
        };
        let read = self.inner.get(username)?;
        #[cfg(test)]
        if let Some(change) = self.between_read_and_fill.lock().unwrap().take() {
            change();
        }
        if let Some(record) = &read {
            self.fill(record, before);
        }
        Ok(read)
    }

    fn delete(
        &self,
        username: &str,
        ring_pos: u64,
        version: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        let outcome = self.inner.delete(username, ring_pos, version);
        self.changed(username);
        outcome
    }

    fn purge(&self, username: &str) -> Result<bool, StoreError> {
        let outcome = self.inner.purge(username);
        self.changed(username);
        outcome
    }

    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.scan_ring(start, end)
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.inner.count()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kv_get(namespace, key)
    }

    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.kv_put(namespace, key, value)
    }

    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.inner.kv_delete(namespace, key)
    }

    fn kv_scan_prefix(&self, namespace: &str, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        self.inner.kv_scan_prefix(namespace, prefix)
    }

    fn kv_scan_page(
        &self,
        namespace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        self.inner.kv_scan_page(namespace, prefix, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_backends::{open_store, StorageKind};

    fn user(name: &str, wall_ms: u64, address: &str) -> UserRecord {
        UserRecord {
            username: name.to_string(),
            ring_pos: wall_ms.wrapping_mul(7919),
            address: address.to_string(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
            online: true,
            last_seen_ms: wall_ms,
            version: Timestamp {
                wall_ms,
                logical: 0,
                node: 1,
            },
            deleted: false,
            session_hash: String::new(),
        }
    }

    fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        open_store(StorageKind::Sqlite, dir.path()).expect("open sqlite")
    }

    #[test]
    fn reads_are_served_from_memory_until_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CachedStore::new(sqlite(&dir), 8);
        cache.put(&user("ana", 10, "127.0.0.1:1")).unwrap();
        for _ in 0..3 {
            let got = cache.get("ana").unwrap().unwrap();
            assert_eq!(got.address, "127.0.0.1:1");
        }
        assert_eq!((cache.stats().misses, cache.stats().hits), (1, 2));
        cache.put(&user("ana", 11, "127.0.0.1:2")).unwrap();
        assert_eq!(cache.get("ana").unwrap().unwrap().address, "127.0.0.1:2");
        // A stale put changes nothing, and the answer stays the newest.
        cache.put(&user("ana", 5, "127.0.0.1:3")).unwrap();
        assert_eq!(cache.get("ana").unwrap().unwrap().address, "127.0.0.1:2");
        cache.delete("ana", 0, user("", 12, "").version).unwrap();
        assert!(cache.get("ana").unwrap().unwrap().deleted);
        assert!(cache.purge("ana").unwrap());
        assert_eq!(cache.get("ana").unwrap(), None);
    }

    #[test]
    fn holds_at_most_its_capacity_and_answers_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CachedStore::new(sqlite(&dir), 16);
        for round in 0..3 {
            for i in 0..100 {
                let name = format!("u{i}");
                if round == 0 {
                    cache
                        .put(&user(&name, 1 + i, &format!("10.0.0.1:{i}")))
                        .unwrap();
                }
                let got = cache.get(&name).unwrap().unwrap();
                assert_eq!(got.address, format!("10.0.0.1:{i}"));
                assert!(cache.stats().records <= 16);
                assert!(cache.lock().order.len() <= 2 * 16 + 1);
            }
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(CachedStore::new(sqlite(&dir), 8));
        cache.put(&user("bo", 10, "127.0.0.1:1")).unwrap();
        let writer = cache.clone();
        *cache.between_read_and_fill.lock().unwrap() = Some(Box::new(move || {
            writer.put(&user("bo", 11, "127.0.0.1:2")).unwrap();
        }));
        // This read saw the old address; the change landed before the fill.
        assert_eq!(cache.get("bo").unwrap().unwrap().address, "127.0.0.1:1");
        assert_eq!(cache.stats().records, 0, "the stale read was cached");
        assert_eq!(cache.get("bo").unwrap().unwrap().address, "127.0.0.1:2");
        assert_eq!(cache.get("bo").unwrap().unwrap().address, "127.0.0.1:2");
        assert_eq!(cache.stats().hits, 1);
    }
}
