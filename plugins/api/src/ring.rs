//! `ring.*`: the Chord ring (served by the ring plugin, `gestor_ring`).

use crate::{Empty, Kind, KindClass};
use gestor_sdk::Value;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// Kinds starting with this are the ring's own traffic: the host keeps
/// serving them while it shuts down, so a leaving gestor can say goodbye.
pub const PREFIX: &str = "ring.";

/// The most members a `ring.table` reply lists (a bound on the walk and on
/// what a client holds); larger rings give partial tables.
pub const MAX_TABLE: usize = 4096;

/// A ring member: its identifier and its request URL. The same shape as
/// `gestor_chord::Peer` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerRef {
    pub id: u64,
    pub addr: String,
}

/// A position on the ring (a node id or the hash of a username).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBody {
    pub key: u64,
}

/// The gestor responsible for a key, and the hops its lookup took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub id: u64,
    pub addr: String,
    pub hops: u32,
}

impl Owner {
    pub fn peer(&self) -> PeerRef {
        PeerRef {
            id: self.id,
            addr: self.addr.clone(),
        }
    }
}

/// A gestor's place in the ring: itself, its predecessor, its successor list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbourhood {
    pub me: PeerRef,
    pub predecessor: Option<PeerRef>,
    pub successors: Vec<PeerRef>,
}

/// One virtual node of this gestor and its predecessor's id (`None`: not
/// known yet): what `ring.predecessors` answers, a small part of
/// `ring.ranges` that is cheap to ask often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodePredecessor {
    pub id: u64,
    pub predecessor: Option<u64>,
}

/// All of one gestor's places in the ring: one neighbourhood per virtual
/// node (`ring.virtual_nodes`), the first one the gestor's own id. Each
/// virtual node owns the keys in `(predecessor, me]`; the gestor owns the
/// union.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualNodes {
    pub nodes: Vec<Neighbourhood>,
}

impl VirtualNodes {
    /// The virtual node whose range holds `key` (`None`: none of ours, or
    /// a predecessor not known yet). A lone node owns the whole ring.
    pub fn for_key(&self, key: u64) -> Option<&Neighbourhood> {
        self.nodes.iter().find(|nb| {
            nb.predecessor
                .as_ref()
                .is_some_and(|p| gestor_sdk::store::in_ring_interval(key, p.id, nb.me.id))
        })
    }

    /// This gestor's URL (every virtual node has the same one).
    pub fn addr(&self) -> Option<&str> {
        self.nodes.first().map(|nb| nb.me.addr.as_str())
    }
}

/// The first `count` gestores after `nb.me` that hold copies of its range:
/// successors on distinct physical gestores (distinct URLs), never the
/// gestor `nb.me` belongs to. With virtual nodes a successor list names
/// the same gestor several times; a copy on the owner's own disk, or two on
/// one other gestor, would not survive two failures.
pub fn distinct_successors(nb: &Neighbourhood, count: usize) -> Vec<PeerRef> {
    let mut out: Vec<PeerRef> = Vec::new();
    for p in &nb.successors {
        if out.len() == count {
            break;
        }
        if p.addr != nb.me.addr && !out.iter().any(|o| o.addr == p.addr) {
            out.push(p.clone());
        }
    }
    out
}

/// The ring's members as one gestor last walked them: enough for a client
/// (or a gestor) to send a per-user request straight to the key's owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingTable {
    /// Sorted by id, each once. The owner of a key is the first member
    /// whose id is at or after the key, wrapping; the copies are held by
    /// the members that follow it.
    pub members: Vec<PeerRef>,
    /// The walk went all the way round the ring. When false (a ring larger
    /// than [`MAX_TABLE`], or a walk cut short), `members` is only part of
    /// the ring and names no owners: ask through any gestor.
    pub complete: bool,
}

