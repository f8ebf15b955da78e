//! A [`Store`] held in memory, with a simulated disk.
//!
//! Writes land in the store's working tables; [`Store::flush`] copies them
//! to its [`MemoryDisk`]. Opening a store on a disk starts from what was
//! flushed there, so a simulator can crash a node (drop the store, keep the
//! disk: unflushed writes are lost), restart it (open on the same disk) or
//! lose its disk (open on a new one).

use crate::error::StoreError;
use crate::store::{KvPairs, PutOutcome, Store, UserRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Default)]
struct Tables {
    users: BTreeMap<String, UserRecord>,
    /// `(ring_pos, username)` of every entry of `users`, for ring scans.
    ring: BTreeSet<(u64, String)>,
    kv: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// Keys written since the last flush, so a flush copies only those.
#[derive(Debug, Default)]
struct Dirty {
    users: BTreeSet<String>,
    kv: BTreeSet<(String, Vec<u8>)>,
}

impl Tables {
    /// Make `disk` hold what `self` holds under the `dirty` keys.
    fn write_back(&self, dirty: Dirty, disk: &mut Tables) {
        for name in dirty.users {
            if let Some(old) = disk.users.remove(&name) {
                disk.ring.remove(&(old.ring_pos, old.username));
            }
            if let Some(r) = self.users.get(&name) {
                disk.ring.insert((r.ring_pos, name.clone()));
                disk.users.insert(name, r.clone());
            }
        }
        for (ns, key) in dirty.kv {
            match self.kv.get(&ns).and_then(|n| n.get(&key)) {
                Some(v) => {
                    disk.kv.entry(ns).or_default().insert(key, v.clone());
                }
                None => {
                    disk.kv.get_mut(&ns).map(|n| n.remove(&key));
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What survives a crash: the tables as of the last flush. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryDisk(Arc<Mutex<Tables>>);

impl MemoryDisk {
    pub fn new() -> Self {
        Self::default()
    }
}

/// The in-memory store. Safe to share between threads.
#[derive(Debug)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    dirty: Mutex<Dirty>,
    disk: MemoryDisk,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on a disk of its own.
    pub fn new() -> Self {
        Self::open(&MemoryDisk::new())
    }

    /// A store starting from what was last flushed to `disk`.
    pub fn open(disk: &MemoryDisk) -> Self {
        MemoryStore {
            tables: Mutex::new(lock(&disk.0).clone()),
            dirty: Mutex::new(Dirty::default()),
            disk: disk.clone(),
        }
    }

    /// The disk this store flushes to.
    pub fn disk(&self) -> &MemoryDisk {
        &self.disk
    }

    fn touched(&self, username: &str) {
        lock(&self.dirty).users.insert(username.to_string());
    }

    fn touched_kv(&self, namespace: &str, key: &[u8]) {
        let entry = (namespace.to_string(), key.to_vec());
        lock(&self.dirty).kv.insert(entry);
    }
}

impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        if record.username.is_empty() {
            return Err(StoreError::Invalid("empty username".into()));
        }
        let mut t = lock(&self.tables);
        if let Some(current) = t.users.get(&record.username) {
            if current.version >= record.version {
                return Ok(PutOutcome::Stale {
                    current: current.version,
                });
            }
            let old = (current.ring_pos, current.username.clone());
            t.ring.remove(&old);
        }
        t.ring.insert((record.ring_pos, record.username.clone()));
        t.users.insert(record.username.clone(), record.clone());
        self.touched(&record.username);
        Ok(PutOutcome::Applied)
    }

    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(lock(&self.tables).users.get(username).cloned())
    }

    fn purge(&self, username: &str) -> Result<bool, StoreError> {
        let mut t = lock(&self.tables);
        let Some(old) = t.users.remove(username) else {
            return Ok(false);
        };
        t.ring.remove(&(old.ring_pos, old.username));
        self.touched(username);
        Ok(true)
    }

    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError> {
        let t = lock(&self.tables);
        // In ring order from just after `start`, wrapping past u64::MAX;
        // `start == end` is the whole ring, `start` itself last.
        let from = |pos: u64| (pos, String::new());
        let after = start
            .checked_add(1)
            .map(|next| t.ring.range(from(next)..))
            .into_iter()
            .flatten();
        let at = |pos: u64| {
            t.ring
                .range(from(pos)..)
                .take_while(move |(p, _)| *p == pos)
        };
        let upto = |end: u64| t.ring.range(..from(end)).chain(at(end));
        let names: Vec<&(u64, String)> = if start < end {
            after.take_while(|(p, _)| *p <= end).collect()
        } else {
            after.chain(upto(end)).collect()
        };
        Ok(names
            .into_iter()
            .filter_map(|(_, name)| t.users.get(name).cloned())
            .collect())
    }

    fn count(&self) -> Result<u64, StoreError> {
        let t = lock(&self.tables);
        Ok(t.users.values().filter(|r| !r.deleted).count() as u64)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Lock order: tables, dirty, disk (as everywhere else).
        let tables = lock(&self.tables);
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        tables.write_back(dirty, &mut lock(&self.disk.0));
        Ok(())
    }

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = lock(&self.tables);
        Ok(t.kv.get(namespace).and_then(|ns| ns.get(key)).cloned())
    }

    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut t = lock(&self.tables);
        let ns = t.kv.entry(namespace.to_string()).or_default();
        ns.insert(key.to_vec(), value.to_vec());
        self.touched_kv(namespace, key);
        Ok(())
    }

    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        let mut t = lock(&self.tables);
        let existed =
            t.kv.get_mut(namespace)
                .is_some_and(|ns| ns.remove(key).is_some());
        self.touched_kv(namespace, key);
        Ok(existed)
    }

    fn kv_scan_prefix(&self, namespace: &str, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        let t = lock(&self.tables);
        let Some(ns) = t.kv.get(namespace) else {
            return Ok(Vec::new());
        };
        Ok(ns
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;

    fn ts(wall_ms: u64, logical: u32) -> Timestamp {
        Timestamp {
            wall_ms,
            logical,
            node: 1,
        }
    }

    fn rec(name: &str, pos: u64, version: Timestamp) -> UserRecord {
        UserRecord {
            username: name.into(),
            ring_pos: pos,
            address: "127.0.0.1:9".into(),
            password_hash: "$argon2id$x".into(),
            online: true,
            last_seen_ms: version.wall_ms,
            version,
            deleted: false,
            session_hash: String::new(),
        }
    }

    fn positions(s: &MemoryStore, start: u64, end: u64) -> Vec<u64> {
        s.scan_ring(start, end)
            .unwrap()
            .iter()
            .map(|r| r.ring_pos)
            .collect()
    }

    #[test]
    fn compare_and_set_on_versions() {
        let s = MemoryStore::new();
        assert_eq!(
            s.put(&rec("ana", 1, ts(5, 0))).unwrap(),
            PutOutcome::Applied
        );
        for older in [ts(5, 0), ts(4, 9)] {
            assert_eq!(
                s.put(&rec("ana", 2, older)).unwrap(),
                PutOutcome::Stale { current: ts(5, 0) }
            );
        }
        assert!(s.put(&rec("ana", 3, ts(5, 1))).unwrap().applied());
        assert_eq!(s.get("ana").unwrap().unwrap().ring_pos, 3);
        assert_eq!(positions(&s, 0, 0), vec![3], "the old position is gone");
        assert!(matches!(
            s.put(&rec("", 1, ts(9, 0))),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn tombstones_block_older_writes_and_purge_forgets() {
        let s = MemoryStore::new();
        s.put(&rec("eve", 42, ts(10, 0))).unwrap();
        assert!(s.delete("eve", 42, ts(20, 0)).unwrap().applied());
        assert_eq!(s.count().unwrap(), 0);
        assert!(!s.put(&rec("eve", 42, ts(15, 0))).unwrap().applied());
        assert!(s.get("eve").unwrap().unwrap().deleted);
        assert!(s.purge("eve").unwrap());
        assert!(!s.purge("eve").unwrap());
        assert!(s.put(&rec("eve", 42, ts(1, 0))).unwrap().applied());
    }

    #[test]
    fn ring_scans_wrap_in_ring_order() {
        let s = MemoryStore::new();
        for (i, pos) in [0u64, 5, 10, u64::MAX - 1, u64::MAX].iter().enumerate() {
            s.put(&rec(&format!("u{i}"), *pos, ts(1, 0))).unwrap();
        }
        assert_eq!(positions(&s, 0, 10), vec![5, 10]);
        assert_eq!(positions(&s, 10, 5), vec![u64::MAX - 1, u64::MAX, 0, 5]);
        assert_eq!(
            positions(&s, 5, 5),
            vec![10, u64::MAX - 1, u64::MAX, 0, 5],
            "start == end is the whole ring, starting after start"
        );
        assert_eq!(positions(&s, u64::MAX, 0), vec![0]);
    }

    #[test]
    fn kv_namespaces_and_prefixes() {
        let s = MemoryStore::new();
        s.kv_put("a", b"k1", b"1").unwrap();
        s.kv_put("a", b"k2", b"2").unwrap();
        s.kv_put("a", b"l1", b"3").unwrap();
        s.kv_put("b", b"k1", b"x").unwrap();
        assert_eq!(s.kv_get("a", b"k1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.kv_get("b", b"k1").unwrap(), Some(b"x".to_vec()));
        let keys: Vec<Vec<u8>> = s
            .kv_scan_prefix("a", b"k")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
        assert!(s.kv_delete("a", b"k1").unwrap());
        assert!(!s.kv_delete("a", b"k1").unwrap());
        assert!(!s.kv_delete("c", b"k1").unwrap());
    }

    #[test]
    fn only_flushed_writes_survive_a_crash() {
        let disk = MemoryDisk::new();
        let s = MemoryStore::open(&disk);
        s.put(&rec("kept", 1, ts(1, 0))).unwrap();
        s.kv_put("ns", b"k", b"v").unwrap();
        s.flush().unwrap();
        s.put(&rec("lost", 2, ts(1, 0))).unwrap();
        drop(s);
        let again = MemoryStore::open(&disk);
        assert!(again.get("kept").unwrap().is_some());
        assert_eq!(again.kv_get("ns", b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(again.get("lost").unwrap(), None);
        assert!(again.purge("kept").unwrap());
        again.kv_delete("ns", b"k").unwrap();
        again.flush().unwrap();
        let third = MemoryStore::open(&disk);
        assert_eq!(third.get("kept").unwrap(), None, "a flushed purge stays");
        assert_eq!(third.kv_get("ns", b"k").unwrap(), None);
        assert_eq!(MemoryStore::open(&MemoryDisk::new()).count().unwrap(), 0);
    }
}
