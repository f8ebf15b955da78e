//! The mailbox's rules, I/O-free: store keys and de-duplication by id, the
//! quota, which changes go to which successors, what a copy may change,
//! expiry and tombstones, and what a resync or a handoff sends. Everything
//! here takes its inputs (items, ring neighbours, `now`, verdicts the shell
//! obtained) and returns decisions; [`crate::boxes`] applies them to a
//! [`gestor_sdk::Store`], and the plugin (lib.rs) does the network and the
//! clock.

use gestor_api::mailbox::{CopyBody, Held};
use gestor_api::ring::Neighbourhood;
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

/// The addresses of the first `copies` successors other than this node.
pub fn copy_targets(n: &Neighbourhood, copies: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &n.successors {
        if p.id != n.me.id && p.addr != n.me.addr && !out.contains(&p.addr) && out.len() < copies {
            out.push(p.addr.clone());
        }
    }
    out
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

    /// Everything pending, as `mailbox.copy` requests; removals first so a
    /// put of an id removed meanwhile is refused by its tombstone.
    pub fn take(&mut self) -> Vec<CopyBody> {
        batches(&std::mem::take(&mut self.body))
    }
}

/// Split a change set into requests of at most [`COPY_BATCH`] items.
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
    /// This node owns the mailbox: to its successors (puts and removals).
    Successors,
    /// The mailbox was in this node's range until a node joined just
    /// before it and took that part: to the new owner (puts and removals),
    /// so it gets the mail it must deliver and the acks already made.
    Handoff,
    /// A copy (or a stale one): nothing to send. Copies never hand off: a
    /// stale copy of acknowledged mail would come back at a new owner that
    /// lacks the tombstone.
    Skip,
}

/// Resync's memory between rounds: the ring positions that left this
/// node's range and are not yet handed over.
#[derive(Debug, Default)]
pub struct ResyncState {
    last_predecessor: Option<u64>,
    /// `(start, end]`: positions now owned by nodes that joined before us.
    moved: Option<(u64, u64)>,
}

impl ResyncState {
    /// Note this node's predecessor now (often: the plugin does it every
    /// copy tick, 100 ms, so a failure and a join are seen apart). A new
    /// predecessor inside the old range `(old, me)` took `(old, new]`.
    pub fn observe(&mut self, me: u64, predecessor: Option<u64>) {
        if let (Some(old), Some(new)) = (self.last_predecessor, predecessor) {
            if new != old && new != me && in_ring_interval(new, old, me) {
                let start = self.moved.map_or(old, |(start, _)| start);
                self.moved = Some((start, new));
            }
        }
        self.last_predecessor = predecessor;
    }

    /// Where a holder at ring position `pos` goes; `mine`: this node owns it.
    pub fn target(&self, pos: u64, mine: bool) -> Resync {
        match self.moved {
            _ if mine => Resync::Successors,
            Some((start, end)) if in_ring_interval(pos, start, end) => Resync::Handoff,
            _ => Resync::Skip,
        }
    }

    /// Whether a handoff is still to be made.
    pub fn handing_off(&self) -> bool {
        self.moved.is_some()
    }

    /// Whether `owner` (a node id) joined inside the range that left
    /// this node: it took its range from us (or from one who did). An
    /// owner elsewhere got the mailbox from someone else, and what we hold
    /// of it is a copy.
    pub fn took_from_me(&self, owner: u64) -> bool {
        self.moved
            .is_some_and(|(start, end)| in_ring_interval(owner, start, end))
    }

    /// A whole round delivered every handoff: nothing left to hand.
    pub fn handed(&mut self) {
        self.moved = None;
    }
}

/// What one resync page sends where.
#[derive(Debug, Default)]
pub struct ResyncPlan {
    /// Items of mailboxes this node owns, for its successors.
    pub successors: CopyBody,
    /// Items of mailboxes that moved to another node, by their new owner.
    pub handoffs: BTreeMap<String, CopyBody>,
    /// A moved mailbox whose new owner is unknown now (retry next round).
    pub unplaced: bool,
}

/// Sort one page of items or tombstones (see [`ResyncState::target`]).
/// `mine(holder)` is asked once per holder of the page, `owner_of(holder)`
/// (the owner's id and address) once per moved holder.
pub struct Planner<'s, M, O> {
    state: &'s ResyncState,
    mine: M,
    owner_of: O,
    decided: BTreeMap<String, Option<String>>,
    successors_mark: String,
}