impl RingTable {
    /// The member responsible for `key` (`None` for an empty or partial table).
    pub fn owner_of(&self, key: u64) -> Option<&PeerRef> {
        if !self.complete {
            return None;
        }
        let at = self.members.partition_point(|m| m.id < key);
        self.members.get(at).or_else(|| self.members.first())
    }
}

/// The body of `ring.rpc`: who asks (none while joining) and one Chord
/// protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcBody<Q = Value> {
    pub from: Option<PeerRef>,
    /// The virtual node addressed, by id (a gestor has `virtual_nodes` of
    /// them at one URL); absent: its first, the one `ring.whoami` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    pub request: Q,
}

/// `ring.rpc` — **internal**: one Chord protocol message (stabilize,
/// rectify, find-successor step, ping, leaving notice) from one gestor's
/// ring plugin to another's. Only ring members may move the ring.
///
/// The messages are `gestor_chord::Request` and `gestor_chord::Response`,
/// which this crate does not depend on; the ring plugin names them as
/// `Rpc<chord::Request, chord::Response>`. Anyone else sees CBOR values.
pub struct Rpc<Q = Value, R = Value>(PhantomData<fn() -> (Q, R)>);

impl<Q, R> Kind for Rpc<Q, R>
where
    Q: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    const NAME: &'static str = "ring.rpc";
    const CLASS: KindClass = KindClass::Internal;
    const UPKEEP: bool = true;
    type Request = RpcBody<Q>;
    type Reply = R;
}

kinds! {
    @extra [Rpc];

    /// `ring.whoami` — **internal**: a gestor's own id and URL. Asked over
    /// the network by a gestor that joins (or rejoins after a partition)
    /// through this one.
    Whoami = "ring.whoami", Internal + upkeep, Empty => PeerRef;

    /// `ring.lookup` — **local**: the gestor responsible for `key` (an
    /// iterative Chord lookup). Other plugins call it to route per-user
    /// requests ([`crate::routing`]). Ring merging runs its lookups inside
    /// the Chord core over `ring.rpc`, so nothing sends this over the network.
    Lookup = "ring.lookup", Local, KeyBody => Owner;

    /// `ring.route` — **local**: like `ring.lookup`, but answered from this
    /// gestor's last ring table when it is complete (no network, `hops`
    /// 0), else by a lookup. The table may be up to one walk old, so
    /// routing uses it for a first attempt only and retries with
    /// `ring.lookup` ([`crate::routing::forward`]).
    Route = "ring.route", Local, KeyBody => Owner;

    /// `ring.responsible` — **local**: whether this gestor is responsible
    /// for `key` now. Only asked by plugins of the same gestor (the owner
    /// check of the directory and the mailbox).
    Responsible = "ring.responsible", Local, KeyBody => bool;

    /// `ring.neighbours` — **internal**: this gestor's predecessor and
    /// successor list. Called locally by the replica, mailbox and initial
    /// plugins, and over the network by the replica plugin (the range of
    /// another record's owner, before it drops a surplus copy). No client
    /// or tool sends it (`gestor status` shows the same through
    /// `node.status`).
    Neighbours = "ring.neighbours", Internal + upkeep, Empty => Neighbourhood;

    /// `ring.ranges` — **internal**: every virtual node of this gestor with
    /// its predecessor and successor list ([`VirtualNodes`]). Called locally by
    /// the replica and mailbox plugins (which keys are ours, where their
    /// copies go) and over the network by the ring table walk and the
    /// replica plugin (another owner's range, before dropping a copy).
    Ranges = "ring.ranges", Internal + upkeep, Empty => VirtualNodes;

    /// `ring.predecessors` — **local**: each virtual node of this gestor
    /// with its predecessor's id, first one first. The mailbox watches
    /// predecessors every 100 ms (to tell a join from a failure); the
    /// whole `ring.ranges` that often cost more than anything else an idle
    /// gestor did.
    Predecessors = "ring.predecessors", Local, Empty => Vec<VnodePredecessor>;

    /// `ring.table` — **client**: the ring's members, so a client can send
    /// each per-user request straight to its owner (one hop). A gestor
    /// answers from its last walk of the ring (see the ring plugin), never
    /// more than `MAX_TABLE` members. A stale table costs a redirect, not a
    /// wrong answer: only the owner answers a request sent to it directly.
    Table = "ring.table", Client, Empty => RingTable;

    /// `ring.suspect` — **local**: a plugin of this gestor found the peer
    /// `key` (a node id) unreachable; stop routing through it now. Only
    /// ever sent with `call_local` (routing, the replica plugin); a remote
    /// caller must not be able to make a gestor drop its peers.
    Suspect = "ring.suspect", Local, KeyBody => bool;
}

