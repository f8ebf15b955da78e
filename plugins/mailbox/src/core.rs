//! The mailbox's rules, I/O-free: store keys and de-duplication by id, the
//! quota, which changes go to which gestores, what a copy may change,
//! expiry and tombstones, and what a resync or a handoff sends. Everything
//! here takes its inputs (items, this gestor's virtual nodes and their
//! neighbours, `now`, verdicts the shell obtained) and returns decisions; [`crate::boxes`] applies them to a
//! [`gestor_sdk::Store`], and the plugin (lib.rs) does the network and the
//! clock.

use gestor_api::mailbox::{CopyBody, Held};
use gestor_api::ring::{distinct_successors, VirtualNodes, VnodePredecessor};
use gestor_sdk::hash::ring_position;
use gestor_sdk::store::in_ring_interval;
use std::collections::BTreeMap;

/// Store namespace of mailbox items.
pub const ITEMS: &str = "mailbox";
/// `holder/id` → expiry (wall ms, 8 bytes big-endian) of an acknowledged message.
pub const ACKED: &str = "mailbox.acked";
/// Items per `mailbox.copy` request.
pub const COPY_BATCH: usize = 200;
/// Pairs read per store page: what a scan holds in memory at once.
pub const SCAN_PAGE: usize = 256;

/// Store key of a mailbox item: mail sorts by sender then sequence, so a
/// prefix scan is the delivery order; bounces sort after mail.
pub fn item_key(held: &Held) -> String {
    if held.bounce.is_some() {
        format!("{}/b/{}", held.mail.from, held.mail.id)
    } else {
        format!(
            "{}/m/{}/{:020}/{}",
            held.mail.to, held.mail.from, held.mail.seq, held.mail.id
        )
    }
}

/// Prefix of every item (and tombstone) of `holder`.
pub fn holder_prefix(holder: &str) -> String {
    format!("{holder}/")
}

/// The holder a store key belongs to (usernames hold no '/').
pub fn holder_of_key(key: &[u8]) -> Option<&str> {
    let end = key.iter().position(|b| *b == b'/')?;
    std::str::from_utf8(&key[..end]).ok()
}

/// Store key of the tombstone of `id` in `holder`'s mailbox.
pub fn tomb_key(holder: &str, id: &str) -> String {
    format!("{holder}/{id}")
}

/// The id a mail item's key ends with (`holder/m/from/seq/id`); `None` for
/// bounces and foreign keys.
pub fn mail_id_of_key(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.split('/');
    let (_, kind) = (parts.next()?, parts.next()?);
    match kind {
        "m" => key.rsplit('/').next(),
        "b" => parts.next(),
        _ => None,
    }
}

/// Whether the item stored under `key` has `held`'s id: a mailbox holds an
/// id once (de-duplication is by id, as at the receiver), whatever the
/// `seq` or sender of the copy that came first.
pub fn same_id(key: &[u8], held: &Held) -> bool {
    if held.bounce.is_some() {
        return key == item_key(held).as_bytes();
    }
    // `holder/m/from/seq/id`, and ids hold no '/'.
    let mail = format!("{}/m/", held.holder());
    key.starts_with(mail.as_bytes()) && key.ends_with(format!("/{}", held.mail.id).as_bytes())
}

/// A tombstone's value: until when it must be kept.
pub fn tomb_value(until_ms: u64) -> [u8; 8] {
    until_ms.to_be_bytes()
}

/// Whether the tombstone stored as `value` may be dropped at `now`.
pub fn tomb_expired(value: &[u8], now: u64) -> bool {
    let until = value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    until < now
}

/// A tombstone outlives every copy of what it removed: a copy expires at
/// most `ttl` after it was stored, which is before now.
pub fn tomb_until(now: u64, ttl_ms: u64) -> u64 {
    now.saturating_add(ttl_ms)
}

/// What a holder's mailbox says of a new item, from one walk over it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Items seen (counting stops at the quota).
    pub count: usize,
    /// An item with the same id is already held.
    pub duplicate: bool,
}

impl Occupancy {
    /// Count one stored key of the holder.
    pub fn observe(&mut self, key: &[u8], held: &Held) {
        self.count += 1;
        self.duplicate |= same_id(key, held);
    }
}

/// The verdict on an item offered to a mailbox (owner's put or a copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Store,
    /// Acknowledged before (tombstone) or already held: nothing to do.
    Known,
    /// The mailbox holds `max_per_user` items.
    Full,
}

/// Whether an item may be stored: never after an ack (tombstone), once per
/// id, and within the quota — the same rule on the owner and on copies, so
/// a copy can never hold more than its owner.
pub fn admit(tombstoned: bool, occupancy: Occupancy, max_per_user: usize) -> Admit {
    if tombstoned || occupancy.duplicate {
        Admit::Known
    } else if occupancy.count >= max_per_user {
        Admit::Full
    } else {
        Admit::Store
    }
}

