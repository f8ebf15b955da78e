//! Seeded random schedules driving the mailbox rules across a simulated ring.
//!
//! Gestores on a Chord ring (consistent views; the ring itself is tested in
//! gestor-chord), each at one or (in half the schedules) 1–4 random
//! positions — virtual nodes, each owning the keys up to it — and each with
//! its own store, change set and resync memory per virtual node,
//! run the plugin's steps through the same code the plugin runs
//! ([`Boxes`] on a store, the [`core`] planners): puts on the recipient's
//! owner, copy rounds to the successors (some copies lost), fetches and
//! acks, resync rounds (owner → the distinct gestores after the owning
//! virtual node, tombstones too, handoffs to a node that took over part of
//! a virtual node's range), gestores joining (all their virtual nodes at
//! once) and up to two crashing.
//! Crashes land after a copy and a resync round of every node (copies
//! leave every 100 ms, resyncs every 10 s; a crash inside those windows
//! can lose mail that only the crashed node held, which is not simulated).
//!
//! Checked: an acknowledged message is never fetched again; at the end,
//! after lossless repair rounds, every message not acknowledged that any
//! live node still holds is held by its recipient's owner, and every
//! message that was ever held by owner + 2 copies is still there.
//!
//! `MAILBOX_SIM_RUNS` sets the number of schedules (default 1,000).

