//! Store conformance suite: every [`Store`] backend must pass these.
//!
//! Each check is a plain function taking a factory that opens the backend
//! inside a data directory (so a check can close and reopen the same data).
//! [`store_suite!`](crate::store_suite) stamps them out as `#[test]`s in a
//! module named after the backend, e.g. `sqlite::put_applies_only_newer`.

use gestor_sdk::error::StoreError;
use gestor_sdk::hlc::Timestamp;
use gestor_sdk::store::{in_ring_interval, PutOutcome, Store, UserRecord};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Opens a backend inside the given data directory (panicking on failure).
pub type Factory<'a> = &'a dyn Fn(&Path) -> Box<dyn Store>;
/// Opens a backend at a data directory, returning the error.
pub type TryFactory<'a> = &'a dyn Fn(&Path) -> Result<Box<dyn Store>, StoreError>;

/// Stamp out the whole suite for one backend.
///
/// * `$name` — module name, which prefixes the test names.
/// * `$open` — `fn(&Path) -> Result<B, StoreError>` opening the backend at
///   the path it is given (a file for SQLite, a directory for sled).
/// * `$store_rel` — where that path lies inside the test's data directory.
/// * `$victim_rel` — the file inside the data directory that the corruption
///   test fills with garbage.
#[macro_export]
macro_rules! store_suite {
    (@tests $open:ident; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::store_suite::$test(&$open);
            }
        )*
    };
    ($name:ident, $open:expr, $store_rel:expr, $victim_rel:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use gestor_sdk::error::StoreError;
            use gestor_sdk::store::Store;
            use std::path::{Path, PathBuf};

            fn store_path(dir: &Path) -> PathBuf {
                dir.join($store_rel)
            }

            fn try_open(dir: &Path) -> Result<Box<dyn Store>, StoreError> {
                let store = ($open)(store_path(dir).as_path())?;
                Ok(Box::new(store) as Box<dyn Store>)
            }

            fn open(dir: &Path) -> Box<dyn Store> {
                match try_open(dir) {
                    Ok(s) => s,
                    Err(e) => panic!("open {}: {e}", dir.display()),
                }
            }

            $crate::store_suite!(@tests open;
                backend_name_is_set,
                round_trip_every_field,
                empty_username_is_invalid,
                put_applies_only_newer,
                put_batch_is_put_in_order,
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
                kv_scan_page_pages_like_the_prefix_scan,
                kv_scan_page_bounds,
                concurrent_lww_keeps_newest,
                survives_reopen_after_flush,
                creates_missing_directories,
            );

            #[test]
            fn corrupt_file_is_refused_naming_path() {
                $crate::store_suite::corrupt_file_is_refused_naming_path(
                    &try_open,
                    &store_path,
                    &|dir: &Path| dir.join($victim_rel),
                );
            }
        }
    };
}

fn ts(wall_ms: u64, logical: u32, node: u64) -> Timestamp {
    Timestamp {
        wall_ms,
        logical,
        node,
    }
}

/// A live record with every field set to something recognisable.
pub fn record(username: &str, ring_pos: u64, version: Timestamp) -> UserRecord {
    UserRecord {
        username: username.to_string(),
        ring_pos,
        address: format!("10.0.0.1:{}", 4000 + version.logical % 1000),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${username}${version}"),
        online: true,
        last_seen_ms: version.wall_ms,
        version,
        deleted: false,
        session_hash: format!("{:064x}", version.logical),
    }
}

