//! Chord ring rules, I/O-free.
//!
//! This crate is the *brain* of gestor's Chord ring: a state machine in the
//! style of toydb's Raft node or quinn-proto. A [`Node`] takes messages and
//! the current time (`now_ms`, supplied by the caller) and returns decisions
//! ([`Outbound`] requests and [`Response`]s). It owns no threads, sockets,
//! clocks or randomness, so the same code runs under the network edge (the
//! ring plugin) and under the deterministic in-process simulator in [`sim`].
//!
//! # Protocol: Zave's corrected Chord
//!
//! The rules follow Pamela Zave, *Reasoning about identifier spaces: how to
//! make Chord correct* (2017), not the 2001 pseudo-code, whose `notify`/`join`
//! can break the ring:
//!
//! * **Join** ([`Node::join`]): look up the successor of our own id through any
//!   known member, fetch that node's successor list, set ours to
//!   `[succ] ++ its list` trimmed to `r`, predecessor = none. We then send a
//!   `Rectify` to the new successor so it learns about us at once.
//! * **Seeds and the tie-break** ([`Node::join_seeds`]): a joining node tries
//!   its seeds in turn. If a whole round finds no ring, some peer answered
//!   `NotInRing` (alive, reachable, joining too) and our id is below every
//!   such peer's, we create the ring and the others join it. Nodes that are
//!   all joining therefore never wait for each other forever.
//! * **Failure detection** ([`Config::dead_after_misses`]): a timeout is a
//!   miss, not a death. A suspect is probed with `Ping` on every tick and
//!   dropped only after that many misses in a row; `NotInRing` drops at once.
//!   An edge that runs several nodes in one process (virtual nodes) may
//!   answer `Failure::Skipped` for a peer process it already knows to be
//!   failing (no miss, no wait) and then drop all of that process's nodes
//!   at once with [`Node::peer_dead`].
//! * **Merge probes** ([`Config::merge_probe_every_ms`]): a member asks a
//!   seed or a past successor where its own id belongs in *that* peer's
//!   ring and adopts the answer if it is a closer successor, so rings formed
//!   apart (partition, split tie-break) become one.
//! * **Stabilize** (periodic, [`Node::tick`]): ask the first successor for its
//!   `(predecessor, successor list)`. If it does not answer, drop it and retry
//!   with the next one. If its predecessor `p` lies strictly between us and it,
//!   ask `p` for its state and adopt `p` as successor *only after `p`
//!   answers* (adopting a dead `p` is how the original Chord loses the ring).
//!   If `p`'s own predecessor is closer still, follow it back the same way,
//!   up to 32 nodes in one round: nodes that joined into one gap at once all
//!   name the same far successor, and this repairs that chain in a few
//!   rounds instead of one node per round.
//!   Our list becomes `[succ] ++ succ's list` trimmed to `r`; finally we send
//!   `Rectify { candidate: me }` to the successor.
//! * **Rectify** (replaces `notify`): the receiver replaces its predecessor
//!   only if it has none, if it is dead (check-predecessor found it dead —
//!   we clear a dead predecessor, so "dead" shows up as "none"), or if the
//!   candidate lies strictly between the old predecessor and us.
//! * **Fix-fingers** (periodic): finger `i` points at the successor of
//!   `id + 2^i (mod 2^64)`, refreshed with an iterative [`Lookup`]. A finger's
//!   answer also fills every later finger whose start it covers, so a cycle
//!   needs only about `log2 N` remote lookups.
//! * **Check-predecessor** (periodic): ping the predecessor; clear it if dead.
//! * **Graceful leave** ([`Node::leave`]): a `Leaving` notice to the
//!   predecessor (carrying our successor list) and to the successor (carrying
//!   our predecessor) closes the ring at once, without waiting for timeouts.
//!
//! Successor lists hold at most `r` ([`Config::successors`]) entries, are in
//! ring order after their owner, have no duplicates and never contain the
//! owner — except for a node that is alone, whose list is exactly `[me]`.
//! With fewer than `r + 1` nodes the lists are simply shorter than `r`.
//!
//! # Driving a node from an edge
//!
//! * Start with [`Node::create`] (first node) or [`Node::join`].
//! * Call [`Node::tick`] regularly (e.g. every 100 ms); it returns the
//!   maintenance requests that are due. Send each [`Outbound`] to its `to`
//!   peer and pass the answer back with [`Node::on_reply`] using the same
//!   `token`; on error or timeout pass `Err(Failure)`. Timeouts are the
//!   edge's job, but `tick` also gives up on a request that has been in flight
//!   for more than 3× its period, so a lost reply never wedges the node.
//!   Late replies for forgotten tokens are ignored.
//! * Serve every incoming [`Request`] with [`Node::handle`] and ship the
//!   returned [`Response`] back. A node that is not (yet, or any more) a ring
//!   member answers [`Response::NotInRing`], which a caller treats like a
//!   failure.
//! * Requests returned by [`Node::leave`] and `Rectify` notices are fire and
//!   forget: their replies may be passed to `on_reply` or dropped.
//! * To resolve a key, run a [`Lookup`]: `Lookup::start(&node, key)`, then
//!   loop on [`Lookup::next`]: for `Ask(peer)` send
//!   `Request::FindSuccessor { key }` to `peer` and feed the `FindStep` to
//!   [`Lookup::on_reply`] (or call [`Lookup::on_failure`] if the peer is
//!   unreachable — ideally also [`Node::peer_failed`]).
//!
//! * Lookups never name a wrong *live* owner: a peer that answers with a
//!   peer already found dead is not asked again, and `Done` decisions made
//!   from our own table skip only peers known dead. Right after crashes a
//!   lookup may still fail (dead fingers) or name a dead owner (the answering
//!   node has not noticed yet); the edge should report the dead peer with
//!   [`Node::peer_failed`] and retry. Once fix-fingers has run a cycle every
//!   lookup succeeds.
//! * [`Node::is_responsible`] is `key ∈ (predecessor, me]`. Alone: every key.
//!   Our own id: always. Without a predecessor (just joined, or it died) it
//!   is `false` for every other key, because we do not know where our range
//!   starts: the edge should route (or retry) instead of answering.
//!
//! # Hops
//!
//! A *hop* is one `FindSuccessor` request sent to a remote node during a
//! lookup, whether it is answered or fails. A lookup the starting node
//! answers from its own table (key in `(me, successor]`) has 0 hops; the
//! owner itself is never asked, so a path `origin → a → b`, where `b` answers
//! `Done(owner)`, is 2 hops. With exact fingers the mean is a bit under
//! ½·log2 N (`cargo run -p gestor-chord --release --example hops`):
//!
//! ```text
//!     N | mean hops | ½·log2 N | max
//!    16 |     1.310 |      2.0 |   2
//!    64 |     2.330 |      3.0 |   5
//!   256 |     3.293 |      4.0 |   6
//!  1024 |     4.279 |      5.0 |   8
//! ```
//!
//! # Invariants and the simulator
//!
//! [`check_invariants`] checks Zave's invariants over [`View`]s of the live
//! nodes (ids without a view are dead): AtLeastOneRing, AtMostOneRing,
//! OrderedRing (each node's first live successor is the next live id),
//! OrderedSuccessorLists and a live entry in every list. [`sim::Sim`] runs
//! thousands of nodes in-process from one seed: joins, crashes, graceful
//! leaves, maintenance steps, [`sim::Sim::settle`] (until every pointer and
//! finger is exact) and lookups checked against the true owner.
//! With [`sim::Faults`] set, messages are delayed and lost at random;
//! `tests/reform.rs` runs thousands of such schedules (all nodes joining at
//! once, everyone rejoining, 50 % loss and multi-second delays for 30 s) and
//! requires one ordered ring with exact successor lists at the end.
//!
//! # Naming deviations from the design sketch
//!
//! * [`Response::NotInRing`] is an extra variant: a non-member must not
//!   pretend to own keys, so `handle` on a non-member answers this to every
//!   request.
//! * [`Failure`] is an enum (`Unreachable`, `Timeout`).
//! * [`LookupAction`] is `Ask(Peer) | Done { owner, hops } | Failed`;
//!   [`Lookup::key`] is an extra accessor.
//! * [`Node::fingers`] returns all 64 entries (`None` = unknown, or the
//!   finger's owner is the node itself).
//! * Extras: [`Node::joining`], [`Node::in_flight_requests`],
//!   [`Node::config`], [`finger_start`], [`Peer::new`].

