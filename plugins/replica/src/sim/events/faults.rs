//! Failure waves, restarts, healing, and the property checked.

use super::*;

impl Sim {
    /// Maybe fail one or two more gestores (at most two per wave). A wave
    /// starts only on a repaired ring of three or more: "any two failures"
    /// promises nothing to a ring that holds fewer copies. True if any failed.
    pub(super) fn maybe_fail(&mut self) -> bool {
        let live = self.live();
        if self.failed.len() >= 2 || live.len() < 3 || !self.rng.gen_bool(0.03) {
            return false;
        }
        if self.failed.is_empty() && !self.may_start_wave() {
            return false;
        }
        // Half the time aim at the last acknowledged write: its owner and
        // the gestor after it (its first copy holder), both at once when the
        // wave is new.
        let aimed = self.last_acked.clone().filter(|_| self.rng.gen_bool(0.5));
        let aimed = aimed.and_then(|name| self.keys.iter().find(|k| k.0 == name).map(|k| k.1));
        let victims: Vec<u64> = match aimed {
            Some(pos) => {
                let positions = self.live_positions();
                let owner = self.owner_in(&positions, pos).unwrap_or(live[0]);
                let both = [owner, self.first_holder(&positions, pos, owner)];
                both[..2 - self.failed.len()].to_vec()
            }
            None => vec![live[self.rng.gen_range(0..live.len())]],
        };
        let mut any = false;
        for v in victims {
            if !self.failed.contains(&v) {
                self.fail(v);
                any = true;
            }
        }
        any
    }

    /// The first gestor other than `owner` after the position owning
    /// `pos` (the owner itself on a ring of one gestor).
    fn first_holder(&self, positions: &[u64], pos: u64, owner: u64) -> u64 {
        let start = positions.partition_point(|&p| p < pos);
        let n = positions.len();
        (0..n)
            .map(|k| self.gestor(positions[(start + k) % n]))
            .find(|&g| g != owner)
            .unwrap_or(owner)
    }

    fn fail(&mut self, victim: u64) {
        let kind = self.rng.gen_range(0..3);
        let back = self.tick + self.rng.gen_range(4..=60);
        if let Some(n) = self.nodes.get_mut(&victim) {
            n.store = None;
        }
        match kind {
            0 => self.restarts.push((victim, back, true)),
            1 => self.restarts.push((victim, back, false)),
            _ => {}
        }
        let what = ["crash", "crash, disk lost", "death"][kind];
        self.log
            .push(format!("t{} {what} {victim:016x}", self.tick));
        self.failed.push(victim);
    }

    /// Bring back gestores whose restart is due, with or without their disk.
    pub(super) fn restart_due(&mut self) {
        let tick = self.tick;
        let (due, later) = self.restarts.drain(..).partition(|r| r.1 <= tick);
        self.restarts = later;
        for (id, _, keeps_disk) in due {
            let config = self.p.config.clone();
            if let Some(n) = self.nodes.get_mut(&id) {
                if !keeps_disk {
                    n.disk = MemoryDisk::new();
                }
                n.store = Some(MemoryStore::open(&n.disk));
                n.core = ReplicaCore::new(config);
                n.has_pred = false;
            }
            self.refresh(id);
            if let Some(n) = self.nodes.get_mut(&id) {
                n.has_pred = false;
            }
            self.log.push(format!("t{tick} restart {id:016x}"));
        }
    }

    /// End the wave once its restarts are done and the ring is repaired;
    /// a wave left unrepaired too long is an error.
    pub(super) fn close_wave(&mut self, last_failure: u64) -> Result<(), String> {
        if self.failed.is_empty() {
            return Ok(());
        }
        let restarting = self
            .failed
            .iter()
            .any(|f| self.restarts.iter().any(|r| r.0 == *f));
        if !restarting && self.check(0, false).is_ok() {
            self.log.push(format!("t{} repaired", self.tick));
            self.failed.clear();
            return Ok(());
        }
        if self.tick > last_failure + REPAIR_TICKS {
            return Err(format!(
                "not repaired {REPAIR_TICKS} ticks after the failures: {}",
                self.check(0, false).unwrap_err()
            ));
        }
        Ok(())
    }

    /// Stop failures and writes, finish restarts, heal the network, let
    /// every view settle and run enough rounds to repair.
    pub(super) fn heal(&mut self) -> Result<(), String> {
        for r in &mut self.restarts {
            r.1 = self.tick + 1;
        }
        self.p.loss = 0.0;
        self.p.delay = 0.0;
        let mut last_failure = self.tick;
        let sync_ticks = (self.p.config.sync_every_ms / TICK_MS).max(1);
        for _ in 0..sync_ticks * 6 {
            self.step(false, &mut last_failure)?;
            for id in self.live() {
                self.refresh(id);
            }
        }
        Ok(())
    }

    /// A new wave starts only when the writes acknowledged before the last
    /// few sync rounds are all fully held: the ones younger than that may
    /// still have background copies on the way, and what protects them is
    /// the acknowledgement rule alone — the part under test. A write
    /// acknowledged on a ring of two had only two copies to promise: every
    /// write must be fully held (copied to gestores that joined since)
    /// before two more failures.
    fn may_start_wave(&mut self) -> bool {
        let sync_ticks = (self.p.config.sync_every_ms / TICK_MS).max(1);
        if self.small_ring_ack {
            self.small_ring_ack = self.check(0, false).is_err();
            return !self.small_ring_ack;
        }
        self.check(sync_ticks * 3, false).is_ok()
    }

    /// The property, for writes acknowledged at least `min_age` ticks ago;
    /// `serving`: their owners must also answer for them.
    pub(super) fn check(&self, min_age: u64, serving: bool) -> Result<(), String> {
        let live = self.live();
        let positions = self.live_positions();
        // Owner + 2: what "acknowledged" promises, whatever the configuration.
        let wanted = live.len().min(3);
        for (name, pos) in &self.keys {
            let Some((version, at)) = self.acked.get(name) else {
                continue;
            };
            if at + min_age > self.tick {
                continue;
            }
            let holds = |id: &u64| {
                self.store(*id)
                    .and_then(|s| s.get(name).ok().flatten())
                    .is_some_and(|r| r.version >= *version)
            };
            let owner = self.owner_in(&positions, *pos).ok_or("no live gestor")?;
            let held = live.iter().filter(|id| holds(id)).count();
            if !holds(&owner) || held < wanted {
                return Err(format!(
                    "{name} (acked {version}): owner {owner:016x} holds it: {}, {held} of {wanted} live gestores hold it",
                    holds(&owner)
                ));
            }
            if serving && !self.serves(owner, *pos) {
                return Err(format!("{name}: owner {owner:016x} does not serve it"));
            }
        }
        Ok(())
    }
}
