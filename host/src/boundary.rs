//! Calls from plugins into the host are a panic boundary too.
//!
//! A plugin is a cdylib with its own copy of the standard library. A panic
//! raised in host code (the transport, the secure layer, a store) under a
//! plugin's call would unwind into the plugin's frames and reach its
//! `catch_unwind` as a foreign exception, which aborts the process. So the
//! host catches its own panics before returning to a plugin, with its own
//! copy of std, and hands them over as errors: [`catch`] around the
//! [`Host`](gestor_sdk::plugin::Host) methods that do work, and
//! [`GuardedStore`] around the store plugins get.

use gestor_sdk::plugin::panic_message;
use gestor_sdk::store::KvPairs;
use gestor_sdk::{PutOutcome, Store, StoreError, Timestamp, UserRecord};
use prometheus_client::metrics::counter::Counter;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Run `f`; a panic in it is logged and becomes `on_panic(message)`.
pub fn catch<T, E>(
    what: &str,
    on_panic: impl FnOnce(String) -> E,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!("host code panicked in {what} (called by a plugin): {message}");
            Err(on_panic(format!("{what} panicked: {message}")))
        }
    }
}

/// Flushes asked of the store (durability requests: concurrent ones share
/// one sync in the backend) and the time spent waiting on them, for
/// `/metrics`: the sync is the costliest step of an acknowledged write.
#[derive(Debug, Clone, Default)]
pub struct FlushMeter {
    pub flushes: Counter,
    pub seconds: Counter<f64, AtomicU64>,
}

/// The store as plugins see it: every call with its panics caught, and
/// its flushes counted.
pub struct GuardedStore {
    inner: Arc<dyn Store>,
    flushes: FlushMeter,
}

impl GuardedStore {
    pub fn new(inner: Arc<dyn Store>, flushes: FlushMeter) -> Self {
        Self { inner, flushes }
    }

    fn run<T>(
        &self,
        what: &str,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let backend = self.inner.backend();
        catch(
            what,
            |reason| StoreError::Backend { backend, reason },
            || f(&*self.inner),
        )
    }
}

impl Store for GuardedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        self.run("store put", |s| s.put(record))
    }
    fn put_batch(&self, records: &[UserRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        self.run("store put_batch", |s| s.put_batch(records))
    }
    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.run("store get", |s| s.get(username))
    }
    fn delete(
        &self,
        username: &str,
        ring_pos: u64,
        version: Timestamp,
    ) -> Result<PutOutcome, StoreError> {
        self.run("store delete", |s| s.delete(username, ring_pos, version))
    }
    fn purge(&self, username: &str) -> Result<bool, StoreError> {
        self.run("store purge", |s| s.purge(username))
    }
    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError> {
        self.run("store scan_ring", |s| s.scan_ring(start, end))
    }
    fn count(&self) -> Result<u64, StoreError> {
        self.run("store count", |s| s.count())
    }
    fn flush(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let flushed = self.run("store flush", |s| s.flush());
        self.flushes.flushes.inc();
        self.flushes.seconds.inc_by(started.elapsed().as_secs_f64());
        flushed
    }
    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run("store kv_get", |s| s.kv_get(namespace, key))
    }
    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.run("store kv_put", |s| s.kv_put(namespace, key, value))
    }
    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.run("store kv_delete", |s| s.kv_delete(namespace, key))
    }
    fn kv_scan_prefix(&self, namespace: &str, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        self.run("store kv_scan_prefix", |s| {
            s.kv_scan_prefix(namespace, prefix)
        })
    }
    fn kv_scan_page(
        &self,
        namespace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        self.run("store kv_scan_page", |s| {
            s.kv_scan_page(namespace, prefix, after, limit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_sdk::store::Store;

    /// A store whose every call panics, as a backend bug would.
    struct Panicking;
    impl Store for Panicking {
        fn backend(&self) -> &'static str {
            "panicking"
        }
        fn put(&self, _: &UserRecord) -> Result<PutOutcome, StoreError> {
            panic!("put exploded")
        }
        fn get(&self, _: &str) -> Result<Option<UserRecord>, StoreError> {
            panic!("get exploded")
        }
        fn purge(&self, _: &str) -> Result<bool, StoreError> {
            panic!("purge exploded")
        }
        fn scan_ring(&self, _: u64, _: u64) -> Result<Vec<UserRecord>, StoreError> {
            panic!("scan exploded")
        }
        fn count(&self) -> Result<u64, StoreError> {
            panic!("count exploded")
        }
        fn flush(&self) -> Result<(), StoreError> {
            panic!("flush exploded")
        }
        fn kv_get(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            panic!("kv_get exploded")
        }
        fn kv_put(&self, _: &str, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
            panic!("kv_put exploded")
        }
        fn kv_delete(&self, _: &str, _: &[u8]) -> Result<bool, StoreError> {
            panic!("kv_delete exploded")
        }
        fn kv_scan_prefix(&self, _: &str, _: &[u8]) -> Result<KvPairs, StoreError> {
            panic!("kv_scan_prefix exploded")
        }
    }

    #[test]
    fn a_panicking_store_call_is_an_error() {
        let meter = FlushMeter::default();
        let store = GuardedStore::new(Arc::new(Panicking), meter.clone());
        match store.get("alice") {
            Err(StoreError::Backend { backend, reason }) => {
                assert_eq!(backend, "panicking");
                assert!(reason.contains("get exploded"), "{reason}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(store.flush().is_err());
        assert!(store.kv_scan_page("ns", b"", None, 10).is_err());
        // A flush that failed was still asked for, and counted.
        assert_eq!(meter.flushes.get(), 1);
    }
}
