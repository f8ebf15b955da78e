//! # gestor-store-sqlite — the directory store on SQLite
//!
//! One database file (typically `<data-dir>/gestor.db`) in WAL mode, with
//! plain tables an operator can inspect with the `sqlite3` shell:
//!
//! ```sql
//! CREATE TABLE meta (
//!     key   TEXT PRIMARY KEY NOT NULL,
//!     value TEXT NOT NULL                  -- 'schema_version' = '1'
//! );
//! CREATE TABLE users (
//!     username      TEXT PRIMARY KEY NOT NULL,
//!     ring_pos      TEXT NOT NULL,         -- u64 as 16 lowercase hex digits
//!     address       TEXT NOT NULL,
//!     password_hash TEXT NOT NULL,
//!     online        INTEGER NOT NULL,      -- 0 / 1
//!     last_seen_ms  INTEGER NOT NULL,      -- u64 bits stored as i64
//!     version       BLOB NOT NULL,         -- HLC: wall_ms(8) logical(4) node(8), big-endian
//!     deleted       INTEGER NOT NULL,      -- 1 = tombstone
//!     session_hash  TEXT NOT NULL          -- SHA-256 (hex) of the session token, or ''
//! );
//! CREATE INDEX users_ring_pos ON users(ring_pos);
//! CREATE TABLE kv (
//!     namespace TEXT NOT NULL,
//!     key       BLOB NOT NULL,
//!     value     BLOB NOT NULL,
//!     PRIMARY KEY (namespace, key)
//! ) WITHOUT ROWID;
//! ```
//!
//! Why these encodings: SQLite integers are signed 64-bit, so a `u64` ring
//! position above `i64::MAX` would sort before 0. Fixed-width hex text keeps
//! the unsigned order under SQLite's text comparison and stays readable.
//! The version is a big-endian blob because SQLite compares blobs with
//! `memcmp`, which then matches [`Timestamp`]'s derived order, so the
//! last-writer-wins check is a single SQL comparison inside the upsert.
//! Inspect a version with `SELECT username, hex(version) FROM users`.
//!
//! Durability: `synchronous=NORMAL`. In WAL mode this never corrupts the
//! database and survives process crashes; only a power loss can drop the
//! last few commits. [`Store::flush`] is the hard durability point: it
//! fsyncs the write-ahead log (`<db>-wal`), which is what
//! `synchronous=FULL` would do after every commit — SQLite replays every
//! committed frame of a synced WAL on recovery, and with `NORMAL` it syncs
//! the database file itself after each checkpoint, before the WAL is
//! reused. Concurrent flushes share one fsync ([`GroupCommit`]), so a
//! burst of acknowledged writes costs about two syncs, not one each.

use gestor_sdk::error::StoreError;
use gestor_sdk::group_commit::GroupCommit;
use gestor_sdk::hlc::Timestamp;
use gestor_sdk::store::{
    kv_page_bounds, prefix_upper_bound, KvPairs, PutOutcome, Store, UserRecord,
};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const BACKEND: &str = "sqlite";
const SCHEMA_VERSION: &str = "1";
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY NOT NULL,
    ring_pos      TEXT NOT NULL,
    address       TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    online        INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    version       BLOB NOT NULL,
    deleted       INTEGER NOT NULL,
    session_hash  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS users_ring_pos ON users(ring_pos);
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key       BLOB NOT NULL,
    value     BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
";

/// The users columns in `UserRecord` order, as a literal so that the hot
/// statements below are constants (no SQL text built per call).
macro_rules! user_columns {
    () => {
        "username, ring_pos, address, password_hash, online, last_seen_ms, version, deleted, session_hash"
    };
}
const USER_COLUMNS: &str = user_columns!();

/// The last-writer-wins upsert of a user, `SET`ting `$set_first` too and
/// requiring `$also` of the stored row.
macro_rules! upsert_user {
    ($set_first:literal, $also:literal) => {
        concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(username) DO UPDATE SET ",
            $set_first,
            "address = excluded.address,
                 password_hash = excluded.password_hash,
                 online = excluded.online,
                 last_seen_ms = excluded.last_seen_ms,
                 version = excluded.version,
                 deleted = excluded.deleted,
                 session_hash = excluded.session_hash
             WHERE excluded.version > users.version",
            $also
        )
    };
}
/// For a row stored under the same ring position: leaves the position and
/// its index entry alone.
const UPSERT_KEEPING_POSITION: &str = upsert_user!("", " AND users.ring_pos = excluded.ring_pos");
/// Any row, the position included.
const UPSERT: &str = upsert_user!("ring_pos = excluded.ring_pos, ", "");