mod invariants;
mod lookup;
mod node;
pub mod sim;

pub use invariants::{check_invariants, View, Violation};
pub use lookup::{Lookup, LookupAction};
pub use node::Node;

use serde::{Deserialize, Serialize};

/// A position on the ring of 2^64 identifiers.
pub type Id = u64;

/// `x` in the open interval `(a, b)`, walking clockwise from `a` with
/// wrap-around at 2^64. `a == b` means the whole ring except `a`.
pub fn in_open(x: Id, a: Id, b: Id) -> bool {
    if a == b {
        x != a
    } else {
        // Clockwise distance makes the wrap-around case disappear.
        let dx = x.wrapping_sub(a);
        dx != 0 && dx < b.wrapping_sub(a)
    }
}

/// `x` in the half-open interval `(a, b]` with wrap-around. `a == b` means the
/// whole ring (a single node owns every key).
pub fn in_half_open(x: Id, a: Id, b: Id) -> bool {
    if a == b {
        true
    } else {
        let dx = x.wrapping_sub(a);
        dx != 0 && dx <= b.wrapping_sub(a)
    }
}

/// Clockwise distance from `from` to `to`.
pub(crate) fn distance(from: Id, to: Id) -> u64 {
    to.wrapping_sub(from)
}

/// Start of finger `i` of node `id`: `id + 2^i mod 2^64`.
pub fn finger_start(id: Id, i: usize) -> Id {
    id.wrapping_add(1u64.wrapping_shl(i as u32))
}

