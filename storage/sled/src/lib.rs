//! # gestor-store-sled — the directory store on sled
//!
//! A sled database directory (e.g. `<data-dir>/sled/`) holding these trees:
//!
//! * `users`: `username` (UTF-8) → one flag byte (`0` live, `1` tombstone)
//!   followed by the CBOR-encoded [`UserRecord`]. The flag lets
//!   [`Store::count`] skip decoding.
//! * `ring`: `ring_pos` (8 bytes big-endian) ++ `username` → empty. Big-endian
//!   keeps sled's byte order equal to the unsigned ring order, so
//!   [`Store::scan_ring`] is a range scan. Kept consistent with `users` by a
//!   multi-tree transaction on every put and purge.
//! * `kv`: `namespace` ++ `0x00` ++ `key` → value. The separator keeps
//!   namespaces apart (namespaces may therefore not contain NUL).
//! * the default tree holds `gestor.format` → format version, written when the
//!   store is created. A directory whose `db` file already had data but lacks
//!   the marker after opening is refused as corrupt instead of silently
//!   starting empty.

use gestor_sdk::error::StoreError;
use gestor_sdk::store::{in_ring_interval, kv_page_bounds, KvPairs, PutOutcome, Store, UserRecord};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::ops::Bound;
use std::path::{Path, PathBuf};

const BACKEND: &str = "sled";
const FORMAT_KEY: &[u8] = b"gestor.format";
const FORMAT_VERSION: &[u8] = b"1";
/// How long opening waits for another holder of the data directory's lock.
/// A dropped handle's last writes run on sled's process-wide I/O pool, which
/// on a busy 2-core machine took over 3 s to get to them once.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const FLAG_LIVE: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// sled-backed [`Store`]. sled trees are internally synchronised, so the
/// store is shared between threads without a lock of its own.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    users: sled::Tree,
    ring: sled::Tree,
    kv: sled::Tree,
    /// Concurrent flushes share one sled flush (group commit).
    flushes: gestor_sdk::group_commit::GroupCommit,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        reason: e.to_string(),
    }
}

fn ring_key(pos: u64, username: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + username.len());
    k.extend_from_slice(&pos.to_be_bytes());
    k.extend_from_slice(username.as_bytes());
    k
}

fn kv_key(namespace: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    if namespace.contains('\0') {
        return Err(StoreError::Invalid("namespace contains NUL".into()));
    }
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    Ok(k)
}