/// The gestores that hold copies of the mailboxes at ring position `pos`:
/// the first `copies` distinct physical successors (by URL, never our own)
/// of the virtual node whose range holds `pos`. Copies on our own disk, or
/// two on one other gestor, would not survive two failures. None when no
/// virtual node of ours holds `pos` now: a node that joined took it (the
/// resync hands it over, tombstones first), and our targets could be that
/// new owner through another of its virtual nodes, taking a put whose
/// removal it would refuse from us.
pub fn copy_targets(ranges: &VirtualNodes, pos: u64, copies: usize) -> Vec<String> {
    let Some(nb) = ranges.for_key(pos) else {
        return Vec::new();
    };
    distinct_successors(nb, copies)
        .into_iter()
        .map(|p| p.addr)
        .collect()
}

/// Where copies of a change set go: its changes grouped by their target
/// gestores (mailboxes of different virtual nodes of ours have different
/// successors), each group in `mailbox.copy` batches; and the changes of
/// mailboxes no virtual node of ours holds now. A lone gestor's changes
/// (no targets) are dropped: nobody can hold a copy.
pub fn copy_groups(
    ranges: &VirtualNodes,
    copies: usize,
    body: CopyBody,
) -> (BTreeMap<Vec<String>, Vec<CopyBody>>, CopyBody) {
    // `None`: no virtual node of ours holds the mailbox.
    let mut groups: BTreeMap<Option<Vec<String>>, CopyBody> = BTreeMap::new();
    let group_of = |holder: &str| {
        let pos = ring_position(holder.as_bytes());
        ranges
            .for_key(pos)
            .map(|_| copy_targets(ranges, pos, copies))
    };
    for (holder, id) in body.removed {
        let group = groups.entry(group_of(&holder)).or_default();
        group.removed.push((holder, id));
    }
    for held in body.puts {
        let group = groups.entry(group_of(held.holder())).or_default();
        group.puts.push(held);
    }
    let not_ours = groups.remove(&None).unwrap_or_default();
    let groups = groups
        .into_iter()
        .filter_map(|(targets, body)| Some((targets?, batches(&body))))
        .filter(|(targets, _)| !targets.is_empty())
        .collect();
    (groups, not_ours)
}

/// Whether a mailbox no virtual node holds may still be ours: some virtual
/// node's predecessor is unknown (it failed and the ring has not settled),
/// so its range cannot be told now.
pub fn ranges_unsettled(ranges: &VirtualNodes) -> bool {
    ranges.nodes.iter().any(|nb| nb.predecessor.is_none())
}

/// Changes made on this owner, not yet pushed to its successors.
#[derive(Debug, Default)]
pub struct Pending {
    body: CopyBody,
}

impl Pending {
    pub fn put(&mut self, held: Held) {
        self.body.puts.push(held);
    }

    pub fn removed(&mut self, holder: &str, id: &str) {
        self.body.removed.push((holder.to_string(), id.to_string()));
    }

    pub fn is_empty(&self) -> bool {
        self.body.puts.is_empty() && self.body.removed.is_empty()
    }

    /// Everything pending (to split with [`copy_groups`]).
    pub fn take(&mut self) -> CopyBody {
        std::mem::take(&mut self.body)
    }

    /// Put back changes that could not be placed yet, before newer ones.
    pub fn requeue(&mut self, mut body: CopyBody) {
        body.puts.append(&mut self.body.puts);
        body.removed.append(&mut self.body.removed);
        self.body = body;
    }
}

/// Split a change set into requests of at most [`COPY_BATCH`] items;
/// removals first so a put of an id removed meanwhile is refused by its
/// tombstone.
pub fn batches(body: &CopyBody) -> Vec<CopyBody> {
    let mut out = Vec::new();
    for chunk in body.removed.chunks(COPY_BATCH) {
        out.push(CopyBody {
            puts: Vec::new(),
            removed: chunk.to_vec(),
        });
    }
    for chunk in body.puts.chunks(COPY_BATCH) {
        out.push(CopyBody {
            puts: chunk.to_vec(),
            removed: Vec::new(),
        });
    }
    out
}

/// What a `mailbox.copy` may change on this node.
#[derive(Debug, Default, PartialEq)]
pub struct CopyPlan {
    /// Removals to apply, grouped by holder (one walk of each mailbox).
    pub removals: BTreeMap<String, Vec<String>>,
    /// Removals refused: the sender does not own the holder's mailbox.
    pub refused: u64,
    pub puts: Vec<Held>,
}

