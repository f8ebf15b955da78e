//! Surplus copies: records held here outside every one of our ranges. A
//! newer version than its owner's goes back to the owner; a copy we are no
//! longer a designated holder of is dropped once the owner and every
//! designated holder report the same or a newer version (the rule is
//! [`core::purgeable`]).

use super::*;

/// What one pass over the surplus did.
#[derive(Default)]
struct Tally {
    handed: usize,
    purged: u64,
}

/// The virtual node owning records we hold outside our ranges: its
/// gestor, its range's start and its designated holders.
struct OwnerRange {
    owner: PeerRef,
    from: u64,
    designated: Vec<PeerRef>,
}

impl Shared {
    pub(crate) fn collect_surplus(&self, ours: &VirtualNodes) {
        let Some(me) = ours.addr().map(str::to_string) else {
            return;
        };
        // Alone, the whole ring is ours.
        if core::alone(ours) {
            return;
        }
        let store = self.ctx.store();
        let mut tally = Tally::default();
        let mut budget = 64;
        // Our ranges are scattered over the ring (virtual nodes): the whole
        // ring is walked one arc at a time, bounded by what we hold in all,
        // and what no range of ours holds is surplus.
        let held = store.count().unwrap_or(0);
        for arc in core::arcs_for(0, 0, held) {
            let Ok(part) = store.scan_ring(arc.0, arc.1) else {
                return;
            };
            let mut outside = core::outside_ranges(part, ours);
            budget = self.settle_owners(&me, &mut outside, &mut tally, budget);
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
        me: &str,
        outside: &mut Vec<UserRecord>,
        tally: &mut Tally,
        mut budget: usize,
    ) -> usize {
        while budget > 0 {
            let Some(first) = outside.first().cloned() else {
                break;
            };
            budget -= 1;
            let Ok(found) = self.owner_range(me, first.ring_pos) else {
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
                Some(o) => self.settle(me, &o, &batch, tally),
                None => {}
            }
        }
        budget
    }

    /// The virtual node owning `key` and its range; `Ok(None)` when its
    /// range is not known now (or it is one of ours: the ring moved);
    /// `Err` when the ring cannot be asked at all.
    fn owner_range(&self, me: &str, key: u64) -> Result<Option<OwnerRange>, CallError> {
        let owner = self
            .ctx
            .call_local::<ring::Lookup>(&KeyBody { key })?
            .peer();
        if owner.addr == me {
            return Ok(None);
        }
        let timeout = self.timeout();
        let theirs = ranges_of(
            self.ctx.call::<ring::Ranges>(&owner.addr, &Empty, timeout),
            || {
                self.ctx
                    .call::<ring::Neighbours>(&owner.addr, &Empty, timeout)
            },
        );
        // The lookup names the owning virtual node by its id.
        Ok(theirs.and_then(|t| {
            let nb = t.nodes.iter().find(|nb| nb.me.id == owner.id)?;
            let from = nb.predecessor.as_ref()?.id;
            let designated = core::holders(&t, nb, self.config.copies);
            Some(OwnerRange {
                owner,
                from,
                designated,
            })
        }))
    }

    fn versions_at(&self, p: &PeerRef, names: &Names) -> Option<Versions> {
        self.ctx
            .call::<replica::Versions>(&p.addr, names, self.timeout())
            .ok()
            .map(|v| v.into_iter().collect())
    }

    /// Hand newer versions of `batch` to its owner; purge what is safe.
    fn settle(&self, me: &str, o: &OwnerRange, batch: &[UserRecord], tally: &mut Tally) {
        // A designated holder's copies are merged both ways by the owner's
        // own anti-entropy (which pulls what is newer here): nothing to do,
        // and no version queries for the bulk of what a gestor holds.
        // Designated is by URL: any of our virtual nodes named.
        if o.designated.iter().any(|h| h.addr == me) {
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
        for h in &o.designated {
            match self.versions_at(h, &names) {
                Some(v) => at.push(v),
                None => break,
            }
        }
        let store = self.ctx.store();
        for name in core::purgeable(batch, me, &o.designated, &at) {
            if store.purge(&name).unwrap_or(false) {
                tally.purged += 1;
            }
        }
    }
}