fn names(records: &[UserRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.username.clone()).collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn backend_name_is_set(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(["sqlite", "sled"].contains(&store.backend()));
}

pub fn round_trip_every_field(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert_eq!(store.get("nobody").unwrap(), None);

    let full = UserRecord {
        username: "ñandú-ユーザー".to_string(),
        ring_pos: u64::MAX - 3,
        address: "[::1]:65535".to_string(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
        online: true,
        last_seen_ms: u64::MAX,
        version: ts(u64::MAX, u32::MAX, u64::MAX - 1),
        deleted: false,
        session_hash: "ab".repeat(32),
    };
    assert_eq!(store.put(&full).unwrap(), PutOutcome::Applied);
    assert_eq!(store.get(&full.username).unwrap(), Some(full.clone()));

    let plain = UserRecord {
        username: "bob".to_string(),
        ring_pos: 0,
        address: String::new(),
        password_hash: String::new(),
        online: false,
        last_seen_ms: 0,
        version: ts(1, 0, 0),
        deleted: false,
        session_hash: String::new(),
    };
    assert!(store.put(&plain).unwrap().applied());
    assert_eq!(store.get("bob").unwrap(), Some(plain));
    assert_eq!(store.get(&full.username).unwrap(), Some(full));
}

pub fn empty_username_is_invalid(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let err = store.put(&record("", 1, ts(1, 0, 1))).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(store.count().unwrap(), 0);
}

pub fn put_applies_only_newer(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let v = ts(1_000, 5, 7);
    assert_eq!(
        store.put(&record("ana", 1, v)).unwrap(),
        PutOutcome::Applied
    );

    // Equal version, and older in each component of the stamp.
    for older in [v, ts(999, 9, 9), ts(1_000, 4, u64::MAX), ts(1_000, 5, 6)] {
        let mut r = record("ana", 2, older);
        r.address = "older:1".into();
        assert_eq!(
            store.put(&r).unwrap(),
            PutOutcome::Stale { current: v },
            "{older} must not replace {v}"
        );
    }
    assert_eq!(store.get("ana").unwrap(), Some(record("ana", 1, v)));

    // Newer in each component wins in turn.
    let mut current = v;
    for newer in [ts(1_000, 5, 8), ts(1_000, 6, 0), ts(1_001, 0, 0)] {
        assert!(newer > current);
        let r = record("ana", newer.wall_ms, newer);
        assert_eq!(store.put(&r).unwrap(), PutOutcome::Applied);
        assert_eq!(store.get("ana").unwrap(), Some(r));
        current = newer;
    }
}

/// A batch has the outcomes and the effect of the same puts one by one,
/// in order: later entries for the same user compete with earlier ones.
pub fn put_batch_is_put_in_order(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(store.put_batch(&[]).unwrap().is_empty());
    store.put(&record("ana", 1, ts(10, 0, 1))).unwrap();
    store.put(&record("bo", 2, ts(10, 0, 1))).unwrap();

    let mut ana_newer = record("ana", 1, ts(11, 0, 1));
    ana_newer.address = "newer:1".into();
    let mut ana_older_again = record("ana", 1, ts(10, 5, 1));
    ana_older_again.address = "older:1".into();
    let batch = [
        ana_newer.clone(),
        record("bo", 2, ts(9, 0, 1)),  // older than stored
        record("cy", 3, ts(1, 0, 1)),  // new user
        ana_older_again,               // older than the batch's own ana
        record("cy", 30, ts(2, 0, 1)), // newer, and moves on the ring
    ];
    let outcomes = store.put_batch(&batch).unwrap();
    assert_eq!(
        outcomes,
        vec![
            PutOutcome::Applied,
            PutOutcome::Stale {
                current: ts(10, 0, 1)
            },
            PutOutcome::Applied,
            PutOutcome::Stale {
                current: ts(11, 0, 1)
            },
            PutOutcome::Applied,
        ]
    );
    assert_eq!(store.get("ana").unwrap(), Some(ana_newer));
    assert_eq!(
        store.get("bo").unwrap(),
        Some(record("bo", 2, ts(10, 0, 1)))
    );
    assert_eq!(
        store.get("cy").unwrap(),
        Some(record("cy", 30, ts(2, 0, 1)))
    );
    assert_eq!(scan_positions(&*store, 0, 10), BTreeSet::from([1, 2]));
    assert_eq!(scan_positions(&*store, 10, 40), BTreeSet::from([30]));

    // A bad record is an error; what a transactional backend applied of
    // the batch is then nothing, what another applied is a prefix of it.
    let err = store
        .put_batch(&[record("dee", 4, ts(1, 0, 1)), record("", 5, ts(1, 0, 1))])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(
        store.count().unwrap(),
        3 + store.get("dee").unwrap().iter().count() as u64
    );
}

pub fn delete_tombstone_blocks_older_put(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(store
        .put(&record("eve", 42, ts(10, 0, 1)))
        .unwrap()
        .applied());
    assert_eq!(store.count().unwrap(), 1);

    assert!(store.delete("eve", 42, ts(20, 0, 1)).unwrap().applied());
    let tomb = store.get("eve").unwrap().expect("tombstone is returned");
    assert!(tomb.deleted);
    assert_eq!(tomb.version, ts(20, 0, 1));
    assert_eq!(tomb.ring_pos, 42);
    assert_eq!(store.count().unwrap(), 0);

    // An older copy arriving late cannot resurrect the user...
    assert_eq!(
        store.put(&record("eve", 42, ts(15, 0, 9))).unwrap(),
        PutOutcome::Stale {
            current: ts(20, 0, 1)
        }
    );
    // ...nor can an older delete replace the tombstone.
    assert!(!store.delete("eve", 42, ts(19, 0, 1)).unwrap().applied());
    assert!(store.get("eve").unwrap().unwrap().deleted);

    // A newer put re-creates the user.
    let again = record("eve", 42, ts(30, 0, 2));
    assert!(store.put(&again).unwrap().applied());
    assert_eq!(store.get("eve").unwrap(), Some(again));
    assert_eq!(store.count().unwrap(), 1);
}

pub fn purge_removes_all_trace(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(store
        .put(&record("tom", 77, ts(10, 0, 1)))
        .unwrap()
        .applied());
    assert!(store
        .put(&record("kim", 78, ts(10, 0, 1)))
        .unwrap()
        .applied());
    assert!(store.delete("kim", 78, ts(11, 0, 1)).unwrap().applied());

    assert!(store.purge("tom").unwrap());
    assert!(store.purge("kim").unwrap(), "tombstones are purged too");
    assert!(!store.purge("tom").unwrap());
    assert!(!store.purge("never").unwrap());
    assert_eq!(store.get("tom").unwrap(), None);
    assert_eq!(store.get("kim").unwrap(), None);
    assert!(store.scan_ring(0, 0).unwrap().is_empty());
    assert_eq!(store.count().unwrap(), 0);

    // Without a trace, even an old version is accepted again.
    assert!(store
        .put(&record("tom", 77, ts(1, 0, 1)))
        .unwrap()
        .applied());
    assert_eq!(
        names(&store.scan_ring(0, 0).unwrap()),
        names(&[record("tom", 0, ts(0, 0, 0))])
    );
}

fn put_positions(store: &dyn Store, positions: &[u64]) {
    for (i, &pos) in positions.iter().enumerate() {
        let r = record(&format!("u{pos:016x}"), pos, ts(1, i as u32, 1));
        assert!(store.put(&r).unwrap().applied());
    }
}

fn scan_positions(store: &dyn Store, start: u64, end: u64) -> BTreeSet<u64> {
    let found = store.scan_ring(start, end).unwrap();
    let set: BTreeSet<u64> = found.iter().map(|r| r.ring_pos).collect();
    assert_eq!(set.len(), found.len(), "no duplicates in scan_ring");
    set
}

fn expect(positions: &[u64], start: u64, end: u64) -> BTreeSet<u64> {
    positions
        .iter()
        .copied()
        .filter(|&p| in_ring_interval(p, start, end))
        .collect()
}

pub fn scan_ring_plain(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let positions = [5, 10, 15, 20, 25];
    put_positions(&*store, &positions);
    assert_eq!(scan_positions(&*store, 10, 20), BTreeSet::from([15, 20]));
    assert_eq!(scan_positions(&*store, 9, 10), BTreeSet::from([10]));
    assert_eq!(scan_positions(&*store, 10, 11), BTreeSet::new());
    assert_eq!(scan_positions(&*store, 0, 25), BTreeSet::from(positions));
    let rec = store.scan_ring(14, 15).unwrap();
    assert_eq!(rec, vec![record("u000000000000000f", 15, ts(1, 2, 1))]);
}

pub fn scan_ring_wraps_around(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let positions = [0, 1, 100, u64::MAX - 1, u64::MAX];
    put_positions(&*store, &positions);
    assert_eq!(
        scan_positions(&*store, u64::MAX - 1, 1),
        BTreeSet::from([u64::MAX, 0, 1])
    );
    assert_eq!(
        scan_positions(&*store, 100, 0),
        BTreeSet::from([u64::MAX - 1, u64::MAX, 0])
    );
    assert_eq!(scan_positions(&*store, u64::MAX, 0), BTreeSet::from([0]));
    assert_eq!(
        scan_positions(&*store, u64::MAX, 100),
        BTreeSet::from([0, 1, 100])
    );
    // start == end is the whole ring, whatever the point.
    for p in [0, 1, 50, u64::MAX] {
        assert_eq!(
            scan_positions(&*store, p, p),
            BTreeSet::from(positions),
            "start=end={p}"
        );
    }
}

pub fn scan_ring_keeps_u64_order_above_i64_max(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let top = i64::MAX as u64;
    let positions = [1, top - 1, top, top + 1, top + 2, u64::MAX];
    put_positions(&*store, &positions);
    assert_eq!(
        scan_positions(&*store, top - 1, top + 1),
        BTreeSet::from([top, top + 1])
    );
    assert_eq!(
        scan_positions(&*store, top, u64::MAX),
        BTreeSet::from([top + 1, top + 2, u64::MAX])
    );
    assert_eq!(
        scan_positions(&*store, 0, top),
        BTreeSet::from([1, top - 1, top])
    );
    assert_eq!(
        scan_positions(&*store, top + 1, top),
        BTreeSet::from([top + 2, u64::MAX, 1, top - 1, top])
    );
}

pub fn scan_ring_matches_interval_semantics(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let mut rng = StdRng::seed_from_u64(0x006e_570e);
    let mut positions: Vec<u64> = vec![0, 1, i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];
    positions.extend((0..150).map(|_| rng.gen::<u64>()));
    positions.sort_unstable();
    positions.dedup();
    put_positions(&*store, &positions);
    // Tombstones are part of every scan too.
    let tomb = positions[positions.len() / 2];
    assert!(store
        .delete(&format!("u{tomb:016x}"), tomb, ts(2, 0, 1))
        .unwrap()
        .applied());

    let mut bounds: Vec<u64> = positions.clone();
    bounds.extend([2, u64::MAX - 2, 1 << 62]);
    bounds.extend((0..20).map(|_| rng.gen::<u64>()));
    for _ in 0..120 {
        let start = *bounds.choose(&mut rng).unwrap();
        let end = *bounds.choose(&mut rng).unwrap();
        assert_eq!(
            scan_positions(&*store, start, end),
            expect(&positions, start, end),
            "scan_ring({start}, {end})"
        );
    }
    let found = store.scan_ring(tomb.wrapping_sub(1), tomb).unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].deleted, "tombstones are returned by scan_ring");
}

