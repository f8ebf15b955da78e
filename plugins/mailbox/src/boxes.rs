//! The mailboxes on a [`Store`]: the [`crate::core`] rules applied to the
//! items and tombstones of one node. Every walk is paged
//! ([`Store::kv_scan_page`], [`SCAN_PAGE`] pairs at a time), so memory per
//! step is bounded whatever the store holds; a walk of one mailbox is
//! bounded by the quota. No network and no clock: callers pass `now`.

use crate::core::{
    self, admit, holder_prefix, item_key, tomb_key, Admit, Occupancy, ACKED, ITEMS, SCAN_PAGE,
};
use gestor_api::mailbox::Held;
use gestor_sdk::store::KvPairs;
use gestor_sdk::{Store, StoreError};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// One node's mailboxes.
pub struct Boxes<'a> {
    store: &'a dyn Store,
}

fn decode(key: &[u8], value: &[u8]) -> Option<Held> {
    match gestor_sdk::wire::from_cbor::<Held>(value) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), "unreadable mailbox item skipped: {e}");
            None
        }
    }
}

impl<'a> Boxes<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Boxes { store }
    }

    /// Walk `namespace`'s pairs under `prefix` a page at a time until `f`
    /// breaks or the pairs run out.
    pub fn walk(
        &self,
        namespace: &str,
        prefix: &[u8],
        mut f: impl FnMut(&KvPairs) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .kv_scan_page(namespace, prefix, after.as_deref(), SCAN_PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            if f(&page).is_break() || page.len() < SCAN_PAGE {
                return Ok(());
            }
        }
    }

    /// Walk every item, decoded, a page at a time.
    pub fn walk_items(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(Vec<(Vec<u8>, Held)>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk(ITEMS, prefix, |page| {
            f(page
                .iter()
                .filter_map(|(k, v)| decode(k, v).map(|h| (k.clone(), h)))
                .collect())
        })
    }

    pub fn tombstoned(&self, holder: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .kv_get(ACKED, tomb_key(holder, id).as_bytes())?
            .is_some())
    }

    /// `holder`'s items in delivery order (bounded by the quota).
    pub fn items_of(&self, holder: &str) -> Result<Vec<Held>, StoreError> {
        let mut out = Vec::new();
        self.walk_items(holder_prefix(holder).as_bytes(), |page| {
            out.extend(page.into_iter().map(|(_, h)| h));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// May `held` be stored (see [`core::admit`])? Walks the holder's
    /// mailbox once, stopping at the quota or a duplicate.
    pub fn admit(&self, held: &Held, max_per_user: usize) -> Result<Admit, StoreError> {
        if self.tombstoned(held.holder(), &held.mail.id)? {
            return Ok(Admit::Known);
        }
        let mut occ = Occupancy::default();
        self.walk(ITEMS, holder_prefix(held.holder()).as_bytes(), |page| {
            for (k, _) in page {
                occ.observe(k, held);
            }
            if occ.duplicate || occ.count >= max_per_user {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(admit(false, occ, max_per_user))
    }

    /// Store `held` as is.
    pub fn store(&self, held: &Held) -> Result<(), StoreError> {
        self.store.kv_put(
            ITEMS,
            item_key(held).as_bytes(),
            &gestor_sdk::wire::to_cbor(held),
        )
    }

    /// Store `held` if admitted; returns the verdict.
    pub fn offer(&self, held: &Held, max_per_user: usize) -> Result<Admit, StoreError> {
        let verdict = self.admit(held, max_per_user)?;
        if verdict == Admit::Store {
            self.store(held)?;
        }
        Ok(verdict)
    }

    /// Delete `ids` from `holder`'s mailbox and tombstone them until
    /// `until`: one walk of that mailbox for all of them.
    pub fn remove(&self, holder: &str, ids: &[String], until: u64) -> Result<u64, StoreError> {
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        for id in &wanted {
            self.store.kv_put(
                ACKED,
                tomb_key(holder, id).as_bytes(),
                &core::tomb_value(until),
            )?;
        }
        let mut doomed = Vec::new();
        self.walk(ITEMS, holder_prefix(holder).as_bytes(), |page| {
            for (k, _) in page {
                if core::mail_id_of_key(k).is_some_and(|id| wanted.contains(id)) {
                    doomed.push(k.clone());
                }
            }
            ControlFlow::Continue(())
        })?;
        let mut removed = 0;
        for k in doomed {
            if self.store.kv_delete(ITEMS, &k)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Apply a sorted `mailbox.copy` ([`core::plan_copy`]): removals with
    /// tombstones until `until`, puts admitted like the owner's. Returns
    /// the changes made, and the items stored for holders this node owns
    /// (`mine`): handed over by a previous owner, they must now be copied
    /// to this gestor's copy holders like its own puts.
    pub fn apply_copy(
        &self,
        plan: &core::CopyPlan,
        until: u64,
        max_per_user: usize,
        mut mine: impl FnMut(&str) -> bool,
    ) -> Result<(u64, Vec<Held>), StoreError> {
        let mut applied = 0;
        for (holder, ids) in &plan.removals {
            applied += self.remove(holder, ids, until)?;
        }
        let mut owned = Vec::new();
        for held in &plan.puts {
            // The same quota as the owner's: a copy can never hold more.
            if self.offer(held, max_per_user)? == Admit::Store {
                applied += 1;
                if mine(held.holder()) {
                    owned.push(held.clone());
                }
            }
        }
        Ok((applied, owned))
    }

    /// Delete one item whose key is known (expiry), tombstoned until `until`.
    pub fn remove_item(&self, key: &[u8], held: &Held, until: u64) -> Result<bool, StoreError> {
        self.store.kv_put(
            ACKED,
            tomb_key(held.holder(), &held.mail.id).as_bytes(),
            &core::tomb_value(until),
        )?;
        self.store.kv_delete(ITEMS, key)
    }

    /// Drop tombstones past their time, a page at a time; returns how many.
    pub fn expire_tombs(&self, now: u64) -> Result<u64, StoreError> {
        let mut dropped = 0;
        let mut failed = None;
        self.walk(ACKED, b"", |page| {
            for (k, v) in page {
                if !core::tomb_expired(v, now) {
                    continue;
                }
                match self.store.kv_delete(ACKED, k) {
                    Ok(true) => dropped += 1,
                    Ok(false) => {}
                    Err(e) => {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(dropped),
        }
    }

    /// The ids tombstoned in `holder`'s mailbox (what a resync re-sends as
    /// removals, so a copy that missed an ack still learns of it).
    pub fn tombs_of(&self, holder: &str) -> Result<Vec<String>, StoreError> {
        let prefix = holder_prefix(holder);
        let mut out = Vec::new();
        self.walk(ACKED, prefix.as_bytes(), |page| {
            out.extend(page.iter().filter_map(|(k, _)| {
                std::str::from_utf8(k.get(prefix.len()..)?)
                    .ok()
                    .map(str::to_string)
            }));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Items held, counted a page at a time.
    pub fn count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        self.walk(ITEMS, b"", |page| {
            n += page.len() as u64;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }
}
