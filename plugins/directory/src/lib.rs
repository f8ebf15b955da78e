//! The user directory: seed processes *Handle_client* and *Alive_signal receiver*.
//!
//! Client requests (`user.*`) may reach any gestor. That gestor asks the ring
//! plugin (`ring.lookup`, a local call) which gestor is responsible for the
//! username's hash and forwards the request there as `dir.*`; the owner
//! checks it really is responsible (`ring.responsible`), applies the request
//! to its store and answers. A client never needs to know the ring.
//!
//! Presence: clients publish `alive` signals to their owner's signal
//! endpoint; the owner keeps the time of the last one in memory (no write per
//! signal, seed §6) and a sweeper turns users offline — a versioned write —
//! once their signals stop for `presence_timeout_ms`. The decisions are made
//! by the I/O-free [`presence`] core; the writes a signal needs are queued
//! ([`writes`]) and made by a worker loop, never on the signals thread.

mod import;
pub mod limits;
pub mod machine_slots;
mod password;
pub mod presence;
pub mod rules;
pub mod writes;

use argon2::password_hash::PasswordHash;
use gestor_api::ring::KeyBody;
use gestor_api::status::{self, DirectoryStatus};
use gestor_api::user::{
    self, Alive, Auth, Authenticated, Credentials, Done, Found, LoggedIn, Registered, UserOnly,
};
use gestor_api::{dir, replica, routing, topics};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{
    declare_plugin, CallError, ErrorCode, HandlerError, Kind, Plugin, PluginContext, PluginError,
    Timestamp, UserRecord,
};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// `[plugins.config.gestor_directory]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A user whose alive signals stop for this long shows offline.
    pub presence_timeout_ms: u64,
    /// How often clients are told to send alive signals.
    pub alive_every_ms: u64,
    /// argon2id memory cost in KiB (OWASP's minimum recommendation is 19456).
    pub password_memory_kib: u32,
    /// argon2id iterations.
    pub password_iterations: u32,
    /// Deadline for a forwarded request to the responsible gestor.
    pub forward_timeout_ms: u64,
    /// Threads of the password-hashing pool (low CPU priority); 0 = one
    /// per core. As many jobs may wait; beyond that a request answers
    /// `busy` at once.
    pub hash_slots: usize,
    /// A directory shared by the gestores of one machine: each hash then
    /// also holds one of its `machine_hash_slots` lock files, so that they
    /// run that many hashes at once between them. Empty (default): off.
    pub machine_hash_slots_dir: String,
    /// Hashes at once across the gestores sharing `machine_hash_slots_dir`;
    /// 0 = one per core.
    pub machine_hash_slots: usize,
    /// How the hashing threads yield to lookups and ring maintenance:
    /// `idle` (default: only CPU time nothing else wants), `low` (nice
    /// +19: a small share even when the cores are busy) or `normal`.
    pub hash_priority: limits::HashPriority,
    /// Wrong passwords per account per minute before further attempts on it
    /// answer `rate_limited` for the rest of the minute; 0 = no limit.
    pub login_failures_per_minute: u32,
    /// Password attempts (register, login, delete) accepted per client
    /// address per minute on the gestor it talks to; then `rate_limited`
    /// until the minute ends; 0 = no limit.
    pub password_attempts_per_source_per_minute: u32,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            presence_timeout_ms: 15_000,
            alive_every_ms: 5_000,
            password_memory_kib: 19_456,
            password_iterations: 2,
            forward_timeout_ms: 5_000,
            hash_slots: 0,
            machine_hash_slots_dir: String::new(),
            machine_hash_slots: 0,
            hash_priority: limits::HashPriority::Idle,
            login_failures_per_minute: 10,
            password_attempts_per_source_per_minute: 600,
        }
    }
}

struct Directory {
    state: Arc<Shared>,
}