pub fn ring_pos_change_moves_record(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(store
        .put(&record("mover", 100, ts(1, 0, 1)))
        .unwrap()
        .applied());
    assert!(store
        .put(&record("mover", 200, ts(2, 0, 1)))
        .unwrap()
        .applied());
    assert!(scan_positions(&*store, 50, 150).is_empty());
    assert_eq!(scan_positions(&*store, 150, 250), BTreeSet::from([200]));
    // A stale put with another position leaves the index alone.
    assert!(!store
        .put(&record("mover", 120, ts(1, 5, 1)))
        .unwrap()
        .applied());
    assert!(scan_positions(&*store, 50, 150).is_empty());
    assert_eq!(store.scan_ring(0, 0).unwrap().len(), 1);
}

pub fn count_ignores_tombstones(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert_eq!(store.count().unwrap(), 0);
    for i in 0..10u64 {
        assert!(store
            .put(&record(&format!("c{i}"), i, ts(1, 0, 1)))
            .unwrap()
            .applied());
    }
    assert_eq!(store.count().unwrap(), 10);
    for i in 0..4u64 {
        assert!(store
            .delete(&format!("c{i}"), i, ts(2, 0, 1))
            .unwrap()
            .applied());
    }
    // A tombstone for a user never seen does not count either.
    assert!(store.delete("ghost", 99, ts(2, 0, 1)).unwrap().applied());
    assert_eq!(store.count().unwrap(), 6);
    assert!(store.purge("c5").unwrap());
    assert_eq!(store.count().unwrap(), 5);
    assert_eq!(store.scan_ring(0, 0).unwrap().len(), 10);
}