/// SQLite-backed [`Store`]. One connection behind a mutex: SQLite serialises
/// writers anyway, and the directory's reads are short point lookups.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    flushes: GroupCommit,
    /// The directory entry of the WAL has been synced once.
    dir_synced: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
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

/// Order-preserving text form of a ring position.
fn ring_text(pos: u64) -> String {
    format!("{pos:016x}")
}

/// Order-preserving blob form of an HLC stamp.
fn version_blob(v: &Timestamp) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&v.wall_ms.to_be_bytes());
    b[8..12].copy_from_slice(&v.logical.to_be_bytes());
    b[12..].copy_from_slice(&v.node.to_be_bytes());
    b
}

fn parse_version(b: &[u8]) -> Option<Timestamp> {
    if b.len() != 20 {
        return None;
    }
    Some(Timestamp {
        wall_ms: u64::from_be_bytes(b[..8].try_into().ok()?),
        logical: u32::from_be_bytes(b[8..12].try_into().ok()?),
        node: u64::from_be_bytes(b[12..].try_into().ok()?),
    })
}

fn validate(record: &UserRecord) -> Result<(), StoreError> {
    if record.username.is_empty() {
        return Err(StoreError::Invalid("empty username".into()));
    }
    Ok(())
}

/// Raw row as read from `users`; decoded separately so a malformed row
/// becomes `Corrupt` rather than a panic.
struct RawUser {
    username: String,
    ring_pos: String,
    address: String,
    password_hash: String,
    online: i64,
    last_seen_ms: i64,
    version: Vec<u8>,
    deleted: i64,
    session_hash: String,
}