struct Shared {
    config: Mutex<DirectoryConfig>,
    ctx: Mutex<Option<PluginContext>>,
    /// Presence decisions (owner side, memory only).
    presence: Mutex<presence::Presence>,
    /// Presence writes asked for by alive signals, made by a worker loop.
    writes: Mutex<writes::WriteQueue>,
    /// Wakes the presence writer: a write was queued, or the plugin stops.
    writes_queued: Condvar,
    stopping: AtomicBool,
    locks: Vec<Mutex<()>>,
    /// Set at start from the configuration.
    hash_slots: std::sync::OnceLock<limits::HashPool>,
    /// The machine's shared hashing slots, when configured: opened at
    /// start, handed to the pool when it is made.
    machine_slots: Mutex<Option<Arc<machine_slots::MachineSlots>>>,
    failures: Mutex<limits::FailureLimiter>,
    sources: Mutex<limits::SourceLimiter>,
}

/// How long a password job may wait in the hashing queue before it is
/// dropped unrun (`busy`). With 1.5 s a request may wait for a
/// worker first, a client then hears `busy` before the 3 s it gives the
/// owner (`OWNER_ATTEMPT` in the client), instead of giving up and
/// sending the registration again while the first still waits.
const HASH_SLOT_WAIT: Duration = Duration::from_millis(1_500);
/// Accounts whose recent failures are remembered.
const FAILURE_ACCOUNTS: usize = 100_000;

/// Striped locks serialising read-modify-write per user on the owner.
const USER_LOCKS: usize = 64;
/// Users whose presence write may wait at once; beyond, signals' writes are
/// dropped (and asked for again by the next signal).
const PRESENCE_QUEUE: usize = 4_096;
/// Presence writes made per worker round; the rest wait for the next one.
const PRESENCE_WRITES_PER_ROUND: usize = 256;
/// The longest the presence writer waits for a queued write before its
/// loop looks for a shutdown. It is woken when a write is queued, so an
/// idle gestor does not poll for work.
const PRESENCE_WRITER_IDLE: Duration = Duration::from_secs(1);
/// The host loop's pause between the writer's waits: bounds how often a
/// stopping writer (which returns at once) is called again.
const PRESENCE_WRITER_PAUSE: Duration = Duration::from_millis(50);

/// Hex SHA-256 of a session token: what the record stores and replicates.
fn session_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn err(code: ErrorCode, message: impl Into<String>) -> HandlerError {
    HandlerError::new(code, message)
}