pub fn kv_round_trip_and_delete(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert_eq!(store.kv_get("chord", b"k").unwrap(), None);
    store.kv_put("chord", b"k", b"v1").unwrap();
    assert_eq!(store.kv_get("chord", b"k").unwrap(), Some(b"v1".to_vec()));
    store.kv_put("chord", b"k", b"v2").unwrap();
    assert_eq!(store.kv_get("chord", b"k").unwrap(), Some(b"v2".to_vec()));
    // Empty and binary keys and values.
    store.kv_put("chord", b"", b"").unwrap();
    store.kv_put("chord", &[0, 0xFF, 0], &[0xFF; 300]).unwrap();
    assert_eq!(store.kv_get("chord", b"").unwrap(), Some(vec![]));
    assert_eq!(
        store.kv_get("chord", &[0, 0xFF, 0]).unwrap(),
        Some(vec![0xFF; 300])
    );
    assert!(store.kv_delete("chord", b"k").unwrap());
    assert!(!store.kv_delete("chord", b"k").unwrap());
    assert_eq!(store.kv_get("chord", b"k").unwrap(), None);
}

pub fn kv_namespaces_are_isolated(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    store.kv_put("a", b"key", b"from a").unwrap();
    store.kv_put("ab", b"key", b"from ab").unwrap();
    store.kv_put("b", b"key", b"from b").unwrap();
    // "a" + "bkey" must not alias "ab" + "key".
    store.kv_put("a", b"bkey", b"a/bkey").unwrap();
    assert_eq!(store.kv_get("a", b"key").unwrap(), Some(b"from a".to_vec()));
    assert_eq!(
        store.kv_get("ab", b"key").unwrap(),
        Some(b"from ab".to_vec())
    );
    assert_eq!(store.kv_get("b", b"key").unwrap(), Some(b"from b".to_vec()));
    assert_eq!(store.kv_get("c", b"key").unwrap(), None);
    assert_eq!(
        store.kv_scan_prefix("a", b"").unwrap(),
        vec![
            (b"bkey".to_vec(), b"a/bkey".to_vec()),
            (b"key".to_vec(), b"from a".to_vec()),
        ]
    );
    assert!(store.kv_delete("ab", b"key").unwrap());
    assert_eq!(store.kv_get("a", b"key").unwrap(), Some(b"from a".to_vec()));
    assert!(!store.kv_delete("b", b"bkey").unwrap());
    // User records and kv do not see each other.
    assert_eq!(store.count().unwrap(), 0);
    assert!(store.put(&record("key", 1, ts(1, 0, 1))).unwrap().applied());
    assert_eq!(store.kv_scan_prefix("b", b"").unwrap().len(), 1);
}

