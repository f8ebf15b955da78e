//! The replication rules, free of I/O: plain state and functions that take
//! ring neighbours, records, versions, replies and `now` (milliseconds) and
//! return decisions. No socket, no store, no clock is touched here; the
//! plugin shell (`lib.rs`) feeds this and carries the decisions out, and the
//! simulator (`sim.rs`) drives the very same code.

use gestor_api::replica::{CopySource, SyncReply};
use gestor_api::ring::{self, Neighbourhood, PeerRef, VirtualNodes};
use gestor_api::status::ReplicaStats;
use gestor_sdk::store::in_ring_interval;
use gestor_sdk::{Timestamp, UserRecord};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

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
    /// Threads sending queued copies to holders (the replication pool).
    pub sender_threads: usize,
    /// Records queued per holder at most; a write that finds its holder's
    /// queue full is refused with `busy`.
    pub queue_records: usize,
    /// Records sent to one holder in one message at most.
    pub batch_records: usize,
    /// How long a background copy (to a holder beyond the `ack_copies` a
    /// write waits for) may wait to share a message and a flush with the
    /// next copy to the same holder; 0 sends it at once.
    pub background_linger_ms: u64,
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
            sender_threads: 4,
            queue_records: 4_096,
            batch_records: 256,
            background_linger_ms: 50,
        }
    }
}

/// The gestores that should hold copies of `nb`'s range, in order: the
/// first `copies` distinct physical gestores (by URL) after it, never the
/// one it belongs to ([`ring::distinct_successors`]). `ours` are all the
/// virtual nodes of `nb`'s gestor: when its successor list runs through
/// them (several of that gestor's positions in a row), the list is carried
/// on from the last of them, so a short list still finds other gestores.
pub fn holders(ours: &VirtualNodes, nb: &Neighbourhood, copies: usize) -> Vec<PeerRef> {
    let mut walk = nb.clone();
    let mut carried = vec![nb.me.id];
    // Positions before this were carried on from already: only go forward,
    // never cut off what a later list added.
    let mut from = 0;
    loop {
        let out = ring::distinct_successors(&walk, copies);
        if out.len() == copies {
            return out;
        }
        // The furthest position of our own gestor in the list: what
        // follows it is its own successor list.
        let mut next = walk.successors.iter().enumerate().skip(from).rev();
        let next = next.find_map(|(i, p)| {
            if p.addr != nb.me.addr || carried.contains(&p.id) {
                return None;
            }
            ours.nodes.iter().find(|v| v.me.id == p.id).map(|v| (i, v))
        });
        let Some((at, vnode)) = next else {
            return out;
        };
        carried.push(vnode.me.id);
        walk.successors.truncate(at + 1);
        walk.successors.extend(vnode.successors.iter().cloned());
        from = at + 1;
    }
}

/// A gestor alone in the ring: every successor of every one of its
/// virtual nodes is at its own URL. It owns every key and copies nowhere.
pub fn alone(ours: &VirtualNodes) -> bool {
    ours.nodes
        .iter()
        .all(|nb| nb.successors.iter().all(|p| p.addr == nb.me.addr))
}

/// Where one write's copies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Must confirm a flushed copy before the write is acknowledged.
    pub must: Vec<PeerRef>,
    /// Get the copy in the background (anti-entropy repairs a loss).
    pub rest: Vec<PeerRef>,
}

/// The acknowledgement rule: the first `ack_copies` holders (fewer on a
/// smaller ring) must hold the record flushed, so that with the owner any
/// two gestores can fail after the acknowledgement and one copy survives —
/// and the first surviving successor, the new owner, already has it.
pub fn plan_write(ours: &VirtualNodes, nb: &Neighbourhood, config: &ReplicaConfig) -> WritePlan {
    let mut all = holders(ours, nb, config.copies);
    let rest = all.split_off(config.ack_copies.min(all.len()));
    WritePlan { must: all, rest }
}

/// Records that share one write plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteGroup {
    pub plan: WritePlan,
    pub records: Vec<UserRecord>,
}

/// Whether two plans copy to the same gestores in the same roles (by URL:
/// other virtual nodes of the same gestores make no other plan).
fn same_gestores(a: &WritePlan, b: &WritePlan) -> bool {
    let addrs = |v: &[PeerRef]| v.iter().map(|p| p.addr.clone()).collect::<Vec<_>>();
    addrs(&a.must) == addrs(&b.must) && addrs(&a.rest) == addrs(&b.rest)
}

