//! A seeded simulator for the replication rule, driving [`crate::core`]
//! with in-memory stores (`gestor_sdk::testing`).
//!
//! N gestores on a ring, each at one or several positions (virtual nodes,
//! in most schedules), each with a lagging view of who is alive; random
//! writes and deletes routed by a random entry gestor's view; copies, syncs
//! and heartbeats lost or delayed at random; failure waves of at most two
//! gestores at once (crash and restart with the disk, lose the disk, or
//! stay dead), sometimes aimed at the owner and first holder of the last
//! acknowledged write; joins. After each wave the ring gets time to repair
//! before the next one. The property (module `tests`): every acknowledged
//! write survives — the newest acknowledged version of every key is held by
//! its current owner, which serves it, and by at least three distinct live
//! gestores (fewer only if fewer are alive) once the ring is stable.
//! Gestores are distinct physical ones: a copy on the owner's own disk, or
//! two on one gestor, counts once.

use crate::core::{self, Ack, AckOutcome, RangeDone, ReplicaConfig, ReplicaCore, Versions};
use gestor_api::ring::{Neighbourhood, PeerRef, VirtualNodes};
use gestor_sdk::testing::{MemoryDisk, MemoryStore};
use gestor_sdk::{Store, Timestamp, UserRecord};
use rand::{Rng, RngCore};
use std::collections::{BTreeMap, HashMap};

/// Milliseconds per simulated tick.
const TICK_MS: u64 = 250;
/// Successor-list length of the simulated ring.
const SUCCESSORS: usize = 5;

/// SplitMix64: a fast seeded generator (a ChaCha one costs more than the
/// simulation in a debug build).
pub struct SimRng(u64);

impl SimRng {
    pub fn seed_from_u64(seed: u64) -> Self {
        SimRng(seed)
    }
}

impl RngCore for SimRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let n = chunk.len();
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..n]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// The knobs of one schedule.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    /// Positions (virtual nodes) per gestor at most; each gestor gets 1 to
    /// this many.
    pub vnodes: usize,
    pub keys: usize,
    pub ticks: u64,
    /// Probability that a message (or its reply) is lost.
    pub loss: f64,
    /// Probability that a delivered message arrives 1–4 ticks late.
    pub delay: f64,
    pub config: ReplicaConfig,
}

impl Params {
    pub fn random(rng: &mut SimRng) -> Self {
        Params {
            nodes: rng.gen_range(3..=8),
            vnodes: rng.gen_range(1..=4),
            keys: rng.gen_range(5..=30),
            ticks: 300,
            loss: [0.0, 0.05, 0.2][rng.gen_range(0..3)],
            delay: [0.0, 0.1, 0.3][rng.gen_range(0..3)],
            config: ReplicaConfig {
                sync_every_ms: 2_000,
                heartbeat_every_ms: 1_000,
                heartbeat_timeout_ms: 5_000,
                gc_every_rounds: 3,
                ..ReplicaConfig::default()
            },
        }
    }
}

struct Node {
    addr: String,
    disk: MemoryDisk,
    /// `None` while down.
    store: Option<MemoryStore>,
    core: ReplicaCore,
    /// Its positions on the ring, the first one its id.
    vnodes: Vec<u64>,
    /// Positions of the gestores this one believes alive (its own
    /// included), sorted.
    view: Vec<u64>,
    /// Predecessor known (a joining gestor learns it on its first refresh).
    has_pred: bool,
    phase: u64,
}

/// A copy on its way: delivered at `at` to gestor `to`.
struct InFlight {
    at: u64,
    to: u64,
    records: Vec<UserRecord>,
}

pub struct Sim {
    rng: SimRng,
    p: Params,
    /// By gestor id (its first position).
    nodes: BTreeMap<u64, Node>,
    /// Every position ever taken → its gestor.
    gestor_of: BTreeMap<u64, u64>,
    keys: Vec<(String, u64)>,
    /// Newest acknowledged version per key, and the tick it was acked at.
    acked: HashMap<String, (Timestamp, u64)>,
    last_acked: Option<String>,
    /// A write was acknowledged while fewer than three gestores were alive
    /// (held by fewer copies than two failures need) and may not be fully
    /// copied to gestores that joined since.
    small_ring_ack: bool,
    in_flight: Vec<InFlight>,
    tick: u64,
    counter: u32,
    /// Gestores failed in the current wave.
    failed: Vec<u64>,
    /// Down gestores and the tick they come back at (with or without disk).
    restarts: Vec<(u64, u64, bool)>,
    pub log: Vec<String>,
}

/// The first id at or after `pos` in the sorted `ids`, wrapping.
fn successor_of(ids: &[u64], pos: u64) -> Option<u64> {
    ids.iter()
        .copied()
        .find(|&id| id >= pos)
        .or(ids.first().copied())
}

impl Sim {
    pub fn new(seed: u64, p: Params) -> Self {
        let mut rng = SimRng::seed_from_u64(seed);
        let keys = (0..p.keys)
            .map(|i| (format!("user{i}"), rng.gen()))
            .collect();
        let mut sim = Sim {
            rng,
            p,
            nodes: BTreeMap::new(),
            gestor_of: BTreeMap::new(),
            keys,
            acked: HashMap::new(),
            last_acked: None,
            small_ring_ack: false,
            in_flight: Vec::new(),
            tick: 0,
            counter: 0,
            failed: Vec::new(),
            restarts: Vec::new(),
            log: Vec::new(),
        };
        for _ in 0..sim.p.nodes {
            sim.join();
        }
        let live = sim.live_positions();
        for n in sim.nodes.values_mut() {
            n.view = live.clone();
            n.has_pred = true;
        }
        sim
    }

