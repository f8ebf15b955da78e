//! Copies of every record on the gestores after its owner: seed processes
//! *Receive_duplicate* and *Find_if_duplicates_are_alive*.
//!
//! A gestor owns several ranges of the ring, one per virtual node
//! (`ring.virtual_nodes`, asked with `ring.ranges`): virtual node `v` owns
//! `(predecessor of v, v]`. A record's copy holders are the first `copies`
//! *distinct physical gestores* (distinct URLs) after the virtual node
//! owning it, never its own gestor ([`core::holders`]): a successor list
//! names the same gestor several times, and two copies on one disk would
//! not survive two failures. A holder is known by its URL, not by the id
//! of whichever virtual node named it.
//!
//! The rules live in [`core`] (I/O-free, driven by the simulator in `sim`
//! too); this file is the shell that feeds it the ring, the store, replies
//! and `ctx.now_ms()`, and carries its decisions out.
//!
//! * **Write path** (`replica.replicate`, a local call from the directory on
//!   the owner): each record goes to the first `copies` holders of the range
//!   holding it (an import batch may span several ranges: records are
//!   grouped by holders). The write is acknowledged once the owner and the
//!   first two holders hold it durably (flushed); the others get it in the
//!   background. Any two gestores can then fail: if the owner is among
//!   them, the first surviving holder — whose virtual node becomes the
//!   owner — already has the record. Copies travel through the
//!   [`pipeline`]: per-gestor bounded queues served by a fixed pool of
//!   senders, which batch concurrent writes into one `replica.put` (one
//!   round trip, one flush on the holder).
//! * **Anti-entropy** (loop): for each of its ranges the owner compares a
//!   digest with each of that range's holders; where they differ they
//!   exchange versions and each side gets what the other has newer. This
//!   restores the copy count after failures, hands a joining gestor its
//!   ranges (it pulls from the holders), and lets a restarted gestor catch up.
//! * **Readiness** (`replica.ready`): a gestor serves a key only once the
//!   range holding it was merged with its first holder, so a gestor that
//!   just joined or took over never answers from an incomplete store; a
//!   range that grew (its predecessor died) waits for the next merge.
//!   `status.replica` counts the ranges and the merged ones (`/ready`).
//! * **Replica watch**: copy holders publish heartbeats (topic `replica.hb`)
//!   to the owners they hold copies for; an owner that stops hearing from a
//!   holder reports it to the ring (`ring.suspect`) and the next round copies
//!   to the next gestor instead.
//! * **Surplus copies** (records in no range of ours that this gestor no
//!   longer has to hold) are purged only after the owner and every
//!   designated holder report the same or a newer version.

pub mod core;
pub mod pipeline;
#[cfg(test)]
mod sim;