/// Sort a copy's changes: removals are believed only from the holder's
/// owner (`from_owner(holder)`, asked once per holder — see the plugin's
/// `removal_from_owner`); puts from any admitted gestor, since a put can
/// only add what a client could have sent.
pub fn plan_copy(body: CopyBody, mut from_owner: impl FnMut(&str) -> bool) -> CopyPlan {
    let mut plan = CopyPlan::default();
    let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
    for (holder, id) in body.removed {
        let allowed = *verdicts
            .entry(holder.clone())
            .or_insert_with(|| from_owner(&holder));
        if allowed {
            plan.removals.entry(holder).or_default().push(id);
        } else {
            plan.refused += 1;
        }
    }
    plan.puts = body.puts;
    plan
}

/// What expiry does with one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Expiry {
    Keep,
    /// Remove it (and tombstone it). On the owner, a removal to copy.
    Remove,
    /// Hand this bounce to the sender's owner first, then remove.
    BounceThenRemove(Held),
}

/// An item older than `ttl` expires. A bounce is the only trace of an
/// undelivered message: it stays until its sender fetches it (bounded by
/// the quota). Only the holder's owner bounces; a copy holder just drops
/// its copy (the owner's bounce covers it).
pub fn expiry(held: &Held, now: u64, ttl_ms: u64, owner: bool) -> Expiry {
    if held.bounce.is_some() || now.saturating_sub(held.stored_ms) <= ttl_ms {
        return Expiry::Keep;
    }
    if !owner {
        return Expiry::Remove;
    }
    Expiry::BounceThenRemove(Held {
        mail: held.mail.clone(),
        stored_ms: 0,
        bounce: Some(format!(
            "not fetched by {} within {} ms",
            held.mail.to, ttl_ms
        )),
    })
}

/// Whose removals of a holder's mail this node believes (see the plugin's
/// `removal_from_owner`): the holder's owner, as this node's ring view
/// names it. On the owner itself, its first successor: the previous owner,
/// handing over the part of its range this node took when it joined (with
/// that range's tombstones). `None`: nobody's.
pub fn removal_authority<'a>(
    me: &str,
    owner: &'a str,
    first_successor: Option<&'a str>,
) -> Option<&'a str> {
    if owner != me {
        Some(owner)
    } else {
        first_successor.filter(|s| *s != me)
    }
}

/// Where a resync sends one holder's items and tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resync {
    /// This gestor owns the mailbox: to the copy targets of the virtual
    /// node that holds it (puts and removals).
    Successors,
    /// The mailbox was in one of our virtual nodes' ranges until a node
    /// joined just before that virtual node and took that part: to the new
    /// owner (puts and removals), so it gets the mail it must deliver and
    /// the acks already made.
    Handoff,
    /// A copy (or a stale one): nothing to send. Copies never hand off: a
    /// stale copy of acknowledged mail would come back at a new owner that
    /// lacks the tombstone.
    Skip,
}

/// Resync's memory of one virtual node between rounds: the ring positions
/// that left its range and are not yet handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncState {
    last_predecessor: Option<u64>,
    /// `(start, end]`: positions now owned by nodes that joined before it.
    moved: Option<(u64, u64)>,
}

impl ResyncState {
    /// Note the virtual node's predecessor now (often: the plugin does it
    /// every copy tick, 100 ms, so a failure and a join are seen apart). A
    /// new predecessor inside the old range `(old, me)` took `(old, new]`.
    pub fn observe(&mut self, me: u64, predecessor: Option<u64>) {
        if let (Some(old), Some(new)) = (self.last_predecessor, predecessor) {
            if new != old && new != me && in_ring_interval(new, old, me) {
                let start = self.moved.map_or(old, |(start, _)| start);
                self.moved = Some((start, new));
            }
        }
        self.last_predecessor = predecessor;
    }

    /// Whether `pos` left this virtual node's range and is not handed yet.
    pub fn moved(&self, pos: u64) -> bool {
        self.moved
            .is_some_and(|(start, end)| in_ring_interval(pos, start, end))
    }
}

/// Resync's memory of every virtual node of this gestor, by vnode id:
/// each one's range shrinks on its own when a node joins before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resyncs {
    by_vnode: BTreeMap<u64, ResyncState>,
}

impl Resyncs {
    /// Note every virtual node's predecessor (see [`ResyncState::observe`]);
    /// forget virtual nodes that are no longer ours.
    pub fn observe(&mut self, ranges: &VirtualNodes) {
        let predecessors: Vec<VnodePredecessor> = ranges
            .nodes
            .iter()
            .map(|nb| VnodePredecessor {
                id: nb.me.id,
                predecessor: nb.predecessor.as_ref().map(|p| p.id),
            })
            .collect();
        self.observe_predecessors(&predecessors);
    }