fn encode(record: &UserRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![if record.deleted {
        FLAG_TOMBSTONE
    } else {
        FLAG_LIVE
    }];
    ciborium::into_writer(record, &mut out).map_err(backend_err)?;
    Ok(out)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

impl SledStore {
    /// Open (creating if needed) the sled database directory `dir`.
    ///
    /// Corrupt or foreign data is refused with [`StoreError::Corrupt`] naming
    /// the directory; sled may panic on such input, which is caught here.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let shown = dir.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let corrupt_err = |reason: String| StoreError::Corrupt {
            path: shown.clone(),
            reason,
        };

        if dir.exists() && !dir.is_dir() {
            return Err(open_err("not a directory".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let had_data = std::fs::metadata(dir.join("db"))
            .map(|m| m.len() > 0)
            .unwrap_or(false);

        // sled's file lock outlives a dropped handle by a moment (its
        // flusher thread lets go last), and a restarted gestor may start
        // while the old process is still exiting: wait a little for it.
        let locked_since = std::time::Instant::now();
        let opened = loop {
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sled::Config::new().path(dir).open()
            }));
            match &attempt {
                Ok(Err(sled::Error::Io(e)))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && locked_since.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => break attempt,
            }
        };
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Corruption { at, .. })) => {
                return Err(corrupt_err(format!("sled reports corruption at {at:?}")))
            }
            Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(open_err(format!(
                    "{e}: another process holds this data directory (a gestor still running on it?)"
                )))
            }
            Ok(Err(sled::Error::Io(e))) => return Err(open_err(e.to_string())),
            Ok(Err(e)) => return Err(corrupt_err(e.to_string())),
            Err(p) => {
                return Err(corrupt_err(format!(
                    "sled panicked while opening: {}",
                    panic_message(p.as_ref())
                )))
            }
        };

        let marker = db.get(FORMAT_KEY).map_err(|e| corrupt_err(e.to_string()))?;
        match marker.as_deref() {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(open_err(format!(
                    "unsupported format version {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
            None if had_data => {
                // sled recovers a damaged log by truncating it; with data on
                // disk but no marker that would mean losing everything.
                return Err(corrupt_err(
                    "existing database has no gestor format marker (damaged log?)".into(),
                ));
            }
            None => {
                db.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| open_err(e.to_string()))?;
                db.flush().map_err(|e| open_err(e.to_string()))?;
            }
        }

        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let users = tree("users")?;
        let ring = tree("ring")?;
        let kv = tree("kv")?;
        tracing::debug!(path = %shown, "opened sled store");
        Ok(SledStore {
            path: dir.to_path_buf(),
            db,
            users,
            ring,
            kv,
            flushes: gestor_sdk::group_commit::GroupCommit::new(),
        })
    }

    /// The database directory this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn decode(&self, bytes: &[u8]) -> Result<UserRecord, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason,
        };
        match bytes.split_first() {
            Some((&flag, body)) if flag == FLAG_LIVE || flag == FLAG_TOMBSTONE => {
                ciborium::from_reader(body).map_err(|e| corrupt(format!("user record: {e}")))
            }
            _ => Err(corrupt("user record with unknown flag byte".into())),
        }
    }

    /// Records in the ring tree between the two key bounds, skipping entries
    /// that a concurrent put moved or a purge removed since the index read.
    fn scan_positions(
        &self,
        lower: Bound<[u8; 8]>,
        upper: Bound<[u8; 8]>,
        start: u64,
        end: u64,
        out: &mut Vec<UserRecord>,
    ) -> Result<(), StoreError> {
        for item in self.ring.range::<[u8; 8], _>((lower, upper)) {
            let (key, _) = item.map_err(backend_err)?;
            let Some(name) = key.get(8..) else { continue };
            let Some(bytes) = self.users.get(name).map_err(backend_err)? else {
                continue;
            };
            let record = self.decode(&bytes)?;
            if in_ring_interval(record.ring_pos, start, end) {
                out.push(record);
            }
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        Ok(self.put_batch(std::slice::from_ref(record))?.remove(0))
    }

    /// One serializable transaction for the whole batch (which reads its
    /// own writes, so a later entry for the same user competes with an
    /// earlier one): all of it or none.
    fn put_batch(&self, records: &[UserRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        let mut encoded = Vec::with_capacity(records.len());
        for record in records {
            if record.username.is_empty() {
                return Err(StoreError::Invalid("empty username".into()));
            }
            encoded.push((encode(record)?, ring_key(record.ring_pos, &record.username)));
        }
        // The version check, the record and its ring index entry change
        // together or not at all.
        let result = (&self.users, &self.ring).transaction(|(users, ring)| {
            let mut outcomes = Vec::with_capacity(records.len());
            for (record, (bytes, new_ring)) in records.iter().zip(&encoded) {
                let name = record.username.as_bytes();
                if let Some(stored) = users.get(name)? {
                    let current = self
                        .decode(&stored)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if record.version <= current.version {
                        outcomes.push(PutOutcome::Stale {
                            current: current.version,
                        });
                        continue;
                    }
                    ring.remove(ring_key(current.ring_pos, &current.username))?;
                }
                users.insert(name, bytes.as_slice())?;
                ring.insert(new_ring.as_slice(), &[] as &[u8])?;
                outcomes.push(PutOutcome::Applied);
            }
            Ok(outcomes)
        });
        match result {
            Ok(outcomes) => Ok(outcomes),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend_err(e)),
        }
    }

    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.users.get(username.as_bytes()).map_err(backend_err)? {
            Some(bytes) => self.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn purge(&self, username: &str) -> Result<bool, StoreError> {
        let result = (&self.users, &self.ring).transaction(|(users, ring)| {
            let Some(bytes) = users.remove(username.as_bytes())? else {
                return Ok(false);
            };
            match self.decode(&bytes) {
                Ok(current) => {
                    ring.remove(ring_key(current.ring_pos, username))?;
                }
                // Purging is how an operator gets rid of a bad record, so a
                // record that does not decode is still removed; its ring
                // entry, if any, is skipped by scans as it has no user.
                Err(e) => tracing::warn!(user = %username, error = %e, "purged undecodable record"),
            }
            Ok(true)
        });
        match result {
            Ok(removed) => Ok(removed),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend_err(e)),
        }
    }

    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError> {
        let mut out = Vec::new();
        // Positions above `end` never match (`end == u64::MAX` has none).
        let upper_to = |end: u64| match end.checked_add(1) {
            Some(e) => Bound::Excluded(e.to_be_bytes()),
            None => Bound::Unbounded,
        };
        if start < end {
            // start < end, so start + 1 cannot overflow.
            let lower = Bound::Included((start + 1).to_be_bytes());
            self.scan_positions(lower, upper_to(end), start, end, &mut out)?;
        } else {
            // Wrapping (or the whole ring): (start, MAX] then [0, end].
            if let Some(s) = start.checked_add(1) {
                let lower = Bound::Included(s.to_be_bytes());
                self.scan_positions(lower, Bound::Unbounded, start, end, &mut out)?;
            }
            self.scan_positions(Bound::Unbounded, upper_to(end), start, end, &mut out)?;
        }
        Ok(out)
    }

    fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.users.iter().values() {
            let bytes = item.map_err(backend_err)?;
            if bytes.first() == Some(&FLAG_LIVE) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flushes
            .flush(|| self.db.flush().map(drop).map_err(backend_err))
    }

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let k = kv_key(namespace, key)?;
        Ok(self.kv.get(k).map_err(backend_err)?.map(|v| v.to_vec()))
    }

    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let k = kv_key(namespace, key)?;
        self.kv.insert(k, value).map_err(backend_err)?;
        Ok(())
    }

    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        let k = kv_key(namespace, key)?;
        Ok(self.kv.remove(k).map_err(backend_err)?.is_some())
    }

    fn kv_scan_prefix(
        &self,
        namespace: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let full = kv_key(namespace, prefix)?;
        let skip = namespace.len() + 1;
        let mut out = Vec::new();
        for item in self.kv.scan_prefix(full) {
            let (k, v) = item.map_err(backend_err)?;
            out.push((k.get(skip..).unwrap_or_default().to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn kv_scan_page(
        &self,
        namespace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        let skip = namespace.len() + 1;
        let Some(bounds) = kv_page_bounds(prefix, after) else {
            return Ok(Vec::new());
        };
        let (lower, inclusive) = bounds.lower;
        let lower = kv_key(namespace, &lower)?;
        let lower = if inclusive {
            Bound::Included(lower)
        } else {
            Bound::Excluded(lower)
        };
        // Without a bound of its own the prefix ends with the namespace: the
        // separator NUL + 1.
        let upper = match bounds.upper {
            Some(u) => kv_key(namespace, &u)?,
            None => {
                let mut end = namespace.as_bytes().to_vec();
                end.push(1);
                end
            }
        };
        let mut out = Vec::new();
        for item in self.kv.range((lower, Bound::Excluded(upper))).take(limit) {
            let (k, v) = item.map_err(backend_err)?;
            out.push((k.get(skip..).unwrap_or_default().to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!(
            "gestor-sled-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ))
    }

    #[test]
    fn garbage_conf_is_refused() {
        let dir = tmp();
        drop(SledStore::open(&dir).unwrap());
        std::fs::write(dir.join("conf"), [0xA5u8; 64]).unwrap();
        let err = SledStore::open(&dir).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { .. } | StoreError::Open { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&dir.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_instead_of_directory_is_an_open_error() {
        let dir = tmp();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = SledStore::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn second_handle_in_process_is_refused() {
        let dir = tmp();
        let first = SledStore::open(&dir).unwrap();
        let err = SledStore::open(&dir).unwrap_err();
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        drop(first);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
