//! The store conformance suite, once per backend: `sqlite::…` and `sled::…`.

use gestor_store_sled::SledStore;
use gestor_store_sqlite::SqliteStore;

// SQLite: a single database file; the corruption test overwrites it.
gestor_tests::store_suite!(sqlite, SqliteStore::open, "gestor.db", "gestor.db");

// sled: a database directory; the corruption test overwrites its log file.
gestor_tests::store_suite!(sled, SledStore::open, "sled", "sled/db");

// Both again behind the host's record cache (host/src/record_cache.rs),
// which must keep every promise of the store it fronts; a capacity of 4
// makes the suite evict as well as hit.
use gestor::record_cache::CachedStore;
use std::sync::Arc;

gestor_tests::store_suite!(
    sqlite_cached,
    |p: &Path| SqliteStore::open(p).map(|s| CachedStore::new(Arc::new(s), 4)),
    "gestor.db",
    "gestor.db"
);
gestor_tests::store_suite!(
    sled_cached,
    |p: &Path| SledStore::open(p).map(|s| CachedStore::new(Arc::new(s), 4)),
    "sled",
    "sled/db"
);