    /// The same from `ring.predecessors`, all `observe` needs.
    pub fn observe_predecessors(&mut self, vnodes: &[VnodePredecessor]) {
        self.by_vnode
            .retain(|id, _| vnodes.iter().any(|v| v.id == *id));
        for v in vnodes {
            self.by_vnode
                .entry(v.id)
                .or_default()
                .observe(v.id, v.predecessor);
        }
    }

    /// Where a holder at ring position `pos` goes; `mine`: this gestor owns it.
    pub fn target(&self, pos: u64, mine: bool) -> Resync {
        if mine {
            Resync::Successors
        } else if self.by_vnode.values().any(|s| s.moved(pos)) {
            Resync::Handoff
        } else {
            Resync::Skip
        }
    }

    /// Whether a handoff is still to be made.
    pub fn handing_off(&self) -> bool {
        self.by_vnode.values().any(|s| s.moved.is_some())
    }

    /// Whether `owner` (the virtual node id owning `pos` now) joined inside
    /// the range that left the virtual node of ours `pos` was in: it took
    /// `pos` from us (or from one who did). An owner elsewhere got the
    /// mailbox from someone else, and what we hold of it is a copy.
    pub fn took_from_me(&self, pos: u64, owner: u64) -> bool {
        self.by_vnode
            .values()
            .any(|s| s.moved(pos) && s.moved(owner))
    }

    /// A whole round that started with `round` delivered every handoff:
    /// nothing left to hand, except ranges that moved during the round.
    pub fn handed(&mut self, round: &Resyncs) {
        for (id, state) in &mut self.by_vnode {
            if round.by_vnode.get(id).map(|r| r.moved) == Some(state.moved) {
                state.moved = None;
            }
        }
    }
}

/// What one resync page sends where.
#[derive(Debug, Default)]
pub struct ResyncPlan {
    /// Items of mailboxes this gestor owns, by their copy targets.
    pub copies: BTreeMap<Vec<String>, CopyBody>,
    /// Items of mailboxes that moved to another node, by their new owner.
    pub handoffs: BTreeMap<String, CopyBody>,
    /// A moved mailbox whose new owner is unknown now (retry next round).
    pub unplaced: bool,
}

/// Where one holder's page entries go.
#[derive(Debug, Clone)]
enum Route {
    Copies(Vec<String>),
    Owner(String),
    Unplaced,
}

/// Sort one page of items or tombstones (see [`Resyncs::target`]).
/// `mine(holder)` is asked once per holder of the page, `owner_of(holder)`
/// (the owning virtual node's id and address) once per moved holder.
pub struct Planner<'s, M, O> {
    state: &'s Resyncs,
    ranges: &'s VirtualNodes,
    copies: usize,
    mine: M,
    owner_of: O,
    decided: BTreeMap<String, Option<Route>>,
}

