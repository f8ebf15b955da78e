//! The walk behind `ring.table`: successor lists asked one after another
//! round the ring until one of them names us again. Plain code; the plugin
//! does the asking.

use gestor_api::ring::{PeerRef, RingTable, MAX_TABLE};
use std::collections::BTreeMap;

/// One walk in progress.
pub struct TableWalk {
    me: u64,
    members: BTreeMap<u64, PeerRef>,
    complete: bool,
    asked: Vec<u64>,
}

impl TableWalk {
    /// Start from our own successor list; the first member to ask, if any.
    pub fn start(me: PeerRef, successors: &[PeerRef]) -> (TableWalk, Option<PeerRef>) {
        let mut walk = TableWalk {
            me: me.id,
            members: BTreeMap::from([(me.id, me)]),
            complete: false,
            asked: Vec::new(),
        };
        // A ring of one: no successor, or only ourselves.
        if successors.iter().all(|s| s.id == walk.me) {
            walk.complete = true;
            return (walk, None);
        }
        let next = walk.learn(successors);
        (walk, next)
    }

    /// Add `successors`, the list the member we asked answered with; the
    /// next member to ask, or `None` when the walk is over.
    pub fn learn(&mut self, successors: &[PeerRef]) -> Option<PeerRef> {
        for s in successors {
            if s.id == self.me {
                self.complete = true;
                break;
            }
            if self.members.len() >= MAX_TABLE {
                return None;
            }
            self.members.entry(s.id).or_insert_with(|| s.clone());
        }
        if self.complete {
            return None;
        }
        // Ask the farthest one next; a member asked before means the lists
        // do not move forward (a ring still settling): stop, incomplete.
        let next = successors.last()?;
        if self.asked.contains(&next.id) {
            return None;
        }
        self.asked.push(next.id);
        Some(next.clone())
    }

    pub fn finish(self) -> RingTable {
        RingTable {
            members: self.members.into_values().collect(),
            complete: self.complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TableWalk;
    use gestor_api::ring::PeerRef;

    fn p(id: u64) -> PeerRef {
        PeerRef {
            id,
            addr: format!("tcp://127.0.0.1:{}", 7000 + id),
        }
    }

    /// Successor lists of length `r` on a ring of `ids` (sorted).
    fn successors_of(ids: &[u64], id: u64, r: usize) -> Vec<PeerRef> {
        let at = ids.iter().position(|&i| i == id).unwrap();
        (1..=r).map(|k| p(ids[(at + k) % ids.len()])).collect()
    }

    fn walk(ids: &[u64], r: usize, broken_at: Option<u64>) -> (Vec<u64>, bool, usize) {
        let (mut w, mut next) = TableWalk::start(p(ids[0]), &successors_of(ids, ids[0], r));
        let mut asks = 0;
        while let Some(peer) = next {
            asks += 1;
            if Some(peer.id) == broken_at {
                break;
            }
            next = w.learn(&successors_of(ids, peer.id, r));
        }
        let t = w.finish();
        (t.members.iter().map(|m| m.id).collect(), t.complete, asks)
    }

    #[test]
    fn a_walk_round_the_ring_finds_every_member() {
        let ids: Vec<u64> = (1..=20).map(|i| i * 1000).collect();
        let (members, complete, asks) = walk(&ids, 4, None);
        assert_eq!(members, ids);
        assert!(complete);
        // Our own list covers 4 members; each ask 4 more, the last one wraps.
        assert_eq!(asks, 4, "one ask per successor list, round the ring");
    }

    #[test]
    fn a_ring_of_one_or_within_one_list_needs_no_ask() {
        let (members, complete, asks) = walk(&[5], 4, None);
        assert_eq!((members, complete, asks), (vec![5], true, 0));
        let (members, complete, asks) = walk(&[1, 2, 3], 4, None);
        assert_eq!((members, complete, asks), (vec![1, 2, 3], true, 0));
    }

    #[test]
    fn a_walk_cut_short_is_partial() {
        let ids: Vec<u64> = (1..=20).collect();
        let (_, complete, _) = walk(&ids, 4, Some(9));
        assert!(!complete);
    }

    #[test]
    fn lists_that_do_not_move_forward_end_the_walk() {
        let (mut w, next) = TableWalk::start(p(1), &[p(2), p(3)]);
        assert_eq!(next.map(|n| n.id), Some(3));
        assert_eq!(w.learn(&[p(2), p(3)]).map(|n| n.id), None);
        assert!(!w.finish().complete);
    }
}