pub fn kv_scan_prefix_is_ordered(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let mut keys: Vec<Vec<u8>> = vec![
        b"p".to_vec(),
        b"p/".to_vec(),
        b"p/a".to_vec(),
        b"p/b".to_vec(),
        b"p/b/1".to_vec(),
        vec![b'p', b'/', 0xFF],
        vec![b'p', b'/', 0xFF, 0xFF],
        vec![b'p', b'/', 0x00],
        b"q".to_vec(),
        b"o/a".to_vec(),
        vec![b'p', 0xFF],
        vec![0xFF],
        vec![0xFF, 0xFF, 0x01],
    ];
    keys.shuffle(&mut StdRng::seed_from_u64(7));
    for (i, k) in keys.iter().enumerate() {
        store.kv_put("ns", k, &[i as u8]).unwrap();
    }
    store.kv_put("other", b"p/zzz", b"x").unwrap();

    let check = |prefix: &[u8]| {
        let got = store.kv_scan_prefix("ns", prefix).unwrap();
        let mut want: Vec<&Vec<u8>> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
        want.sort();
        let got_keys: Vec<&Vec<u8>> = got.iter().map(|(k, _)| k).collect();
        assert_eq!(got_keys, want, "prefix {prefix:?}");
        for (k, v) in &got {
            let i = keys.iter().position(|x| x == k).unwrap();
            assert_eq!(v, &vec![i as u8]);
        }
    };
    for prefix in [
        &b""[..],
        b"p",
        b"p/",
        b"p/b",
        &[b'p', b'/', 0xFF],
        &[0xFF],
        &[0xFF, 0xFF],
        b"zz",
    ] {
        check(prefix);
    }
}