impl<'s, M, O> Planner<'s, M, O>
where
    M: FnMut(&str) -> bool,
    O: FnMut(&str) -> Option<(u64, String)>,
{
    /// `ranges` and `copies`: where the copies of our own mailboxes go.
    pub fn new(
        state: &'s Resyncs,
        ranges: &'s VirtualNodes,
        copies: usize,
        mine: M,
        owner_of: O,
    ) -> Self {
        Planner {
            state,
            ranges,
            copies,
            mine,
            owner_of,
            decided: BTreeMap::new(),
        }
    }

    /// `None`: skip.
    fn route(&mut self, holder: &str) -> Option<Route> {
        if let Some(d) = self.decided.get(holder) {
            return d.clone();
        }
        let pos = ring_position(holder.as_bytes());
        let d = match self.state.target(pos, (self.mine)(holder)) {
            Resync::Successors => Some(Route::Copies(copy_targets(self.ranges, pos, self.copies))),
            Resync::Handoff => match (self.owner_of)(holder) {
                // Our own URL: another virtual node of ours took it, and
                // `mine` will say so once the ring view agrees.
                Some((_, addr)) if Some(addr.as_str()) == self.ranges.addr() => None,
                Some((id, addr)) if self.state.took_from_me(pos, id) => Some(Route::Owner(addr)),
                // Owned by a node that did not take it from us: a copy.
                Some(_) => None,
                None => Some(Route::Unplaced),
            },
            Resync::Skip => None,
        };
        self.decided.insert(holder.to_string(), d.clone());
        d
    }

    fn body(plan: &mut ResyncPlan, to: Route) -> Option<&mut CopyBody> {
        match to {
            // A lone gestor: nobody to copy to.
            Route::Copies(targets) if targets.is_empty() => None,
            Route::Copies(targets) => Some(plan.copies.entry(targets).or_default()),
            Route::Owner(addr) => Some(plan.handoffs.entry(addr).or_default()),
            Route::Unplaced => {
                plan.unplaced = true;
                None
            }
        }
    }

    /// Items of one page.
    pub fn items(&mut self, page: Vec<Held>) -> ResyncPlan {
        let mut plan = ResyncPlan::default();
        for held in page {
            let Some(to) = self.route(held.holder()) else {
                continue;
            };
            if let Some(body) = Self::body(&mut plan, to) {
                body.puts.push(held);
            }
        }
        plan
    }

    /// Tombstone keys (`holder/id`) of one page, as removals.
    pub fn tombs<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>) -> ResyncPlan {
        let mut plan = ResyncPlan::default();
        for k in keys {
            let Some(holder) = holder_of_key(k) else {
                continue;
            };
            let Some(id) = k
                .get(holder.len() + 1..)
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                continue;
            };
            let Some(to) = self.route(holder) else {
                continue;
            };
            if let Some(body) = Self::body(&mut plan, to) {
                body.removed.push((holder.to_string(), id.to_string()));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_api::chat::ChatMessage;
    use gestor_api::ring::{Neighbourhood, PeerRef};

    pub(crate) fn held(from: &str, seq: u64, id: &str, bounce: Option<&str>) -> Held {
        Held {
            mail: ChatMessage {
                id: id.into(),
                from: from.into(),
                to: "bob".into(),
                seq,
                sent_ms: 1,
                text: "hi".into(),
            },
            stored_ms: 0,
            bounce: bounce.map(str::to_string),
        }
    }

    /// PROTOCOL.md §18.3: `stored` is false when the mailbox already holds
    /// the id, whatever the seq or sender it came with.
    #[test]
    fn a_mailbox_holds_an_id_once() {
        let first = item_key(&held("alice", 1, "id1", None));
        assert!(same_id(first.as_bytes(), &held("alice", 1, "id1", None)));
        assert!(same_id(first.as_bytes(), &held("alice", 7, "id1", None)));
        assert!(same_id(first.as_bytes(), &held("carol", 1, "id1", None)));
        assert!(!same_id(first.as_bytes(), &held("alice", 1, "id2", None)));
        // An id that ends like another is another id.
        assert!(!same_id(first.as_bytes(), &held("alice", 1, "d1", None)));
        // A bounce is held for its sender, apart from the mail it holds.
        let bounce = held("bob", 1, "id1", Some("expired"));
        assert!(!same_id(first.as_bytes(), &bounce));
        assert!(same_id(item_key(&bounce).as_bytes(), &bounce));
    }

    #[test]
    fn keys_name_their_holder_and_id() {
        let mail = held("alice", 3, "id1", None);
        let key = item_key(&mail);
        assert_eq!(holder_of_key(key.as_bytes()), Some("bob"));
        assert_eq!(mail_id_of_key(key.as_bytes()), Some("id1"));
        let bounce = held("bob", 1, "id2", Some("expired"));
        let key = item_key(&bounce);
        assert_eq!(holder_of_key(key.as_bytes()), Some("bob"));
        assert_eq!(mail_id_of_key(key.as_bytes()), Some("id2"));
        assert_eq!(mail_id_of_key(b"bob"), None);
        assert!(key.starts_with(&holder_prefix("bob")));
    }

    #[test]
    fn admission_tombstones_duplicates_and_quota() {
        let h = held("alice", 1, "id1", None);
        let mut occ = Occupancy::default();
        assert_eq!(admit(false, occ, 2), Admit::Store);
        assert_eq!(admit(true, occ, 2), Admit::Known);
        occ.observe(item_key(&held("alice", 2, "other", None)).as_bytes(), &h);
        occ.observe(item_key(&held("carol", 1, "more", None)).as_bytes(), &h);
        assert_eq!(admit(false, occ, 2), Admit::Full);
        occ.observe(item_key(&held("carol", 9, "id1", None)).as_bytes(), &h);
        assert_eq!(admit(false, occ, 5), Admit::Known);
    }

    #[test]
    fn tombstones_outlive_their_copies() {
        let until = tomb_until(1_000, 500);
        assert_eq!(until, 1_500);
        assert!(!tomb_expired(&tomb_value(until), 1_500));
        assert!(tomb_expired(&tomb_value(until), 1_501));
        // Unreadable: kept no longer than a tombstone due at 0.
        assert!(!tomb_expired(b"bad", 0));
        assert!(tomb_expired(b"bad", 1));
    }

    fn at(id: u64, gestor: u16) -> PeerRef {
        PeerRef {
            id,
            addr: format!("tcp://n{gestor}"),
        }
    }

    /// A virtual node: `(id, predecessor, successors)`, peers as `(id, gestor)`.
    type VNode<'a> = (u64, Option<(u64, u16)>, &'a [(u64, u16)]);

    /// Gestor 1's virtual nodes.
    fn ours(vnodes: &[VNode<'_>]) -> VirtualNodes {
        VirtualNodes {
            nodes: vnodes
                .iter()
                .map(|(id, pred, succ)| Neighbourhood {
                    me: at(*id, 1),
                    predecessor: pred.map(|(p, g)| at(p, g)),
                    successors: succ.iter().map(|(s, g)| at(*s, *g)).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn copies_go_to_distinct_gestores_after_the_owning_virtual_node() {
        // Gestor 1 at 100 and 300; gestor 2 at 200 and 400, gestor 3 at 250.
        let ranges = ours(&[
            (
                100,
                Some((50, 4)),
                &[(200, 2), (250, 3), (300, 1), (400, 2)],
            ),
            (
                300,
                Some((250, 3)),
                &[(400, 2), (100, 1), (200, 2), (450, 4)],
            ),
        ]);
        let targets = |pos| copy_targets(&ranges, pos, 2);
        assert_eq!(targets(60), vec!["tcp://n2", "tcp://n3"]);
        // Never our own URL, never one gestor twice.
        assert_eq!(targets(260), vec!["tcp://n2", "tcp://n4"]);
        assert_eq!(copy_targets(&ranges, 60, 0), Vec::<String>::new());
        // Not ours now (a node joined): no copies.
        assert!(targets(150).is_empty());
        let alone = ours(&[(1, Some((1, 1)), &[(1, 1)])]);
        assert!(copy_targets(&alone, 7, 2).is_empty());
        assert!(copy_targets(&VirtualNodes::default(), 7, 2).is_empty());
    }

    fn not_ours_of(removed: &[(&str, &str)]) -> CopyBody {
        CopyBody {
            puts: Vec::new(),
            removed: removed
                .iter()
                .map(|(h, id)| (h.to_string(), id.to_string()))
                .collect(),
        }
    }

    #[test]
    fn changes_are_grouped_by_their_copy_targets() {
        let (a, b) = (ring_position(b"alice"), ring_position(b"bruno"));
        // A virtual node ending at each of alice's and bruno's positions.
        let ranges = ours(&[
            (a, Some((a - 1, 4)), &[(a + 1, 2), (a + 2, 3)]),
            (b, Some((b - 1, 4)), &[(b + 1, 1), (b + 2, 3), (b + 3, 5)]),
        ]);
        let mut p = Pending::default();
        p.put(Held {
            mail: ChatMessage {
                to: "alice".into(),
                ..held("bruno", 1, "a1", None).mail
            },
            ..held("bruno", 1, "a1", None)
        });
        // A bounce is held by its sender.
        p.put(held("bruno", 1, "b1", Some("expired")));
        p.removed("bruno", "b0");
        // bob's mailbox is none of ours: not copied.
        p.removed("bob", "x");
        let (groups, not_ours) = copy_groups(&ranges, 2, p.take());
        assert!(p.is_empty());
        assert_eq!(not_ours.removed, vec![("bob".into(), "x".into())]);
        assert!(not_ours.puts.is_empty());
        assert_eq!(groups.len(), 2);
        let to_alice = &groups[&vec!["tcp://n2".to_string(), "tcp://n3".into()]];
        assert_eq!(to_alice.len(), 1);
        assert_eq!(to_alice[0].puts[0].mail.id, "a1");
        // Our own gestor 1 is no target of bruno's.
        let to_bruno = &groups[&vec!["tcp://n3".to_string(), "tcp://n5".into()]];
        // Removals first, then puts.
        assert_eq!(to_bruno[0].removed, vec![("bruno".into(), "b0".into())]);
        assert_eq!(to_bruno[1].puts[0].mail.id, "b1");
        assert!(!ranges_unsettled(&ranges));
        let alone = ours(&[(1, Some((1, 1)), &[])]);
        p.removed("bob", "x");
        let (groups, not_ours) = copy_groups(&alone, 2, p.take());
        assert!(groups.is_empty() && not_ours.removed.is_empty());
        // Kept for later, before newer changes.
        p.removed("bob", "y");
        p.requeue(not_ours_of(&[("bob", "x")]));
        assert_eq!(batches(&p.take())[0].removed[0].1, "x");
        assert!(ranges_unsettled(&ours(&[
            (1, Some((0, 2)), &[]),
            (5, None, &[])
        ])));
    }

    #[test]
    fn pending_changes_batch_removals_first() {
        let mut p = Pending::default();
        assert!(p.is_empty() && batches(&p.take()).is_empty());
        for i in 0..(COPY_BATCH + 1) {
            p.put(held("alice", i as u64 + 1, &format!("id{i}"), None));
        }
        p.removed("bob", "x");
        let batches = batches(&p.take());
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].removed.len(), 1);
        assert_eq!(batches[1].puts.len(), COPY_BATCH);
        assert_eq!(batches[2].puts.len(), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn removals_only_from_the_owner_asked_once_per_holder() {
        let body = CopyBody {
            puts: vec![held("alice", 1, "p", None)],
            removed: vec![
                ("bob".into(), "1".into()),
                ("eve".into(), "2".into()),
                ("bob".into(), "3".into()),
            ],
        };
        let mut asked = Vec::new();
        let plan = plan_copy(body, |h| {
            asked.push(h.to_string());
            h == "bob"
        });
        assert_eq!(asked, vec!["bob", "eve"]);
        assert_eq!(plan.refused, 1);
        assert_eq!(plan.removals.len(), 1);
        assert_eq!(plan.removals["bob"], vec!["1", "3"]);
        assert_eq!(plan.puts.len(), 1);
    }

    #[test]
    fn expiry_bounces_on_the_owner_only() {
        let mut h = held("alice", 1, "id1", None);
        h.stored_ms = 100;
        assert_eq!(expiry(&h, 600, 500, true), Expiry::Keep);
        assert_eq!(expiry(&h, 601, 500, false), Expiry::Remove);
        match expiry(&h, 601, 500, true) {
            Expiry::BounceThenRemove(b) => {
                assert_eq!(b.holder(), "alice");
                assert_eq!(b.mail.id, "id1");
            }
            other => panic!("{other:?}"),
        }
        let bounce = held("bob", 1, "id1", Some("expired"));
        assert_eq!(expiry(&bounce, u64::MAX, 1, true), Expiry::Keep);
    }

    #[test]
    fn a_joining_predecessor_takes_part_of_the_range() {
        let one = |pred: u64| ours(&[(100, Some((pred, 2)), &[])]);
        let mut r = Resyncs::default();
        r.observe(&one(10));
        assert!(!r.handing_off());
        assert_eq!(r.target(50, true), Resync::Successors);
        assert_eq!(r.target(50, false), Resync::Skip);
        // A node joins at 40: (10, 40] moved.
        r.observe(&one(40));
        assert!(r.handing_off());
        assert_eq!(r.target(20, false), Resync::Handoff);
        assert_eq!(r.target(40, false), Resync::Handoff);
        assert_eq!(r.target(5, false), Resync::Skip);
        assert!(r.took_from_me(20, 40));
        // Another at 60 while a round is under way: (10, 60].
        let round = r.clone();
        r.observe(&one(60));
        assert_eq!(r.target(20, false), Resync::Handoff);
        assert_eq!(r.target(55, false), Resync::Handoff);
        // That round did not know of 60: its success hands nothing off.
        r.handed(&round);
        assert!(r.handing_off());
        let round = r.clone();
        r.handed(&round);
        assert_eq!(r.target(20, false), Resync::Skip);
        // The predecessor died (the range grew): nothing moved away.
        r.observe(&one(5));
        assert!(!r.handing_off());
        // Wrapping past zero.
        let mut w = Resyncs::default();
        w.observe(&ours(&[(3, Some((u64::MAX - 10, 2)), &[])]));
        w.observe(&ours(&[(3, Some((1, 2)), &[])]));
        assert_eq!(w.target(u64::MAX, false), Resync::Handoff);
        assert_eq!(w.target(2, false), Resync::Skip);
    }

    #[test]
    fn each_virtual_node_hands_off_what_left_its_own_range() {
        // Gestor 1 at 100 (after 10) and at 500 (after 300).
        let view = |p1, p2| ours(&[(100, Some((p1, 2)), &[]), (500, Some((p2, 3)), &[])]);
        let mut r = Resyncs::default();
        r.observe(&view(10, 300));
        // A node joins at 400, before 500: (300, 400] moved, not 100's range.
        r.observe(&view(10, 400));
        assert_eq!(r.target(350, false), Resync::Handoff);
        assert_eq!(r.target(50, false), Resync::Skip);
        assert!(r.took_from_me(350, 400));
        assert!(!r.took_from_me(350, 60), "60 did not join in 500's range");
        // Another joins at 60, before 100.
        r.observe(&view(60, 400));
        assert!(r.took_from_me(20, 60));
        assert!(
            !r.took_from_me(20, 400),
            "the position and its owner left different virtual nodes"
        );
        // A virtual node no longer ours: forgotten, with what it had moved.
        r.observe(&ours(&[(100, Some((60, 2)), &[])]));
        assert_eq!(r.target(350, false), Resync::Skip);
        assert!(r.handing_off(), "100's handoff is still due");
    }

    #[test]
    fn predecessors_alone_tell_the_same_as_the_ranges() {
        // The idle copy tick observes `ring.predecessors`, the busy one
        // `ring.ranges`: interleaved, they must track one history.
        let view = |p1: Option<u64>, p2| {
            ours(&[(100, p1.map(|p| (p, 2)), &[]), (500, Some((p2, 3)), &[])])
        };
        let preds = |p1: Option<u64>, p2| {
            vec![
                VnodePredecessor {
                    id: 100,
                    predecessor: p1,
                },
                VnodePredecessor {
                    id: 500,
                    predecessor: Some(p2),
                },
            ]
        };
        let history = [
            (Some(10), 300),
            (None, 300),
            (Some(10), 400),
            (Some(60), 400),
            (Some(5), 450),
        ];
        let (mut by_ranges, mut mixed) = (Resyncs::default(), Resyncs::default());
        for (i, (p1, p2)) in history.into_iter().enumerate() {
            by_ranges.observe(&view(p1, p2));
            if i % 2 == 0 {
                mixed.observe_predecessors(&preds(p1, p2));
            } else {
                mixed.observe(&view(p1, p2));
            }
            assert_eq!(by_ranges, mixed, "after step {i}");
        }
        // (300, 400] and (10, 60] moved; a dropped predecessor moved nothing.
        assert!(mixed.took_from_me(350, 400));
        assert!(mixed.took_from_me(20, 60));
        // A virtual node missing from the answer is forgotten either way.
        mixed.observe_predecessors(&preds(Some(60), 450)[..1]);
        assert_eq!(mixed.target(350, false), Resync::Skip);
    }

    #[test]
    fn removals_are_believed_from_the_owner_or_the_handing_predecessor() {
        assert_eq!(removal_authority("me", "o", Some("s")), Some("o"));
        assert_eq!(removal_authority("me", "me", Some("s")), Some("s"));
        assert_eq!(removal_authority("me", "me", Some("me")), None);
        assert_eq!(removal_authority("me", "me", None), None);
    }

    #[test]
    fn resync_pages_split_by_destination() {
        let pos = |u: &str| ring_position(u.as_bytes());
        let (bob, bruno, carla) = (pos("bob"), pos("bruno"), pos("carla"));
        let vnode = |me: u64, pred: u64, succ: &'static [(u64, u16)]| (me, Some((pred, 9)), succ);
        // Our virtual nodes at bob's and bruno's positions (different copy
        // targets) and one just after carla's, which a node joining at
        // carla's position cuts.
        let view = |carla_pred| {
            ours(&[
                vnode(bob, bob.wrapping_sub(1), &[(1, 2), (2, 3)]),
                vnode(
                    bruno,
                    bruno.wrapping_sub(1),
                    &[(3, 1), (4, 4), (5, 4), (6, 5)],
                ),
                vnode(carla.wrapping_add(10), carla_pred, &[]),
            ])
        };
        let mut r = Resyncs::default();
        r.observe(&view(carla.wrapping_sub(10)));
        let ranges = view(carla);
        r.observe(&ranges);
        let to_carla = Held {
            mail: ChatMessage {
                to: "carla".into(),
                ..held("alice", 2, "b", None).mail
            },
            stored_ms: 0,
            bounce: None,
        };
        let items = vec![
            held("alice", 1, "a", None),
            held("carol", 1, "c", None),
            held("bruno", 1, "d", Some("expired")),
            to_carla.clone(),
            held("zed", 1, "z", Some("expired")),
        ];
        let mine = |h: &str| h == "bob" || h == "bruno";
        let mut asked = Vec::new();
        let plan = Planner::new(&r, &ranges, 2, mine, |h| {
            asked.push(h.to_string());
            Some((carla, format!("tcp://{h}-owner")))
        })
        .items(items);
        // Ours: to each virtual node's own copy targets, one copy per item.
        let targets = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        assert_eq!(plan.copies[&targets("tcp://n2", "tcp://n3")].puts.len(), 2);
        assert_eq!(plan.copies[&targets("tcp://n4", "tcp://n5")].puts.len(), 1);
        assert_eq!(plan.copies.len(), 2);
        assert_eq!(plan.handoffs["tcp://carla-owner"].puts.len(), 1);
        assert_eq!(asked, vec!["carla"], "zed's owner is not asked");
        // Carla's owner now is us (another virtual node), or one that did
        // not take it from us: no handoff.
        for owner in [(carla, "tcp://n1"), (carla.wrapping_sub(20), "tcp://x")] {
            let plan = Planner::new(&r, &ranges, 2, mine, |_| Some((owner.0, owner.1.into())))
                .items(vec![to_carla.clone()]);
            assert!(plan.handoffs.is_empty() && !plan.unplaced, "{owner:?}");
        }
        let tombs = Planner::new(&r, &ranges, 2, mine, |_| None).tombs([
            &b"bob/x"[..],
            b"carla/y",
            b"zed/z",
            b"nokey",
        ]);
        let removed = &tombs.copies[&targets("tcp://n2", "tcp://n3")].removed;
        assert_eq!(removed, &vec![("bob".into(), "x".into())]);
        assert!(tombs.unplaced, "carla's new owner unknown");
        assert!(tombs.handoffs.is_empty());
    }
}