/// Plan a batch of writes: each record's copies go to the holders of the
/// virtual node whose range holds it, and records with the same holders
/// travel together (one queue entry per holder). The second part are the
/// records no range of ours holds now (the ring is moving, or a
/// predecessor is not known yet); a lone gestor holds every key.
pub fn plan_writes(
    ours: &VirtualNodes,
    records: Vec<UserRecord>,
    config: &ReplicaConfig,
) -> (Vec<WriteGroup>, Vec<UserRecord>) {
    let lone = alone(ours) && !ours.nodes.is_empty();
    let mut groups: Vec<WriteGroup> = Vec::new();
    let mut unowned = Vec::new();
    for r in records {
        let plan = match ours.for_key(r.ring_pos) {
            Some(nb) => plan_write(ours, nb, config),
            None if lone => WritePlan {
                must: Vec::new(),
                rest: Vec::new(),
            },
            None => {
                unowned.push(r);
                continue;
            }
        };
        match groups.iter_mut().find(|g| same_gestores(&g.plan, &plan)) {
            Some(g) => g.records.push(r),
            None => groups.push(WriteGroup {
                plan,
                records: vec![r],
            }),
        }
    }
    (groups, unowned)
}

/// Where a write stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Some required holders have not answered yet.
    Pending,
    /// Acknowledged: held flushed by this many gestores, the owner included.
    Acked { holders: u32 },
    /// Every required holder answered and these failed: report them to the
    /// ring and try again with the holders it names then.
    Failed { suspects: Vec<PeerRef> },
}

/// One write's acknowledgement, fed with the required holders' answers.
#[derive(Debug, Clone)]
pub struct Ack {
    must: Vec<PeerRef>,
    /// By URL: a gestor is one holder whichever virtual node named it.
    confirmed: HashSet<String>,
    failed: Vec<PeerRef>,
}

impl Ack {
    pub fn new(plan: &WritePlan) -> Self {
        Ack {
            must: plan.must.clone(),
            confirmed: HashSet::new(),
            failed: Vec::new(),
        }
    }

    /// The holder at URL `holder` has the record, flushed.
    pub fn confirm(&mut self, holder: &str) {
        if self.must.iter().any(|p| p.addr == holder) {
            self.confirmed.insert(holder.to_string());
        }
    }

    /// The holder at URL `holder` did not confirm (unreachable, refused,
    /// timed out).
    pub fn fail(&mut self, holder: &str) {
        let known = self.must.iter().find(|p| p.addr == holder);
        if let Some(p) = known.filter(|p| !self.failed.iter().any(|f| f.addr == p.addr)) {
            self.failed.push(p.clone());
        }
    }

    pub fn outcome(&self) -> AckOutcome {
        let answered = self.must.iter().all(|p| {
            self.confirmed.contains(&p.addr) || self.failed.iter().any(|f| f.addr == p.addr)
        });
        if !answered {
            return AckOutcome::Pending;
        }
        if self.failed.is_empty() {
            return AckOutcome::Acked {
                holders: self.must.len() as u32 + 1,
            };
        }
        AckOutcome::Failed {
            suspects: self.failed.clone(),
        }
    }
}

/// Records per anti-entropy arc, roughly. A range is merged and its
/// surplus walked one arc at a time, so a gestor holding a million records
/// never loads them all at once and no sync message outgrows the
/// transport's size limit (an arc's version list is ~100 KiB).
pub const ARC_RECORDS: u64 = 2_000;

/// Split the ring interval `(start, end]` (the whole ring when `start ==
/// end`) into `pieces` consecutive arcs of nearly equal ring length, in
/// ring order. Keys are hashes, so equal lengths hold similar counts.
pub fn split_arc(start: u64, end: u64, pieces: u64) -> Vec<(u64, u64)> {
    let len: u128 = if start == end {
        1 << 64
    } else {
        u128::from(end.wrapping_sub(start))
    };
    // Never an empty arc: at most one piece per ring position.
    let pieces = u128::from(pieces.max(1)).min(len);
    let mut arcs = Vec::with_capacity(pieces as usize);
    let mut from = start;
    for i in 1..=pieces {
        let to = if i == pieces {
            end
        } else {
            start.wrapping_add((len * i / pieces) as u64)
        };
        arcs.push((from, to));
        from = to;
    }
    arcs
}