impl Shared {
    fn ctx(&self) -> Result<PluginContext, HandlerError> {
        self.ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| HandlerError::unavailable("directory not started"))
    }

    /// Now, from the node's clock (simulated in tests).
    fn now_ms(&self) -> Result<u64, HandlerError> {
        Ok(self.ctx()?.now_ms())
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, presence::Presence> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> DirectoryConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forward `K` to the gestor responsible for `username` (see
    /// `gestor_api::routing::forward_or_serve`), recording the lookup's
    /// hops; `here` is the owner side, run directly when that is us.
    fn route<K: Kind>(
        &self,
        username: &str,
        body: &K::Request,
        here: impl Fn(&K::Request) -> Result<K::Reply, HandlerError>,
    ) -> Result<K::Reply, HandlerError>
    where
        K::Reply: WithHops,
    {
        let ctx = self.ctx()?;
        let deadline = Duration::from_millis(self.config().forward_timeout_ms);
        let (mut rep, hops) =
            routing::forward_or_serve::<K>(&ctx, username, body, deadline, Some(&here))?;
        rep.set_hops(hops);
        Ok(rep)
    }

    /// Owner side: refuse unless this node is responsible for `username`.
    fn owner_check(&self, ctx: &PluginContext, username: &str) -> Result<u64, HandlerError> {
        let key = ring_position(username.as_bytes());
        if !routing::is_responsible(ctx, username)? {
            return Err(HandlerError::unavailable(format!(
                "{} is not responsible for {username}",
                ctx.request_url()
            )));
        }
        // A gestor that just took over a range (join, or a failed
        // predecessor) first merges it with its successor's copies.
        match ctx.call_local::<replica::Ready>(&KeyBody { key }) {
            Ok(true) => {}
            Ok(false) => {
                return Err(HandlerError::unavailable(format!(
                    "{} is still receiving the records for {username}",
                    ctx.request_url()
                )))
            }
            // Without the replica plugin there is nothing to wait for.
            Err(CallError::Remote(e)) if e.code == ErrorCode::UnknownKind => {}
            Err(e) => return Err(e.into()),
        }
        Ok(key)
    }

    fn live_record(&self, ctx: &PluginContext, username: &str) -> Result<UserRecord, HandlerError> {
        match ctx.store().get(username)? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(err(ErrorCode::NotFound, format!("unknown user {username}"))),
        }
    }

    fn hash_password(&self, password: &str) -> Result<String, HandlerError> {
        let config = self.config();
        let (memory, iterations) = (config.password_memory_kib, config.password_iterations);
        let password = password.to_string();
        self.slots().run(HASH_SLOT_WAIT, move || {
            password::hash(password.as_bytes(), memory, iterations)
                .map_err(|e| HandlerError::internal(format!("argon2: {e}")))
        })?
    }

    /// Count a password attempt against the client's address (when known).
    fn count_source(&self, meta: &gestor_sdk::RequestMeta) -> Result<(), HandlerError> {
        match &meta.source {
            Some(source) => self
                .sources
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .attempt(source, self.now_ms()?),
            None => Ok(()),
        }
    }

    fn slots(&self) -> &limits::HashPool {
        self.hash_slots.get_or_init(|| {
            let config = self.config();
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let threads = match config.hash_slots {
                0 => cores,
                n => n,
            };
            let machine = self
                .machine_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            limits::HashPool::sharing(threads, threads, config.hash_priority, machine)
        })
    }

    /// Check `password` against `record`: refused early (`rate_limited`) for
    /// an account with too many recent failures, run on the hashing pool
    /// (`busy` when it is saturated), and counted.
    fn check_password(&self, record: &UserRecord, password: &str) -> Result<(), HandlerError> {
        let account = &record.username;
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(account, self.now_ms()?)?;
        PasswordHash::new(&record.password_hash)
            .map_err(|e| HandlerError::internal(format!("stored hash unreadable: {e}")))?;
        // Not a wrong password: a hash no member should have stored.
        routing::check_hash_cost(&record.password_hash)
            .map_err(|why| HandlerError::internal(format!("stored hash refused: {why}")))?;
        let (stored, password) = (record.password_hash.clone(), password.to_string());
        let verified = self.slots().run(HASH_SLOT_WAIT, move || {
            matches!(password::verify(password.as_bytes(), &stored), Ok(true))
        })?;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match verified {
            true => {
                failures.succeeded(account);
                Ok(())
            }
            false => {
                failures.failed(account, self.now_ms()?);
                Err(err(ErrorCode::Unauthorized, "wrong password"))
            }
        }
    }

    /// The user's record, if `token` is the user's current session.
    fn check_token(
        &self,
        ctx: &PluginContext,
        username: &str,
        token: &str,
    ) -> Result<UserRecord, HandlerError> {
        let record = self.live_record(ctx, username)?;
        let presented = session_hash(token);
        if token.is_empty()
            || record.session_hash.is_empty()
            || !rules::constant_time_eq(record.session_hash.as_bytes(), presented.as_bytes())
        {
            return Err(err(ErrorCode::Unauthorized, "invalid session token"));
        }
        Ok(record)
    }

    /// Write a new version of `record` (which holds the version it replaces),
    /// then have it copied; returns once the replication rule is met
    /// (docs/ARCHITECTURE.md, "Replication rule").
    fn write(
        &self,
        ctx: &PluginContext,
        mut record: UserRecord,
    ) -> Result<UserRecord, HandlerError> {
        // The new stamp must exceed the one it replaces even if that came
        // from a gestor whose clock runs ahead of ours.
        if record.version != Timestamp::ZERO {
            ctx.clock()
                .observe(record.version)
                .map_err(|e| err(ErrorCode::ClockSkew, e.to_string()))?;
        }
        record.version = ctx.clock().now();
        self.store_and_copy(ctx, record)
    }

    /// Write a presence-only change (online or offline from alive signals).
    /// Its stamp is the replaced version's own instant plus one logical
    /// tick: newer than what it replaces, but older than any change made
    /// elsewhere meanwhile. So when both sides of a partition wrote, an
    /// address or session change beats a presence flip. Losing one is
    /// harmless: presence is recomputed from alive signals and the timeout.
    fn write_presence(
        &self,
        ctx: &PluginContext,
        mut record: UserRecord,
    ) -> Result<UserRecord, HandlerError> {
        record.version = Timestamp {
            wall_ms: record.version.wall_ms,
            logical: record.version.logical.saturating_add(1),
            node: ctx.node_id(),
        };
        self.store_and_copy(ctx, record)
    }

    fn store_and_copy(
        &self,
        ctx: &PluginContext,
        record: UserRecord,
    ) -> Result<UserRecord, HandlerError> {
        let store = ctx.store();
        match store.put(&record)? {
            gestor_sdk::PutOutcome::Applied => {}
            gestor_sdk::PutOutcome::Stale { current } => {
                return Err(err(
                    ErrorCode::Conflict,
                    format!("a newer version ({current}) is already stored"),
                ))
            }
        }
        self.replicate(ctx, &record)?;
        Ok(record)
    }

    /// Make the stored `record` durable here and have it copied per the
    /// replication rule. The replica plugin flushes this store while the
    /// copies travel (`replica.replicate`); without it, flush here.
    fn replicate(&self, ctx: &PluginContext, record: &UserRecord) -> Result<(), HandlerError> {
        match ctx.call_local::<replica::Replicate>(record) {
            Ok(_) => Ok(()),
            Err(CallError::Remote(e)) if e.code == ErrorCode::UnknownKind => {
                ctx.store().flush()?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Serialise read-modify-write of one user on this owner.
    fn lock_user(&self, username: &str) -> std::sync::MutexGuard<'_, ()> {
        let slot = (ring_position(username.as_bytes()) % USER_LOCKS as u64) as usize;
        self.locks[slot].lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- owner-side handlers -------------------------------------------------

    fn register(&self, req: Credentials) -> Result<Registered, HandlerError> {
        let ctx = self.ctx()?;
        let ring_pos = self.owner_check(&ctx, &req.username)?;
        rules::validate_password(&req.password)?;
        // Checked before the name is looked at: a retry with a bad address
        // is refused like a first attempt.
        let address = match &req.address {
            Some(a) => rules::validate_address(a)?.to_string(),
            None => String::new(),
        };
        let _guard = self.lock_user(&req.username);
        let mut replaces = Timestamp::ZERO;
        if let Some(existing) = ctx.store().get(&req.username)? {
            if !existing.deleted {
                return self.register_again(&ctx, &existing, &req.password, &address);
            }
            // Re-registering a deleted name must outrank its tombstone.
            replaces = existing.version;
        }
        let record = UserRecord {
            username: req.username.clone(),
            ring_pos,
            address,
            password_hash: self.hash_password(&req.password)?,
            online: false,
            last_seen_ms: 0,
            version: replaces,
            deleted: false,
            session_hash: String::new(),
        };
        self.write(&ctx, record)?;
        tracing::info!(username = %req.username, "registered");
        Ok(Registered {
            username: req.username,
            gestor: ctx.request_url(),
            hops: 0,
        })
    }

    /// A register for a name that exists. The same password and address
    /// again is a retry of a register whose answer was lost (or whose
    /// copies were still being made): make sure it is copied, and answer as
    /// the first time. Anything else is not a retry, and is refused rather
    /// than answered ok with the account left as it was.
    fn register_again(
        &self,
        ctx: &PluginContext,
        existing: &UserRecord,
        password: &str,
        address: &str,
    ) -> Result<Registered, HandlerError> {
        let name = &existing.username;
        match self.check_password(existing, password) {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::Unauthorized => {
                return Err(err(
                    ErrorCode::Conflict,
                    format!("username {name} is taken"),
                ))
            }
            // Locked, saturated or broken: not a verdict on the name.
            Err(e) => return Err(e),
        }
        if existing.address != address {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "{name} is already registered, with another address; \
                     user.login or user.set_address changes it"
                ),
            ));
        }
        self.replicate(ctx, existing)?;
        Ok(Registered {
            username: name.clone(),
            gestor: ctx.request_url(),
            hops: 0,
        })
    }

    fn login(&self, req: Credentials) -> Result<LoggedIn, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        let address = rules::validate_address(req.address.as_deref().unwrap_or(""))?.to_string();
        let _guard = self.lock_user(&req.username);
        let mut record = self.live_record(&ctx, &req.username)?;
        self.check_password(&record, &req.password)?;
        let mut token_bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut token_bytes);
        let token: String = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = ctx.now_ms();
        // Only the hash travels and is stored; a new login replaces the session.
        record.session_hash = session_hash(&token);
        record.address = address;
        record.online = true;
        record.last_seen_ms = now;
        self.write(&ctx, record)?;
        self.presence().logged_in(&req.username, now);
        let config = self.config();
        Ok(LoggedIn {
            username: req.username,
            token,
            gestor: ctx.request_url(),
            signal: ctx.signal_url(),
            alive_every_ms: config.alive_every_ms,
            presence_timeout_ms: config.presence_timeout_ms,
            hops: 0,
        })
    }

    fn lookup(&self, req: UserOnly) -> Result<Found, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        let record = self.live_record(&ctx, &req.username)?;
        let (online, last_seen_ms) = self.presence().lookup(
            &record.username,
            record.online,
            record.last_seen_ms,
            ctx.now_ms(),
        );
        Ok(Found {
            user: record.username,
            address: record.address,
            online,
            last_seen_ms,
            last_update: record.version,
            gestor: ctx.request_url(),
            signal: ctx.signal_url(),
            hops: 0,
        })
    }

    fn set_address(&self, req: Authenticated) -> Result<Done, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        self.check_token(&ctx, &req.username, &req.token)?;
        let address = rules::validate_address(req.address.as_deref().unwrap_or(""))?.to_string();
        let _guard = self.lock_user(&req.username);
        let mut record = self.live_record(&ctx, &req.username)?;
        record.address = address;
        record.last_seen_ms = ctx.now_ms();
        self.write(&ctx, record)?;
        Ok(Done { ok: true, hops: 0 })
    }

    fn logout(&self, req: Authenticated) -> Result<Done, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        let _guard = self.lock_user(&req.username);
        let existing = self.live_record(&ctx, &req.username)?;
        if existing.session_hash.is_empty() && !existing.online {
            // Already logged out: a repeated logout (a retry whose first
            // answer was lost) changes nothing; make sure it is copied.
            self.replicate(&ctx, &existing)?;
            return Ok(Done { ok: true, hops: 0 });
        }
        self.check_token(&ctx, &req.username, &req.token)?;
        let mut record = existing;
        record.online = false;
        record.last_seen_ms = ctx.now_ms();
        record.session_hash.clear();
        self.write(&ctx, record)?;
        self.presence().forget(&req.username);
        Ok(Done { ok: true, hops: 0 })
    }

    /// Remove the account: a tombstone, copied like any write, so an older
    /// copy can never bring the user back.
    fn delete(&self, req: Credentials) -> Result<Done, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        let _guard = self.lock_user(&req.username);
        let mut record = self.live_record(&ctx, &req.username)?;
        self.check_password(&record, &req.password)?;
        record.deleted = true;
        record.online = false;
        record.address.clear();
        record.password_hash.clear();
        record.session_hash.clear();
        self.write(&ctx, record)?;
        self.presence().forget(&req.username);
        tracing::info!(username = %req.username, "deleted");
        Ok(Done { ok: true, hops: 0 })
    }

    /// On the signals thread: validate, ask the core, queue a write if one
    /// is needed. Nothing here stores, flushes or replicates.
    fn on_alive(&self, body: &gestor_sdk::Value) {
        let Ok(alive) = body.deserialized::<Alive>() else {
            tracing::debug!("malformed alive signal dropped");
            return;
        };
        let Ok(ctx) = self.ctx() else { return };
        let record = match self.check_token(&ctx, &alive.username, &alive.token) {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(username = %alive.username, "alive signal with invalid token dropped");
                return;
            }
        };
        let decision = self
            .presence()
            .alive(&alive.username, record.online, ctx.now_ms());
        let presence::OnAlive::MarkOnline { last_seen_ms } = decision else {
            return;
        };
        let write = writes::OnlineWrite {
            session_hash: record.session_hash,
            last_seen_ms,
        };
        let pushed = self
            .writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&alive.username, write);
        if pushed == writes::Pushed::Queued {
            self.writes_queued.notify_one();
        }
        if pushed == writes::Pushed::Dropped {
            self.presence().write_lost(&alive.username);
            tracing::debug!(username = %alive.username, "presence write queue full: write dropped");
        }
    }

    /// The presence writer (a loop, not the signals thread): make the
    /// queued "back online" writes, a round (at most 256) at a time, for as
    /// long as writes keep coming; return after [`PRESENCE_WRITER_IDLE`]
    /// with none, or at once when the plugin stops.
    fn write_presence_queue(&self) {
        loop {
            let batch = {
                let queue = self.writes.lock().unwrap_or_else(|p| p.into_inner());
                let (mut queue, _) = self
                    .writes_queued
                    .wait_timeout_while(queue, PRESENCE_WRITER_IDLE, |q| {
                        q.is_empty() && !self.stopping.load(Ordering::SeqCst)
                    })
                    .unwrap_or_else(|p| p.into_inner());
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                queue.take(PRESENCE_WRITES_PER_ROUND)
            };
            if batch.is_empty() {
                return;
            }
            self.write_presence_round(batch);
        }
    }

    fn write_presence_round(&self, batch: Vec<(String, writes::OnlineWrite)>) {
        let Ok(ctx) = self.ctx() else { return };
        for (username, job) in batch {
            let _guard = self.lock_user(&username);
            let Ok(mut record) = self.live_record(&ctx, &username) else {
                continue;
            };
            if !presence::apply_online(&mut record, &job) {
                continue;
            }
            if let Err(e) = self.write_presence(&ctx, record) {
                self.presence().write_lost(&username);
                tracing::debug!(%username, "cannot mark online: {e}");
            }
        }
    }

    /// Mark offline every user whose signals stopped (owner side).
    fn sweep(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let silent = self.presence().sweep(ctx.now_ms());
        for gone in silent {
            let username = &gone.username;
            let _guard = self.lock_user(username);
            // A signal between the sweep and this write brought the user back.
            if self.presence().alive_since(username, gone.last_alive_ms) {
                continue;
            }
            let Ok(mut record) = self.live_record(&ctx, username) else {
                continue;
            };
            if !presence::apply_offline(&mut record, &gone) {
                continue;
            }
            match self.write_presence(&ctx, record) {
                Ok(_) => tracing::debug!(%username, "offline: alive signals stopped"),
                Err(e) => tracing::debug!(%username, "cannot mark offline: {e}"),
            }
        }
    }
}

