//! Where a gestor's virtual nodes sit on the ring. Plain code: the plugin
//! gives it the ring table and persists what it returns.
//!
//! Random positions balance the key space only slowly: with 8 gestores a
//! gestor's share has a max/mean of about 1.5 at 8 random positions each
//! and needs well over 100 to stay under 1.25 (simulated).
//! So a joining gestor that knows the whole ring takes its extra positions
//! where they relieve most: each one takes part of the largest arc of the
//! gestor that owns the most key space then (ARCHITECTURE §6.1 has the
//! measured balance per count). The gestor creating a ring spaces its
//! positions evenly. The table is a survey of every gestor's positions
//! ([`Survey`]), taken once the ring stands still ([`Settling`]); without
//! a complete survey (a ring still forming) the positions are hashes:
//! worse balance, never a wrong answer.

use gestor_api::ring::{PeerRef, RingTable, VirtualNodes};
use gestor_sdk::hash::ring_position;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const RING: u128 = 1 << 64;

/// `count` positions spread evenly from `first` (the creator of a ring).
pub fn evenly_spaced(first: u64, count: usize) -> Vec<u64> {
    let count = count.max(1) as u128;
    (0..count)
        .map(|i| first.wrapping_add((RING * i / count) as u64))
        .collect()
}

/// `count` positions from hashes of `first` (no table to place them by).
pub fn hashed(first: u64, count: usize) -> Vec<u64> {
    let mut out = vec![first];
    let mut i = 1u32;
    while out.len() < count.max(1) {
        let p = ring_position(format!("{first:016x}/{i}").as_bytes());
        if !out.contains(&p) {
            out.push(p);
        }
        i += 1;
    }
    out
}

/// The ring as placement sees it, surveyed breadth first: every gestor
/// that any answer names (as a predecessor or successor) is asked once for
/// all its positions (`ring.ranges`). A walk along successor lists is not
/// enough here: a list learns of a new position one stabilize round per
/// hop, so a gestor that joined seconds ago is missing from most lists,
/// and positions placed by such a table pile onto the wrong arcs. A gestor
/// that does not answer is left out (its arcs are its successors' now).
pub struct Survey {
    positions: BTreeMap<u64, PeerRef>,
    named: BTreeSet<String>,
    to_ask: VecDeque<String>,
}

impl Survey {
    /// Start from our own answer (`me`: our URL).
    pub fn start(me: &str, mine: &VirtualNodes) -> Survey {
        let mut survey = Survey {
            positions: BTreeMap::new(),
            named: BTreeSet::from([me.to_string()]),
            to_ask: VecDeque::new(),
        };
        survey.learn(mine);
        survey
    }

    /// The next gestor to ask, if any is left.
    pub fn next(&mut self) -> Option<String> {
        self.to_ask.pop_front()
    }

    /// One gestor's answer: its positions, and the gestores it names.
    pub fn learn(&mut self, answer: &VirtualNodes) {
        for nb in &answer.nodes {
            self.positions.insert(nb.me.id, nb.me.clone());
            for p in nb.predecessor.iter().chain(&nb.successors) {
                if self.named.insert(p.addr.clone()) {
                    self.to_ask.push_back(p.addr.clone());
                }
            }
        }
    }

    /// The positions of every gestor that answered; `complete` when no
    /// gestor named was left unasked.
    pub fn finish(self) -> RingTable {
        RingTable {
            members: self.positions.into_values().collect(),
            complete: self.to_ask.is_empty(),
        }
    }
}

/// Successive views of the ring, for a gestor waiting to place its
/// positions. A ring that is still taking in a joiner gives views that
/// differ from survey to survey; placement waits for two complete views in a
/// row that agree.
#[derive(Debug, Default)]
pub struct Settling {
    last: Option<RingTable>,
    agreed: bool,
}

impl Settling {
    pub fn observe(&mut self, view: RingTable) {
        if !view.complete {
            *self = Settling::default();
            return;
        }
        self.agreed = self.last.as_ref() == Some(&view);
        self.last = Some(view);
    }

    /// The view, once two in a row agreed.
    pub fn settled(&self) -> Option<&RingTable> {
        self.last.as_ref().filter(|_| self.agreed)
    }

    /// The last complete view, settled or not.
    pub fn latest(&self) -> Option<&RingTable> {
        self.last.as_ref()
    }
}

/// An arc of the ring: `(from, to, length)`, owned by the position `to`.
type Arc = (u64, u64, u128);