    fn now(&self) -> u64 {
        self.tick * TICK_MS
    }

    fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.store.is_some())
    }

    /// Live gestores, by id.
    fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.store.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Positions of the live gestores, sorted.
    fn live_positions(&self) -> Vec<u64> {
        let live = self.nodes.values().filter(|n| n.store.is_some());
        let mut all: Vec<u64> = live.flat_map(|n| n.vnodes.clone()).collect();
        all.sort_unstable();
        all
    }

    /// The gestor at position `pos`.
    fn gestor(&self, pos: u64) -> u64 {
        self.gestor_of.get(&pos).copied().unwrap_or(pos)
    }

    /// Position `pos` as a ring peer: its id and its gestor's URL.
    fn at(&self, pos: u64) -> PeerRef {
        let addr = self.nodes.get(&self.gestor(pos)).map(|n| n.addr.clone());
        PeerRef {
            id: pos,
            addr: addr.unwrap_or_default(),
        }
    }

    /// The gestor owning `pos` in `view` (a list of positions).
    fn owner_in(&self, view: &[u64], pos: u64) -> Option<u64> {
        successor_of(view, pos).map(|v| self.gestor(v))
    }

    /// A new gestor at random positions, knowing the ring as it is now.
    fn join(&mut self) {
        let id: u64 = self.rng.gen();
        let count = self.rng.gen_range(1..=self.p.vnodes.max(1));
        let mut vnodes = vec![id];
        vnodes.extend((1..count).map(|_| self.rng.gen::<u64>()));
        for v in &vnodes {
            self.gestor_of.insert(*v, id);
        }
        let disk = MemoryDisk::new();
        let node = Node {
            addr: format!("sim://{id:016x}"),
            store: Some(MemoryStore::open(&disk)),
            disk,
            core: ReplicaCore::new(self.p.config.clone()),
            vnodes,
            view: Vec::new(),
            has_pred: false,
            phase: self.rng.gen_range(0..64),
        };
        self.nodes.insert(id, node);
        self.refresh(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.has_pred = false;
        }
        self.log.push(format!("t{} join {id:016x}", self.tick));
    }

    /// Gestor `id`'s ranges (`ring.ranges`) as its view has them: one
    /// neighbourhood per position, successor lists of `SUCCESSORS`
    /// positions (naming the same gestores several times).
    fn ranges(&self, id: u64) -> VirtualNodes {
        let node = &self.nodes[&id];
        let nodes = node.vnodes.iter().map(|&v| self.vnode(node, v)).collect();
        VirtualNodes { nodes }
    }

    fn vnode(&self, node: &Node, v: u64) -> Neighbourhood {
        let view = &node.view;
        let at = view.iter().position(|&p| p == v).unwrap_or(0);
        let n = view.len();
        let mut successors: Vec<PeerRef> = (1..=SUCCESSORS.min(n.saturating_sub(1)))
            .map(|k| self.at(view[(at + k) % n]))
            .collect();
        if successors.is_empty() {
            successors.push(self.at(v));
        }
        let predecessor = (n > 1 && node.has_pred).then(|| self.at(view[(at + n - 1) % n]));
        Neighbourhood {
            me: self.at(v),
            predecessor,
            successors,
        }
    }

    /// Stabilization: `id` learns who is alive now.
    fn refresh(&mut self, id: u64) {
        let live = self.live_positions();
        if let Some(n) = self.nodes.get_mut(&id) {
            n.view = live;
            n.has_pred = true;
        }
    }

    fn store(&self, id: u64) -> Option<&MemoryStore> {
        self.nodes.get(&id).and_then(|n| n.store.as_ref())
    }

    /// Whether a message to `to` (and its reply) gets through now.
    fn reachable(&mut self, to: u64) -> bool {
        self.is_up(to) && !self.rng.gen_bool(self.p.loss)
    }

    /// Apply and flush `records` at `to` (a `replica.put`).
    fn apply(&self, to: u64, records: &[UserRecord]) {
        if let Some(s) = self.store(to) {
            for r in records {
                let _ = s.put(r);
            }
            let _ = s.flush();
        }
    }

    /// Send a copy: applied now, later, or never. True if applied now and
    /// the reply came back.
    fn send(&mut self, to: u64, records: &[UserRecord]) -> bool {
        if !self.reachable(to) {
            return false;
        }
        if self.rng.gen_bool(self.p.delay) {
            let at = self.tick + self.rng.gen_range(1..=4);
            self.in_flight.push(InFlight {
                at,
                to,
                records: records.to_vec(),
            });
            return false;
        }
        self.apply(to, records);
        !self.rng.gen_bool(self.p.loss)
    }

    fn deliver_due(&mut self) {
        let tick = self.tick;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(|m| m.at <= tick);
        self.in_flight = later;
        for m in due {
            self.apply(m.to, &m.records);
        }
    }
}

mod events;
#[cfg(test)]
mod tests;