/// Replies that carry the routing hop count, filled in by the entry gestor.
pub trait WithHops {
    fn set_hops(&mut self, hops: u32);
}
macro_rules! with_hops {
    ($($t:ty),*) => { $(impl WithHops for $t { fn set_hops(&mut self, hops: u32) { self.hops = hops; } })* };
}
with_hops!(Registered, LoggedIn, Found, Done);

impl Shared {
    /// Client-facing kinds: any gestor, forwarded to the owner.
    fn serve_client_kinds(self: &Arc<Self>, ctx: &PluginContext) -> Result<(), PluginError> {
        let s = self.clone();
        ctx.serve::<user::Register>(move |meta, r| {
            s.count_source(meta)?;
            s.route::<dir::Register>(&r.username, &r, |r| s.register(r.clone()))
        })?;
        let s = self.clone();
        ctx.serve::<user::Login>(move |meta, r| {
            s.count_source(meta)?;
            s.route::<dir::Login>(&r.username, &r, |r| s.login(r.clone()))
        })?;
        let s = self.clone();
        ctx.serve::<user::Lookup>(move |_, r| {
            s.route::<dir::Lookup>(&r.username, &r, |r| s.lookup(r.clone()))
        })?;
        let s = self.clone();
        ctx.serve::<user::SetAddress>(move |_, r| {
            s.route::<dir::SetAddress>(&r.username, &r, |r| s.set_address(r.clone()))
        })?;
        let s = self.clone();
        ctx.serve::<user::Logout>(move |_, r| {
            s.route::<dir::Logout>(&r.username, &r, |r| s.logout(r.clone()))
        })?;
        let s = self.clone();
        ctx.serve::<user::Delete>(move |meta, r| {
            s.count_source(meta)?;
            s.route::<dir::Delete>(&r.username, &r, |r| s.delete(r.clone()))
        })?;
        Ok(())
    }