/// Key space owned per gestor URL and each position's arc.
fn shares(ring: &BTreeMap<u64, String>) -> (BTreeMap<&str, u128>, Vec<Arc>) {
    let mut load: BTreeMap<&str, u128> = BTreeMap::new();
    let mut arcs = Vec::with_capacity(ring.len());
    let mut prev = ring.keys().next_back().copied().unwrap_or(0);
    for (&pos, addr) in ring {
        let len = match pos.wrapping_sub(prev) {
            0 => RING,
            d => u128::from(d),
        };
        *load.entry(addr).or_default() += len;
        arcs.push((prev, pos, len));
        prev = pos;
    }
    (load, arcs)
}

/// `count` positions for the gestor at `me`, whose first position is
/// `first`, given the ring as `table` (complete). Each new position takes
/// part of the largest arc of the most loaded other gestor: as much as
/// brings us to an even share (spread over the positions left), within
/// 10–90% of that arc. `salt` (our id, say) nudges the cut so two gestores
/// placing themselves from the same table do not pick the same point.
pub fn steal(table: &RingTable, me: &str, first: u64, count: usize, salt: u64) -> Vec<u64> {
    let mut ring: BTreeMap<u64, String> = table
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    ring.insert(first, me.to_string());
    let mut out = vec![first];
    let mut salt = salt;
    while out.len() < count.max(1) {
        let (load, arcs) = shares(&ring);
        let heaviest = load
            .iter()
            .filter(|(addr, _)| **addr != me)
            .max_by_key(|(addr, len)| (**len, std::cmp::Reverse(**addr)))
            .map(|(addr, _)| addr.to_string());
        let Some(heaviest) = heaviest else {
            // Alone: nothing to take from.
            return evenly_spaced(first, count);
        };
        let (from, _, len) = arcs
            .iter()
            .filter(|(_, pos, _)| ring.get(pos) == Some(&heaviest))
            .max_by_key(|(_, pos, len)| (*len, *pos))
            .copied()
            .expect("the heaviest gestor owns an arc");
        // Take what brings us to an even share, spread over the positions
        // still to place, within 10–90% of the arc; plus up to 1% of it
        // picked by 32 bits of the salt, so two gestores placing by the
        // same table (joining at the same time) never land on one point.
        let gestores = load.len() as u128;
        let mine = load.get(me).copied().unwrap_or(0);
        let remaining = (count.max(1) - out.len()) as u128;
        let need = (RING / gestores).saturating_sub(mine) / remaining;
        salt = salt
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = (len / 100) * u128::from(salt >> 32) / (1 << 32);
        let cut = need.clamp(len / 10, len * 9 / 10) + jitter;
        let pos = from.wrapping_add(cut.max(1) as u64);
        if ring.contains_key(&pos) {
            continue;
        }
        ring.insert(pos, me.to_string());
        out.push(pos);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_api::ring::PeerRef;
    use std::collections::BTreeSet;

    fn table_of(ring: &BTreeMap<u64, String>) -> RingTable {
        RingTable {
            members: ring
                .iter()
                .map(|(&id, addr)| PeerRef {
                    id,
                    addr: addr.clone(),
                })
                .collect(),
            complete: true,
        }
    }

    fn max_over_mean(ring: &BTreeMap<u64, String>, gestores: usize) -> f64 {
        let (load, _) = shares(ring);
        let max = load.values().max().copied().unwrap_or(0) as f64;
        max / (RING as f64 / gestores as f64)
    }

    /// Gestores joining one after the other, each placing its positions
    /// from the table of the ring so far.
    fn grow(gestores: usize, count: usize, seed: u64) -> BTreeMap<u64, String> {
        let mut ring = BTreeMap::new();
        for g in 0..gestores {
            let addr = format!("tcp://127.0.0.1:{}", 7000 + g);
            let first = ring_position(format!("{seed}/{g}").as_bytes());
            let positions = if ring.is_empty() {
                evenly_spaced(first, count)
            } else {
                steal(&table_of(&ring), &addr, first, count, first)
            };
            assert_eq!(positions.len(), count);
            assert_eq!(positions[0], first);
            for p in positions {
                assert!(ring.insert(p, addr.clone()).is_none(), "a position twice");
            }
        }
        ring
    }

    #[test]
    fn evenly_spaced_positions_split_the_ring_equally() {
        let p = evenly_spaced(10, 4);
        assert_eq!(
            p,
            vec![10, 10 + (1 << 62), 10 + (1 << 63), 10 + 3 * (1 << 62)]
        );
        assert_eq!(evenly_spaced(7, 1), vec![7]);
    }

    #[test]
    fn hashed_positions_are_distinct_and_start_with_the_id() {
        let p = hashed(42, 8);
        assert_eq!(p.len(), 8);
        assert_eq!(p[0], 42);
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 8);
        assert_eq!(hashed(42, 8), p, "the same every time");
    }

    #[test]
    fn placed_positions_keep_eight_gestores_within_a_fifth_of_the_mean() {
        // 1.2, not issue 10's 1.25: real joiners see tables a little less
        // exact than these, and need the margin. At 4 positions the worst
        // of 2,000 seeds is 1.28, hence the default of 6 (worst 1.15).
        for seed in 0..1000 {
            for count in [6, 8] {
                let ring = grow(8, count, seed);
                let ratio = max_over_mean(&ring, 8);
                assert!(
                    ratio <= 1.2,
                    "seed {seed}, {count} positions: max/mean {ratio:.2}"
                );
            }
        }
    }

    #[test]
    fn hashed_positions_alone_balance_worse() {
        // The reason for placing: the same rings with hashed positions.
        let mut worst: f64 = 0.0;
        for seed in 0..50 {
            let mut ring = BTreeMap::new();
            for g in 0..8 {
                let first = ring_position(format!("{seed}/{g}").as_bytes());
                for p in hashed(first, 4) {
                    ring.insert(p, format!("g{g}"));
                }
            }
            worst = worst.max(max_over_mean(&ring, 8));
        }
        assert!(
            worst > 1.25,
            "hashed positions balanced as well ({worst:.2})"
        );
    }

    #[test]
    fn gestores_placing_by_the_same_table_take_different_positions() {
        let ring = grow(1, 4, 7);
        let table = table_of(&ring);
        let mut seen = BTreeSet::new();
        for g in 1..200u64 {
            let first = ring_position(format!("late/{g}").as_bytes());
            for p in steal(&table, &format!("tcp://10.0.0.{g}:1"), first, 4, first) {
                assert!(seen.insert(p), "two gestores at {p:016x}");
            }
        }
    }

    #[test]
    fn the_survey_asks_every_gestor_named_and_settles_when_two_agree() {
        use gestor_api::ring::Neighbourhood;
        let peer = |id: u64, addr: &str| PeerRef {
            id,
            addr: addr.into(),
        };
        let nb = |me: PeerRef, pred: PeerRef, succ: Vec<PeerRef>| Neighbourhood {
            me,
            predecessor: Some(pred),
            successors: succ,
        };
        // We (a) know only b; b names c, whose second position (90) is in
        // no successor list yet.
        let mine = VirtualNodes {
            nodes: vec![nb(peer(10, "a"), peer(50, "c"), vec![peer(20, "b")])],
        };
        let mut survey = Survey::start("a", &mine);
        assert_eq!(survey.next().as_deref(), Some("c"));
        assert_eq!(survey.next().as_deref(), Some("b"));
        survey.learn(&VirtualNodes {
            nodes: vec![nb(peer(20, "b"), peer(10, "a"), vec![peer(50, "c")])],
        });
        survey.learn(&VirtualNodes {
            nodes: vec![
                nb(peer(50, "c"), peer(20, "b"), vec![peer(10, "a")]),
                nb(peer(90, "c"), peer(50, "c"), vec![peer(10, "a")]),
            ],
        });
        assert_eq!(survey.next(), None, "each gestor asked once");
        let view = survey.finish();
        assert!(view.complete);
        let ids: Vec<u64> = view.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![10, 20, 50, 90]);

        let mut s = Settling::default();
        s.observe(view.clone());
        assert!(s.settled().is_none(), "one view is no agreement");
        let mut grown = view.clone();
        grown.members.push(peer(95, "d"));
        s.observe(grown.clone());
        assert!(s.settled().is_none(), "the ring changed");
        s.observe(grown.clone());
        assert_eq!(s.settled(), Some(&grown));
        s.observe(RingTable {
            complete: false,
            ..grown
        });
        assert!(s.settled().is_none() && s.latest().is_none());
    }

    #[test]
    fn a_lone_gestor_spreads_evenly() {
        let table = RingTable {
            members: vec![PeerRef {
                id: 5,
                addr: "tcp://me".into(),
            }],
            complete: true,
        };
        assert_eq!(steal(&table, "tcp://me", 5, 2, 0), evenly_spaced(5, 2));
    }
}
