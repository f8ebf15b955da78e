//! Seeded random schedules driving the mailbox rules across a simulated ring.
//!
//! Nodes on a Chord ring (consistent views; the ring itself is tested in
//! gestor-chord), each with its own store, change set and resync memory,
//! run the plugin's steps through the same code the plugin runs
//! ([`Boxes`] on a store, the [`core`] planners): puts on the recipient's
//! owner, copy rounds to the successors (some copies lost), fetches and
//! acks, resync rounds (owner → successors, tombstones too, handoffs to a
//! node that took over a range), nodes joining and up to two crashing.
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
use gestor_api::mailbox::Held;
use gestor_mailbox::boxes::Boxes;
use gestor_mailbox::core::{self, Admit, Pending, ResyncState, ACKED};
use gestor_sdk::error::StoreError;
use gestor_sdk::hash::ring_position;
use gestor_sdk::store::{in_ring_interval, KvPairs, PutOutcome, Store, UserRecord};
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
const MAX_PER_USER: usize = 1_000;
const TTL: u64 = u64::MAX / 4;
const USERS: [&str; 6] = ["alice", "bruno", "carla", "dmitri", "elena", "farid"];

struct Node {
    id: u64,
    addr: String,
    up: bool,
    joined: bool,
    store: MemStore,
    pending: Pending,
    resync: ResyncState,
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
    /// What happened, for the failure message.
    log: Vec<String>,
    ring: Vec<usize>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..8)
            .map(|i| Node {
                id: rng.gen(),
                addr: format!("tcp://node{i}"),
                up: true,
                joined: i < 4,
                store: MemStore::default(),
                pending: Pending::default(),
                resync: ResyncState::default(),
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
            log: vec![format!("seed {seed}, loss {loss}")],
            ring: Vec::new(),
        };
        sim.ring_changed();
        sim
    }

    /// Live ring members, in ring order.
    fn ring(&self) -> Vec<usize> {
        self.ring.clone()
    }

    fn ring_changed(&mut self) {
        let mut r: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up && self.nodes[*i].joined)
            .collect();
        r.sort_by_key(|i| self.nodes[*i].id);
        self.ring = r;
    }

    fn owner(&self, user: &str) -> usize {
        let pos = ring_position(user.as_bytes());
        let ring = &self.ring;
        for (k, i) in ring.iter().enumerate() {
            let pred = ring[(k + ring.len() - 1) % ring.len()];
            if ring.len() == 1 || in_ring_interval(pos, self.nodes[pred].id, self.nodes[*i].id) {
                return *i;
            }
        }
        unreachable!("a ring has an owner for every key")
    }

    fn predecessor(&self, node: usize) -> Option<u64> {
        let ring = self.ring();
        let k = ring.iter().position(|i| *i == node)?;
        Some(self.nodes[ring[(k + ring.len() - 1) % ring.len()]].id)
    }

    fn successors(&self, node: usize) -> Vec<usize> {
        let ring = self.ring();
        let Some(k) = ring.iter().position(|i| *i == node) else {
            return Vec::new();
        };
        (1..ring.len())
            .map(|d| ring[(k + d) % ring.len()])
            .take(COPIES)
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
    fn deliver_copy(
        &mut self,
        from: usize,
        to: usize,
        body: gestor_api::mailbox::CopyBody,
    ) -> bool {
        if self.rng.gen_bool(self.loss) {
            self.log.push(format!("copy node{from} -> node{to} lost"));
            return false;
        }
        // The receiver's own ring view names whose removals count
        // (removal_from_owner).
        let me = self.nodes[to].addr.clone();
        let plan = core::plan_copy(body, |holder| {
            let owner = self.nodes[self.owner(holder)].addr.clone();
            let successor = self.first_successor(to).map(|s| self.nodes[s].addr.clone());
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

    fn push(
        &mut self,
        from: usize,
        targets: &[usize],
        batches: &[gestor_api::mailbox::CopyBody],
    ) -> bool {
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

    fn flush(&mut self, node: usize) {
        self.log.push(format!("node{node} copies"));
        let batches = self.nodes[node].pending.take();
        let targets = self.successors(node);
        self.push(node, &targets, &batches);
    }

    fn first_successor(&self, node: usize) -> Option<usize> {
        self.successors(node).first().copied()
    }

    fn send_plan(&mut self, node: usize, targets: &[usize], plan: core::ResyncPlan) -> bool {
        self.push(node, targets, &core::batches(&plan.successors));
        let mut all = !plan.unplaced;
        for (owner, body) in plan.handoffs {
            let o = self.by_addr(&owner);
            all &= self.push(node, &[o], &core::batches(&body));
        }
        all
    }

    fn resync(&mut self, node: usize) {
        self.log.push(format!("node{node} resyncs"));
        let pred = self.predecessor(node);
        let id = self.nodes[node].id;
        self.nodes[node].resync.observe(id, pred);
        let targets = self.successors(node);
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
        let mine = |s: &Sim, h: &str| s.owner(h) == node;
        let owner_of = |s: &Sim, h: &str| {
            let o = &s.nodes[s.owner(h)];
            Some((o.id, o.addr.clone()))
        };
        for keys in tomb_pages {
            let plan = core::Planner::new(
                &self.nodes[node].resync,
                |h| mine(self, h),
                |h| owner_of(self, h),
            )
            .tombs(keys.iter().map(Vec::as_slice));
            all &= self.send_plan(node, &targets, plan);
        }
        for page in pages {
            let plan = core::Planner::new(
                &self.nodes[node].resync,
                |h| mine(self, h),
                |h| owner_of(self, h),
            )
            .items(page);
            all &= self.send_plan(node, &targets, plan);
        }
        if all {
            self.nodes[node].resync.handed();
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
        let ring = self.ring();
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
        for n in self.ring() {
            let (id, pred) = (self.nodes[n].id, self.predecessor(n));
            self.nodes[n].resync.observe(id, pred);
        }
    }

    /// Lossless repair rounds, then the end checks.
    fn fail(&self, what: String) -> ! {
        let ring: Vec<String> = self
            .ring()
            .iter()
            .map(|i| format!("node{i}@{:x}", self.nodes[*i].id))
            .collect();
        panic!("{what}\nring {ring:?}\n{}", self.log.join("\n"));
    }

    fn settle_and_check(&mut self) {
        self.loss = 0.0;
        for _ in 0..3 {
            for n in self.ring() {
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
    for seed in 0..runs {
        let mut sim = Sim::new(seed);
        for _ in 0..150 {
            sim.step();
        }
        sim.settle_and_check();
        sent += sim.sent.len();
        acked += sim.acked.len();
    }
    assert!(
        acked > 0 && acked < sent,
        "{acked} of {sent} acked: schedules too tame"
    );
    eprintln!("{runs} schedules: {sent} messages, {acked} acked");
}