fn raw_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawUser> {
    Ok(RawUser {
        username: row.get(0)?,
        ring_pos: row.get(1)?,
        address: row.get(2)?,
        password_hash: row.get(3)?,
        online: row.get(4)?,
        last_seen_ms: row.get(5)?,
        version: row.get(6)?,
        deleted: row.get(7)?,
        session_hash: row.get(8)?,
    })
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path`.
    ///
    /// A file that is not a SQLite database, or fails the quick integrity
    /// check, is refused with [`StoreError::Corrupt`] naming the file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let corrupt_err = |reason: String| StoreError::Corrupt {
            path: shown.clone(),
            reason,
        };
        // Classify a failure during the first statements: a garbage header or
        // damaged pages mean corruption; anything else (permissions, locks) is
        // an open failure.
        let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                corrupt_err(e.to_string())
            }
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => open_err(format!(
                "another process holds this database (is a gestor already running on this data \
                 directory?): {e}"
            )),
            _ => open_err(e.to_string()),
        };

        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        if path.is_dir() {
            return Err(open_err("is a directory, expected a database file".into()));
        }

        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err(e.to_string()))?;
        // One connection, one process: hold the file locks for the
        // connection's life instead of taking and dropping them (fcntl(2)
        // calls) around every transaction, which was ~5% of a request
        // worker's time during an import. Set before the first read, so WAL
        // keeps its index in memory rather than in a shared `-shm` file.
        // A second process opening the same file is refused (after
        // BUSY_TIMEOUT) instead of writing beside us.
        conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |r| {
            r.get::<_, String>(0)
        })
        .map_err(|e| open_err(e.to_string()))?;

        // SQLite reads the header lazily, so a garbage file only shows up on
        // the first real statement: check before touching anything else.
        let check: Vec<String> = {
            let mut stmt = conn.prepare("PRAGMA quick_check").map_err(classify)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(classify)?;
            rows.collect::<Result<_, _>>().map_err(classify)?
        };
        if check.len() != 1 || check[0] != "ok" {
            return Err(corrupt_err(format!("quick_check: {}", check.join("; "))));
        }

        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %shown, mode = %mode, "could not switch SQLite to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(classify)?;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(classify)?;

        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(classify)?;
        match version.as_deref() {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(classify)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(open_err(format!(
                    "unsupported schema version {other} (this build reads {SCHEMA_VERSION})"
                )))
            }
        }

        tracing::debug!(path = %shown, "opened SQLite store");
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            flushes: GroupCommit::new(),
            dir_synced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The database file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync the write-ahead log, and the first time also the directory
    /// holding it (a new file's name must survive a power loss too). No WAL
    /// file means nothing committed waits in one: the last connection's
    /// close checkpointed it into the database file, synced.
    fn sync_wal(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data().map_err(backend_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(backend_err(e)),
        }
        if !self.dir_synced.load(Ordering::Relaxed) {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(backend_err)?;
            }
            self.dir_synced.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Last-writer-wins upsert of `record` on `conn` (the locked
    /// connection, or a transaction on it).
    fn put_on(&self, conn: &Connection, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        let (ring_pos, version) = (ring_text(record.ring_pos), version_blob(&record.version));
        let values = params![
            record.username,
            ring_pos,
            record.address,
            record.password_hash,
            record.online as i64,
            record.last_seen_ms as i64,
            &version[..],
            record.deleted as i64,
            record.session_hash,
        ];
        // One statement each: the LWW comparison and the write are atomic.
        // The usual case leaves `ring_pos` out of the update (it follows
        // from the username, so it is unchanged): SQLite then rewrites one
        // page, not also the `users_ring_pos` index entry — half the bytes
        // written to the WAL per put. When that changes nothing (stale, or
        // stored under another position) the full upsert runs.
        for upsert in [UPSERT_KEEPING_POSITION, UPSERT] {
            let changed = conn
                .prepare_cached(upsert)
                .and_then(|mut stmt| stmt.execute(values))
                .map_err(backend_err)?;
            if changed > 0 {
                return Ok(PutOutcome::Applied);
            }
        }
        // Still under the connection lock, so this is the version that won.
        let current: Vec<u8> = conn
            .query_row(
                "SELECT version FROM users WHERE username = ?1",
                [&record.username],
                |r| r.get(0),
            )
            .map_err(backend_err)?;
        let current = parse_version(&current)
            .ok_or_else(|| self.corrupt(format!("user {:?}: bad version", record.username)))?;
        Ok(PutOutcome::Stale { current })
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason,
        }
    }

    fn decode(&self, raw: RawUser) -> Result<UserRecord, StoreError> {
        let ring_pos = u64::from_str_radix(&raw.ring_pos, 16).map_err(|_| {
            self.corrupt(format!(
                "user {:?}: bad ring_pos {:?}",
                raw.username, raw.ring_pos
            ))
        })?;
        let version = parse_version(&raw.version).ok_or_else(|| {
            self.corrupt(format!(
                "user {:?}: bad version ({} bytes)",
                raw.username,
                raw.version.len()
            ))
        })?;
        Ok(UserRecord {
            username: raw.username,
            ring_pos,
            address: raw.address,
            password_hash: raw.password_hash,
            online: raw.online != 0,
            last_seen_ms: raw.last_seen_ms as u64,
            version,
            deleted: raw.deleted != 0,
            session_hash: raw.session_hash,
        })
    }

    fn query_users(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        out: &mut Vec<UserRecord>,
    ) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(sql).map_err(backend_err)?;
        let rows = stmt.query_map(params, raw_user).map_err(backend_err)?;
        for row in rows {
            out.push(self.decode(row.map_err(backend_err)?)?);
        }
        Ok(())
    }
}

fn check_namespace(namespace: &str) -> Result<(), StoreError> {
    // Same rule as the sled backend, where NUL separates namespace and key.
    if namespace.contains('\0') {
        return Err(StoreError::Invalid("namespace contains NUL".into()));
    }
    Ok(())
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn put(&self, record: &UserRecord) -> Result<PutOutcome, StoreError> {
        validate(record)?;
        let conn = self.conn();
        self.put_on(&conn, record)
    }

    /// One transaction for the whole batch: one commit in the WAL instead
    /// of one per record. All or nothing: on an error nothing is applied.
    fn put_batch(&self, records: &[UserRecord]) -> Result<Vec<PutOutcome>, StoreError> {
        for record in records {
            validate(record)?;
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend_err)?;
        let outcomes = records
            .iter()
            .map(|r| self.put_on(&tx, r))
            .collect::<Result<Vec<_>, _>>()?;
        // Dropping `tx` on an error above rolls the batch back.
        tx.commit().map_err(backend_err)?;
        Ok(outcomes)
    }

    fn get(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([username], raw_user).optional())
            .map_err(backend_err)?;
        raw.map(|r| self.decode(r)).transpose()
    }

    fn purge(&self, username: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM users WHERE username = ?1", [username])
            .map_err(backend_err)?;
        Ok(n > 0)
    }

    fn scan_ring(&self, start: u64, end: u64) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut out = Vec::new();
        let s = ring_text(start);
        let e = ring_text(end);
        if start < end {
            self.query_users(
                &conn,
                &format!(
                    "SELECT {USER_COLUMNS} FROM users
                     WHERE ring_pos > ?1 AND ring_pos <= ?2 ORDER BY ring_pos"
                ),
                params![s, e],
                &mut out,
            )?;
        } else {
            // Wrapping (or whole ring): two index range scans, in ring order
            // starting just after `start`.
            self.query_users(
                &conn,
                &format!("SELECT {USER_COLUMNS} FROM users WHERE ring_pos > ?1 ORDER BY ring_pos"),
                params![s],
                &mut out,
            )?;
            self.query_users(
                &conn,
                &format!("SELECT {USER_COLUMNS} FROM users WHERE ring_pos <= ?1 ORDER BY ring_pos"),
                params![e],
                &mut out,
            )?;
        }
        Ok(out)
    }

    fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM users WHERE deleted = 0", [], |r| {
                r.get(0)
            })
            .map_err(backend_err)?;
        Ok(n as u64)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flushes.flush(|| self.sync_wal())
    }

    fn kv_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        check_namespace(namespace)?;
        self.conn()
            .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![namespace, key], |r| r.get(0))
                    .optional()
            })
            .map_err(backend_err)
    }

    fn kv_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_namespace(namespace)?;
        self.conn()
            .prepare_cached(
                "INSERT INTO kv(namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![namespace, key, value]))
            .map_err(backend_err)?;
        Ok(())
    }

    fn kv_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        check_namespace(namespace)?;
        let n = self
            .conn()
            .execute(
                "DELETE FROM kv WHERE namespace = ?1 AND key = ?2",
                params![namespace, key],
            )
            .map_err(backend_err)?;
        Ok(n > 0)
    }

    fn kv_scan_prefix(
        &self,
        namespace: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        check_namespace(namespace)?;
        let conn = self.conn();
        // Keys are always bound as BLOBs, which SQLite orders by memcmp, so
        // a key range is exactly the byte-prefix set.
        let collect = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(p, |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<(Vec<u8>, Vec<u8>)>>>()
        };
        match prefix_upper_bound(prefix) {
            Some(upper) => collect(
                "SELECT key, value FROM kv WHERE namespace = ?1 AND key >= ?2 AND key < ?3
                 ORDER BY key",
                &[&namespace, &prefix, &upper],
            ),
            None => collect(
                "SELECT key, value FROM kv WHERE namespace = ?1 AND key >= ?2 ORDER BY key",
                &[&namespace, &prefix],
            ),
        }
        .map_err(backend_err)
    }

    fn kv_scan_page(
        &self,
        namespace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        check_namespace(namespace)?;
        let Some(bounds) = kv_page_bounds(prefix, after) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (lower, inclusive) = bounds.lower;
        let low_op = if inclusive { ">=" } else { ">" };
        let conn = self.conn();
        // One range of the (namespace, key) primary key, read up to LIMIT.
        let collect = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map(p, |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<KvPairs>>()
        };
        match bounds.upper {
            Some(upper) => collect(
                &format!(
                    "SELECT key, value FROM kv WHERE namespace = ?1 AND key {low_op} ?2
                     AND key < ?3 ORDER BY key LIMIT ?4"
                ),
                &[&namespace, &lower, &upper, &limit],
            ),
            None => collect(
                &format!(
                    "SELECT key, value FROM kv WHERE namespace = ?1 AND key {low_op} ?2
                     ORDER BY key LIMIT ?3"
                ),
                &[&namespace, &lower, &limit],
            ),
        }
        .map_err(backend_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound(b""), None);
        assert_eq!(prefix_upper_bound(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper_bound(&[1, 0xFF]), Some(vec![2]));
    }

    #[test]
    fn version_blob_orders_like_timestamp() {
        let a = Timestamp {
            wall_ms: 1,
            logical: u32::MAX,
            node: u64::MAX,
        };
        let b = Timestamp {
            wall_ms: 2,
            logical: 0,
            node: 0,
        };
        assert!(a < b);
        assert!(version_blob(&a) < version_blob(&b));
        assert_eq!(parse_version(&version_blob(&a)), Some(a));
    }

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gestor-sqlite-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn user(name: &str, wall_ms: u64) -> UserRecord {
        UserRecord {
            username: name.into(),
            ring_pos: gestor_sdk::hash::ring_position(name.as_bytes()),
            address: format!("127.0.0.1:{wall_ms}"),
            password_hash: "$argon2id$x".into(),
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

    /// Pages written to the WAL by `write`, from its growth (a page per frame).
    fn wal_frames(store: &SqliteStore, write: impl FnOnce(&SqliteStore)) -> u64 {
        let wal = store.path().with_extension("db-wal");
        let page: u64 = store
            .conn()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let before = std::fs::metadata(&wal).unwrap().len();
        write(store);
        (std::fs::metadata(&wal).unwrap().len() - before) / (page + 24)
    }

    #[test]
    fn an_update_rewrites_one_page_and_a_batch_commits_once() {
        let dir = tmp();
        let store = SqliteStore::open(&dir.join("gestor.db")).unwrap();
        let names: Vec<String> = (0..200).map(|i| format!("user{i}")).collect();
        for name in &names {
            store.put(&user(name, 1)).unwrap();
        }
        // An address change leaves the ring-position index alone.
        let frames = wal_frames(&store, |s| {
            assert!(s.put(&user("user7", 2)).unwrap().applied());
        });
        assert_eq!(frames, 1, "one leaf page per update");
        // Eight updates in one batch: one commit, pages shared where they
        // fall on the same leaf; eight single puts write at least eight.
        let batch: Vec<UserRecord> = names[..8].iter().map(|n| user(n, 3)).collect();
        let batched = wal_frames(&store, |s| {
            let outcomes = s.put_batch(&batch).unwrap();
            assert!(outcomes.iter().all(|o| o.applied()));
        });
        let singles = wal_frames(&store, |s| {
            for n in &names[..8] {
                assert!(s.put(&user(n, 4)).unwrap().applied());
            }
        });
        assert!(
            batched < singles,
            "batch {batched} frames, singles {singles}"
        );
        assert!(singles >= 8);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_batch_with_an_invalid_record_applies_nothing() {
        let dir = tmp();
        let store = SqliteStore::open(&dir.join("gestor.db")).unwrap();
        let batch = vec![user("ana", 1), user("", 1)];
        assert!(matches!(
            store.put_batch(&batch),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.get("ana").unwrap(), None);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn short_garbage_file_is_corrupt() {
        let dir = tmp();
        let path = dir.join("gestor.db");
        std::fs::write(&path, b"not sqlite").unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directory_path_is_an_open_error() {
        let dir = tmp();
        let err = SqliteStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_file() {
        let dir = tmp();
        let path = dir.join("gestor.db");
        let first = SqliteStore::open(&path).unwrap();
        let Err(err) = SqliteStore::open(&path) else {
            panic!("opened twice")
        };
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("another process"), "{err}");
        drop(first);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.count().unwrap(), 0);
        drop(again);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn operator_can_read_the_tables() {
        let dir = tmp();
        let path = dir.join("gestor.db");
        let store = SqliteStore::open(&path).unwrap();
        let r = UserRecord {
            ring_pos: u64::MAX,
            address: "h:1".into(),
            version: Timestamp {
                wall_ms: 1,
                logical: 2,
                node: 3,
            },
            ..user("ana", 5)
        };
        store.put(&r).unwrap();
        store.kv_put("chord", b"k", b"v").unwrap();
        store.flush().unwrap();
        drop(store);

        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let (pos, ver, online): (String, String, i64) = conn
            .query_row(
                "SELECT ring_pos, hex(version), online FROM users WHERE username = 'ana'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(pos, "ffffffffffffffff");
        assert_eq!(ver, "0000000000000001000000020000000000000003");
        assert_eq!(online, 1);
        let schema: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(schema, SCHEMA_VERSION);
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM kv WHERE namespace = 'chord'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        drop(conn);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