use gestor_api::chat::ChatMessage;
use gestor_api::mailbox::{CopyBody, Held};
use gestor_api::ring::{Neighbourhood, PeerRef, VirtualNodes};
use gestor_mailbox::boxes::Boxes;
use gestor_mailbox::core::{self, Admit, Pending, Resyncs, ACKED};
use gestor_sdk::error::StoreError;
use gestor_sdk::hash::ring_position;
use gestor_sdk::store::{KvPairs, PutOutcome, Store, UserRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Mutex;

/// One namespace's pairs.
type Space = BTreeMap<Vec<u8>, Vec<u8>>;

/// The key-value half of a store, in memory (the mailbox uses no records).
#[derive(Default)]
struct MemStore {
    kv: Mutex<BTreeMap<String, Space>>,
}

impl Store for MemStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn put(&self, _: &UserRecord) -> Result<PutOutcome, StoreError> {
        Err(StoreError::Invalid("no records here".into()))
    }
    fn get(&self, _: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(None)
    }
    fn purge(&self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn scan_ring(&self, _: u64, _: u64) -> Result<Vec<UserRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn count(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn kv_get(&self, ns: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .kv
            .lock()
            .unwrap()
            .get(ns)
            .and_then(|m| m.get(key).cloned()))
    }
    fn kv_put(&self, ns: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.kv
            .lock()
            .unwrap()
            .entry(ns.to_string())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn kv_delete(&self, ns: &str, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .kv
            .lock()
            .unwrap()
            .get_mut(ns)
            .is_some_and(|m| m.remove(key).is_some()))
    }
    // `kv_scan_page` is the trait's default, cut from this scan.
    fn kv_scan_prefix(&self, ns: &str, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        let kv = self.kv.lock().unwrap();
        let Some(m) = kv.get(ns) else {
            return Ok(Vec::new());
        };
        Ok(m.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

const COPIES: usize = 2;
/// Successor-list length r (the ring plugin's default).
const SUCCESSOR_LIST: usize = 8;
const MAX_PER_USER: usize = 1_000;
const TTL: u64 = u64::MAX / 4;
const USERS: [&str; 6] = ["alice", "bruno", "carla", "dmitri", "elena", "farid"];

/// A gestor's resync planner over the simulated ring.
type SimPlanner<'a> = core::Planner<
    'a,
    Box<dyn FnMut(&str) -> bool + 'a>,
    Box<dyn FnMut(&str) -> Option<(u64, String)> + 'a>,
>;

struct Node {
    /// Virtual node positions, the first the gestor's own id.
    ids: Vec<u64>,
    addr: String,
    up: bool,
    joined: bool,
    store: MemStore,
    pending: Pending,
    resync: Resyncs,
}

struct Sim {
    rng: StdRng,
    nodes: Vec<Node>,
    crashes: usize,
    next_id: u64,
    /// Message id → (recipient, item).
    sent: BTreeMap<String, Held>,
    acked: BTreeSet<String>,
    /// Message id → nodes that ever held it.
    holders: BTreeMap<String, BTreeSet<usize>>,
    loss: f64,
    /// Items and removals handed to a node that joined.
    handoffs: usize,
    /// What happened, for the failure message.
    log: Vec<String>,
    /// Live members' virtual nodes `(position, gestor)`, in ring order.
    ring: Vec<(u64, usize)>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let max_vnodes = if rng.gen_bool(0.5) { 4 } else { 1 };
        let nodes = (0..8)
            .map(|i| Node {
                ids: (0..rng.gen_range(1..=max_vnodes))
                    .map(|_| rng.gen())
                    .collect(),
                addr: format!("tcp://node{i}"),
                up: true,
                joined: i < 4,
                store: MemStore::default(),
                pending: Pending::default(),
                resync: Resyncs::default(),
            })
            .collect();
        let loss = [0.0, 0.1, 0.3][rng.gen_range(0..3)];
        let mut sim = Sim {
            rng,
            nodes,
            crashes: 0,
            next_id: 0,
            sent: BTreeMap::new(),
            acked: BTreeSet::new(),
            holders: BTreeMap::new(),
            loss,
            handoffs: 0,
            log: vec![format!("seed {seed}, loss {loss}, vnodes 1-{max_vnodes}")],
            ring: Vec::new(),
        };
        sim.ring_changed();
        sim
    }

    /// Live ring members, each once.
    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up && self.nodes[*i].joined)
            .collect()
    }

    fn ring_changed(&mut self) {
        let mut r: Vec<(u64, usize)> = self
            .live()
            .into_iter()
            .flat_map(|i| self.nodes[i].ids.iter().map(move |id| (*id, i)))
            .collect();
        r.sort();
        self.ring = r;
    }

    /// The virtual node owning `pos`: the first at or after it, wrapping.
    fn owner_vnode(&self, pos: u64) -> (u64, usize) {
        let at = self.ring.partition_point(|(id, _)| *id < pos);
        self.ring.get(at).copied().unwrap_or(self.ring[0])
    }

    fn owner(&self, user: &str) -> usize {
        self.owner_vnode(ring_position(user.as_bytes())).1
    }

    /// `ring.ranges` of a live gestor: each virtual node with its
    /// predecessor and its successor list (stopping before itself).
    fn ranges(&self, node: usize) -> VirtualNodes {
        let peer = |(id, n): (u64, usize)| PeerRef {
            id,
            addr: self.nodes[n].addr.clone(),
        };
        let len = self.ring.len();
        let nodes = self.nodes[node]
            .ids
            .iter()
            .filter_map(|id| {
                let k = self.ring.iter().position(|v| *v == (*id, node))?;
                Some(Neighbourhood {
                    me: peer(self.ring[k]),
                    predecessor: Some(peer(self.ring[(k + len - 1) % len])),
                    successors: (1..len.min(SUCCESSOR_LIST + 1))
                        .map(|d| peer(self.ring[(k + d) % len]))
                        .collect(),
                })
            })
            .collect();
        VirtualNodes { nodes }
    }

    /// Where `node` copies `holder`'s mailbox (core::copy_targets).
    fn copy_targets(&self, node: usize, holder: &str, copies: usize) -> Vec<usize> {
        let pos = ring_position(holder.as_bytes());
        core::copy_targets(&self.ranges(node), pos, copies)
            .iter()
            .map(|a| self.by_addr(a))
            .collect()
    }

    fn by_addr(&self, addr: &str) -> usize {
        self.nodes.iter().position(|n| n.addr == addr).unwrap()
    }

    fn boxes(&self, node: usize) -> Boxes<'_> {
        Boxes::new(&self.nodes[node].store)
    }

    /// `mailbox.put` on the recipient's owner.
    fn put(&mut self) {
        let from = USERS[self.rng.gen_range(0..USERS.len())];
        let to = USERS[self.rng.gen_range(0..USERS.len())];
        self.next_id += 1;
        let held = Held {
            mail: ChatMessage {
                id: format!("m{}", self.next_id),
                from: from.into(),
                to: to.into(),
                seq: self.next_id,
                sent_ms: 1,
                text: "hi".into(),
            },
            stored_ms: 1,
            bounce: None,
        };
        let owner = self.owner(to);
        let verdict = self.boxes(owner).admit(&held, MAX_PER_USER).unwrap();
        assert_eq!(verdict, Admit::Store, "a new id is stored");
        self.boxes(owner).store(&held).unwrap();
        self.nodes[owner].pending.put(held.clone());
        self.log
            .push(format!("put {} for {to} on node{owner}", held.mail.id));
        self.sent.insert(held.mail.id.clone(), held);
    }

    /// A `mailbox.copy` from `from` reaching `to` (or lost).
    fn deliver_copy(&mut self, from: usize, to: usize, body: CopyBody) -> bool {
        if self.rng.gen_bool(self.loss) {
            self.log.push(format!("copy node{from} -> node{to} lost"));
            return false;
        }
        // The receiver's own ring view names whose removals count
        // (removal_from_owner).
        let me = self.nodes[to].addr.clone();
        let plan = core::plan_copy(body, |holder| {
            let owner = self.nodes[self.owner(holder)].addr.clone();
            let successor = self
                .copy_targets(to, holder, 1)
                .first()
                .map(|s| self.nodes[*s].addr.clone());
            core::removal_authority(&me, &owner, successor.as_deref())
                == Some(self.nodes[from].addr.as_str())
        });
        let (_, owned) = self
            .boxes(to)
            .apply_copy(&plan, TTL, MAX_PER_USER, |h| self.owner(h) == to)
            .unwrap();
        for held in owned {
            self.nodes[to].pending.put(held);
        }
        true
    }

    fn push(&mut self, from: usize, targets: &[usize], batches: &[CopyBody]) -> bool {
        let mut all = true;
        for &t in targets {
            for b in batches {
                if !self.deliver_copy(from, t, b.clone()) {
                    all = false;
                    break;
                }
            }
        }
        all
    }

    /// The gestores behind copy targets `node` chose: at most `COPIES`,
    /// each once, never `node` itself (a copy on the owner's own disk, or
    /// two on one gestor, would not survive two failures).
    fn copy_holders(&self, node: usize, targets: &[String]) -> Vec<usize> {
        let out: Vec<usize> = targets.iter().map(|a| self.by_addr(a)).collect();
        let distinct: BTreeSet<usize> = out.iter().copied().collect();
        if out.len() > COPIES || distinct.len() < out.len() || distinct.contains(&node) {
            self.fail(format!("node{node} copies to {out:?}"));
        }
        out
    }

    fn flush(&mut self, node: usize) {
        self.log.push(format!("node{node} copies"));
        let body = self.nodes[node].pending.take();
        // The simulated ring always knows every predecessor: changes of
        // mailboxes no longer ours are the resync's (core::ranges_unsettled).
        let (groups, _) = core::copy_groups(&self.ranges(node), COPIES, body);
        for (targets, batches) in groups {
            let targets = self.copy_holders(node, &targets);
            self.push(node, &targets, &batches);
        }
    }

    fn send_plan(&mut self, node: usize, plan: core::ResyncPlan) -> bool {
        for (targets, body) in &plan.copies {
            let targets = self.copy_holders(node, targets);
            self.push(node, &targets, &core::batches(body));
        }
        let mut all = !plan.unplaced;
        for (owner, body) in plan.handoffs {
            let o = self.by_addr(&owner);
            if o == node {
                self.fail(format!("node{node} hands a mailbox to itself"));
            }
            self.handoffs += body.puts.len() + body.removed.len();
            self.log.push(format!("node{node} hands to node{o}"));
            all &= self.push(node, &[o], &core::batches(&body));
        }
        all
    }

    /// `node`'s resync planner: `mine` is ring.responsible, `owner_of`
    /// ring.lookup (the owning virtual node's id, its gestor's URL).
    fn planner<'a>(
        &'a self,
        node: usize,
        round: &'a Resyncs,
        ranges: &'a VirtualNodes,
    ) -> SimPlanner<'a> {
        core::Planner::new(
            round,
            ranges,
            COPIES,
            Box::new(move |h| self.owner(h) == node),
            Box::new(move |h| {
                let (id, o) = self.owner_vnode(ring_position(h.as_bytes()));
                Some((id, self.nodes[o].addr.clone()))
            }),
        )
    }

    fn resync(&mut self, node: usize) {
        self.log.push(format!("node{node} resyncs"));
        let ranges = self.ranges(node);
        self.nodes[node].resync.observe(&ranges);
        let round = self.nodes[node].resync.clone();
        let mut pages = Vec::new();
        self.boxes(node)
            .walk_items(b"", |page| {
                pages.push(page.into_iter().map(|(_, h)| h).collect::<Vec<_>>());
                ControlFlow::Continue(())
            })
            .unwrap();
        let mut tomb_pages = Vec::new();
        self.boxes(node)
            .walk(ACKED, b"", |page| {
                tomb_pages.push(page.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
                ControlFlow::Continue(())
            })
            .unwrap();
        let mut all = true;
        for keys in tomb_pages {
            let plan = self
                .planner(node, &round, &ranges)
                .tombs(keys.iter().map(Vec::as_slice));
            all &= self.send_plan(node, plan);
        }
        for page in pages {
            let plan = self.planner(node, &round, &ranges).items(page);
            all &= self.send_plan(node, plan);
        }
        if all {
            self.nodes[node].resync.handed(&round);
        }
    }

    /// A client fetches its mailbox from its owner and acks some of it.
    fn fetch_and_ack(&mut self) {
        let user = USERS[self.rng.gen_range(0..USERS.len())];
        let owner = self.owner(user);
        let items = self.boxes(owner).items_of(user).unwrap();
        for h in &items {
            if self.acked.contains(&h.mail.id) {
                self.fail(format!("{} delivered again after its ack", h.mail.id));
            }
        }
        let ids: Vec<String> = items
            .iter()
            .filter(|_| self.rng.gen_bool(0.7))
            .map(|h| h.mail.id.clone())
            .collect();
        self.boxes(owner).remove(user, &ids, TTL).unwrap();
        self.log.push(format!(
            "{user} fetched {} on node{owner}, acked {ids:?}",
            items.len()
        ));
        for id in &ids {
            self.nodes[owner].pending.removed(user, id);
            self.acked.insert(id.clone());
        }
    }

    fn note_holders(&mut self) {
        for (id, held) in &self.sent {
            let known = self.holders.get(id).map_or(0, BTreeSet::len);
            if self.acked.contains(id) || known > COPIES {
                continue;
            }
            for (i, n) in self.nodes.iter().enumerate() {
                let key = core::item_key(held);
                if n.store
                    .kv_get(core::ITEMS, key.as_bytes())
                    .unwrap()
                    .is_some()
                {
                    self.holders.entry(id.clone()).or_default().insert(i);
                }
            }
        }
    }

    fn step(&mut self) {
        let ring = self.live();
        match self.rng.gen_range(0..100) {
            0..=29 => self.put(),
            30..=49 => {
                self.fetch_and_ack();
                return self.observe();
            }
            50..=69 => {
                let n = ring[self.rng.gen_range(0..ring.len())];
                self.flush(n);
            }
            70..=89 => {
                let n = ring[self.rng.gen_range(0..ring.len())];
                self.resync(n);
            }
            90..=94 => {
                if let Some(n) = (0..self.nodes.len()).find(|i| !self.nodes[*i].joined) {
                    self.nodes[n].joined = true;
                    self.ring_changed();
                    self.log.push(format!("node{n} joined"));
                }
            }
            _ => {
                if self.crashes < 2 && ring.len() > 3 {
                    let loss = std::mem::replace(&mut self.loss, 0.0);
                    for n in ring.clone() {
                        self.resync(n);
                    }
                    for n in ring.clone() {
                        self.flush(n);
                    }
                    self.loss = loss;
                    self.note_holders();
                    let victim = ring[self.rng.gen_range(0..ring.len())];
                    self.nodes[victim].up = false;
                    self.ring_changed();
                    self.log.push(format!("node{victim} crashed"));
                    self.crashes += 1;
                }
            }
        }
        self.note_holders();
        self.observe();
    }

    /// Every node notes its predecessor between events, as the plugin
    /// does every copy tick.
    fn observe(&mut self) {
        for n in self.live() {
            let ranges = self.ranges(n);
            self.nodes[n].resync.observe(&ranges);
        }
    }

    /// Lossless repair rounds, then the end checks.
    fn fail(&self, what: String) -> ! {
        let ring: Vec<String> = self
            .ring
            .iter()
            .map(|(id, i)| format!("node{i}@{id:x}"))
            .collect();
        panic!("{what}\nring {ring:?}\n{}", self.log.join("\n"));
    }

    fn settle_and_check(&mut self) {
        self.loss = 0.0;
        for _ in 0..3 {
            for n in self.live() {
                self.flush(n);
                self.resync(n);
            }
        }
        for (id, held) in &self.sent {
            let to = &held.mail.to;
            let owner = self.owner(to);
            let at_owner = self
                .boxes(owner)
                .items_of(to)
                .unwrap()
                .iter()
                .any(|h| &h.mail.id == id);
            if self.acked.contains(id) {
                if at_owner {
                    self.fail(format!("{id} back at its owner after its ack"));
                }
                continue;
            }
            let holders = self.holders.get(id).cloned().unwrap_or_default();
            let live = holders.iter().any(|i| self.nodes[*i].up);
            if live && !at_owner {
                self.fail(format!("{id} for {to} (at {:x}) held by {holders:?} (a live node) but not by its owner node{owner}", ring_position(to.as_bytes())));
            }
            if holders.len() > COPIES && !at_owner {
                self.fail(format!("{id} for {to} held by {holders:?} once, now lost"));
            }
        }
    }
}

#[test]
fn mail_survives_random_schedules() {
    let runs: u64 = std::env::var("MAILBOX_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let (mut sent, mut acked) = (0, 0);
    // Schedules with several virtual nodes per gestor, and their handoffs.
    let (mut multi, mut multi_handoffs) = (0, 0);
    for seed in 0..runs {
        let mut sim = Sim::new(seed);
        for _ in 0..150 {
            sim.step();
        }
        sim.settle_and_check();
        sent += sim.sent.len();
        acked += sim.acked.len();
        if sim.nodes.iter().any(|n| n.ids.len() > 1) {
            multi += 1;
            multi_handoffs += sim.handoffs;
        }
    }
    assert!(
        acked > 0 && acked < sent,
        "{acked} of {sent} acked: schedules too tame"
    );
    assert!(
        runs < 20 || (multi > 0 && multi_handoffs > 0),
        "{multi} schedules with virtual nodes, {multi_handoffs} handoffs in them"
    );
    eprintln!("{runs} schedules: {sent} messages, {acked} acked; {multi} with virtual nodes, {multi_handoffs} items handed off in them");
}
