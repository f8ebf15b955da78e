//! Surplus copies: records held here outside our own range. A newer version
//! than its owner's goes back to the owner; a copy we are no longer a
//! designated holder of is dropped once the owner and every designated
//! holder report the same or a newer version (the rule is
//! [`core::purgeable`]).

use super::*;

/// What one pass over the surplus did.
#[derive(Default)]
struct Tally {
    handed: usize,
    purged: u64,
}

/// An owner of records we hold outside our range, with its range's start.
struct OwnerRange {
    owner: PeerRef,
    nb: Neighbours,
    from: u64,
}

impl Shared {
    pub(crate) fn collect_surplus(&self, nb: &Neighbours, plan: &RoundPlan) {
        let store = self.ctx.store();
        let (start, end) = plan.range;
        if start == end {
            return;
        }
        let mut tally = Tally::default();
        let mut budget = 64;
        // What lies outside our range is the rest of the ring, (end, start]:
        // walked one arc at a time, bounded by what we hold in all.
        let held = store.count().unwrap_or(0);
        for arc in core::arcs_for(end, start, held) {
            let Ok(part) = store.scan_ring(arc.0, arc.1) else {
                return;
            };
            let mut outside = core::outside_range(part, start, end);
            budget = self.settle_owners(nb, &mut outside, &mut tally, budget);
            if budget == 0 {
                break;
            }
        }
        if tally.handed > 0 {
            tracing::info!(
                records = tally.handed,
                "handed newer versions to their owners"
            );
        }
        if tally.purged > 0 {
            tracing::info!(purged = tally.purged, "surplus copies dropped");
            let _ = store.flush();
            lock(&self.core).add_purged(tally.purged);
        }
    }

    /// One owner at a time: its range (pred, owner] covers many records,
    /// so lookups and version queries are per owner, not per record. At
    /// most `budget` owners; what is left of the budget.
    fn settle_owners(
        &self,
        nb: &Neighbours,
        outside: &mut Vec<UserRecord>,
        tally: &mut Tally,
        mut budget: usize,
    ) -> usize {
        while budget > 0 {
            let Some(first) = outside.first().cloned() else {
                break;
            };
            budget -= 1;
            let Ok(found) = self.owner_range(nb, first.ring_pos) else {
                return 0;
            };
            let batch = match &found {
                Some(o) => core::take_owner_batch(outside, o.from, o.owner.id),
                None => Vec::new(),
            };
            match found {
                // Unknown range, or the first record was not in the owner's
                // range after all (the ring is moving): a later round.
                _ if batch.is_empty() => outside.retain(|r| r.username != first.username),
                Some(o) => self.settle(nb.me.id, &o, &batch, tally),
                None => {}
            }
        }
        budget
    }

    /// The owner of `key` and its range; `Ok(None)` when its range is not
    /// known now; `Err` when the ring cannot be asked at all.
    fn owner_range(&self, nb: &Neighbours, key: u64) -> Result<Option<OwnerRange>, CallError> {
        let owner = self
            .ctx
            .call_local::<ring::Lookup>(&KeyBody { key })?
            .peer();
        if owner.id == nb.me.id {
            return Ok(None);
        }
        let owner_nb = self
            .ctx
            .call::<ring::Neighbours>(&owner.addr, &Empty, self.timeout())
            .ok();
        Ok(owner_nb.and_then(|o| {
            let from = o.predecessor.as_ref()?.id;
            Some(OwnerRange { owner, nb: o, from })
        }))
    }

    fn versions_at(&self, p: &PeerRef, names: &Names) -> Option<Versions> {
        self.ctx
            .call::<replica::Versions>(&p.addr, names, self.timeout())
            .ok()
            .map(|v| v.into_iter().collect())
    }

    /// Hand newer versions of `batch` to its owner; purge what is safe.
    fn settle(&self, me: u64, o: &OwnerRange, batch: &[UserRecord], tally: &mut Tally) {
        // A designated holder's copies are merged both ways by the owner's
        // own anti-entropy (which pulls what is newer here): nothing to do,
        // and no version queries for the bulk of what a gestor holds.
        let designated = core::holders(&o.nb, self.config.copies);
        if designated.iter().any(|h| h.id == me) {
            return;
        }
        let names = Names {
            usernames: batch.iter().map(|r| r.username.clone()).collect(),
        };
        let Some(at_owner) = self.versions_at(&o.owner, &names) else {
            return;
        };
        let newer = core::newer_here(batch, &at_owner);
        if !newer.is_empty() && self.send_copy(&o.owner, &newer).is_ok() {
            tally.handed += newer.len();
        }
        let mut at = vec![at_owner];
        for h in &designated {
            match self.versions_at(h, &names) {
                Some(v) => at.push(v),
                None => break,
            }
        }
        let store = self.ctx.store();
        for name in core::purgeable(batch, me, &designated, &at) {
            if store.purge(&name).unwrap_or(false) {
                tally.purged += 1;
            }
        }
    }
}