    /// Owner-side kinds, and the local ones other plugins ask.
    fn serve_owner_kinds(self: &Arc<Self>, ctx: &PluginContext) -> Result<(), PluginError> {
        let s = self.clone();
        ctx.serve::<dir::Register>(move |_, r| s.register(r))?;
        let s = self.clone();
        ctx.serve::<dir::Login>(move |_, r| s.login(r))?;
        let s = self.clone();
        ctx.serve::<dir::Lookup>(move |_, r| s.lookup(r))?;
        let s = self.clone();
        ctx.serve::<dir::SetAddress>(move |_, r| s.set_address(r))?;
        let s = self.clone();
        ctx.serve::<dir::Logout>(move |_, r| s.logout(r))?;
        let s = self.clone();
        ctx.serve::<dir::Delete>(move |_, r| s.delete(r))?;
        let s = self.clone();
        ctx.serve::<dir::Import>(move |_, batch| s.import(batch))?;
        let s = self.clone();
        ctx.serve::<dir::ImportOwned>(move |_, batch| s.import_owned(batch))?;
        // For other plugins on the owner (e.g. a mailbox): is this token the
        // user's current session? Answers a bool; never forwards.
        let s = self.clone();
        ctx.serve::<dir::Authenticate>(move |_, r: Auth| {
            let ctx = s.ctx()?;
            Ok(s.check_token(&ctx, &r.username, &r.token).is_ok())
        })?;
        Ok(())
    }