/// The arcs for a range expected to hold `records` records.
pub fn arcs_for(start: u64, end: u64, records: u64) -> Vec<(u64, u64)> {
    split_arc(start, end, records.div_ceil(ARC_RECORDS))
}

/// Digest of the versions in a range, compared on anti-entropy rounds.
pub fn digest(records: &[UserRecord]) -> String {
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    h.finalize()
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// A holder's answer to an owner's digest of a range it holds `local` of.
pub fn answer_sync(local: Vec<UserRecord>, their_digest: &str) -> SyncReply {
    if digest(&local) == their_digest {
        return SyncReply {
            in_sync: true,
            versions: Vec::new(),
        };
    }
    SyncReply {
        in_sync: false,
        versions: local.into_iter().map(|r| (r.username, r.version)).collect(),
    }
}

/// What to exchange with a holder whose range differs from ours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Ours, newer than (or missing at) the holder: send them.
    pub push: Vec<UserRecord>,
    /// Theirs, newer than (or missing in) ours: fetch them.
    pub pull: Vec<String>,
}

pub fn plan_sync(local: &[UserRecord], theirs: Vec<(String, Timestamp)>) -> SyncPlan {
    let theirs: HashMap<String, Timestamp> = theirs.into_iter().collect();
    let ours: HashMap<&str, Timestamp> = local
        .iter()
        .map(|r| (r.username.as_str(), r.version))
        .collect();
    let push = local
        .iter()
        .filter(|r| theirs.get(&r.username).is_none_or(|v| *v < r.version))
        .cloned()
        .collect();
    let mut pull: Vec<String> = theirs
        .iter()
        .filter(|(u, v)| ours.get(u.as_str()).is_none_or(|o| o < *v))
        .map(|(u, _)| u.clone())
        .collect();
    pull.sort();
    SyncPlan { push, pull }
}

/// One virtual node's part of an anti-entropy round: merge its `range`
/// with each of its `holders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    /// The virtual node's id.
    pub vnode: u64,
    /// `(predecessor, vnode]`.
    pub range: (u64, u64),
    pub holders: Vec<PeerRef>,
}

/// How one range's merges went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeDone {
    /// Holders (URLs) that merged the whole range this round.
    pub confirmed: Vec<String>,
    /// Live records of the range.
    pub primary: u64,
}

/// What to do once a round's merges are done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundEnd {
    /// Holders silent past the heartbeat timeout: report them to the ring.
    pub suspects: Vec<PeerRef>,
    /// Time to look for surplus copies (`collect_surplus`).
    pub collect_surplus: bool,
}

/// Versions a gestor reported holding, by username (`None`: not held).
pub type Versions = HashMap<String, Option<Timestamp>>;

/// A range merged with its first holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Merged {
    /// `(start, end]`; `start == end`: the whole ring.
    range: (u64, u64),
    /// Nothing to merge with: the gestor was alone. Good only while it
    /// still is (a healed partition brings others back: merge first).
    alone: bool,
}

impl Merged {
    /// Whether `key` may be served from this merge; `alone`: the gestor is
    /// alone now.
    fn holds(&self, key: u64, alone: bool) -> bool {
        let (start, end) = self.range;
        (alone || !self.alone) && (start == end || in_ring_interval(key, start, end))
    }

    /// Whether this merge covers all of `nb`'s range now: `(pred, me]`
    /// inside `(start, end]`. A range that grew (its predecessor died) is
    /// not covered until merged again.
    fn covers(&self, nb: &Neighbourhood, alone: bool) -> bool {
        let (start, end) = self.range;
        if self.alone && !alone {
            return false;
        }
        if start == end {
            return true;
        }
        let Some(pred) = nb.predecessor.as_ref().map(|p| p.id) else {
            return false;
        };
        end == nb.me.id && (pred == start || (pred != end && in_ring_interval(pred, start, end)))
    }
}

/// The replica's state between events: readiness, the replica watch and
/// the owners we hold copies for.
#[derive(Debug, Clone)]
pub struct ReplicaCore {
    pub config: ReplicaConfig,
    /// Per virtual node (by id): the range last merged with its first holder.
    ready: HashMap<u64, Merged>,
    /// Heartbeats from our copy holders: addr → ms.
    heard: HashMap<String, u64>,
    /// When each current holder was first expected to heartbeat.
    expected_since: HashMap<String, u64>,
    /// Owners we hold copies for: addr → (signal URL, last contact ms).
    owners: HashMap<String, (String, u64)>,
    stats: ReplicaStats,
}