/// Every page walk (any prefix, any page size) returns exactly the prefix
/// scan, in order, each key once; checked against a model on random keys.
pub fn kv_scan_page_pages_like_the_prefix_scan(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    let mut rng = StdRng::seed_from_u64(11);
    let alphabet: [u8; 5] = [0x00, b'/', b'a', b'b', 0xFF];
    let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    for i in 0..300u32 {
        let len = rng.gen_range(0..5);
        let key: Vec<u8> = (0..len).map(|_| alphabet[rng.gen_range(0..5)]).collect();
        store.kv_put("ns", &key, &i.to_be_bytes()).unwrap();
        model.insert(key, i.to_be_bytes().to_vec());
    }
    // Neighbouring namespaces must not leak into a page.
    store.kv_put("n", b"s", b"x").unwrap();
    store.kv_put("ns2", b"", b"x").unwrap();
    store.kv_put("nt", b"", b"x").unwrap();
    let prefixes: [&[u8]; 6] = [b"", b"a", b"a/", &[0xFF], &[0xFF, 0xFF], b"zz"];
    for prefix in prefixes {
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(store.kv_scan_prefix("ns", prefix).unwrap(), want);
        for limit in [1, 2, 7, 1000] {
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store
                    .kv_scan_page("ns", prefix, after.as_deref(), limit)
                    .unwrap();
                assert!(page.len() <= limit, "a page holds at most `limit` pairs");
                if let (Some(a), Some((first, _))) = (&after, page.first()) {
                    assert!(first > a, "a page starts after `after`");
                }
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                got.extend(page);
            }
            assert_eq!(got, want, "prefix {prefix:?}, pages of {limit}");
        }
    }
}

/// `after` outside the prefix, `limit` 0, empty stores and namespaces.
pub fn kv_scan_page_bounds(open: Factory) {
    let dir = tempdir();
    let store = open(dir.path());
    assert!(store.kv_scan_page("ns", b"", None, 10).unwrap().is_empty());
    for k in [&b"a/1"[..], b"a/2", b"b/1", b"c"] {
        store.kv_put("ns", k, k).unwrap();
    }
    let keys = |page: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
        page.into_iter().map(|(k, _)| k).collect()
    };
    assert!(store.kv_scan_page("ns", b"", None, 0).unwrap().is_empty());
    // `after` before the prefix starts at the prefix; past it, nothing.
    assert_eq!(
        keys(store.kv_scan_page("ns", b"b/", Some(b"a/9"), 10).unwrap()),
        vec![b"b/1".to_vec()]
    );
    assert!(store
        .kv_scan_page("ns", b"a/", Some(b"b"), 10)
        .unwrap()
        .is_empty());
    // `after` need not be a stored key.
    assert_eq!(
        keys(store.kv_scan_page("ns", b"", Some(b"a/15"), 2).unwrap()),
        vec![b"a/2".to_vec(), b"b/1".to_vec()]
    );
    assert_eq!(
        keys(store.kv_scan_page("ns", b"", Some(b"b/1"), 5).unwrap()),
        vec![b"c".to_vec()]
    );
    assert!(store
        .kv_scan_page("other", b"", None, 5)
        .unwrap()
        .is_empty());
}