/// A ring member: its identifier and the address the edge uses to reach it.
/// The address is shared (`Arc<str>`): peers are copied into successor
/// lists, fingers, lookups and every answer, and cloning must stay cheap
/// for simulations of thousands of nodes. On the wire it is a plain string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub id: Id,
    pub addr: std::sync::Arc<str>,
}

impl Peer {
    pub fn new(id: Id, addr: impl Into<std::sync::Arc<str>>) -> Peer {
        Peer {
            id,
            addr: addr.into(),
        }
    }
}

/// Ring parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// `r`, the successor-list length: the ring survives up to `r - 1`
    /// adjacent crashes between two stabilize rounds.
    pub successors: usize,
    pub stabilize_every_ms: u64,
    pub fix_fingers_every_ms: u64,
    /// How many times finger repair may halve its pace (double
    /// `fix_fingers_every_ms`) while whole cycles find every finger
    /// unchanged. Any change, a failed lookup, a forgotten peer or a new
    /// neighbour brings it back to full pace. 0: never slow down.
    #[serde(default)]
    pub fix_fingers_backoff: u32,
    pub check_predecessor_every_ms: u64,
    /// Failure detection that tells slow from dead: a peer is dropped only
    /// after this many missed answers in a row (the first miss makes it a
    /// suspect, which is then probed with `Ping` until it answers or reaches
    /// the limit). `1` drops at the first miss, as the 2001 paper does.
    pub dead_after_misses: u32,
    /// How often a member asks one of its seeds or past successors where its
    /// own id belongs in *their* ring, to merge rings formed apart (after a
    /// partition, or after nodes that all were joining broke the tie).
    pub merge_probe_every_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            successors: 8,
            stabilize_every_ms: 1000,
            fix_fingers_every_ms: 500,
            fix_fingers_backoff: 3,
            check_predecessor_every_ms: 2000,
            dead_after_misses: 3,
            merge_probe_every_ms: 5000,
        }
    }
}