    /// Alive signals, the presence writer and the sweeper.
    fn start_presence(
        self: &Arc<Self>,
        ctx: &PluginContext,
        config: &DirectoryConfig,
    ) -> Result<(), PluginError> {
        let sweep_every = Duration::from_millis((config.presence_timeout_ms / 4).clamp(50, 5_000));
        let s = self.clone();
        ctx.on_signal(topics::ALIVE, move |_topic, body| s.on_alive(body))?;
        let s = self.clone();
        // The body waits for work itself; between its waits the host loop
        // looks for a shutdown.
        ctx.every("presence-writer", PRESENCE_WRITER_PAUSE, move || {
            s.write_presence_queue()
        });
        let s = self.clone();
        ctx.every("presence-sweep", sweep_every, move || s.sweep());
        Ok(())
    }

    fn serve_status(self: &Arc<Self>, ctx: &PluginContext) -> Result<(), PluginError> {
        let s = self.clone();
        let store = ctx.store();
        ctx.serve::<status::Directory>(move |_, _| {
            let alive_users = s.presence().len() as u64;
            let slots = s.slots();
            let (running, waiting) = slots.load();
            let (capacity, queue) = slots.capacity();
            let machine = slots.machine();
            let (taken, missed, without) = machine.map_or((0, 0, 0), |m| m.counts());
            Ok(DirectoryStatus {
                alive_users,
                records: store.count()?,
                hash_running: running as u64,
                hash_waiting: waiting as u64,
                hash_slots: capacity as u64,
                hash_queue: queue as u64,
                hash_busy: slots.turned_away(),
                machine_slots: machine.map_or(0, |m| m.count() as u64),
                machine_slots_taken: taken,
                machine_slots_missed: missed,
                machine_slots_without: without,
            })
        })?;
        Ok(())
    }