impl ReplicaCore {
    pub fn new(config: ReplicaConfig) -> Self {
        ReplicaCore {
            config,
            ready: HashMap::new(),
            heard: HashMap::new(),
            expected_since: HashMap::new(),
            owners: HashMap::new(),
            stats: ReplicaStats::default(),
        }
    }

    /// The range merged for virtual node `vnode` (status: the first one's).
    pub fn ready_range(&self, vnode: u64) -> Option<(u64, u64)> {
        self.ready.get(&vnode).map(|m| m.range)
    }

    /// How many of `ours` are merged over their whole range now.
    pub fn ranges_ready(&self, ours: &VirtualNodes) -> u32 {
        let alone = alone(ours);
        let ready = ours.nodes.iter().filter(|nb| {
            self.ready
                .get(&nb.me.id)
                .is_some_and(|m| m.covers(nb, alone))
        });
        ready.count() as u32
    }

    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    pub fn add_purged(&mut self, n: u64) {
        self.stats.purged += n;
    }

    /// May this gestor serve `key`? Only once the virtual node whose range
    /// holds it merged that part with its first holder. `ours` is the ring
    /// now; when no range of ours holds the key (a predecessor not known)
    /// or the ring cannot be asked, any merged range holding it will do,
    /// as it did before virtual nodes.
    pub fn is_ready(&self, key: u64, ours: Option<&VirtualNodes>) -> bool {
        let Some(ours) = ours else {
            return self.ready.values().any(|m| !m.alone && m.holds(key, false));
        };
        let alone = alone(ours);
        match ours.for_key(key) {
            Some(nb) => self
                .ready
                .get(&nb.me.id)
                .is_some_and(|m| m.holds(key, alone)),
            None => self.ready.values().any(|m| m.holds(key, alone)),
        }
    }

    /// Start a round: one plan per virtual node whose range is known and
    /// has someone to merge with or records to count. A range with no
    /// holder (the gestor is alone) is ready as it is.
    pub fn begin_round(&mut self, ours: &VirtualNodes) -> Vec<RoundPlan> {
        let mut plans = Vec::new();
        for nb in &ours.nodes {
            // No ring yet.
            if nb.successors.is_empty() {
                continue;
            }
            let holders = holders(ours, nb, self.config.copies);
            let range = match &nb.predecessor {
                Some(pred) => (pred.id, nb.me.id),
                None if holders.is_empty() => (nb.me.id, nb.me.id),
                None => continue,
            };
            if holders.is_empty() {
                let merged = Merged { range, alone: true };
                self.ready.insert(nb.me.id, merged);
            }
            if nb.predecessor.is_some() {
                plans.push(RoundPlan {
                    vnode: nb.me.id,
                    range,
                    holders,
                });
            }
        }
        plans
    }

    /// The merge of `plan`'s range with `plan.holders[index]` succeeded;
    /// merging with the first holder makes the range servable. True when
    /// that is news.
    pub fn merged(&mut self, plan: &RoundPlan, index: usize) -> bool {
        if index != 0 {
            return false;
        }
        let merged = Merged {
            range: plan.range,
            alone: false,
        };
        self.ready.insert(plan.vnode, merged) != Some(merged)
    }

    /// Close a round (`done[i]` is how `plans[i]` went): statistics,
    /// replica watch, and whether surplus copies are due.
    pub fn end_round(&mut self, plans: &[RoundPlan], done: &[RangeDone], now: u64) -> RoundEnd {
        let s = &mut self.stats;
        s.rounds += 1;
        s.primary_records = done.iter().map(|d| d.primary).sum();
        s.wanted_holders = plans
            .iter()
            .map(|p| p.holders.len() as u64 + 1)
            .max()
            .unwrap_or(1);
        s.under_replicated = plans
            .iter()
            .zip(done)
            .filter(|(p, d)| d.confirmed.len() < p.holders.len())
            .map(|(_, d)| d.primary)
            .sum();
        let mut confirmed: Vec<String> = done.iter().flat_map(|d| d.confirmed.clone()).collect();
        confirmed.sort();
        confirmed.dedup();
        s.confirmed_holders = confirmed;
        s.last_round_ms = now;
        let every = self.config.gc_every_rounds;
        let collect_surplus = every > 0 && s.rounds.is_multiple_of(every);
        // One watch per gestor, whichever of our ranges it holds copies of.
        let mut holders: Vec<PeerRef> = Vec::new();
        for h in plans.iter().flat_map(|p| &p.holders) {
            if !holders.iter().any(|o| o.addr == h.addr) {
                holders.push(h.clone());
            }
        }
        RoundEnd {
            suspects: self.watch(&holders, now),
            collect_surplus,
        }
    }