/// Requests between nodes (serde, so the edge can ship them as CBOR).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Stabilize: "what are your predecessor and successor list?"
    GetState,
    /// Zave's replacement for `notify`.
    Rectify { candidate: Peer },
    /// One step of an iterative lookup.
    FindSuccessor { key: Id },
    /// Check-predecessor liveness probe.
    Ping,
    /// Graceful leave notice, sent to the leaver's predecessor and successor.
    Leaving {
        leaver: Peer,
        predecessor: Option<Peer>,
        successors: Vec<Peer>,
    },
}

/// Answers to [`Request`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    State {
        predecessor: Option<Peer>,
        successors: Vec<Peer>,
    },
    Found(FindStep),
    Ack,
    /// The asked node is not a ring member (joining, left, or never joined);
    /// callers treat this like a failure.
    NotInRing,
}

/// A routing decision for a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FindStep {
    /// The key's successor (its owner).
    Done(Peer),
    /// Ask this node, which is closer to the key.
    Next(Peer),
}

/// A request the edge must deliver; `token` correlates the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub token: u64,
    pub to: Peer,
    pub request: Request,
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Connection refused, peer gone, or an unusable answer.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// Not sent: the edge already knows the peer's process is failing
    /// and waits before trying it again. No evidence against this peer in
    /// particular, so no miss; the edge declares the process dead itself
    /// ([`Node::peer_dead`]) once enough real attempts have failed.
    Skipped,
}

impl Failure {
    /// Whether this failure counts as a miss against the peer.
    pub fn counts(self) -> bool {
        !matches!(self, Failure::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Id = u64::MAX;

    #[test]
    fn open_interval_plain_and_wrapping() {
        assert!(in_open(5, 1, 10));
        assert!(!in_open(1, 1, 10));
        assert!(!in_open(10, 1, 10));
        assert!(!in_open(11, 1, 10));
        // Wrap: (MAX-2, 3) contains MAX-1, MAX, 0, 1, 2.
        for x in [MAX - 1, MAX, 0, 1, 2] {
            assert!(in_open(x, MAX - 2, 3), "{x}");
        }
        for x in [MAX - 2, 3, 4, MAX - 3] {
            assert!(!in_open(x, MAX - 2, 3), "{x}");
        }
        // a == b: everything but a.
        assert!(!in_open(7, 7, 7));
        assert!(in_open(8, 7, 7));
        assert!(in_open(0, MAX, MAX));
        assert!(!in_open(MAX, MAX, MAX));
        // Adjacent ids leave nothing in between.
        assert!(!in_open(0, MAX, 0));
        assert!(!in_open(MAX, MAX, 0));
    }

    #[test]
    fn half_open_interval_plain_and_wrapping() {
        assert!(in_half_open(10, 1, 10));
        assert!(!in_half_open(1, 1, 10));
        assert!(in_half_open(0, MAX, 0));
        assert!(!in_half_open(MAX, MAX, 0));
        assert!(in_half_open(MAX, MAX - 1, 0));
        assert!(in_half_open(0, MAX - 1, 0));
        assert!(!in_half_open(1, MAX - 1, 0));
        // a == b: whole ring.
        for x in [0, 1, MAX, 42] {
            assert!(in_half_open(x, 42, 42));
        }
    }

    #[test]
    fn finger_starts_wrap() {
        assert_eq!(finger_start(MAX, 0), 0);
        assert_eq!(finger_start(MAX, 63), (1u64 << 63) - 1);
        assert_eq!(finger_start(0, 63), 1u64 << 63);
    }
}