    fn configure(&self, ctx: &PluginContext, config: DirectoryConfig) {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()) =
            limits::FailureLimiter::new(config.login_failures_per_minute, 60_000, FAILURE_ACCOUNTS);
        *self.sources.lock().unwrap_or_else(|p| p.into_inner()) = limits::SourceLimiter::new(
            config.password_attempts_per_source_per_minute,
            FAILURE_ACCOUNTS,
        );
        *self.presence() = presence::Presence::new(config.presence_timeout_ms);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        *self.ctx.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
    }
}

/// Our own hashes must pass `check_hash_cost`, or no gestor would verify
/// them at login.
fn check_hash_settings(ctx: &PluginContext, config: &DirectoryConfig) -> Result<(), PluginError> {
    let bad = |key: &str, value: u32, range: String| PluginError::Start {
        plugin: ctx.plugin_name().to_string(),
        reason: format!(
            "invalid configuration plugins.config.{}.{key}: {value} is not {range}",
            ctx.plugin_name()
        ),
    };
    if !(8..=routing::HASH_MEMORY_KIB_MAX).contains(&config.password_memory_kib) {
        return Err(bad(
            "password_memory_kib",
            config.password_memory_kib,
            format!("8 to {} (KiB)", routing::HASH_MEMORY_KIB_MAX),
        ));
    }
    let most = routing::HASH_WORK_MAX / u64::from(config.password_memory_kib);
    if !(1..=most).contains(&u64::from(config.password_iterations)) {
        return Err(bad(
            "password_iterations",
            config.password_iterations,
            format!(
                "1 to {most} (memory × passes at most {})",
                routing::HASH_WORK_MAX
            ),
        ));
    }
    Ok(())
}