pub fn concurrent_lww_keeps_newest(open: Factory) {
    const THREADS: u64 = 8;
    const VERSIONS: u64 = 150;
    let dir = tempdir();
    let store = open(dir.path());
    // Each version has its own ring position and fields, so a torn write or
    // a stale index entry would show up.
    let make = |wall: u64, node: u64| {
        let v = ts(wall, (wall % 3) as u32, node);
        let pos = wall.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ node;
        let mut r = record("contended", pos, v);
        r.address = format!("node{node}:{wall}");
        r.deleted = wall % 7 == 3;
        r
    };
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = &*store;
            s.spawn(move || {
                let mut walls: Vec<u64> = (0..VERSIONS).collect();
                walls.shuffle(&mut StdRng::seed_from_u64(t));
                for wall in walls {
                    store.put(&make(wall, t)).unwrap();
                }
            });
        }
    });
    let newest = make(VERSIONS - 1, THREADS - 1);
    assert_eq!(store.get("contended").unwrap(), Some(newest.clone()));
    assert_eq!(store.scan_ring(0, 0).unwrap(), vec![newest.clone()]);
    assert_eq!(
        store.put(&make(VERSIONS - 1, 0)).unwrap(),
        PutOutcome::Stale {
            current: newest.version
        }
    );
}

pub fn survives_reopen_after_flush(open: Factory) {
    let dir = tempdir();
    let a = record("alice", u64::MAX, ts(5, 1, 2));
    let b = record("bob", 1 << 63, ts(6, 0, 2));
    {
        let store = open(dir.path());
        assert!(store.put(&a).unwrap().applied());
        assert!(store.put(&b).unwrap().applied());
        assert!(store.delete("bob", 1 << 63, ts(7, 0, 2)).unwrap().applied());
        store.kv_put("chord", b"successor", b"node-9").unwrap();
        store.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.get("alice").unwrap(), Some(a));
    let tomb = store.get("bob").unwrap().unwrap();
    assert!(tomb.deleted);
    assert_eq!(tomb.version, ts(7, 0, 2));
    assert_eq!(store.count().unwrap(), 1);
    assert_eq!(store.scan_ring(0, 0).unwrap().len(), 2);
    assert_eq!(
        store.kv_get("chord", b"successor").unwrap(),
        Some(b"node-9".to_vec())
    );
    // The reopened store still enforces LWW against what was persisted.
    assert!(!store.put(&record("bob", 1, ts(6, 9, 9))).unwrap().applied());
}

pub fn creates_missing_directories(open: Factory) {
    let dir = tempdir();
    let nested = dir.path().join("does/not/exist");
    let store = open(&nested);
    assert!(store.put(&record("x", 1, ts(1, 0, 1))).unwrap().applied());
    store.flush().unwrap();
    assert!(nested.is_dir());
}

/// Garbage in the backend's data file must be refused with an error naming
/// the store's path — never a panic, never a silently empty store.
pub fn corrupt_file_is_refused_naming_path(
    try_open: TryFactory,
    store_path: &dyn Fn(&Path) -> PathBuf,
    victim: &dyn Fn(&Path) -> PathBuf,
) {
    let dir = tempdir();
    {
        let store = try_open(dir.path()).expect("fresh open");
        assert!(store.put(&record("z", 1, ts(1, 0, 1))).unwrap().applied());
        store.flush().unwrap();
    }
    let file = victim(dir.path());
    let len = std::fs::metadata(&file)
        .map(|m| m.len())
        .unwrap_or(0)
        .max(8192);
    let mut rng = StdRng::seed_from_u64(0xBAD);
    let garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    std::fs::write(&file, garbage).unwrap();

    let shown = store_path(dir.path()).display().to_string();
    for attempt in 0..3 {
        match try_open(dir.path()) {
            Ok(store) => panic!(
                "attempt {attempt}: corrupt {} opened; count = {:?}",
                file.display(),
                store.count()
            ),
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Corrupt { .. } | StoreError::Open { .. }),
                    "{e:?}"
                );
                assert!(e.to_string().contains(&shown), "{e} must name {shown}");
            }
        }
    }
}
