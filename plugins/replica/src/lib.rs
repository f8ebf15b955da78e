//! Copies of every record on the owner's successors: seed processes
//! *Receive_duplicate* and *Find_if_duplicates_are_alive*.
//!
//! * **Write path** (`replica.replicate`, a local call from the directory on
//!   the owner): the record goes to the owner's first `copies` successors.
//!   The write is acknowledged once the owner and its first two successors
//!   hold it durably (flushed); the others get it in the background. Any two
//!   gestores can then fail: if the owner is among them, the first surviving
//!   successor — which becomes the owner — already has the record.
//! * **Anti-entropy** (loop): the owner compares a digest of its range
//!   `(predecessor, me]` with each copy holder's; where they differ they
//!   exchange versions and each side gets what the other has newer. This
//!   restores the copy count after failures, hands a joining gestor its range
//!   (it pulls from its successor), and lets a restarted gestor catch up.
//! * **Readiness** (`replica.ready`): a gestor serves a key only once it has
//!   merged that part of its range with its first successor, so a gestor that
//!   just joined or took over never answers from an incomplete store.
//! * **Replica watch**: copy holders publish heartbeats (topic `replica.hb`)
//!   to the owners they hold copies for; an owner that stops hearing from a
//!   holder reports it to the ring (`ring.suspect`) and the next round copies
//!   to the next successor instead.
//! * **Surplus copies** (records this gestor no longer has to hold) are
//!   purged only after the owner and every designated holder report the same
//!   or a newer version.

use gestor_api::replica::{
    self, CopySource, Heartbeat, Held, Names, PutBody, PutReply, SyncBody, SyncReply,
};
use gestor_api::ring::{self, KeyBody, Neighbourhood as Neighbours, PeerRef};
use gestor_api::status::{self, ReplicaStats as Stats, ReplicaStatus};
use gestor_api::topics;
use gestor_sdk::store::in_ring_interval;
use gestor_sdk::{
    declare_plugin, CallError, Empty, ErrorCode, HandlerError, Plugin, PluginContext, PluginError,
    Timestamp, UserRecord,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[plugins.config.gestor_replica]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Copies besides the owner's (capped by the ring size).
    pub copies: usize,
    /// Copy holders that must confirm before a write is acknowledged; 2
    /// means any two gestores may fail right after the acknowledgement.
    pub ack_copies: usize,
    pub sync_every_ms: u64,
    pub heartbeat_every_ms: u64,
    /// A copy holder silent this long is reported to the ring as dead.
    pub heartbeat_timeout_ms: u64,
    pub rpc_timeout_ms: u64,
    /// Look for surplus copies every this many sync rounds.
    pub gc_every_rounds: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            copies: 3,
            ack_copies: 2,
            sync_every_ms: 2_000,
            heartbeat_every_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            rpc_timeout_ms: 2_000,
            gc_every_rounds: 5,
        }
    }
}

struct Shared {
    ctx: PluginContext,
    config: ReplicaConfig,
    epoch: Instant,
    /// Range `(pred, me]` last merged with the first successor.
    ready: Mutex<Option<(u64, u64)>>,
    /// Heartbeats from our copy holders: addr → ms since epoch.
    heard: Mutex<HashMap<String, u64>>,
    /// When each current holder was first expected to heartbeat.
    expected_since: Mutex<HashMap<String, u64>>,
    /// Owners we hold copies for: addr → (signal URL, last contact ms).
    owners: Mutex<HashMap<String, (String, u64)>>,
    stats: Mutex<Stats>,
}

