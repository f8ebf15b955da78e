//! What happens on a tick: writes, anti-entropy rounds, surplus
//! collection, heartbeats, failures, restarts, joins — and the checks.

use super::*;
use gestor_api::replica::CopySource;

/// A wave not repaired this many ticks after its last failure is an error.
const REPAIR_TICKS: u64 = 800;

impl Sim {
    /// Run the schedule, heal the network, and check every acknowledged write.
    pub fn run(&mut self) -> Result<(), String> {
        let mut last_failure = 0;
        while self.tick < self.p.ticks {
            self.step(true, &mut last_failure)?;
        }
        self.heal()?;
        self.check(0, true)
    }

    fn step(&mut self, faults: bool, last_failure: &mut u64) -> Result<(), String> {
        self.tick += 1;
        self.deliver_due();
        self.restart_due();
        if faults {
            if self.maybe_fail() {
                *last_failure = self.tick;
            }
            if self.rng.gen_bool(0.6) {
                self.write();
            }
            if self.nodes.len() < 10 && self.rng.gen_bool(0.005) {
                self.join();
            }
        }
        self.close_wave(*last_failure)?;
        for id in self.live() {
            if self.rng.gen_bool(0.1) {
                self.refresh(id);
            }
            self.periodic(id);
        }
        Ok(())
    }

    /// Rounds, surplus and heartbeats when they fall due for `id`.
    fn periodic(&mut self, id: u64) {
        let c = &self.p.config;
        let sync_ticks = (c.sync_every_ms / TICK_MS).max(1);
        let hb_ticks = (c.heartbeat_every_ms / TICK_MS).max(1);
        let t = self.tick + self.nodes[&id].phase;
        if t.is_multiple_of(sync_ticks) {
            self.round(id);
        }
        if t.is_multiple_of(hb_ticks) {
            self.heartbeat(id);
        }
    }

