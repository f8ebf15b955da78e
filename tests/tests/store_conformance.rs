//! The store conformance suite, once per backend: `sqlite::…` and `sled::…`.

use gestor_store_sled::SledStore;
use gestor_store_sqlite::SqliteStore;

// SQLite: a single database file; the corruption test overwrites it.
gestor_tests::store_suite!(sqlite, SqliteStore::open, "gestor.db", "gestor.db");

// sled: a database directory; the corruption test overwrites its log file.
gestor_tests::store_suite!(sled, SledStore::open, "sled", "sled/db");