impl<'s, M, O> Planner<'s, M, O>
where
    M: FnMut(&str) -> bool,
    O: FnMut(&str) -> Option<(u64, String)>,
{
    pub fn new(state: &'s ResyncState, mine: M, owner_of: O) -> Self {
        Planner {
            state,
            mine,
            owner_of,
            decided: BTreeMap::new(),
            // Not a URL: stands for "my successors" in `decided`.
            successors_mark: String::from("\0successors"),
        }
    }

    /// `None`: skip; `Some(mark)`: to the successors; `Some(url)`: to that owner.
    fn route(&mut self, holder: &str) -> Option<String> {
        if let Some(d) = self.decided.get(holder) {
            return d.clone();
        }
        let pos = ring_position(holder.as_bytes());
        let d = match self.state.target(pos, (self.mine)(holder)) {
            Resync::Successors => Some(self.successors_mark.clone()),
            Resync::Handoff => match (self.owner_of)(holder) {
                Some((id, addr)) if self.state.took_from_me(id) => Some(addr),
                // Owned by a node that did not take it from us: a copy.
                Some(_) => None,
                // Unknown now: retry next round.
                None => Some(String::new()),
            },
            Resync::Skip => None,
        };
        self.decided.insert(holder.to_string(), d.clone());
        d
    }

    fn body<'p>(&self, plan: &'p mut ResyncPlan, to: String) -> Option<&'p mut CopyBody> {
        if to == self.successors_mark {
            Some(&mut plan.successors)
        } else if to.is_empty() {
            plan.unplaced = true;
            None
        } else {
            Some(plan.handoffs.entry(to).or_default())
        }
    }

    /// Items of one page.
    pub fn items(&mut self, page: Vec<Held>) -> ResyncPlan {
        let mut plan = ResyncPlan::default();
        for held in page {
            let Some(to) = self.route(held.holder()) else {
                continue;
            };
            if let Some(body) = self.body(&mut plan, to) {
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
            if let Some(body) = self.body(&mut plan, to) {
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
    use gestor_api::ring::PeerRef;

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

    #[test]
    fn copies_go_to_distinct_successors_other_than_me() {
        let peer = |id: u64| PeerRef {
            id,
            addr: format!("tcp://n{id}"),
        };
        let n = Neighbourhood {
            me: peer(1),
            predecessor: Some(peer(9)),
            successors: vec![peer(2), peer(2), peer(1), peer(3), peer(4)],
        };
        assert_eq!(copy_targets(&n, 2), vec!["tcp://n2", "tcp://n3"]);
        assert_eq!(copy_targets(&n, 0), Vec::<String>::new());
        let alone = Neighbourhood {
            me: peer(1),
            predecessor: None,
            successors: vec![peer(1)],
        };
        assert!(copy_targets(&alone, 2).is_empty());
    }

    #[test]
    fn pending_changes_batch_removals_first() {
        let mut p = Pending::default();
        assert!(p.is_empty() && p.take().is_empty());
        for i in 0..(COPY_BATCH + 1) {
            p.put(held("alice", i as u64 + 1, &format!("id{i}"), None));
        }
        p.removed("bob", "x");
        let batches = p.take();
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
        let mut r = ResyncState::default();
        r.observe(100, Some(10));
        assert!(!r.handing_off());
        assert_eq!(r.target(50, true), Resync::Successors);
        assert_eq!(r.target(50, false), Resync::Skip);
        // A node joins at 40: (10, 40] moved.
        r.observe(100, Some(40));
        assert!(r.handing_off());
        assert_eq!(r.target(20, false), Resync::Handoff);
        assert_eq!(r.target(40, false), Resync::Handoff);
        assert_eq!(r.target(5, false), Resync::Skip);
        // Another at 60 before the first handoff went through: (10, 60].
        r.observe(100, Some(60));
        assert_eq!(r.target(20, false), Resync::Handoff);
        assert_eq!(r.target(55, false), Resync::Handoff);
        r.handed();
        assert_eq!(r.target(20, false), Resync::Skip);
        // The predecessor died (the range grew): nothing moved away.
        r.observe(100, Some(5));
        assert!(!r.handing_off());
        // Wrapping past zero.
        let mut w = ResyncState::default();
        w.observe(3, Some(u64::MAX - 10));
        w.observe(3, Some(1));
        assert_eq!(w.target(u64::MAX, false), Resync::Handoff);
        assert_eq!(w.target(2, false), Resync::Skip);
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
        let mut r = ResyncState::default();
        let (me, pred) = (u64::MAX, 0);
        r.observe(me, Some(pred));
        let carla = ring_position(b"carla");
        r.observe(me, Some(carla));
        let items = vec![
            held("alice", 1, "a", None),
            held("carol", 1, "c", None),
            Held {
                mail: ChatMessage {
                    to: "carla".into(),
                    ..held("alice", 2, "b", None).mail
                },
                stored_ms: 0,
                bounce: None,
            },
        ];
        let mut asked = Vec::new();
        let plan = Planner::new(
            &r,
            |h| h == "bob",
            |h| {
                asked.push(h.to_string());
                Some((carla, format!("tcp://{h}-owner")))
            },
        )
        .items(items);
        // bob's mail: mine, to the successors, one copy per item.
        assert_eq!(plan.successors.puts.len(), 2);
        let moved = in_ring_interval(carla, pred, carla);
        assert!(moved);
        assert_eq!(plan.handoffs["tcp://carla-owner"].puts.len(), 1);
        assert_eq!(asked, vec!["carla"]);
        let tombs = Planner::new(&r, |h| h == "bob", |_| None).tombs([
            &b"bob/x"[..],
            b"carla/y",
            b"zed/z",
            b"nokey",
        ]);
        assert_eq!(tombs.successors.removed, vec![("bob".into(), "x".into())]);
        assert!(tombs.unplaced, "carla's new owner unknown");
        assert!(tombs.handoffs.is_empty());
    }
}