fn digest(records: &[UserRecord]) -> String {
    let mut sorted: Vec<(&str, Timestamp)> = records
        .iter()
        .map(|r| (r.username.as_str(), r.version))
        .collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (u, v) in sorted {
        h.update(u.as_bytes());
        h.update([0]);
        h.update(v.wall_ms.to_be_bytes());
        h.update(v.logical.to_be_bytes());
        h.update(v.node.to_be_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.rpc_timeout_ms)
    }

    fn from(&self) -> CopySource {
        CopySource {
            addr: self.ctx.request_url(),
            signal: self.ctx.signal_url(),
        }
    }

    fn neighbours(&self) -> Option<Neighbours> {
        self.ctx.call_local::<ring::Neighbours>(&Empty).ok()
    }

    /// The gestores that should hold copies of our range, in order.
    fn holders(&self, nb: &Neighbours) -> Vec<PeerRef> {
        let mut out: Vec<PeerRef> = Vec::new();
        for p in &nb.successors {
            if p.id != nb.me.id && !out.iter().any(|o| o.id == p.id) {
                out.push(p.clone());
            }
            if out.len() == self.config.copies {
                break;
            }
        }
        out
    }

    /// Apply records received from elsewhere, last writer wins, durably.
    fn apply(&self, records: Vec<UserRecord>) -> Result<PutReply, HandlerError> {
        let store = self.ctx.store();
        let clock = self.ctx.clock();
        let (mut applied, mut stale) = (0, 0);
        let mut refused = None;
        let mut invalid = None;
        for r in records {
            // Defence in depth: even an admitted gestor cannot plant a
            // record no client request could have produced.
            if let Err(why) = gestor_api::routing::validate_record(&r) {
                tracing::warn!(username = %r.username, "refusing a copied record: {why}");
                invalid = Some(why);
                continue;
            }
            if let Err(e) = clock.observe(r.version) {
                refused = Some(e);
                continue;
            }
            if store.put(&r)?.applied() {
                applied += 1;
            } else {
                stale += 1;
            }
        }
        store.flush()?;
        if let Some(e) = refused {
            return Err(HandlerError::new(ErrorCode::ClockSkew, e.to_string()));
        }
        if let Some(why) = invalid {
            return Err(HandlerError::bad_request(format!("invalid record: {why}")));
        }
        Ok(PutReply { applied, stale })
    }

    fn send_copy(&self, to: &PeerRef, records: &[UserRecord]) -> Result<(), CallError> {
        for chunk in records.chunks(256) {
            let body = PutBody {
                from: self.from(),
                records: chunk.to_vec(),
            };
            self.ctx
                .call::<replica::Put>(&to.addr, &body, self.timeout())?;
        }
        Ok(())
    }

    /// Copy one freshly written record; see the module docs for the rule.
    fn replicate(self: &Arc<Self>, record: UserRecord) -> Result<u32, HandlerError> {
        self.replicate_many(vec![record])
    }

    /// Copy freshly written records (one write, or an import batch): the
    /// same rule as for one record, with one `replica.put` per holder for
    /// the whole batch (chunked by `send_copy`).
    fn replicate_many(self: &Arc<Self>, records: Vec<UserRecord>) -> Result<u32, HandlerError> {
        if records.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.timeout() * 2;
        loop {
            let Some(nb) = self.neighbours() else {
                return Err(HandlerError::unavailable("ring not joined"));
            };
            let holders = self.holders(&nb);
            let required = self.config.ack_copies.min(holders.len());
            let (must, rest) = holders.split_at(required);
            let results: Vec<(PeerRef, Result<(), CallError>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = must
                    .iter()
                    .map(|h| {
                        let recs = records.as_slice();
                        scope.spawn(move || (h.clone(), self.send_copy(h, recs)))
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
            for h in rest.iter().cloned() {
                let me = self.clone();
                let recs = records.clone();
                std::thread::spawn(move || {
                    if let Err(e) = me.send_copy(&h, &recs) {
                        tracing::debug!(holder = %h.addr, "background copy failed (anti-entropy will retry): {e}");
                    }
                });
            }
            let failed: Vec<&PeerRef> = results
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(p, _)| p)
                .collect();
            if failed.is_empty() && results.len() == required {
                return Ok(required as u32 + 1);
            }
            for p in &failed {
                tracing::info!(holder = %p.addr, "copy holder unreachable; routing around it");
                let _ = self.ctx.call_local::<ring::Suspect>(&KeyBody { key: p.id });
            }
            if Instant::now() >= deadline {
                return Err(HandlerError::unavailable(format!(
                    "write not acknowledged: {} of {required} required copy holders failed",
                    failed.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn serve_sync(&self, body: SyncBody) -> Result<SyncReply, HandlerError> {
        self.remember_owner(&body.from);
        let local = self.ctx.store().scan_ring(body.start, body.end)?;
        if digest(&local) == body.digest {
            return Ok(SyncReply {
                in_sync: true,
                versions: Vec::new(),
            });
        }
        Ok(SyncReply {
            in_sync: false,
            versions: local.into_iter().map(|r| (r.username, r.version)).collect(),
        })
    }

    fn remember_owner(&self, from: &CopySource) {
        if from.addr != self.ctx.request_url() {
            let now = self.now();
            lock(&self.owners).insert(from.addr.clone(), (from.signal.clone(), now));
        }
    }

    /// Merge our range with `holder` both ways. True when they now agree.
    fn sync_with(&self, holder: &PeerRef, start: u64, end: u64) -> Result<(), CallError> {
        let store = self.ctx.store();
        let local = store
            .scan_ring(start, end)
            .map_err(|e| CallError::MalformedReply(e.to_string()))?;
        let body = SyncBody {
            from: self.from(),
            start,
            end,
            digest: digest(&local),
        };
        let reply: SyncReply =
            self.ctx
                .call::<replica::Sync>(&holder.addr, &body, self.timeout())?;
        if reply.in_sync {
            return Ok(());
        }
        let theirs: HashMap<String, Timestamp> = reply.versions.into_iter().collect();
        let ours: HashMap<&str, Timestamp> = local
            .iter()
            .map(|r| (r.username.as_str(), r.version))
            .collect();
        let push: Vec<UserRecord> = local
            .iter()
            .filter(|r| theirs.get(&r.username).is_none_or(|v| *v < r.version))
            .cloned()
            .collect();
        let pull: Vec<String> = theirs
            .iter()
            .filter(|(u, v)| ours.get(u.as_str()).is_none_or(|o| o < *v))
            .map(|(u, _)| u.clone())
            .collect();
        if !push.is_empty() {
            tracing::debug!(holder = %holder.addr, records = push.len(), "anti-entropy: pushing");
            self.send_copy(holder, &push)?;
        }
        if !pull.is_empty() {
            tracing::debug!(holder = %holder.addr, records = pull.len(), "anti-entropy: pulling");
            for chunk in pull.chunks(256) {
                let got: Vec<UserRecord> = self.ctx.call::<replica::Get>(
                    &holder.addr,
                    &Names {
                        usernames: chunk.to_vec(),
                    },
                    self.timeout(),
                )?;
                self.apply(got).map_err(CallError::Remote)?;
            }
        }
        Ok(())
    }

    fn round(&self) {
        let Some(nb) = self.neighbours() else { return };
        if nb.successors.is_empty() {
            return;
        }
        let holders = self.holders(&nb);
        let now = self.now();
        let Some(pred) = nb.predecessor.clone() else {
            if holders.is_empty() {
                // Alone in the ring: everything is ours and complete.
                *lock(&self.ready) = Some((nb.me.id, nb.me.id));
            }
            return;
        };
        let (start, end) = (pred.id, nb.me.id);
        let mut confirmed = Vec::new();
        for (i, h) in holders.iter().enumerate() {
            match self.sync_with(h, start, end) {
                Ok(()) => {
                    confirmed.push(h.addr.clone());
                    if i == 0 {
                        let mut ready = lock(&self.ready);
                        if *ready != Some((start, end)) {
                            tracing::info!(start = %format!("{start:016x}"), end = %format!("{end:016x}"), "range merged with successor; serving it");
                        }
                        *ready = Some((start, end));
                    }
                }
                Err(e) => tracing::debug!(holder = %h.addr, "anti-entropy round failed: {e}"),
            }
        }
        if holders.is_empty() {
            *lock(&self.ready) = Some((start, end));
        }
        self.watch(&holders, now);

        let store = self.ctx.store();
        let primary: u64 = store
            .scan_ring(start, end)
            .map(|v| v.iter().filter(|r| !r.deleted).count() as u64)
            .unwrap_or(0);
        let mut stats = lock(&self.stats);
        stats.rounds += 1;
        stats.primary_records = primary;
        stats.wanted_holders = holders.len() as u64 + 1;
        stats.under_replicated = if confirmed.len() < holders.len() {
            primary
        } else {
            0
        };
        stats.confirmed_holders = confirmed;
        stats.last_round_ms = now;
        let gc_due = self.config.gc_every_rounds > 0
            && stats.rounds.is_multiple_of(self.config.gc_every_rounds);
        drop(stats);
        if gc_due {
            self.collect_surplus(&nb, start, end);
        }
    }

    /// Replica watch: a holder that stopped heartbeating is reported dead.
    fn watch(&self, holders: &[PeerRef], now: u64) {
        let heard = lock(&self.heard).clone();
        let mut expected = lock(&self.expected_since);
        expected.retain(|addr, _| holders.iter().any(|h| &h.addr == addr));
        for h in holders {
            let since = *expected.entry(h.addr.clone()).or_insert(now);
            let last = heard.get(&h.addr).copied().unwrap_or(since).max(since);
            if now.saturating_sub(last) > self.config.heartbeat_timeout_ms {
                tracing::warn!(holder = %h.addr, "copy holder silent; reporting it dead");
                let _ = self.ctx.call_local::<ring::Suspect>(&KeyBody { key: h.id });
                expected.insert(h.addr.clone(), now);
            }
        }
    }

    fn heartbeat(&self) {
        let now = self.now();
        let horizon = self
            .config
            .sync_every_ms
            .saturating_mul(5)
            .max(self.config.heartbeat_timeout_ms * 2);
        let owners: Vec<(String, String)> = {
            let mut owners = lock(&self.owners);
            owners.retain(|_, (_, last)| now.saturating_sub(*last) <= horizon);
            owners
                .iter()
                .map(|(a, (s, _))| (a.clone(), s.clone()))
                .collect()
        };
        let hb = Heartbeat {
            addr: self.ctx.request_url(),
        };
        for (owner, signal) in owners {
            if let Err(e) = self.ctx.signal(&signal, topics::REPLICA_HB, &hb) {
                tracing::debug!(%owner, "heartbeat not sent: {e}");
            }
        }
    }

    /// For records outside our own range: hand a newer version we hold to
    /// its owner (it may have been written here during a partition), and
    /// drop copies we no longer have to hold once the owner and every
    /// designated holder have the same or a newer version.
    fn collect_surplus(&self, nb: &Neighbours, start: u64, end: u64) {
        let store = self.ctx.store();
        let Ok(all) = store.scan_ring(0, 0) else {
            return;
        };
        let mut outside: Vec<UserRecord> = all
            .into_iter()
            .filter(|r| !in_ring_interval(r.ring_pos, start, end))
            .collect();
        let (mut purged, mut handed) = (0u64, 0usize);
        // One owner at a time: its range (pred, owner] covers many records,
        // so lookups and version queries are per owner, not per record.
        for _ in 0..64 {
            let Some(first) = outside.first().cloned() else {
                break;
            };
            let Ok(owner) = self
                .ctx
                .call_local::<ring::Lookup>(&KeyBody {
                    key: first.ring_pos,
                })
                .map(|o| o.peer())
            else {
                break;
            };
            let owner_nb = if owner.id == nb.me.id {
                None
            } else {
                self.ctx
                    .call::<ring::Neighbours>(&owner.addr, &Empty, self.timeout())
                    .ok()
            };
            let Some(owner_nb) = owner_nb.filter(|o| o.predecessor.is_some()) else {
                // Unknown range: leave these records for a later round.
                outside.retain(|r| r.username != first.username);
                continue;
            };
            let from = owner_nb
                .predecessor
                .as_ref()
                .map(|p| p.id)
                .unwrap_or(owner.id);
            let (batch, rest): (Vec<UserRecord>, Vec<UserRecord>) = outside
                .into_iter()
                .partition(|r| in_ring_interval(r.ring_pos, from, owner.id));
            outside = rest;
            if batch.is_empty() {
                // The first record was not in the owner's range after all
                // (the ring is moving); try again next round.
                outside.retain(|r| r.username != first.username);
                continue;
            }
            let names = Names {
                usernames: batch.iter().map(|r| r.username.clone()).collect(),
            };
            let versions_at = |p: &PeerRef| -> Option<HashMap<String, Option<Timestamp>>> {
                self.ctx
                    .call::<replica::Versions>(&p.addr, &names, self.timeout())
                    .ok()
                    .map(|v| v.into_iter().collect())
            };
            let Some(at_owner) = versions_at(&owner) else {
                continue;
            };
            let newer_here: Vec<UserRecord> = batch
                .iter()
                .filter(|r| {
                    at_owner
                        .get(&r.username)
                        .copied()
                        .flatten()
                        .is_none_or(|v| v < r.version)
                })
                .cloned()
                .collect();
            if !newer_here.is_empty() && self.send_copy(&owner, &newer_here).is_ok() {
                handed += newer_here.len();
            }
            let designated = self.holders(&owner_nb);
            if designated.iter().any(|h| h.id == nb.me.id) {
                continue;
            }
            let mut at_holders = vec![at_owner];
            for h in &designated {
                match versions_at(h) {
                    Some(v) => at_holders.push(v),
                    None => break,
                }
            }
            if at_holders.len() != designated.len() + 1 {
                continue;
            }
            for r in &batch {
                let safe = at_holders.iter().all(|held| {
                    held.get(&r.username)
                        .copied()
                        .flatten()
                        .is_some_and(|v| v >= r.version)
                });
                if safe && store.purge(&r.username).unwrap_or(false) {
                    purged += 1;
                }
            }
        }
        if handed > 0 {
            tracing::info!(records = handed, "handed newer versions to their owners");
        }
        if purged > 0 {
            tracing::info!(purged, "surplus copies dropped");
            let _ = store.flush();
            lock(&self.stats).purged += purged;
        }
    }
}

#[derive(Default)]
struct Replica {
    shared: Mutex<Option<Arc<Shared>>>,
}

impl Plugin for Replica {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: ReplicaConfig = ctx.config()?;
        let shared = Arc::new(Shared {
            ctx: ctx.clone(),
            config: config.clone(),
            epoch: Instant::now(),
            ready: Mutex::new(None),
            heard: Mutex::new(HashMap::new()),
            expected_since: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
        });
        *lock(&self.shared) = Some(shared.clone());

        let s = shared.clone();
        ctx.serve::<replica::Replicate>(move |_, record| s.replicate(record))?;
        let s = shared.clone();
        ctx.serve::<replica::ReplicateBatch>(move |_, records| s.replicate_many(records))?;
        let s = shared.clone();
        ctx.serve::<replica::Put>(move |_, body| {
            s.remember_owner(&body.from);
            s.apply(body.records)
        })?;
        let s = shared.clone();
        ctx.serve::<replica::Sync>(move |_, body| s.serve_sync(body))?;
        let s = shared.clone();
        ctx.serve::<replica::Get>(move |_, body| {
            let store = s.ctx.store();
            let mut out = Vec::new();
            for u in body.usernames {
                if let Some(r) = store.get(&u)? {
                    out.push(r);
                }
            }
            Ok(out)
        })?;
        let s = shared.clone();
        ctx.serve::<replica::Versions>(move |_, body| {
            let store = s.ctx.store();
            let mut out: Vec<(String, Option<Timestamp>)> = Vec::new();
            for u in body.usernames {
                let v = store.get(&u)?.map(|r| r.version);
                out.push((u, v));
            }
            Ok(out)
        })?;
        let s = shared.clone();
        ctx.serve::<replica::Inventory>(move |_, _| {
            let all = s.ctx.store().scan_ring(0, 0)?;
            Ok(all
                .into_iter()
                .map(|r| Held {
                    username: r.username,
                    version: r.version,
                    deleted: r.deleted,
                })
                .collect())
        })?;
        let s = shared.clone();
        ctx.serve::<replica::Ready>(move |_, body| {
            Ok(match *lock(&s.ready) {
                // Ready as a ring of one; no longer true once others are back
                // (a healed partition): merge first.
                Some((start, end)) if start == end => s
                    .neighbours()
                    .is_some_and(|nb| nb.successors.iter().all(|p| p.id == nb.me.id)),
                Some((start, end)) => in_ring_interval(body.key, start, end),
                None => false,
            })
        })?;
        let s = shared.clone();
        ctx.serve::<status::Replica>(move |_, _| {
            let ready = *lock(&s.ready);
            Ok(ReplicaStatus {
                copies: s.config.copies,
                ready_range: ready.map(|(a, b)| (format!("{a:016x}"), format!("{b:016x}"))),
                stats: lock(&s.stats).clone(),
            })
        })?;
        let s = shared.clone();
        ctx.on_signal(topics::REPLICA_HB, move |_topic, body| {
            if let Ok(hb) = body.deserialized::<Heartbeat>() {
                let now = s.now();
                lock(&s.heard).insert(hb.addr, now);
            }
        })?;

        let s = shared.clone();
        ctx.every(
            "anti-entropy",
            Duration::from_millis(config.sync_every_ms.max(50)),
            move || s.round(),
        );
        let s = shared;
        ctx.every(
            "replica-watch",
            Duration::from_millis(config.heartbeat_every_ms.max(50)),
            move || s.heartbeat(),
        );
        Ok(())
    }
}

declare_plugin!("gestor_replica", Replica::default);
