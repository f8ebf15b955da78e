//! The store conformance suite of `gestor-tests` (tests/src/store_suite.rs),
//! run against the in-memory store the simulator uses, so the simulator's
//! store keeps the same contract as SQLite and sled. A "directory" is a
//! simulated disk: reopening the same path starts from what was flushed.

#[allow(dead_code)]
#[path = "../../../tests/src/store_suite.rs"]
mod store_suite;

use gestor_sdk::testing::{MemoryDisk, MemoryStore};
use gestor_sdk::Store;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

fn open(dir: &Path) -> Box<dyn Store> {
    static DISKS: OnceLock<Mutex<HashMap<PathBuf, MemoryDisk>>> = OnceLock::new();
    let mut disks = DISKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let disk = disks.entry(dir.to_path_buf()).or_default();
    Box::new(MemoryStore::open(disk))
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                store_suite::$test(&open);
            }
        )*
    };
}

// Every check but the ones about files (missing directories, corruption)
// and the one listing the production backends' names.
suite!(
    round_trip_every_field,
    empty_username_is_invalid,
    put_applies_only_newer,
    delete_tombstone_blocks_older_put,
    purge_removes_all_trace,
    scan_ring_plain,
    scan_ring_wraps_around,
    scan_ring_keeps_u64_order_above_i64_max,
    scan_ring_matches_interval_semantics,
    ring_pos_change_moves_record,
    count_ignores_tombstones,
    kv_round_trip_and_delete,
    kv_namespaces_are_isolated,
    kv_scan_prefix_is_ordered,
    concurrent_lww_keeps_newest,
    survives_reopen_after_flush,
);