#[cfg(test)]
mod tests {
    use super::{distinct_successors, Neighbourhood, PeerRef, RingTable, VirtualNodes};

    fn at(id: u64, gestor: u16) -> PeerRef {
        PeerRef {
            id,
            addr: format!("tcp://127.0.0.1:{gestor}"),
        }
    }

    fn vnode(me: PeerRef, pred: Option<PeerRef>, successors: Vec<PeerRef>) -> Neighbourhood {
        Neighbourhood {
            me,
            predecessor: pred,
            successors,
        }
    }

    #[test]
    fn copies_go_to_distinct_other_gestores() {
        // Virtual nodes of gestor 1 at 10 and 40; successors name gestor 1
        // again and gestor 2 twice.
        let nb = vnode(
            at(10, 1),
            Some(at(5, 3)),
            vec![at(20, 2), at(30, 2), at(40, 1), at(50, 3), at(60, 4)],
        );
        let ids: Vec<u64> = distinct_successors(&nb, 3).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![20, 50, 60]);
        assert_eq!(distinct_successors(&nb, 1).len(), 1);
        let alone = vnode(at(10, 1), Some(at(10, 1)), vec![at(40, 1)]);
        assert!(distinct_successors(&alone, 3).is_empty());
    }

    #[test]
    fn a_key_belongs_to_the_virtual_node_whose_range_holds_it() {
        let ranges = VirtualNodes {
            nodes: vec![
                vnode(at(100, 1), Some(at(50, 2)), vec![]),
                vnode(at(10, 1), Some(at(900, 2)), vec![]),
                vnode(at(500, 1), None, vec![]),
            ],
        };
        let owner = |k| ranges.for_key(k).map(|nb| nb.me.id);
        assert_eq!(owner(60), Some(100));
        assert_eq!(owner(950), Some(10), "wraps past zero");
        assert_eq!(owner(5), Some(10));
        assert_eq!(owner(300), None, "no predecessor known: not ours yet");
        assert_eq!(owner(50), None, "the predecessor's own id is its");
        let lone = VirtualNodes {
            nodes: vec![vnode(at(7, 1), Some(at(7, 1)), vec![])],
        };
        assert_eq!(lone.for_key(12345).map(|nb| nb.me.id), Some(7));
    }

    fn table(ids: &[u64], complete: bool) -> RingTable {
        RingTable {
            members: ids
                .iter()
                .map(|&id| PeerRef {
                    id,
                    addr: format!("tcp://127.0.0.1:{id}"),
                })
                .collect(),
            complete,
        }
    }

    #[test]
    fn the_owner_is_the_first_member_at_or_after_the_key_wrapping() {
        let t = table(&[100, 200, 300], true);
        let owner = |k| t.owner_of(k).map(|p| p.id);
        assert_eq!(owner(100), Some(100), "a member owns its own id");
        assert_eq!(owner(101), Some(200));
        assert_eq!(owner(300), Some(300));
        assert_eq!(owner(301), Some(100), "past the last member wraps");
        assert_eq!(owner(0), Some(100));
    }

    #[test]
    fn partial_and_empty_tables_name_no_owner() {
        assert_eq!(table(&[100, 200], false).owner_of(150), None);
        assert_eq!(table(&[], true).owner_of(150), None);
    }
}