pub use crate::core::ReplicaConfig;
use crate::core::{Ack, AckOutcome, RangeDone, ReplicaCore, RoundPlan, Versions, WritePlan};
use crate::pipeline::{EnqueueError, Pipeline, Waiter};
use gestor_api::replica::{self, CopySource, Heartbeat, Held, Names, PutBody, PutReply, SyncBody};
use gestor_api::ring::{self, KeyBody, PeerRef, VirtualNodes};
use gestor_api::status::{self, ReplicaStatus};
use gestor_api::topics;
use gestor_sdk::{
    declare_plugin, CallError, Empty, ErrorCode, HandlerError, Plugin, PluginContext, PluginError,
    Timestamp, UserRecord,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records per `replica.put` message, well under the message size limit.
const CHUNK: usize = 256;

/// Send `records` to `to` as `replica.put` messages; `Ok` once it flushed them.
fn send_copy(
    ctx: &PluginContext,
    from: &CopySource,
    timeout: Duration,
    to: &PeerRef,
    records: &[UserRecord],
) -> Result<(), CallError> {
    for chunk in records.chunks(CHUNK) {
        let body = PutBody {
            from: from.clone(),
            records: chunk.to_vec(),
        };
        ctx.call::<replica::Put>(&to.addr, &body, timeout)?;
    }
    Ok(())
}

/// A `ring.ranges` answer; a ring plugin from before virtual nodes does
/// not serve it, and then its one neighbourhood (`ring.neighbours`) is
/// the one range.
fn ranges_of(
    asked: Result<VirtualNodes, CallError>,
    neighbours: impl FnOnce() -> Result<ring::Neighbourhood, CallError>,
) -> Option<VirtualNodes> {
    match asked {
        Ok(ranges) => Some(ranges),
        Err(CallError::Remote(e)) if e.code == ErrorCode::UnknownKind => {
            let nb = neighbours().ok()?;
            Some(VirtualNodes { nodes: vec![nb] })
        }
        Err(_) => None,
    }
}

struct Shared {
    ctx: PluginContext,
    config: ReplicaConfig,
    core: Mutex<ReplicaCore>,
    pipeline: Arc<Pipeline>,
    /// Per virtual node (by id): where the walk of its range stands.
    walks: Mutex<HashMap<u64, Walk>>,
    /// The ring's answer to `ring.ranges` and when (node ms), for the per
    /// request paths: every lookup asks `replica.ready`, and every write
    /// plans its copies, and a fresh `ring.ranges` (all positions with
    /// their successor lists, encoded and decoded) costs more than the
    /// lookup itself.
    recent_ranges: Mutex<Option<(u64, Arc<VirtualNodes>)>>,
}

/// How old the ranges a request is answered by may be: below the ring's
/// own maintenance period, so no staler than the ring itself.
const RANGES_MAX_AGE_MS: u64 = 100;

/// Arcs merged per range per anti-entropy round: a large range is walked
/// over several rounds, so the background work per round stays bounded (at
/// a million users a full pass of one gestor's ranges takes ~8 rounds).
const ARCS_PER_ROUND: usize = 8;

/// Where the anti-entropy walk of one virtual node's range stands.
#[derive(Default)]
struct Walk {
    range: (u64, u64),
    /// By URL: the same gestors named through other virtual nodes are the
    /// same holders.
    holders: Vec<String>,
    arcs: Vec<(u64, u64)>,
    next: usize,
    /// Per holder: failed an arc in this pass.
    failed: Vec<bool>,
    /// Live records counted so far in this pass, and in the last full one.
    counted: u64,
    last_full: Option<u64>,
}

impl Shared {
    fn new(ctx: PluginContext, config: ReplicaConfig) -> Arc<Self> {
        let from = CopySource {
            addr: ctx.request_url(),
            signal: ctx.signal_url(),
        };
        let timeout = Duration::from_millis(config.rpc_timeout_ms);
        let sender_ctx = ctx.clone();
        let pipeline = Pipeline::start(
            config.sender_threads,
            config.queue_records,
            config.batch_records,
            Duration::from_millis(config.background_linger_ms),
            Box::new(move |to: &PeerRef, records: &[UserRecord]| {
                send_copy(&sender_ctx, &from, timeout, to, records).map_err(|e| e.to_string())
            }),
        );
        Arc::new(Shared {
            ctx,
            core: Mutex::new(ReplicaCore::new(config.clone())),
            config,
            pipeline,
            walks: Mutex::new(HashMap::new()),
            recent_ranges: Mutex::new(None),
        })
    }

    fn now(&self) -> u64 {
        self.ctx.now_ms()
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

    /// Every virtual node of ours with its neighbourhood.
    fn ranges(&self) -> Option<VirtualNodes> {
        let ranges = ranges_of(self.ctx.call_local::<ring::Ranges>(&Empty), || {
            self.ctx.call_local::<ring::Neighbours>(&Empty)
        })?;
        *lock(&self.recent_ranges) = Some((self.now(), Arc::new(ranges.clone())));
        Some(ranges)
    }

    /// [`Self::ranges`], or its answer if under `RANGES_MAX_AGE_MS` old.
    fn recent_ranges(&self) -> Option<Arc<VirtualNodes>> {
        let now = self.now();
        if let Some((at, ranges)) = &*lock(&self.recent_ranges) {
            if now.saturating_sub(*at) < RANGES_MAX_AGE_MS {
                return Some(Arc::clone(ranges));
            }
        }
        self.ranges().map(Arc::new)
    }

    fn suspect(&self, peer: &PeerRef) {
        let _ = self
            .ctx
            .call_local::<ring::Suspect>(&KeyBody { key: peer.id });
    }

    fn remember_owner(&self, from: &CopySource) {
        let (me, now) = (self.ctx.request_url(), self.now());
        lock(&self.core).remember_owner(from, &me, now);
    }

    /// Apply records received from elsewhere, last writer wins, durably.
    fn apply(&self, records: Vec<UserRecord>) -> Result<PutReply, HandlerError> {
        let store = self.ctx.store();
        let clock = self.ctx.clock();
        let mut refused = None;
        let mut invalid = None;
        let mut accepted = Vec::with_capacity(records.len());
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
            accepted.push(r);
        }
        // One transaction and one flush for the whole batch: the group
        // commit of the pipeline.
        let outcomes = store.put_batch(&accepted)?;
        let applied = outcomes.iter().filter(|o| o.applied()).count() as u32;
        let stale = outcomes.len() as u32 - applied;
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
        send_copy(&self.ctx, &self.from(), self.timeout(), to, records)
    }

    /// Copy freshly written records (one write, or an import batch) and
    /// answer once the core's acknowledgement rule is met for every record;
    /// each record's holders are those of the virtual node whose range
    /// holds it. Holders that fail are reported to the ring and what is not
    /// acknowledged yet is retried with the holders it names then, until
    /// twice the RPC timeout has passed. A record no range of ours holds
    /// (the ring moved since the directory's owner check) waits for the
    /// ring too: a predecessor learnt in the meantime gives it a range;
    /// else the write fails and the client retries at the new owner.
    fn replicate_many(&self, records: Vec<UserRecord>) -> Result<u32, HandlerError> {
        if records.is_empty() {
            return Ok(0);
        }
        let deadline = self.now() + 2 * self.config.rpc_timeout_ms;
        let mut pending = records;
        let mut holders = u32::MAX;
        let mut first = true;
        loop {
            let first_attempt = std::mem::take(&mut first);
            // A retry asks the ring again: it has heard of the suspects.
            let ours = if first_attempt {
                self.recent_ranges()
            } else {
                self.ranges().map(Arc::new)
            };
            let Some(ours) = ours else {
                return Err(HandlerError::unavailable("ring not joined"));
            };
            let (groups, unowned) = core::plan_writes(&ours, pending, &self.config);
            let mut failed = Vec::new();
            let mut suspects = Vec::new();
            // The first attempt flushes this gestor's store while its copies
            // travel: the owner's sync and the holders' overlap instead of
            // adding up (the caller wrote the records and left the flush to
            // us; see `replica.replicate`).
            let outcomes = self.copy_once(&groups, || {
                if first_attempt {
                    self.ctx.store().flush()?;
                }
                Ok(())
            })?;
            for (group, outcome) in groups.iter().zip(outcomes) {
                match outcome {
                    AckOutcome::Acked { holders: n } => {
                        holders = holders.min(n);
                        continue;
                    }
                    AckOutcome::Failed { suspects: s } => suspects.extend(s),
                    AckOutcome::Pending => {}
                }
                failed.extend(group.records.iter().cloned());
            }
            if failed.is_empty() && unowned.is_empty() {
                return Ok(holders);
            }
            for p in &suspects {
                tracing::info!(holder = %p.addr, "copy holder unreachable; routing around it");
                self.suspect(p);
            }
            if self.now() >= deadline {
                return Err(HandlerError::unavailable(if unowned.is_empty() {
                    format!(
                        "write not acknowledged: {} required copy holders failed",
                        suspects.len()
                    )
                } else {
                    format!(
                        "{} records lie in no range of this gestor now (the ring is moving)",
                        unowned.len()
                    )
                }));
            }
            pending = failed;
            pending.extend(unowned);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Queue the copies of one attempt, every group at once, run `meanwhile`
    /// while they travel, then wait for each group's required holders.
    fn copy_once(
        &self,
        groups: &[core::WriteGroup],
        meanwhile: impl FnOnce() -> Result<(), HandlerError>,
    ) -> Result<Vec<AckOutcome>, HandlerError> {
        let mut waiters = Vec::new();
        for g in groups {
            waiters.push(self.enqueue_copies(&g.plan, &g.records)?);
        }
        meanwhile()?;
        let outcomes = groups.iter().zip(waiters).map(|(g, waiter)| {
            let mut ack = Ack::new(&g.plan);
            let chunks = g.records.len().div_ceil(CHUNK).max(1) as u32;
            // A batch may wait behind one in flight: two sends' worth of time.
            let answers = waiter.wait(g.plan.must.len(), self.timeout() * 2 * chunks);
            for (holder, result) in &answers {
                match result {
                    Ok(()) => ack.confirm(holder),
                    Err(_) => ack.fail(holder),
                }
            }
            // Silent past the wait: failed, as a timed-out call would be.
            for h in &g.plan.must {
                if !answers.iter().any(|(addr, _)| *addr == h.addr) {
                    ack.fail(&h.addr);
                }
            }
            ack.outcome()
        });
        Ok(outcomes.collect())
    }

    /// Queue one group's copies: required holders with a waiter, the
    /// others in the background.
    fn enqueue_copies(
        &self,
        plan: &WritePlan,
        records: &[UserRecord],
    ) -> Result<Arc<Waiter>, HandlerError> {
        let waiter = Waiter::new();
        for h in &plan.must {
            self.pipeline
                .enqueue(h, records.to_vec(), Some(waiter.clone()))
                .map_err(|e| match e {
                    EnqueueError::Full(_) => HandlerError::new(ErrorCode::Busy, e.to_string()),
                    EnqueueError::Stopping => HandlerError::unavailable(e.to_string()),
                })?;
        }
        for h in &plan.rest {
            if let Err(e) = self.pipeline.enqueue(h, records.to_vec(), None) {
                tracing::debug!(holder = %h.addr, "background copy dropped (anti-entropy will repair): {e}");
            }
        }
        Ok(waiter)
    }

    fn serve_sync(&self, body: SyncBody) -> Result<replica::SyncReply, HandlerError> {
        self.remember_owner(&body.from);
        let local = self.ctx.store().scan_ring(body.start, body.end)?;
        Ok(core::answer_sync(local, &body.digest))
    }

    /// Merge one arc of our range, `local` being what we hold of it, with
    /// `holder`, both ways.
    fn sync_arc(
        &self,
        holder: &PeerRef,
        (start, end): (u64, u64),
        local: &[UserRecord],
    ) -> Result<(), CallError> {
        let body = SyncBody {
            from: self.from(),
            start,
            end,
            digest: core::digest(local),
        };
        let reply = self
            .ctx
            .call::<replica::Sync>(&holder.addr, &body, self.timeout())?;
        if reply.in_sync {
            return Ok(());
        }
        let plan = core::plan_sync(local, reply.versions);
        if !plan.push.is_empty() {
            tracing::debug!(holder = %holder.addr, records = plan.push.len(), "anti-entropy: pushing");
            self.send_copy(holder, &plan.push)?;
        }
        if !plan.pull.is_empty() {
            tracing::debug!(holder = %holder.addr, records = plan.pull.len(), "anti-entropy: pulling");
            for chunk in plan.pull.chunks(CHUNK) {
                let names = Names {
                    usernames: chunk.to_vec(),
                };
                let got = self
                    .ctx
                    .call::<replica::Get>(&holder.addr, &names, self.timeout())?;
                self.apply(got).map_err(CallError::Remote)?;
            }
        }
        Ok(())
    }

    /// The next arcs of a range to merge: a new pass when the last one
    /// ended or the range or holders changed (then sized from what we hold,
    /// shared among our `ranges`).
    fn next_arcs(&self, walk: &mut Walk, plan: &RoundPlan, ranges: usize) -> Vec<(u64, u64)> {
        let holders: Vec<String> = plan.holders.iter().map(|h| h.addr.clone()).collect();
        let (start, end) = plan.range;
        if walk.range != plan.range || walk.holders != holders || walk.next >= walk.arcs.len() {
            let expected = match walk.last_full {
                Some(n) if walk.range == plan.range => n,
                // New range: its share of all we hold (ranges are of
                // similar size; a wrong guess only sizes the arcs).
                _ => self.ctx.store().count().unwrap_or(0) / ranges.max(1) as u64,
            };
            if walk.range != plan.range {
                walk.last_full = None;
            }
            walk.range = plan.range;
            walk.arcs = core::arcs_for(start, end, expected);
            walk.next = 0;
            walk.failed = vec![false; holders.len()];
            walk.holders = holders;
            walk.counted = 0;
        }
        let upto = (walk.next + ARCS_PER_ROUND).min(walk.arcs.len());
        let arcs = walk.arcs[walk.next..upto].to_vec();
        walk.next = upto;
        arcs
    }

    /// Merge the next arcs of a range with every holder (each arc read
    /// once for all holders); a holder that fails an arc is left out for
    /// the rest of the pass. Whether the pass is complete.
    fn merge_arcs(&self, walk: &mut Walk, plan: &RoundPlan, ranges: usize) -> bool {
        let store = self.ctx.store();
        for arc in self.next_arcs(walk, plan, ranges) {
            let local = match store.scan_ring(arc.0, arc.1) {
                Ok(local) => local,
                Err(e) => {
                    tracing::warn!("anti-entropy: cannot read the store: {e}");
                    walk.failed.iter_mut().for_each(|f| *f = true);
                    break;
                }
            };
            walk.counted += local.iter().filter(|r| !r.deleted).count() as u64;
            for (i, h) in plan.holders.iter().enumerate() {
                if walk.failed[i] {
                    continue;
                }
                if let Err(e) = self.sync_arc(h, arc, &local) {
                    tracing::debug!(holder = %h.addr, "anti-entropy round failed: {e}");
                    walk.failed[i] = true;
                }
            }
        }
        let complete = walk.next >= walk.arcs.len();
        if complete {
            walk.last_full = Some(walk.counted);
        }
        complete
    }

    /// One anti-entropy round: every virtual node's range with its own
    /// holders.
    fn round(&self) {
        let Some(ours) = self.ranges() else { return };
        let plans = lock(&self.core).begin_round(&ours);
        let mut walks = lock(&self.walks);
        // Virtual nodes are fixed for a gestor's life; drop none but gone ones.
        walks.retain(|id, _| ours.nodes.iter().any(|nb| nb.me.id == *id));
        let done: Vec<RangeDone> = plans
            .iter()
            .map(|plan| self.round_range(walks.entry(plan.vnode).or_default(), plan, plans.len()))
            .collect();
        drop(walks);
        let now = self.now();
        let end = lock(&self.core).end_round(&plans, &done, now);
        for h in &end.suspects {
            tracing::warn!(holder = %h.addr, "copy holder silent; reporting it dead");
            self.suspect(h);
        }
        if end.collect_surplus {
            self.collect_surplus(&ours);
        }
    }

    /// This round's part of one range: merge the next arcs, and mark the
    /// range ready once a whole pass merged with its first holder.
    fn round_range(&self, walk: &mut Walk, plan: &RoundPlan, ranges: usize) -> RangeDone {
        let (start, end) = plan.range;
        let complete = self.merge_arcs(walk, plan, ranges);
        let mut confirmed = Vec::new();
        for (i, h) in plan.holders.iter().enumerate() {
            if walk.failed[i] {
                continue;
            }
            confirmed.push(h.addr.clone());
            if complete && lock(&self.core).merged(plan, i) {
                tracing::info!(start = %format!("{start:016x}"), end = %format!("{end:016x}"), "range merged with its first holder; serving it");
            }
        }
        RangeDone {
            confirmed,
            primary: walk.last_full.unwrap_or(walk.counted),
        }
    }

    fn heartbeat(&self) {
        let now = self.now();
        let owners = lock(&self.core).heartbeat_targets(now);
        let hb = Heartbeat {
            addr: self.ctx.request_url(),
        };
        for (owner, signal) in owners {
            if let Err(e) = self.ctx.signal(&signal, topics::REPLICA_HB, &hb) {
                tracing::debug!(%owner, "heartbeat not sent: {e}");
            }
        }
    }
}

mod surplus;

#[derive(Default)]
struct Replica {
    shared: Mutex<Option<Arc<Shared>>>,
}

/// Writes and copies: the local write path and what owners send.
fn serve_writes(ctx: &PluginContext, shared: &Arc<Shared>) -> Result<(), PluginError> {
    let s = shared.clone();
    ctx.serve::<replica::Replicate>(move |_, record| s.replicate_many(vec![record]))?;
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
    ctx.on_signal(topics::REPLICA_HB, move |_topic, body| {
        if let Ok(hb) = body.deserialized::<Heartbeat>() {
            let now = s.now();
            lock(&s.core).heard(hb.addr, now);
        }
    })
}

/// Questions other gestores, the directory and operators ask.
fn serve_queries(ctx: &PluginContext, shared: &Arc<Shared>) -> Result<(), PluginError> {
    let s = shared.clone();
    ctx.serve::<replica::Get>(move |_, body| {
        let store = s.ctx.store();
        let mut out = Vec::new();
        for u in body.usernames {
            out.extend(store.get(&u)?);
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
        let ours = s.recent_ranges();
        Ok(lock(&s.core).is_ready(body.key, ours.as_deref()))
    })?;
    let s = shared.clone();
    ctx.serve::<status::Replica>(move |_, _| {
        // Counted against the ring now: a range that grew is not ready.
        let ours = s.ranges().unwrap_or_default();
        let core = lock(&s.core);
        let first = ours.nodes.first().map(|nb| nb.me.id);
        Ok(ReplicaStatus {
            copies: s.config.copies,
            ready_range: first
                .and_then(|id| core.ready_range(id))
                .map(|(a, b)| (format!("{a:016x}"), format!("{b:016x}"))),
            ranges: ours.nodes.len() as u32,
            ranges_ready: core.ranges_ready(&ours),
            stats: core.stats().clone(),
        })
    })
}

impl Plugin for Replica {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: ReplicaConfig = ctx.config()?;
        let shared = Shared::new(ctx.clone(), config.clone());
        *lock(&self.shared) = Some(shared.clone());
        serve_writes(&ctx, &shared)?;
        serve_queries(&ctx, &shared)?;
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

    fn stop(&self) {
        if let Some(shared) = lock(&self.shared).take() {
            shared.pipeline.stop();
        }
    }
}

declare_plugin!("gestor_replica", Replica::default);