    /// A client write (or delete) of a random key through a random gestor.
    fn write(&mut self) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let entry = live[self.rng.gen_range(0..live.len())];
        let (name, pos) = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
        let Some(owner) = self.owner_in(&self.nodes[&entry].view, pos) else {
            return;
        };
        if !self.reachable(owner) || !self.serves(owner, pos) {
            return;
        }
        self.counter += 1;
        let version = Timestamp {
            wall_ms: self.now(),
            logical: self.counter,
            node: owner,
        };
        let deleted = self.rng.gen_bool(0.2);
        let record = UserRecord {
            username: name.clone(),
            ring_pos: pos,
            address: if deleted {
                String::new()
            } else {
                format!("10.0.0.1:{}", self.counter)
            },
            password_hash: String::new(),
            online: !deleted,
            last_seen_ms: self.now(),
            version,
            deleted,
            session_hash: String::new(),
        };
        self.apply(owner, std::slice::from_ref(&record));
        if self.replicate(owner, &record) {
            let tick = self.tick;
            let newest = self.acked.entry(name.clone()).or_insert((version, tick));
            *newest = (*newest).max((version, tick));
            self.last_acked = Some(name);
            self.small_ring_ack |= self.live().len() < 3;
        }
    }

    /// The directory's owner check (`ring.responsible`: a range of ours
    /// holds `pos`, or we are alone) and the replica's readiness.
    fn serves(&self, owner: u64, pos: u64) -> bool {
        let ours = self.ranges(owner);
        let mine = core::alone(&ours) || ours.for_key(pos).is_some();
        mine && self.nodes[&owner].core.is_ready(pos, Some(&ours))
    }

    /// The write path: copies per the core's plan until acknowledged (a few
    /// attempts, refreshing the owner's view after a failure).
    fn replicate(&mut self, owner: u64, record: &UserRecord) -> bool {
        for _ in 0..3 {
            if !self.is_up(owner) {
                return false;
            }
            let ours = self.ranges(owner);
            let (groups, unowned) = core::plan_writes(&ours, vec![record.clone()], &self.p.config);
            let Some(plan) = groups
                .first()
                .map(|g| g.plan.clone())
                .filter(|_| unowned.is_empty())
            else {
                self.refresh(owner);
                continue;
            };
            let mut ack = Ack::new(&plan);
            for h in &plan.must {
                if self.send(self.gestor(h.id), std::slice::from_ref(record)) {
                    ack.confirm(&h.addr);
                } else {
                    ack.fail(&h.addr);
                }
            }
            for h in &plan.rest {
                self.send(self.gestor(h.id), std::slice::from_ref(record));
            }
            match ack.outcome() {
                AckOutcome::Acked { .. } => return true,
                _ => self.refresh(owner),
            }
        }
        false
    }

    /// One anti-entropy round of `id`, as the plugin's `round` does it:
    /// every range with its own holders.
    fn round(&mut self, id: u64) {
        let ours = self.ranges(id);
        let plans = self.core(id).begin_round(&ours);
        let mut done = Vec::new();
        for plan in &plans {
            let mut confirmed = Vec::new();
            for (i, h) in plan.holders.iter().enumerate() {
                if self.sync(id, self.gestor(h.id), plan.range) {
                    confirmed.push(h.addr.clone());
                    self.core(id).merged(plan, i);
                }
            }
            let (start, end) = plan.range;
            let primary = self
                .store(id)
                .and_then(|s| s.scan_ring(start, end).ok())
                .map_or(0, |v| v.iter().filter(|r| !r.deleted).count() as u64);
            done.push(RangeDone { confirmed, primary });
        }
        let now = self.now();
        let end = self.core(id).end_round(&plans, &done, now);
        if !end.suspects.is_empty() {
            self.refresh(id);
        }
        if end.collect_surplus {
            self.collect_surplus(id, &ours);
        }
    }

    fn core(&mut self, id: u64) -> &mut ReplicaCore {
        &mut self.nodes.get_mut(&id).expect("a simulated node").core
    }

    /// Merge `range` of `id` with holder `h` both ways; true when done.
    fn sync(&mut self, id: u64, h: u64, (start, end): (u64, u64)) -> bool {
        if !self.reachable(h) {
            return false;
        }
        let scan = |s: Option<&MemoryStore>| s.and_then(|s| s.scan_ring(start, end).ok());
        let (Some(local), Some(theirs)) = (scan(self.store(id)), scan(self.store(h))) else {
            return false;
        };
        let from = CopySource {
            addr: self.nodes[&id].addr.clone(),
            signal: self.nodes[&id].addr.clone(),
        };
        let (now, holder_addr) = (self.now(), self.nodes[&h].addr.clone());
        self.core(h).remember_owner(&from, &holder_addr, now);
        let reply = core::answer_sync(theirs, &core::digest(&local));
        if reply.in_sync {
            return true;
        }
        let plan = core::plan_sync(&local, reply.versions);
        if !plan.push.is_empty() && !self.send(h, &plan.push) {
            return false;
        }
        if plan.pull.is_empty() {
            return true;
        }
        if !self.reachable(h) {
            return false;
        }
        let got: Vec<UserRecord> = match self.store(h) {
            Some(s) => plan
                .pull
                .iter()
                .filter_map(|u| s.get(u).ok().flatten())
                .collect(),
            None => return false,
        };
        self.apply(id, &got);
        true
    }

    fn heartbeat(&mut self, id: u64) {
        let now = self.now();
        let addr = self.nodes[&id].addr.clone();
        for (owner, _signal) in self.core(id).heartbeat_targets(now) {
            let Some(owner) = owner.strip_prefix("sim://") else {
                continue;
            };
            let Ok(owner) = u64::from_str_radix(owner, 16) else {
                continue;
            };
            if self.reachable(owner) {
                self.core(owner).heard(addr.clone(), now);
            }
        }
    }
}

mod faults;
mod surplus;
