//! The surplus pass of the plugin (`surplus.rs` there), on simulated nodes.

use super::*;

impl Sim {
    pub(super) fn collect_surplus(&mut self, id: u64, plan: &RoundPlan) {
        let Some(all) = self.store(id).and_then(|s| s.scan_ring(0, 0).ok()) else {
            return;
        };
        let (start, end) = plan.range;
        let mut outside = core::outside_range(all, start, end);
        for _ in 0..64 {
            let Some(first) = outside.first().cloned() else {
                break;
            };
            // `ring.lookup` as this gestor's view answers it.
            let Some(owner) = successor_of(&self.nodes[&id].view, first.ring_pos) else {
                break;
            };
            let owner_nb = (owner != id && self.reachable(owner))
                .then(|| self.neighbourhood(owner))
                .filter(|nb| nb.predecessor.is_some());
            let batch = match &owner_nb {
                Some(nb) => {
                    let from = nb.predecessor.as_ref().map_or(owner, |p| p.id);
                    core::take_owner_batch(&mut outside, from, owner)
                }
                None => Vec::new(),
            };
            match owner_nb {
                Some(nb) if !batch.is_empty() => self.settle(id, owner, &nb, &batch),
                _ => outside.retain(|r| r.username != first.username),
            }
        }
    }

    fn versions_at(&mut self, id: u64, batch: &[UserRecord]) -> Option<Versions> {
        if !self.reachable(id) {
            return None;
        }
        let s = self.store(id)?;
        Some(
            batch
                .iter()
                .map(|r| {
                    let held = s.get(&r.username).ok().flatten().map(|x| x.version);
                    (r.username.clone(), held)
                })
                .collect(),
        )
    }

    fn settle(&mut self, me: u64, owner: u64, owner_nb: &Neighbourhood, batch: &[UserRecord]) {
        let Some(at_owner) = self.versions_at(owner, batch) else {
            return;
        };
        let newer = core::newer_here(batch, &at_owner);
        if !newer.is_empty() {
            self.send(owner, &newer);
        }
        let designated = core::holders(owner_nb, self.p.config.copies);
        if designated.iter().any(|h| h.id == me) {
            return;
        }
        let mut at = vec![at_owner];
        for h in &designated {
            match self.versions_at(h.id, batch) {
                Some(v) => at.push(v),
                None => break,
            }
        }
        let purge = core::purgeable(batch, me, &designated, &at);
        if let Some(s) = self.store(me) {
            for name in &purge {
                let _ = s.purge(name);
            }
            let _ = s.flush();
        }
    }
}
