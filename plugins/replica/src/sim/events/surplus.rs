//! The surplus pass of the plugin (`surplus.rs` there), on simulated nodes.

use super::*;

impl Sim {
    pub(super) fn collect_surplus(&mut self, id: u64, ours: &VirtualNodes) {
        if core::alone(ours) {
            return;
        }
        let Some(all) = self.store(id).and_then(|s| s.scan_ring(0, 0).ok()) else {
            return;
        };
        let mut outside = core::outside_ranges(all, ours);
        for _ in 0..64 {
            let Some(first) = outside.first().cloned() else {
                break;
            };
            // `ring.lookup` as this gestor's view answers it: a position.
            let Some(vnode) = successor_of(&self.nodes[&id].view, first.ring_pos) else {
                break;
            };
            let owner = self.gestor(vnode);
            // `ring.ranges` of the owner over the network, its virtual
            // node named by the lookup.
            let theirs = (owner != id && self.reachable(owner)).then(|| self.ranges(owner));
            let owner_nb = theirs.as_ref().and_then(|t| {
                let nb = t.nodes.iter().find(|nb| nb.me.id == vnode)?;
                nb.predecessor.is_some().then_some(nb)
            });
            let batch = match owner_nb {
                Some(nb) => {
                    let from = nb.predecessor.as_ref().map_or(vnode, |p| p.id);
                    core::take_owner_batch(&mut outside, from, vnode)
                }
                None => Vec::new(),
            };
            match (owner_nb, &theirs) {
                (Some(nb), Some(t)) if !batch.is_empty() => {
                    let designated = core::holders(t, nb, self.p.config.copies);
                    self.settle(id, owner, &designated, &batch)
                }
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

    fn settle(&mut self, me: u64, owner: u64, designated: &[PeerRef], batch: &[UserRecord]) {
        let Some(at_owner) = self.versions_at(owner, batch) else {
            return;
        };
        let newer = core::newer_here(batch, &at_owner);
        if !newer.is_empty() {
            self.send(owner, &newer);
        }
        let my_addr = self.nodes[&me].addr.clone();
        if designated.iter().any(|h| h.addr == my_addr) {
            return;
        }
        let mut at = vec![at_owner];
        for h in designated {
            match self.versions_at(self.gestor(h.id), batch) {
                Some(v) => at.push(v),
                None => break,
            }
        }
        let purge = core::purgeable(batch, &my_addr, designated, &at);
        if let Some(s) = self.store(me) {
            for name in &purge {
                let _ = s.purge(name);
            }
            let _ = s.flush();
        }
    }
}