    /// Replica watch: holders that stopped heartbeating.
    fn watch(&mut self, holders: &[PeerRef], now: u64) -> Vec<PeerRef> {
        let timeout = self.config.heartbeat_timeout_ms;
        self.expected_since
            .retain(|addr, _| holders.iter().any(|h| &h.addr == addr));
        let mut silent = Vec::new();
        for h in holders {
            let since = *self.expected_since.entry(h.addr.clone()).or_insert(now);
            let last = self.heard.get(&h.addr).copied().unwrap_or(since).max(since);
            if now.saturating_sub(last) > timeout {
                self.expected_since.insert(h.addr.clone(), now);
                silent.push(h.clone());
            }
        }
        silent
    }

    /// A heartbeat from the copy holder at `addr`.
    pub fn heard(&mut self, addr: String, now: u64) {
        self.heard.insert(addr, now);
    }

    /// An owner sent us copies or a digest: heartbeat to it from now on.
    pub fn remember_owner(&mut self, from: &CopySource, me: &str, now: u64) {
        if from.addr != me {
            self.owners
                .insert(from.addr.clone(), (from.signal.clone(), now));
        }
    }

    /// `(owner addr, signal URL)` to heartbeat to now; owners silent for
    /// several rounds are forgotten.
    pub fn heartbeat_targets(&mut self, now: u64) -> Vec<(String, String)> {
        let c = &self.config;
        let horizon = c
            .sync_every_ms
            .saturating_mul(5)
            .max(c.heartbeat_timeout_ms * 2);
        self.owners
            .retain(|_, (_, last)| now.saturating_sub(*last) <= horizon);
        let mut out: Vec<(String, String)> = self
            .owners
            .iter()
            .map(|(a, (s, _))| (a.clone(), s.clone()))
            .collect();
        out.sort();
        out
    }
}

/// Records held here that lie outside every range of ours (a virtual node
/// whose predecessor is not known has no range yet).
pub fn outside_ranges(all: Vec<UserRecord>, ours: &VirtualNodes) -> Vec<UserRecord> {
    all.into_iter()
        .filter(|r| ours.for_key(r.ring_pos).is_none())
        .collect()
}

/// Take from `outside` the records in an owner's range `(from, owner]`.
pub fn take_owner_batch(outside: &mut Vec<UserRecord>, from: u64, owner: u64) -> Vec<UserRecord> {
    let (batch, rest) = std::mem::take(outside)
        .into_iter()
        .partition(|r| in_ring_interval(r.ring_pos, from, owner));
    *outside = rest;
    batch
}

/// Ours, newer than what the owner holds: hand them to it (written here
/// during a partition, or it lost them).
pub fn newer_here(batch: &[UserRecord], at_owner: &Versions) -> Vec<UserRecord> {
    batch
        .iter()
        .filter(|r| {
            at_owner
                .get(&r.username)
                .copied()
                .flatten()
                .is_none_or(|v| v < r.version)
        })
        .cloned()
        .collect()
}

/// Usernames of `batch` safe to purge here: we (URL `me`) are not a
/// designated holder of the owning virtual node (`designated` are its
/// holders), and the owner and every designated holder reported (`at`,
/// owner first) the same or a newer version. Empty unless every one of
/// them answered.
pub fn purgeable(
    batch: &[UserRecord],
    me: &str,
    designated: &[PeerRef],
    at: &[Versions],
) -> Vec<String> {
    if designated.iter().any(|h| h.addr == me) || at.len() != designated.len() + 1 {
        return Vec::new();
    }
    batch
        .iter()
        .filter(|r| {
            at.iter().all(|held| {
                held.get(&r.username)
                    .copied()
                    .flatten()
                    .is_some_and(|v| v >= r.version)
            })
        })
        .map(|r| r.username.clone())
        .collect()
}

#[cfg(test)]
mod tests;