/// The shared hashing slots `machine_hash_slots_dir` names, checked usable
/// now: a directory that cannot hold them, or is not private, stops the
/// start naming the key.
fn open_machine_slots(
    ctx: &PluginContext,
    config: &DirectoryConfig,
) -> Result<Option<Arc<machine_slots::MachineSlots>>, PluginError> {
    let refuse = |key: &str, why: String| PluginError::Start {
        plugin: ctx.plugin_name().to_string(),
        reason: format!(
            "invalid configuration plugins.config.{}.{key}: {why}",
            ctx.plugin_name()
        ),
    };
    if config.machine_hash_slots_dir.is_empty() {
        if config.machine_hash_slots != 0 {
            return Err(refuse(
                "machine_hash_slots",
                "set without machine_hash_slots_dir".into(),
            ));
        }
        return Ok(None);
    }
    let count = match config.machine_hash_slots {
        // This gestor's CPUs (its quota and affinity count), capped.
        0 => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(machine_slots::MAX_MACHINE_SLOTS),
        n if n > machine_slots::MAX_MACHINE_SLOTS => {
            return Err(refuse(
                "machine_hash_slots",
                format!("{n} is not 0 to {}", machine_slots::MAX_MACHINE_SLOTS),
            ))
        }
        n => n,
    };
    let dir = std::path::PathBuf::from(&config.machine_hash_slots_dir);
    machine_slots::MachineSlots::new(dir, count)
        .map(|slots| Some(Arc::new(slots)))
        .map_err(|why| {
            refuse(
                "machine_hash_slots_dir",
                format!("{:?}: {why}", config.machine_hash_slots_dir),
            )
        })
}

impl Plugin for Directory {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: DirectoryConfig = ctx.config()?;
        check_hash_settings(&ctx, &config)?;
        *self
            .state
            .machine_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = open_machine_slots(&ctx, &config)?;
        self.state.configure(&ctx, config.clone());
        self.state.serve_client_kinds(&ctx)?;
        self.state.serve_owner_kinds(&ctx)?;
        self.state.start_presence(&ctx, &config)?;
        self.state.serve_status(&ctx)
    }

    fn stop(&self) {
        self.state
            .ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Release the presence writer's wait: it returns to its host loop,
        // which ends when the host stops its loops.
        self.state.stopping.store(true, Ordering::SeqCst);
        let _queue = self.state.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.state.writes_queued.notify_all();
    }
}

fn make() -> Directory {
    Directory {
        state: Arc::new(Shared {
            config: Mutex::new(DirectoryConfig::default()),
            ctx: Mutex::new(None),
            presence: Mutex::new(presence::Presence::new(
                DirectoryConfig::default().presence_timeout_ms,
            )),
            writes: Mutex::new(writes::WriteQueue::new(PRESENCE_QUEUE)),
            writes_queued: Condvar::new(),
            stopping: AtomicBool::new(false),
            locks: (0..USER_LOCKS).map(|_| Mutex::new(())).collect(),
            hash_slots: std::sync::OnceLock::new(),
            machine_slots: Mutex::new(None),
            failures: Mutex::new(limits::FailureLimiter::new(0, 60_000, FAILURE_ACCOUNTS)),
            sources: Mutex::new(limits::SourceLimiter::new(0, FAILURE_ACCOUNTS)),
        }),
    }
}

declare_plugin!("gestor_directory", make);
