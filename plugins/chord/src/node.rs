//! The per-node state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::lookup::{Lookup, LookupAction};
use crate::{
    distance, finger_start, in_half_open, in_open, Config, Failure, FindStep, Id, Outbound, Peer,
    Request, Response, View,
};

/// One finger per bit of the identifier space.
pub(crate) const FINGERS: usize = 64;
/// Seeds (peers to join or merge through) remembered, oldest dropped first.
const MAX_SEEDS: usize = 32;
/// Past successors remembered as merge probes after they left our view.
const MAX_SEEN: usize = 64;
/// Suspects probed at once; more wait for the next tick.
const MAX_PROBES: usize = 4;
/// Closer predecessors followed back in one stabilize round.
const MAX_STABILIZE_WALK: u32 = 32;

#[derive(Clone, Debug)]
enum Phase {
    /// Never joined, or left.
    Outside,
    /// Join in progress (or waiting to be retried) through the seeds.
    Joining,
    Member,
}

/// One pass of join attempts over the seeds, and what it learnt.
#[derive(Clone, Debug, Default)]
struct JoinRound {
    /// Attempts started in this round (one per seed).
    tried: usize,
    /// Peers that answered our join but are not ring members themselves
    /// (joining, or outside): alive and reachable, so the tie-break counts them.
    outside: BTreeSet<Id>,
}

/// A peer that missed answers but is not yet declared dead.
#[derive(Clone, Debug)]
struct Suspect {
    peer: Peer,
    misses: u32,
}

/// What an outstanding request was for; the reply is interpreted in its light.
#[derive(Clone, Debug)]
enum Task {
    JoinFind {
        lookup: Lookup,
    },
    JoinState {
        succ: Peer,
    },
    Stabilize {
        succ: Peer,
    },
    /// The successor reported a closer predecessor `cand`; adopt it only if
    /// it answers, else fall back to the successor's state we already have.
    StabilizeCandidate {
        cand: Peer,
        fallback: Option<(Peer, Vec<Peer>)>,
        /// Candidates already walked back through in this round.
        walked: u32,
    },
    FixFinger {
        index: usize,
        lookup: Lookup,
    },
    CheckPredecessor {
        pred: Peer,
    },
    /// Is this suspect alive?
    Probe {
        peer: Peer,
    },
    /// Where does our id belong in the ring this seed is in?
    MergeFind {
        lookup: Lookup,
    },
    /// The answer of `MergeFind`; offered as a closer successor if alive.
    MergeState {
        cand: Peer,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Join,
    Stabilize,
    FixFinger,
    CheckPredecessor,
    Probe,
    Merge,
}

impl Task {
    fn kind(&self) -> Kind {
        match self {
            Task::JoinFind { .. } | Task::JoinState { .. } => Kind::Join,
            Task::Stabilize { .. } | Task::StabilizeCandidate { .. } => Kind::Stabilize,
            Task::FixFinger { .. } => Kind::FixFinger,
            Task::CheckPredecessor { .. } => Kind::CheckPredecessor,
            Task::Probe { .. } => Kind::Probe,
            Task::MergeFind { .. } | Task::MergeState { .. } => Kind::Merge,
        }
    }
}

#[derive(Clone, Debug)]
struct Pending {
    task: Task,
    to: Peer,
    sent_ms: u64,
}

/// Result of advancing a lookup owned by the node.
enum Drive {
    Sent(Outbound),
    Done(Peer),
    Failed,
}

/// A Chord node: pure state, driven by [`Node::tick`], [`Node::handle`] and
/// [`Node::on_reply`]. See the crate docs for the protocol.
#[derive(Clone, Debug)]
pub struct Node {
    me: Peer,
    config: Config,
    phase: Phase,
    predecessor: Option<Peer>,
    /// Never empty for a member: `[me]` when alone.
    successors: Vec<Peer>,
    fingers: Vec<Option<Peer>>,
    next_finger: usize,
    /// Doublings of the finger-repair period now in force (up to
    /// `config.fix_fingers_backoff`), and whether the current cycle has
    /// changed a finger.
    fix_backoff: u32,
    fix_cycle_changed: bool,
    /// (predecessor, first successor) when finger repair last looked: a
    /// new neighbour means the ring changed, so fingers go back to full pace.
    fix_neighbours: (Option<Id>, Option<Id>),
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
    last_stabilize: u64,
    last_fix: u64,
    last_check: u64,
    last_merge: u64,
    /// Peers to join through and to probe for other rings (the edge's join
    /// URLs and initial gestors, and whoever asked us while we were joining).
    seeds: Vec<Peer>,
    join_cursor: usize,
    round: JoinRound,
    merge_cursor: usize,
    /// Past successors, for merge probes after a partition.
    seen: VecDeque<Peer>,
    suspects: BTreeMap<Id, Suspect>,
    /// Leave notices from another node that changed our neighbours: how a
    /// test tells a ring closed by notices from one closed by failure
    /// detection.
    leave_splices: u64,
}

impl Node {
    /// A node that is not yet in a ring.
    pub fn new(me: Peer, config: Config) -> Node {
        Node {
            me,
            config,
            phase: Phase::Outside,
            predecessor: None,
            successors: Vec::new(),
            fingers: vec![None; FINGERS],
            next_finger: 0,
            fix_backoff: 0,
            fix_cycle_changed: false,
            fix_neighbours: (None, None),
            pending: BTreeMap::new(),
            next_token: 1,
            last_stabilize: 0,
            last_fix: 0,
            last_check: 0,
            last_merge: 0,
            seeds: Vec::new(),
            join_cursor: 0,
            round: JoinRound::default(),
            merge_cursor: 0,
            seen: VecDeque::new(),
            suspects: BTreeMap::new(),
            leave_splices: 0,
        }
    }

    fn r(&self) -> usize {
        self.config.successors.max(1)
    }

    fn reset(&mut self, now_ms: u64) {
        self.predecessor = None;
        self.successors.clear();
        self.fingers = vec![None; FINGERS];
        self.next_finger = 0;
        self.fix_backoff = 0;
        self.fix_cycle_changed = false;
        self.pending.clear();
        self.suspects.clear();
        self.round = JoinRound::default();
        self.last_stabilize = now_ms;
        self.last_fix = now_ms;
        self.last_check = now_ms;
        self.last_merge = now_ms;
    }

    /// Become the first node of a new ring (successor = self).
    pub fn create(&mut self, now_ms: u64) {
        self.reset(now_ms);
        self.successors = vec![self.me.clone()];
        self.phase = Phase::Member;
    }

    /// Remember a peer to join through, and to probe for other rings once we
    /// are a member. Bounded; ourselves and duplicates are ignored (a known
    /// id with a new address is updated).
    pub fn add_seed(&mut self, peer: Peer) {
        if peer.id == self.me.id {
            return;
        }
        if let Some(known) = self.seeds.iter_mut().find(|s| s.id == peer.id) {
            *known = peer;
            return;
        }
        if self.seeds.len() >= MAX_SEEDS {
            self.seeds.remove(0);
        }
        self.seeds.push(peer);
    }

    /// The seeds, oldest first.
    pub fn seeds(&self) -> &[Peer] {
        &self.seeds
    }

    /// Join the ring `via` knows: `via` becomes a seed and is tried first.
    /// Returns the first request. Ignored (empty) if we already are a member
    /// or `via` is ourselves. See [`Node::join_seeds`] for what happens when
    /// the attempt fails.
    pub fn join(&mut self, via: Peer, now_ms: u64) -> Vec<Outbound> {
        if self.joined() || via.id == self.me.id {
            return Vec::new();
        }
        self.add_seed(via.clone());
        self.join_cursor = self.seeds.iter().position(|s| s.id == via.id).unwrap_or(0);
        self.reset(now_ms);
        self.phase = Phase::Joining;
        self.start_join(now_ms)
    }

    /// Join through the seeds ([`Node::add_seed`]), one after the other.
    /// A failed attempt moves on to the next seed; after a whole round
    /// without success the round starts again at the next stabilize period.
    ///
    /// **Tie-break** (so that gestores which are all joining form a ring
    /// without an operator): if in a whole round no seed led to a ring, at
    /// least one peer answered that it is itself outside any ring (so it is
    /// alive and reachable), and our id is lower than every such peer's, we
    /// create the ring; the others join it in their next round. Rings formed
    /// apart this way (seeds that do not reach each other) are merged by the
    /// merge probes of [`Node::tick`]. A round in which nobody answered never
    /// creates a ring: the ring we are meant to join may just be slow.
    /// Empty (and nothing changes) without seeds or when already a member.
    pub fn join_seeds(&mut self, now_ms: u64) -> Vec<Outbound> {
        if self.joined() || self.seeds.is_empty() {
            return Vec::new();
        }
        self.reset(now_ms);
        self.phase = Phase::Joining;
        self.start_join(now_ms)
    }

    fn start_join(&mut self, now_ms: u64) -> Vec<Outbound> {
        if !self.joining() || self.seeds.is_empty() {
            return Vec::new();
        }
        let via = self.seeds[self.join_cursor % self.seeds.len()].clone();
        self.join_cursor = (self.join_cursor + 1) % self.seeds.len();
        self.round.tried += 1;
        self.last_stabilize = now_ms;
        let lookup = Lookup::via(via.clone(), self.me.id);
        let req = Request::FindSuccessor { key: self.me.id };
        vec![self.send(via, req, Task::JoinFind { lookup }, now_ms)]
    }

    /// A join attempt ended without a ring: try the next seed, or at the end
    /// of a round apply the tie-break (see [`Node::join_seeds`]).
    fn join_attempt_failed(&mut self, now_ms: u64) -> Vec<Outbound> {
        if self.round.tried < self.seeds.len() {
            return self.start_join(now_ms);
        }
        let round = std::mem::take(&mut self.round);
        let lowest = round
            .outside
            .iter()
            .next()
            .is_some_and(|&lowest_other| self.me.id < lowest_other);
        if lowest {
            self.create(now_ms);
        }
        // Otherwise `tick` starts the next round after a stabilize period.
        Vec::new()
    }

    /// Due maintenance: stabilize, fix one finger, check the predecessor,
    /// probe suspects, and now and then probe for another ring to merge
    /// with. Also expires requests in flight for more than 3× their period.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.sent_ms) >= self.timeout(p.task.kind()))
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            out.extend(self.on_reply(token, Err(Failure::Timeout), now_ms));
        }
        match self.phase {
            Phase::Outside => {}
            Phase::Joining => {
                if !self.in_flight(Kind::Join)
                    && now_ms.saturating_sub(self.last_stabilize) >= self.config.stabilize_every_ms
                {
                    out.extend(self.start_join(now_ms));
                }
            }
            Phase::Member => {
                if !self.in_flight(Kind::Stabilize)
                    && now_ms.saturating_sub(self.last_stabilize) >= self.config.stabilize_every_ms
                {
                    self.last_stabilize = now_ms;
                    out.extend(self.start_stabilize(now_ms));
                }
                if !self.in_flight(Kind::CheckPredecessor)
                    && now_ms.saturating_sub(self.last_check)
                        >= self.config.check_predecessor_every_ms
                {
                    self.last_check = now_ms;
                    out.extend(self.start_check_predecessor(now_ms));
                }
                if !self.in_flight(Kind::FixFinger)
                    && now_ms.saturating_sub(self.last_fix) >= self.fix_period()
                {
                    self.last_fix = now_ms;
                    out.extend(self.start_fix_finger(now_ms));
                }
                out.extend(self.start_probes(now_ms));
                if !self.in_flight(Kind::Merge)
                    && now_ms.saturating_sub(self.last_merge) >= self.config.merge_probe_every_ms
                {
                    self.last_merge = now_ms;
                    out.extend(self.start_merge_probe(now_ms));
                }
            }
        }
        out
    }

    /// The finger-repair period now: the configured one, doubled once per
    /// quiet cycle up to `fix_fingers_backoff` times; full pace again as
    /// soon as the node's neighbours differ from the last look.
    fn fix_period(&mut self) -> u64 {
        let neighbours = (
            self.predecessor.as_ref().map(|p| p.id),
            self.successors.first().map(|s| s.id),
        );
        if neighbours != self.fix_neighbours {
            self.fix_neighbours = neighbours;
            self.fix_backoff = 0;
        }
        let shift = self
            .fix_backoff
            .min(self.config.fix_fingers_backoff)
            .min(16);
        self.config.fix_fingers_every_ms.saturating_mul(1 << shift)
    }

    fn timeout(&self, kind: Kind) -> u64 {
        let every = match kind {
            Kind::Join | Kind::Stabilize | Kind::Probe | Kind::Merge => {
                self.config.stabilize_every_ms
            }
            Kind::FixFinger => self.config.fix_fingers_every_ms,
            Kind::CheckPredecessor => self.config.check_predecessor_every_ms,
        };
        every.saturating_mul(3).max(1)
    }

    fn in_flight(&self, kind: Kind) -> bool {
        self.pending.values().any(|p| p.task.kind() == kind)
    }

    fn send(&mut self, to: Peer, request: Request, task: Task, now_ms: u64) -> Outbound {
        let token = self.alloc_token();
        self.pending.insert(
            token,
            Pending {
                task,
                to: to.clone(),
                sent_ms: now_ms,
            },
        );
        Outbound { token, to, request }
    }

    /// Fire-and-forget: the token is not remembered, so the reply is ignored.
    fn notice(&mut self, to: Peer, request: Request) -> Outbound {
        let token = self.alloc_token();
        Outbound { token, to, request }
    }

    fn alloc_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        token
    }

    /// Serve an incoming request. `from` is the caller's own claim, used as
    /// a hint only: while joining, a caller that names itself becomes a
    /// seed (a peer to try), so nodes that only know of each other one way
    /// still find each other for the tie-break; as a member, a notify from
    /// the predecessor postpones its check (`heard_from_predecessor`).
    pub fn handle(&mut self, from: Option<&Peer>, req: Request, now_ms: u64) -> Response {
        if !self.joined() {
            if let (Phase::Joining, Some(from)) = (&self.phase, from) {
                self.add_seed(from.clone());
            }
            return Response::NotInRing;
        }
        match req {
            Request::Ping => Response::Ack,
            Request::GetState => Response::State {
                predecessor: self.predecessor.clone(),
                successors: self.successors.clone(),
            },
            Request::FindSuccessor { key } => Response::Found(self.find_step(key)),
            Request::Rectify { candidate } => {
                self.rectify(candidate);
                self.heard_from_predecessor(from, now_ms);
                Response::Ack
            }
            Request::Leaving {
                leaver,
                predecessor,
                successors,
            } => {
                self.on_leaving(leaver, predecessor, successors);
                Response::Ack
            }
        }
    }

    /// Our predecessor's notify (the `Rectify` ending each of its
    /// stabilizes) shows it alive as well as a check answered would, so the
    /// next check waits a full period from now: a live predecessor on a
    /// settled ring is not pinged at all, one that stops stabilizing with us
    /// is checked as before, and a suspect is still probed and checked.
    fn heard_from_predecessor(&mut self, from: Option<&Peer>, now_ms: u64) {
        if let (Some(from), Some(pred)) = (from, &self.predecessor) {
            if from.id == pred.id && from.addr == pred.addr && !self.suspects.contains_key(&pred.id)
            {
                self.last_check = self.last_check.max(now_ms);
            }
        }
    }

    /// Zave's rectify: accept the candidate if we have no (live) predecessor
    /// or it is closer than the current one. A predecessor that has missed
    /// answers lately counts as not live: the candidate, which has just
    /// reached us, takes its place (if the old one was only slow it
    /// rectifies us back, being closer). Waiting for the old one's last
    /// miss would leave its keys with no responsible node meanwhile.
    fn rectify(&mut self, candidate: Peer) {
        if candidate.id == self.me.id {
            return;
        }
        let accept = match &self.predecessor {
            None => true,
            // Same id: refresh (the address may have changed).
            Some(p) if p.id == candidate.id => true,
            Some(p) if self.suspects.contains_key(&p.id) => true,
            Some(p) => in_open(candidate.id, p.id, self.me.id),
        };
        if accept {
            self.predecessor = Some(candidate);
        }
    }

    fn on_leaving(&mut self, leaver: Peer, their_pred: Option<Peer>, their_succs: Vec<Peer>) {
        if leaver.id == self.me.id {
            return;
        }
        let mut spliced = false;
        // We are the leaver's successor: its predecessor becomes ours.
        if self.predecessor.as_ref().map(|p| p.id) == Some(leaver.id) {
            self.predecessor = their_pred.filter(|p| p.id != self.me.id && p.id != leaver.id);
            spliced = true;
        }
        // We are (one of) its predecessors: our entries before it, then its
        // (fresher) list. The ordered-prefix rule cuts the part of its list
        // that wraps past us.
        if let Some(pos) = self.successors.iter().position(|s| s.id == leaver.id) {
            let head: Vec<Peer> = self.successors.iter().take(pos).cloned().collect();
            let tail: Vec<Peer> = their_succs
                .into_iter()
                .filter(|p| p.id != leaver.id)
                .collect();
            self.successors = self.ordered_prefix(head.iter().chain(tail.iter()));
            if self.successors.is_empty() {
                self.successors = vec![self.me.clone()];
            }
            spliced = true;
        }
        if spliced {
            self.leave_splices += 1;
        }
        self.drop_finger(leaver.id);
    }

    /// Feed the answer (or failure) for an [`Outbound`] we issued. Unknown or
    /// stale tokens are ignored.
    ///
    /// Failure detection: `NotInRing`, or an answer of the wrong type, is
    /// definite (the peer is alive but no usable member) and drops the peer
    /// at once; a timeout or unreachable peer is only a *miss*, and a peer
    /// is dropped after [`Config::dead_after_misses`] misses in a row (it is
    /// probed in between), so a slow peer is not taken for a dead one.
    pub fn on_reply(
        &mut self,
        token: u64,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        let Some(pending) = self.pending.remove(&token) else {
            return Vec::new();
        };
        let to = pending.to;
        if matches!(&reply, Ok(r) if *r != Response::NotInRing) {
            self.heard(to.id);
        }
        let (joining, member) = (self.joining(), self.joined());
        match pending.task {
            Task::JoinFind { lookup } if joining => self.on_join_find(lookup, &to, reply, now_ms),
            Task::JoinState { succ } if joining => self.on_join_state(succ, reply, now_ms),
            Task::Stabilize { succ } if member => self.on_stabilize(succ, reply, now_ms),
            Task::StabilizeCandidate {
                cand,
                fallback,
                walked,
            } if member => self.on_stabilize_candidate(cand, fallback, walked, reply, now_ms),
            Task::FixFinger { index, lookup } if member => {
                self.on_fix_finger(index, lookup, &to, reply, now_ms)
            }
            Task::CheckPredecessor { pred: peer } | Task::Probe { peer } if member => {
                match reply {
                    Ok(Response::Ack) => {}
                    Err(f) => {
                        self.miss(&peer, f.counts());
                    }
                    _ => self.forget(peer.id),
                }
                Vec::new()
            }
            Task::MergeFind { lookup } if member => self.on_merge_find(lookup, &to, reply, now_ms),
            Task::MergeState { cand } if member => self.on_merge_state(cand, reply),
            // A reply for a phase we are no longer in.
            _ => Vec::new(),
        }
    }

    fn on_join_find(
        &mut self,
        mut lookup: Lookup,
        to: &Peer,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match reply {
            Ok(Response::Found(step)) => lookup.on_reply(step),
            Ok(Response::NotInRing) => {
                self.round.outside.insert(to.id);
                return self.join_attempt_failed(now_ms);
            }
            _ => return self.join_attempt_failed(now_ms),
        }
        match self.drive(lookup, |l| Task::JoinFind { lookup: l }, now_ms) {
            Drive::Sent(o) => vec![o],
            // Told that we already own our id: a stale entry for a previous
            // incarnation of us. Try elsewhere, or later.
            Drive::Done(owner) if owner.id == self.me.id => self.join_attempt_failed(now_ms),
            Drive::Done(owner) => {
                vec![self.send(
                    owner.clone(),
                    Request::GetState,
                    Task::JoinState { succ: owner },
                    now_ms,
                )]
            }
            Drive::Failed => self.join_attempt_failed(now_ms),
        }
    }

    fn on_join_state(
        &mut self,
        succ: Peer,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match reply {
            Ok(Response::State { successors, .. }) => {
                let list = self.build_successors(&succ, &successors);
                if list.is_empty() {
                    return self.join_attempt_failed(now_ms);
                }
                self.reset(now_ms);
                self.successors = list;
                self.phase = Phase::Member;
                self.remember_successors();
                self.rectify_successor()
            }
            Ok(Response::NotInRing) => {
                self.round.outside.insert(succ.id);
                self.join_attempt_failed(now_ms)
            }
            _ => self.join_attempt_failed(now_ms),
        }
    }

    fn on_stabilize(
        &mut self,
        succ: Peer,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match reply {
            Ok(Response::State {
                predecessor,
                successors,
            }) => self.after_successor_state(succ, predecessor, successors, now_ms),
            Err(f) if !self.miss(&succ, f.counts()) => Vec::new(),
            _ => {
                // Dead (or not a member): drop it, try the next one now.
                self.forget(succ.id);
                self.start_stabilize(now_ms)
            }
        }
    }

    fn on_stabilize_candidate(
        &mut self,
        cand: Peer,
        fallback: Option<(Peer, Vec<Peer>)>,
        walked: u32,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match reply {
            // The candidate has a predecessor closer still: walk back to it
            // now instead of one node per round (many nodes that joined into
            // one gap at once all name the same far successor; this repairs
            // them in a few rounds, not one round per node).
            Ok(Response::State {
                predecessor: Some(closer),
                successors,
            }) if walked < MAX_STABILIZE_WALK
                && closer.id != self.me.id
                && in_open(closer.id, self.me.id, cand.id) =>
            {
                vec![self.send(
                    closer.clone(),
                    Request::GetState,
                    Task::StabilizeCandidate {
                        cand: closer,
                        fallback: Some((cand, successors)),
                        walked: walked + 1,
                    },
                    now_ms,
                )]
            }
            Ok(Response::State { successors, .. }) => self.adopt(&cand, &successors),
            other => {
                match other {
                    Err(f) => {
                        self.miss(&cand, f.counts());
                    }
                    _ => self.forget(cand.id),
                }
                match fallback {
                    Some((succ, list)) => self.adopt(&succ, &list),
                    None => Vec::new(),
                }
            }
        }
    }

    fn on_fix_finger(
        &mut self,
        index: usize,
        mut lookup: Lookup,
        to: &Peer,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match reply {
            Ok(Response::Found(step)) => lookup.on_reply(step),
            other => {
                match other {
                    Err(f) => {
                        self.miss(to, f.counts());
                    }
                    _ => self.forget(to.id),
                }
                lookup.on_failure(self);
            }
        }
        match self.drive(lookup, |l| Task::FixFinger { index, lookup: l }, now_ms) {
            Drive::Sent(o) => vec![o],
            Drive::Done(owner) => {
                self.set_finger(index, &owner);
                Vec::new()
            }
            Drive::Failed => {
                self.next_finger = (index + 1) % FINGERS;
                self.fix_backoff = 0;
                Vec::new()
            }
        }
    }

    /// Merge probes change nothing unless they find a live, closer
    /// successor: failures here are not evidence against our own peers.
    fn on_merge_find(
        &mut self,
        mut lookup: Lookup,
        to: &Peer,
        reply: Result<Response, Failure>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        let step = match reply {
            Ok(Response::Found(step)) => step,
            Err(_) => {
                // A dead past successor is not worth probing again.
                self.seen.retain(|p| p.id != to.id);
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        lookup.on_reply(step);
        match lookup.next() {
            LookupAction::Ask(peer) => {
                let req = Request::FindSuccessor { key: lookup.key() };
                vec![self.send(peer, req, Task::MergeFind { lookup }, now_ms)]
            }
            LookupAction::Done { owner, .. } if owner.id != self.me.id => {
                vec![self.send(
                    owner.clone(),
                    Request::GetState,
                    Task::MergeState { cand: owner },
                    now_ms,
                )]
            }
            _ => Vec::new(),
        }
    }

    fn on_merge_state(&mut self, cand: Peer, reply: Result<Response, Failure>) -> Vec<Outbound> {
        let Ok(Response::State { successors, .. }) = reply else {
            return Vec::new();
        };
        let mut out = self.offer_successor(cand.clone(), &successors);
        if out.is_empty() {
            // Not closer for us; we may still be its closer predecessor.
            let me = self.me.clone();
            out.push(self.notice(cand, Request::Rectify { candidate: me }));
        }
        out
    }

    /// A request to `peer` went unanswered (`counted`: a real miss, not a
    /// request the edge skipped). Returns whether the peer is gone from our
    /// tables: dropped now (its misses reached the limit), or never in
    /// them. Otherwise it stays a suspect and is probed on the next tick.
    fn miss(&mut self, peer: &Peer, counted: bool) -> bool {
        if peer.id == self.me.id {
            return false;
        }
        if !self.knows(peer.id) {
            self.suspects.remove(&peer.id);
            return true;
        }
        if !counted {
            return false;
        }
        let suspect = self.suspects.entry(peer.id).or_insert_with(|| Suspect {
            peer: peer.clone(),
            misses: 0,
        });
        suspect.misses = suspect.misses.saturating_add(1);
        if suspect.misses >= self.config.dead_after_misses.max(1) {
            self.forget(peer.id);
            true
        } else {
            false
        }
    }

    /// `id` answered: whatever it missed before, it is alive.
    fn heard(&mut self, id: Id) {
        self.suspects.remove(&id);
    }

    /// Is `id` our predecessor, a successor or a finger?
    fn knows(&self, id: Id) -> bool {
        self.predecessor.iter().any(|p| p.id == id)
            || self.successors.iter().any(|p| p.id == id)
            || self.fingers.iter().flatten().any(|p| p.id == id)
    }

    /// Ping every suspect not already being probed (a few at a time).
    fn start_probes(&mut self, now_ms: u64) -> Vec<Outbound> {
        let known: Vec<Id> = self
            .suspects
            .keys()
            .copied()
            .filter(|id| !self.knows(*id))
            .collect();
        for id in known {
            self.suspects.remove(&id);
        }
        let probing: BTreeSet<Id> = self
            .pending
            .values()
            .filter(|p| p.task.kind() == Kind::Probe)
            .map(|p| p.to.id)
            .collect();
        let room = MAX_PROBES.saturating_sub(probing.len());
        let due: Vec<Peer> = self
            .suspects
            .values()
            .filter(|s| !probing.contains(&s.peer.id))
            .take(room)
            .map(|s| s.peer.clone())
            .collect();
        due.into_iter()
            .map(|peer| {
                let task = Task::Probe { peer: peer.clone() };
                self.send(peer, Request::Ping, task, now_ms)
            })
            .collect()
    }

    /// Number of peers currently suspected (missed answers, not yet dropped).
    pub fn suspected(&self) -> usize {
        self.suspects.len()
    }

    /// Ask one seed or past successor (round robin, skipping our current
    /// successors) who owns our id in *its* ring; see `Task::MergeFind`.
    fn start_merge_probe(&mut self, now_ms: u64) -> Vec<Outbound> {
        let mut candidates: Vec<Peer> = Vec::new();
        for p in self.seeds.iter().chain(self.seen.iter()) {
            let ours = p.id == self.me.id || self.successors.iter().any(|s| s.id == p.id);
            if !ours && !candidates.iter().any(|c| c.id == p.id) {
                candidates.push(p.clone());
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        let via = candidates[self.merge_cursor % candidates.len()].clone();
        self.merge_cursor = self.merge_cursor.wrapping_add(1);
        let lookup = Lookup::via(via.clone(), self.me.id);
        let req = Request::FindSuccessor { key: self.me.id };
        vec![self.send(via, req, Task::MergeFind { lookup }, now_ms)]
    }

    /// Remember our successors as future merge probes (bounded).
    fn remember_successors(&mut self) {
        for s in &self.successors {
            if s.id == self.me.id || self.seen.iter().any(|p| p.id == s.id) {
                continue;
            }
            if self.seen.len() >= MAX_SEEN {
                self.seen.pop_front();
            }
            self.seen.push_back(s.clone());
        }
    }

    fn drive(&mut self, lookup: Lookup, task: impl FnOnce(Lookup) -> Task, now_ms: u64) -> Drive {
        match lookup.next() {
            LookupAction::Ask(peer) => {
                let req = Request::FindSuccessor { key: lookup.key() };
                Drive::Sent(self.send(peer, req, task(lookup), now_ms))
            }
            LookupAction::Done { owner, .. } => Drive::Done(owner),
            LookupAction::Failed => Drive::Failed,
        }
    }

    fn start_stabilize(&mut self, now_ms: u64) -> Vec<Outbound> {
        if !self.joined() || self.in_flight(Kind::Stabilize) {
            return Vec::new();
        }
        self.ensure_successors();
        let Some(succ) = self.successors.first().cloned() else {
            return Vec::new();
        };
        if succ.id == self.me.id {
            // Alone: "asking ourselves" is local. A predecessor means someone
            // joined behind us; it is also our successor once it answers.
            match self.predecessor.clone() {
                Some(p) if p.id != self.me.id => vec![self.send(
                    p.clone(),
                    Request::GetState,
                    Task::StabilizeCandidate {
                        cand: p,
                        fallback: None,
                        walked: 0,
                    },
                    now_ms,
                )],
                _ => Vec::new(),
            }
        } else {
            vec![self.send(
                succ.clone(),
                Request::GetState,
                Task::Stabilize { succ },
                now_ms,
            )]
        }
    }

    fn after_successor_state(
        &mut self,
        succ: Peer,
        pred: Option<Peer>,
        list: Vec<Peer>,
        now_ms: u64,
    ) -> Vec<Outbound> {
        match pred {
            Some(p)
                if p.id != self.me.id && p.id != succ.id && in_open(p.id, self.me.id, succ.id) =>
            {
                // Do not adopt p yet: it may be dead (Zave's fix).
                vec![self.send(
                    p.clone(),
                    Request::GetState,
                    Task::StabilizeCandidate {
                        cand: p,
                        fallback: Some((succ, list)),
                        walked: 0,
                    },
                    now_ms,
                )]
            }
            _ => self.adopt(&succ, &list),
        }
    }

    /// Successor list := `[succ] ++ list` (ordered, trimmed); rectify succ.
    /// Merging rings after a partition heals: `candidate` — found through a
    /// gestor of another ring, and alive (it answered `GetState` with
    /// `list`) — is adopted as our successor if it lies strictly between us
    /// and our current successor. Stabilize and rectify then zip the two
    /// rings together, one closer pointer at a time. Returns the rectify
    /// notice for the new successor, or nothing if it was not closer.
    pub fn offer_successor(&mut self, candidate: Peer, list: &[Peer]) -> Vec<Outbound> {
        if !self.joined() || candidate.id == self.me.id {
            return Vec::new();
        }
        let closer = match self.successors.first() {
            Some(s) if s.id != self.me.id => in_open(candidate.id, self.me.id, s.id),
            _ => true,
        };
        if !closer {
            return Vec::new();
        }
        self.adopt(&candidate, list)
    }

    fn adopt(&mut self, succ: &Peer, list: &[Peer]) -> Vec<Outbound> {
        let new = self.build_successors(succ, list);
        if new.is_empty() {
            return Vec::new();
        }
        self.successors = new;
        self.remember_successors();
        self.rectify_successor()
    }

    fn rectify_successor(&mut self) -> Vec<Outbound> {
        match self.successors.first().cloned() {
            Some(s) if s.id != self.me.id => {
                let req = Request::Rectify {
                    candidate: self.me.clone(),
                };
                vec![self.notice(s, req)]
            }
            _ => Vec::new(),
        }
    }

    /// `[first] ++ rest`, keeping only a prefix that is strictly increasing in
    /// clockwise distance from us: stops at ourselves (the list has wrapped
    /// round a small ring), at duplicates, and at anything out of order.
    fn build_successors(&self, first: &Peer, rest: &[Peer]) -> Vec<Peer> {
        self.ordered_prefix(std::iter::once(first).chain(rest.iter()))
    }

    /// The longest prefix (at most `r`) that is strictly increasing in
    /// clockwise distance from us.
    fn ordered_prefix<'a>(&self, peers: impl Iterator<Item = &'a Peer>) -> Vec<Peer> {
        let mut out: Vec<Peer> = Vec::new();
        let mut last = 0u64;
        for p in peers {
            let d = distance(self.me.id, p.id);
            if d <= last || out.len() >= self.r() {
                break;
            }
            out.push(p.clone());
            last = d;
        }
        out
    }

    /// If every successor was dropped, rebuild the list from whatever else we
    /// know; with nothing left we are alone.
    fn ensure_successors(&mut self) {
        if !self.successors.is_empty() || !self.joined() {
            return;
        }
        let me = self.me.id;
        let mut known: Vec<Peer> = self
            .fingers
            .iter()
            .flatten()
            .chain(self.predecessor.iter())
            .filter(|p| p.id != me)
            .cloned()
            .collect();
        known.sort_by_key(|p| distance(me, p.id));
        known.dedup_by_key(|p| p.id);
        known.truncate(self.r());
        self.successors = if known.is_empty() {
            vec![self.me.clone()]
        } else {
            known
        };
    }

    fn start_check_predecessor(&mut self, now_ms: u64) -> Vec<Outbound> {
        match self.predecessor.clone() {
            Some(p) if p.id != self.me.id => vec![self.send(
                p.clone(),
                Request::Ping,
                Task::CheckPredecessor { pred: p },
                now_ms,
            )],
            _ => Vec::new(),
        }
    }

    /// Fix the next finger. Fingers resolvable from our own table are filled
    /// without messages; at most one remote lookup is started.
    fn start_fix_finger(&mut self, now_ms: u64) -> Vec<Outbound> {
        for _ in 0..FINGERS {
            let i = self.next_finger % FINGERS;
            let start = finger_start(self.me.id, i);
            // Cheap local answer first; a Lookup snapshots our table.
            if let Some(FindStep::Done(owner)) = self.route(start, &[], &[]) {
                self.set_finger(i, &owner);
                if self.next_finger <= i {
                    break;
                }
                continue;
            }
            let lookup = Lookup::start(self, start);
            match self.drive(
                lookup,
                |l| Task::FixFinger {
                    index: i,
                    lookup: l,
                },
                now_ms,
            ) {
                Drive::Sent(o) => return vec![o],
                Drive::Done(owner) => self.set_finger(i, &owner),
                Drive::Failed => {
                    self.next_finger = (i + 1) % FINGERS;
                    self.fix_backoff = 0;
                    return Vec::new();
                }
            }
            if self.next_finger <= i {
                break; // wrapped: a full cycle done locally
            }
        }
        Vec::new()
    }

    /// Finger `i` := owner, and every later finger whose start owner also
    /// covers (saves ~log2(2^64 / N) lookups per cycle).
    fn set_finger(&mut self, i: usize, owner: &Peer) {
        let value = (owner.id != self.me.id).then(|| owner.clone());
        let mut j = i;
        while j < FINGERS {
            if j > i && !in_half_open(finger_start(self.me.id, j), self.me.id, owner.id) {
                break;
            }
            if let Some(slot) = self.fingers.get_mut(j) {
                if *slot != value {
                    *slot = value.clone();
                    self.fix_cycle_changed = true;
                    self.fix_backoff = 0;
                }
            }
            j += 1;
        }
        self.next_finger = j % FINGERS;
        if j >= FINGERS {
            // A whole cycle done: slow down only if it changed nothing.
            if !std::mem::take(&mut self.fix_cycle_changed) {
                self.fix_backoff = (self.fix_backoff + 1).min(self.config.fix_fingers_backoff);
            }
        }
    }

    fn drop_finger(&mut self, id: Id) {
        for f in self.fingers.iter_mut() {
            if f.as_ref().map(|p| p.id) == Some(id) {
                *f = None;
                self.fix_backoff = 0;
            }
        }
    }

    /// Drop a peer everywhere.
    fn forget(&mut self, id: Id) {
        if id == self.me.id {
            return;
        }
        self.suspects.remove(&id);
        if self.predecessor.as_ref().map(|p| p.id) == Some(id) {
            self.predecessor = None;
        }
        self.successors.retain(|p| p.id != id);
        self.drop_finger(id);
        self.ensure_successors();
    }

    /// Leave gracefully: notices to predecessor and successor (fire and
    /// forget) so the ring closes at once. The node is then outside the ring.
    pub fn leave(&mut self) -> Vec<Outbound> {
        let out = self.leave_notices();
        self.depart();
        out
    }

    /// The notices of [`Node::leave`], without leaving yet: an edge that
    /// cannot deliver them all at once stays a member until it has, since
    /// a neighbour that hears `NotInRing` from us first drops us by itself
    /// and its notice then splices nothing.
    pub fn leave_notices(&mut self) -> Vec<Outbound> {
        if !self.joined() {
            return Vec::new();
        }
        let me = self.me.clone();
        let req = Request::Leaving {
            leaver: me.clone(),
            predecessor: self.predecessor.clone(),
            successors: self.successors.clone(),
        };
        let mut targets: Vec<Peer> = Vec::new();
        for p in self.predecessor.iter().chain(self.successors.first()) {
            if p.id != me.id && !targets.iter().any(|t| t.id == p.id) {
                targets.push(p.clone());
            }
        }
        targets
            .into_iter()
            .map(|t| self.notice(t, req.clone()))
            .collect()
    }

    /// Step outside the ring (after [`Node::leave_notices`] went out).
    pub fn depart(&mut self) {
        self.reset(0);
        self.phase = Phase::Outside;
    }

    /// Local routing decision: `Done(successor)` if `key` is in
    /// `(me, successor]`, `Done(me)` when alone (or not a member), else
    /// `Next(closest preceding finger or successor)`.
    pub fn find_step(&self, key: Id) -> FindStep {
        self.route(key, &[], &[])
            .unwrap_or_else(|| FindStep::Done(self.me.clone()))
    }

    /// Routing that avoids peers known to be dead (`dead`), and does not
    /// send the lookup to `skip` (live but useless). `None` when no live
    /// peer is known (or not a member).
    pub(crate) fn route(&self, key: Id, dead: &[Id], skip: &[Id]) -> Option<FindStep> {
        if !self.joined() {
            return None;
        }
        if self.alone() {
            return Some(FindStep::Done(self.me.clone()));
        }
        let me = self.me.id;
        let usable = |p: &&Peer| p.id != me && !dead.contains(&p.id);
        let succ = self.successors.iter().find(usable);
        if let Some(s) = succ {
            if in_half_open(key, me, s.id) {
                return Some(FindStep::Done(s.clone()));
            }
        }
        let best = self
            .fingers
            .iter()
            .flatten()
            .chain(self.successors.iter())
            .filter(usable)
            .filter(|p| !skip.contains(&p.id))
            .filter(|p| in_open(p.id, me, key))
            .max_by_key(|p| distance(me, p.id));
        // Without a candidate (all preceding ones skipped) there is no safe
        // answer.
        best.map(|b| FindStep::Next(b.clone()))
    }

    /// Successors and fingers, distinct, sorted by distance from us.
    pub(crate) fn known_peers(&self) -> Vec<Peer> {
        let me = self.me.id;
        // Sorted and deduplicated by reference first: the 64 fingers name
        // only about log2 N distinct peers, and cloning addresses is the
        // expensive part (this runs for every lookup).
        let mut all: Vec<&Peer> = self
            .successors
            .iter()
            .chain(self.fingers.iter().flatten())
            .filter(|p| p.id != me)
            .collect();
        all.sort_by_key(|p| distance(me, p.id));
        all.dedup_by_key(|p| p.id);
        all.into_iter().cloned().collect()
    }

    fn alone(&self) -> bool {
        matches!(self.successors.first(), Some(s) if s.id == self.me.id)
    }

    /// Does this node own `key`, i.e. is `key` in `(predecessor, me]`? Alone:
    /// every key. Our own id: always. Without a predecessor (just joined, or
    /// the predecessor died) we do not know where our range starts, so we
    /// answer `false` for every other key: callers should route instead.
    pub fn is_responsible(&self, key: Id) -> bool {
        if !self.joined() {
            return false;
        }
        if self.alone() || key == self.me.id {
            return true;
        }
        match &self.predecessor {
            Some(p) => in_half_open(key, p.id, self.me.id),
            None => false,
        }
    }

    /// The edge saw `id` miss an answer elsewhere (a lookup, another
    /// plugin's request): one more miss against it. It is dropped from
    /// fingers, successors and predecessor once its misses reach
    /// [`Config::dead_after_misses`]; until then it is probed.
    pub fn peer_failed(&mut self, id: Id) {
        let known = self
            .predecessor
            .iter()
            .chain(self.successors.iter())
            .chain(self.fingers.iter().flatten())
            .find(|p| p.id == id)
            .cloned();
        if let Some(peer) = known {
            self.miss(&peer, true);
        }
    }

    /// The edge knows `id`'s process is dead (every real attempt to reach
    /// it failed, [`Config::dead_after_misses`] times in a row): drop it
    /// everywhere now, without probing it first.
    pub fn peer_dead(&mut self, id: Id) {
        if self.knows(id) {
            self.forget(id);
        }
    }

    pub fn me(&self) -> &Peer {
        &self.me
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Leave notices that changed this node's predecessor or successors.
    pub fn leave_splices(&self) -> u64 {
        self.leave_splices
    }

    pub fn predecessor(&self) -> Option<&Peer> {
        self.predecessor.as_ref()
    }

    /// At most `r` entries; `[me]` when alone; empty when not a member.
    pub fn successors(&self) -> &[Peer] {
        &self.successors
    }

    /// All 64 fingers; `None` = unknown, or the finger's owner is ourselves.
    pub fn fingers(&self) -> Vec<Option<Peer>> {
        self.fingers.clone()
    }

    pub fn joined(&self) -> bool {
        matches!(self.phase, Phase::Member)
    }

    /// True while a join is in progress or waiting to be retried.
    pub fn joining(&self) -> bool {
        matches!(self.phase, Phase::Joining)
    }

    /// Number of requests awaiting a reply.
    pub fn in_flight_requests(&self) -> usize {
        self.pending.len()
    }

    pub fn view(&self) -> View {
        View {
            id: self.me.id,
            predecessor: self.predecessor.as_ref().map(|p| p.id),
            successors: self.successors.iter().map(|p| p.id).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: Id) -> Peer {
        Peer::new(id, format!("n{id}"))
    }

    fn cfg(r: usize) -> Config {
        Config {
            successors: r,
            stabilize_every_ms: 100,
            fix_fingers_every_ms: 100,
            fix_fingers_backoff: 0,
            check_predecessor_every_ms: 100,
            // The 2001 rule (first miss drops) and no merge probes, unless a
            // test asks for them.
            dead_after_misses: 1,
            merge_probe_every_ms: u64::MAX,
        }
    }

    /// A member with hand-set pointers.
    fn member(id: Id, succs: &[Id], pred: Option<Id>) -> Node {
        let mut n = Node::new(p(id), cfg(3));
        n.create(0);
        n.successors = succs.iter().map(|s| p(*s)).collect();
        n.predecessor = pred.map(p);
        n
    }

    fn state(pred: Option<Id>, succs: &[Id]) -> Result<Response, Failure> {
        Ok(Response::State {
            predecessor: pred.map(p),
            successors: succs.iter().map(|s| p(*s)).collect(),
        })
    }

    fn ids(n: &Node) -> Vec<Id> {
        n.successors().iter().map(|s| s.id).collect()
    }

    fn only(out: Vec<Outbound>) -> Outbound {
        assert_eq!(out.len(), 1, "{out:?}");
        out.into_iter().next().unwrap()
    }

    #[test]
    fn offered_successor_from_another_ring_is_adopted_only_if_closer() {
        // Ring A: 10 -> 50 -> 90; ring B holds 30 and 70.
        let mut n = member(10, &[50, 90], Some(90));
        assert!(
            n.offer_successor(p(70), &[p(10), p(30)]).is_empty(),
            "70 is past our successor 50"
        );
        assert_eq!(ids(&n), vec![50, 90]);
        let out = only(n.offer_successor(p(30), &[p(70), p(10)]));
        assert_eq!(out.to.id, 30);
        assert_eq!(out.request, Request::Rectify { candidate: p(10) });
        assert_eq!(ids(&n), vec![30, 70]);
        assert!(n.offer_successor(p(10), &[]).is_empty(), "never ourselves");
    }

    #[test]
    fn a_predecessor_heard_from_is_not_checked() {
        // Nobody answers here: unanswered stabilizes and finger lookups must
        // not drop the predecessor meanwhile.
        let mut n = member(10, &[50, 90], Some(90));
        n.config.dead_after_misses = u32::MAX;
        // Checks only: unanswered finger lookups make 90 a suspect, probed
        // with pings of its own.
        let checks = |n: &Node, out: &[Outbound]| {
            out.iter()
                .filter(|o| {
                    n.pending.get(&o.token).map(|p| p.task.kind()) == Some(Kind::CheckPredecessor)
                })
                .count()
        };
        let notify = |from: Peer| Request::Rectify { candidate: from };
        // The predecessor stabilizes with us every period: no check.
        for t in (50..1000).step_by(50) {
            n.suspects.clear();
            n.handle(Some(&p(90)), notify(p(90)), t);
            let out = n.tick(t);
            assert_eq!(checks(&n, &out), 0, "checked at {t} although heard from");
        }
        // Its other requests do not count (a restarted predecessor rejoining
        // asks too), nor does another peer's notify.
        n.suspects.clear();
        n.handle(Some(&p(90)), Request::GetState, 1000);
        n.handle(Some(&p(50)), notify(p(50)), 1000);
        assert_eq!(n.predecessor.as_ref().map(|p| p.id), Some(90));
        let out = n.tick(1050);
        assert_eq!(checks(&n, &out), 1, "silent for a period: checked");
        // A suspect's notify does not spare it the check.
        let mut n = member(10, &[50, 90], Some(90));
        n.config.dead_after_misses = u32::MAX;
        n.suspects.insert(
            90,
            Suspect {
                peer: p(90),
                misses: 1,
            },
        );
        n.handle(Some(&p(90)), notify(p(90)), 100);
        let out = n.tick(100);
        assert_eq!(checks(&n, &out), 1, "a suspect is checked");
        // Nor does a notify under its id from another address.
        let mut n = member(10, &[50, 90], Some(90));
        n.handle(Some(&Peer::new(90, "elsewhere")), notify(p(90)), 100);
        let out = n.tick(100);
        assert_eq!(checks(&n, &out), 1);
    }

    #[test]
    fn alone_owns_everything() {
        let mut n = Node::new(p(7), cfg(3));
        assert!(!n.joined());
        assert_eq!(n.handle(None, Request::GetState, 0), Response::NotInRing);
        n.create(0);
        assert_eq!(ids(&n), vec![7]);
        for k in [0, 7, 8, u64::MAX] {
            assert_eq!(n.find_step(k), FindStep::Done(p(7)));
            assert!(n.is_responsible(k));
        }
        assert!(n.tick(1000).is_empty(), "alone, nothing to ask");
        assert!(n.leave().is_empty());
    }

    #[test]
    fn find_step_routes_by_successor_then_fingers() {
        let mut n = member(100, &[200, 300], Some(50));
        n.fingers[10] = Some(p(500));
        n.fingers[20] = Some(p(1000));
        assert_eq!(n.find_step(150), FindStep::Done(p(200)));
        assert_eq!(n.find_step(200), FindStep::Done(p(200)));
        assert_eq!(n.find_step(250), FindStep::Next(p(200)));
        assert_eq!(n.find_step(700), FindStep::Next(p(500)));
        assert_eq!(
            n.find_step(1000),
            FindStep::Next(p(500)),
            "strictly preceding"
        );
        assert_eq!(n.find_step(1001), FindStep::Next(p(1000)));
        // Wraps past 2^64: everything precedes key 50 going clockwise.
        assert_eq!(n.find_step(50), FindStep::Next(p(1000)));
        assert!(n.is_responsible(100) && n.is_responsible(51));
        assert!(!n.is_responsible(50) && !n.is_responsible(101));
        // With dead peers avoided, the next-best is used.
        assert_eq!(n.route(700, &[500], &[]), Some(FindStep::Next(p(300))));
        assert_eq!(n.route(150, &[200], &[]), Some(FindStep::Done(p(300))));
    }

    #[test]
    fn find_step_wraps_around_max() {
        let m = u64::MAX;
        let n = member(m - 10, &[5, 20], Some(m - 100));
        assert_eq!(n.find_step(m), FindStep::Done(p(5)));
        assert_eq!(n.find_step(0), FindStep::Done(p(5)));
        assert_eq!(n.find_step(5), FindStep::Done(p(5)));
        assert_eq!(n.find_step(6), FindStep::Next(p(5)));
        assert_eq!(n.find_step(21), FindStep::Next(p(20)));
        assert!(n.is_responsible(m - 10) && n.is_responsible(m - 99));
        assert!(!n.is_responsible(m) && !n.is_responsible(0));
    }

    #[test]
    fn no_predecessor_means_not_responsible_except_own_id() {
        let n = member(100, &[200], None);
        assert!(n.is_responsible(100));
        assert!(!n.is_responsible(99));
    }

    #[test]
    fn rectify_rules() {
        // Rule 1: no predecessor -> accept.
        let mut n = member(100, &[200], None);
        n.handle(None, Request::Rectify { candidate: p(10) }, 0);
        assert_eq!(n.predecessor(), Some(&p(10)));
        // Rule 3: candidate strictly between pred and us -> accept.
        n.handle(None, Request::Rectify { candidate: p(50) }, 0);
        assert_eq!(n.predecessor(), Some(&p(50)));
        // ... otherwise reject (farther, or equal to us).
        n.handle(None, Request::Rectify { candidate: p(20) }, 0);
        n.handle(None, Request::Rectify { candidate: p(150) }, 0);
        n.handle(None, Request::Rectify { candidate: p(100) }, 0);
        assert_eq!(n.predecessor(), Some(&p(50)));
        // Rule 2: check-predecessor finds it dead -> any candidate accepted.
        let ping = n
            .tick(100)
            .into_iter()
            .find(|o| o.request == Request::Ping)
            .unwrap();
        assert_eq!(ping.to, p(50));
        assert!(n
            .on_reply(ping.token, Err(Failure::Unreachable), 100)
            .is_empty());
        assert_eq!(n.predecessor(), None);
        n.handle(None, Request::Rectify { candidate: p(20) }, 0);
        assert_eq!(n.predecessor(), Some(&p(20)));
        // A live predecessor stays.
        let _ = n.tick(200);
        let ping = n
            .pending
            .iter()
            .find(|(_, q)| q.task.kind() == Kind::CheckPredecessor)
            .map(|(t, _)| *t)
            .unwrap();
        n.on_reply(ping, Ok(Response::Ack), 200);
        assert_eq!(n.predecessor(), Some(&p(20)));
    }

    #[test]
    fn rectify_wraps_around() {
        let mut n = member(5, &[100], Some(u64::MAX - 5));
        n.handle(
            None,
            Request::Rectify {
                candidate: p(u64::MAX),
            },
            0,
        );
        assert_eq!(n.predecessor(), Some(&p(u64::MAX)));
        n.handle(None, Request::Rectify { candidate: p(0) }, 0);
        assert_eq!(n.predecessor(), Some(&p(0)));
        n.handle(
            None,
            Request::Rectify {
                candidate: p(u64::MAX),
            },
            0,
        );
        assert_eq!(n.predecessor(), Some(&p(0)));
    }

    fn stabilize_request(n: &mut Node, now: u64) -> Outbound {
        n.tick(now)
            .into_iter()
            .find(|o| o.request == Request::GetState)
            .unwrap()
    }

    #[test]
    fn stabilize_adopts_closer_predecessor_only_after_it_answers() {
        let mut n = member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        assert_eq!(ask.to, p(300));
        // 300 reports predecessor 200, between us and it.
        let next = only(n.on_reply(ask.token, state(Some(200), &[400, 500]), 100));
        assert_eq!(next.to, p(200));
        assert_eq!(next.request, Request::GetState);
        assert_eq!(ids(&n), vec![300, 400], "not adopted before it answers");
        let rect = only(n.on_reply(next.token, state(Some(100), &[300, 400]), 100));
        assert_eq!(ids(&n), vec![200, 300, 400]);
        assert_eq!(rect.to, p(200));
        assert_eq!(rect.request, Request::Rectify { candidate: p(100) });
    }

    #[test]
    fn stabilize_ignores_dead_closer_predecessor() {
        let mut n = member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        let next = only(n.on_reply(ask.token, state(Some(200), &[400, 500]), 100));
        let rect = only(n.on_reply(next.token, Err(Failure::Timeout), 100));
        assert_eq!(ids(&n), vec![300, 400, 500]);
        assert_eq!(rect.to, p(300));
    }

    #[test]
    fn stabilize_skips_dead_successor_and_ignores_far_predecessor() {
        let mut n = member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        let retry = only(n.on_reply(ask.token, Err(Failure::Unreachable), 100));
        assert_eq!(retry.to, p(400));
        assert_eq!(ids(&n), vec![400]);
        // 400's predecessor is 50: not between us and 400, so keep 400.
        let rect = only(n.on_reply(retry.token, state(Some(50), &[500, 600, 700]), 100));
        assert_eq!(ids(&n), vec![400, 500, 600], "trimmed to r = 3");
        assert_eq!(rect.request, Request::Rectify { candidate: p(100) });
    }

    #[test]
    fn successor_list_stops_at_self_in_small_rings() {
        // Ring {100, 200, 300} with r = 3: 200's list wraps to us.
        let mut n = member(100, &[200], None);
        let ask = stabilize_request(&mut n, 100);
        n.on_reply(ask.token, state(Some(100), &[300, 100, 200]), 100);
        assert_eq!(ids(&n), vec![200, 300]);
    }

    #[test]
    fn one_stabilize_in_flight_and_expiry_recovers() {
        let mut n = member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        // Due again, but the first is still in flight.
        assert!(!n.tick(200).iter().any(|o| o.request == Request::GetState));
        assert!(!n.tick(350).iter().any(|o| o.request == Request::GetState));
        // 3x the period without an answer: treated as failed, next successor.
        let out = n.tick(400);
        let retry = out.iter().find(|o| o.request == Request::GetState).unwrap();
        assert_eq!(retry.to, p(400));
        // The late answer is stale and ignored.
        assert!(n.on_reply(ask.token, state(None, &[]), 401).is_empty());
        assert_eq!(ids(&n), vec![400]);
    }

    #[test]
    fn unknown_tokens_and_odd_replies_are_harmless() {
        let mut n = member(100, &[300], None);
        assert!(n.on_reply(12345, Ok(Response::Ack), 0).is_empty());
        let ask = stabilize_request(&mut n, 100);
        // Wrong answer type counts as failure: 300 dropped, we are alone.
        assert!(n.on_reply(ask.token, Ok(Response::Ack), 100).is_empty());
        assert_eq!(ids(&n), vec![100]);
    }

    #[test]
    fn join_walks_the_lookup_then_takes_successor_list() {
        let mut j = Node::new(p(150), cfg(3));
        let first = only(j.join(p(900), 0));
        assert_eq!(first.to, p(900));
        assert_eq!(first.request, Request::FindSuccessor { key: 150 });
        let second = only(j.on_reply(first.token, Ok(Response::Found(FindStep::Next(p(100)))), 0));
        assert_eq!(second.to, p(100));
        let get = only(j.on_reply(second.token, Ok(Response::Found(FindStep::Done(p(200)))), 0));
        assert_eq!(
            (get.to.clone(), get.request.clone()),
            (p(200), Request::GetState)
        );
        assert!(!j.joined());
        let rect = only(j.on_reply(get.token, state(Some(100), &[300, 400, 500]), 0));
        assert!(j.joined());
        assert_eq!(ids(&j), vec![200, 300, 400]);
        assert_eq!(j.predecessor(), None);
        assert_eq!(rect.to, p(200));
        assert_eq!(rect.request, Request::Rectify { candidate: p(150) });
    }

    #[test]
    fn failed_join_is_retried_by_tick() {
        let mut j = Node::new(p(150), cfg(3));
        let first = only(j.join(p(900), 0));
        assert!(j
            .on_reply(first.token, Err(Failure::Unreachable), 0)
            .is_empty());
        assert!(j.joining());
        assert!(j.tick(50).is_empty());
        let again = only(j.tick(100));
        assert_eq!(again.to, p(900));
    }

    #[test]
    fn two_nodes_form_a_ring() {
        let mut a = Node::new(p(10), cfg(3));
        a.create(0);
        let mut b = Node::new(p(20), cfg(3));
        let mut queue: Vec<(bool, Outbound)> = b
            .join(a.me().clone(), 0)
            .into_iter()
            .map(|o| (true, o))
            .collect();
        for now in [0, 100, 200, 300] {
            if now > 0 {
                queue.extend(a.tick(now).into_iter().map(|o| (false, o)));
                queue.extend(b.tick(now).into_iter().map(|o| (true, o)));
            }
            while let Some((from_b, o)) = queue.pop() {
                let (src, dst) = if from_b {
                    (&mut b, &mut a)
                } else {
                    (&mut a, &mut b)
                };
                let resp = dst.handle(None, o.request, now);
                for o2 in src.on_reply(o.token, Ok(resp), now) {
                    queue.push((from_b, o2));
                }
            }
        }
        assert_eq!(ids(&a), vec![20]);
        assert_eq!(ids(&b), vec![10]);
        assert_eq!(a.predecessor(), Some(&p(20)));
        assert_eq!(b.predecessor(), Some(&p(10)));
        assert!(!a.is_responsible(15) && b.is_responsible(15));
        assert!(a.is_responsible(25) && a.is_responsible(5));
    }

    #[test]
    fn leaving_notice_splices_both_sides() {
        // Ring 100 -> 200 -> 300 -> 400; 200 leaves.
        let mut pred = member(100, &[200, 300, 400], Some(400));
        let mut succ = member(300, &[400, 100, 200], Some(200));
        let mut leaver = member(200, &[300, 400, 100], Some(100));
        let out = leaver.leave();
        assert!(!leaver.joined());
        assert_eq!(out.len(), 2);
        for o in out {
            let target = if o.to.id == 100 { &mut pred } else { &mut succ };
            assert_eq!(target.handle(None, o.request, 0), Response::Ack);
        }
        assert_eq!(ids(&pred), vec![300, 400]);
        assert_eq!(succ.predecessor(), Some(&p(100)));
        assert_eq!((pred.leave_splices(), succ.leave_splices()), (1, 1));
        assert_eq!(leaver.handle(None, Request::Ping, 0), Response::NotInRing);
    }

    #[test]
    fn a_leaver_answers_as_a_member_until_it_departs() {
        let mut leaver = member(200, &[300, 400, 100], Some(100));
        let out = leaver.leave_notices();
        assert_eq!(out.len(), 2);
        assert!(leaver.joined());
        assert_eq!(leaver.handle(None, Request::Ping, 0), Response::Ack);
        leaver.depart();
        assert!(!leaver.joined());
        assert_eq!(leaver.handle(None, Request::Ping, 0), Response::NotInRing);
    }

    #[test]
    fn leaving_notice_from_a_stranger_changes_nothing() {
        let mut n = member(100, &[300, 400], Some(400));
        let notice = Request::Leaving {
            leaver: p(200),
            predecessor: Some(p(100)),
            successors: vec![p(300)],
        };
        assert_eq!(n.handle(None, notice, 0), Response::Ack);
        assert_eq!(ids(&n), vec![300, 400]);
        assert_eq!(n.predecessor(), Some(&p(400)));
        assert_eq!(n.leave_splices(), 0);
    }

    #[test]
    fn last_partner_leaving_leaves_us_alone() {
        let mut a = member(10, &[20], Some(20));
        let mut b = member(20, &[10], Some(10));
        let o = only(b.leave());
        a.handle(None, o.request, 0);
        assert_eq!(ids(&a), vec![10]);
        assert_eq!(a.predecessor(), None);
        assert!(a.is_responsible(15));
    }

    #[test]
    fn peer_failed_drops_everywhere_and_rebuilds() {
        let mut n = member(100, &[200], Some(50));
        n.fingers[5] = Some(p(200));
        n.fingers[9] = Some(p(600));
        n.peer_failed(200);
        assert_eq!(
            ids(&n),
            vec![600, 50],
            "rebuilt from fingers and predecessor"
        );
        assert!(n.fingers.iter().flatten().all(|f| f.id != 200));
        n.peer_failed(50);
        assert_eq!(n.predecessor(), None);
        n.peer_failed(100); // ourselves: ignored
        assert!(n.joined());
    }

    #[test]
    fn fix_fingers_fills_covered_fingers_locally() {
        let mut n = member(0, &[1 << 40], None);
        // Fingers 0..=40 are covered by the successor: no messages needed.
        let out = n.tick(100);
        let ff = out
            .iter()
            .find(|o| matches!(o.request, Request::FindSuccessor { .. }))
            .unwrap();
        assert_eq!(ff.request, Request::FindSuccessor { key: 1 << 41 });
        assert_eq!(ff.to, p(1 << 40));
        for i in 0..=40 {
            assert_eq!(n.fingers[i], Some(p(1 << 40)), "finger {i}");
        }
        n.on_reply(
            ff.token,
            Ok(Response::Found(FindStep::Done(p(1 << 50)))),
            100,
        );
        for i in 41..=50 {
            assert_eq!(n.fingers[i], Some(p(1 << 50)), "finger {i}");
        }
        assert_eq!(n.next_finger, 51);
    }

    /// `cfg` with the failure detector and merge probes of production.
    fn cfg_detect(r: usize) -> Config {
        Config {
            dead_after_misses: 3,
            merge_probe_every_ms: 1000,
            ..cfg(r)
        }
    }

    fn detecting_member(id: Id, succs: &[Id], pred: Option<Id>) -> Node {
        let mut n = member(id, succs, pred);
        n.config = cfg_detect(3);
        n
    }

    #[test]
    fn a_slow_successor_is_probed_not_dropped() {
        let mut n = detecting_member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        assert!(n.on_reply(ask.token, Err(Failure::Timeout), 100).is_empty());
        assert_eq!(ids(&n), vec![300, 400], "one miss is only suspicion");
        assert_eq!(n.suspected(), 1);
        let probe = only(
            n.tick(110)
                .into_iter()
                .filter(|o| o.request == Request::Ping)
                .collect(),
        );
        assert_eq!(probe.to, p(300));
        n.on_reply(probe.token, Ok(Response::Ack), 120);
        assert_eq!(n.suspected(), 0, "it answered: alive");
        assert_eq!(ids(&n), vec![300, 400]);
    }

    #[test]
    fn a_dead_successor_is_dropped_after_the_probes_miss_too() {
        let mut n = detecting_member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        n.on_reply(ask.token, Err(Failure::Timeout), 100);
        for (i, now) in [110, 120].into_iter().enumerate() {
            let probe = only(
                n.tick(now)
                    .into_iter()
                    .filter(|o| o.request == Request::Ping)
                    .collect(),
            );
            let out = n.on_reply(probe.token, Err(Failure::Timeout), now);
            if i == 0 {
                assert_eq!(ids(&n), vec![300, 400], "two misses of three");
                assert!(out.is_empty());
            } else {
                assert_eq!(ids(&n), vec![400], "third miss: dead");
            }
        }
        assert_eq!(n.suspected(), 0);
    }

    #[test]
    fn skipped_requests_are_no_misses_and_peer_dead_drops_at_once() {
        let mut n = detecting_member(100, &[300, 400], Some(50));
        // Three skipped rounds; three misses would have dropped it.
        for now in [100, 700, 1300] {
            let ask = stabilize_request(&mut n, now);
            assert_eq!(ask.to, p(300));
            assert!(n.on_reply(ask.token, Err(Failure::Skipped), now).is_empty());
        }
        assert_eq!(ids(&n), vec![300, 400], "skipped: no evidence");
        n.peer_dead(300);
        assert_eq!(ids(&n), vec![400]);
        n.peer_dead(50);
        assert_eq!(n.predecessor(), None);
    }

    #[test]
    fn rectify_replaces_a_predecessor_that_is_missing_answers() {
        let mut n = detecting_member(100, &[300], Some(80));
        // A farther candidate does not displace a live predecessor...
        n.handle(None, Request::Rectify { candidate: p(60) }, 0);
        assert_eq!(n.predecessor(), Some(&p(80)));
        // ...but does once the predecessor has missed an answer.
        n.peer_failed(80);
        assert_eq!(n.suspected(), 1);
        n.handle(None, Request::Rectify { candidate: p(60) }, 0);
        assert_eq!(n.predecessor(), Some(&p(60)));
        // The old one, alive after all, is closer and takes it back.
        n.handle(None, Request::Rectify { candidate: p(80) }, 0);
        assert_eq!(n.predecessor(), Some(&p(80)));
    }

    #[test]
    fn not_in_ring_drops_at_once() {
        let mut n = detecting_member(100, &[300, 400], None);
        let ask = stabilize_request(&mut n, 100);
        let retry = only(n.on_reply(ask.token, Ok(Response::NotInRing), 100));
        assert_eq!(retry.to, p(400));
        assert_eq!(ids(&n), vec![400]);
    }

    #[test]
    fn peer_failed_reports_are_misses_too() {
        let mut n = detecting_member(100, &[200], Some(50));
        n.peer_failed(200);
        n.peer_failed(200);
        assert_eq!(ids(&n), vec![200]);
        n.peer_failed(200);
        assert_eq!(ids(&n), vec![50], "three reports: dropped");
    }

    /// Answer every request of a join round with `NotInRing`.
    fn answer_round_not_in_ring(n: &mut Node, mut out: Vec<Outbound>, now: u64) -> Vec<Id> {
        let mut asked = Vec::new();
        while let Some(o) = out.pop() {
            asked.push(o.to.id);
            out.extend(n.on_reply(o.token, Ok(Response::NotInRing), now));
        }
        asked
    }

    #[test]
    fn all_joining_the_lowest_creates_the_ring() {
        let mut low = Node::new(p(10), cfg_detect(3));
        low.add_seed(p(20));
        low.add_seed(p(30));
        let first = low.join_seeds(0);
        assert_eq!(answer_round_not_in_ring(&mut low, first, 0), vec![20, 30]);
        assert!(low.joined(), "lowest of the reachable joining nodes");
        assert_eq!(ids(&low), vec![10]);

        let mut high = Node::new(p(20), cfg_detect(3));
        high.add_seed(p(10));
        high.add_seed(p(30));
        let first = high.join_seeds(0);
        answer_round_not_in_ring(&mut high, first, 0);
        assert!(high.joining(), "10 is lower: wait for it");
        assert!(high.tick(50).is_empty());
        let again = only(high.tick(100));
        assert_eq!(again.request, Request::FindSuccessor { key: 20 });
    }

    #[test]
    fn a_round_nobody_answered_creates_nothing() {
        let mut n = Node::new(p(10), cfg_detect(3));
        n.add_seed(p(20));
        let first = only(n.join_seeds(0));
        assert!(n.on_reply(first.token, Err(Failure::Timeout), 0).is_empty());
        assert!(n.joining(), "a slow ring is not an absent one");
        let second = only(n.tick(100));
        assert!(n
            .on_reply(second.token, Err(Failure::Unreachable), 100)
            .is_empty());
        assert!(n.joining());
    }

    #[test]
    fn a_joining_node_learns_seeds_from_its_callers() {
        let mut n = Node::new(p(30), cfg_detect(3));
        n.add_seed(p(99));
        let _ = n.join_seeds(0);
        let reply = n.handle(Some(&p(10)), Request::FindSuccessor { key: 10 }, 0);
        assert_eq!(reply, Response::NotInRing);
        assert_eq!(
            n.seeds().iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![99, 10]
        );
        // Members do not take hints.
        let mut m = member(40, &[50], None);
        m.handle(Some(&p(10)), Request::Ping, 0);
        assert!(m.seeds().is_empty());
    }

    #[test]
    fn merge_probe_adopts_a_closer_node_of_another_ring() {
        let mut n = Node::new(p(10), cfg_detect(3));
        n.add_seed(p(50));
        n.create(0);
        assert!(!n.tick(999).iter().any(|o| o.to.id == 50), "not due yet");
        let find = only(n.tick(1000).into_iter().filter(|o| o.to.id == 50).collect());
        assert_eq!(find.request, Request::FindSuccessor { key: 10 });
        let get = only(n.on_reply(find.token, Ok(Response::Found(FindStep::Done(p(30)))), 1000));
        assert_eq!((get.to.id, get.request.clone()), (30, Request::GetState));
        let rect = only(n.on_reply(get.token, state(Some(50), &[50, 10]), 1000));
        assert_eq!(ids(&n), vec![30, 50]);
        assert_eq!(rect.request, Request::Rectify { candidate: p(10) });
    }

    /// Arbitrary requests, replies (right, wrong, stale or unknown tokens),
    /// ticks and failure reports never panic, and the local pointers stay
    /// well-formed: ordered successor list of at most r without ourselves
    /// (unless alone), never empty for a member.
    #[test]
    fn random_messages_never_panic_and_keep_state_well_formed() {
        let m = u64::MAX;
        let pool = [0, 1, 2, 50, 100, 150, 200, 1 << 63, m - 1, m];
        let mut rng = crate::sim::SimRng::new(99);
        for start in [100, 0, m] {
            let mut n = member(start, &[200, 1 << 63, m - 1], Some(50));
            let mut tokens: Vec<u64> = Vec::new();
            let mut now = 0;
            for _ in 0..20_000 {
                let pick = |rng: &mut crate::sim::SimRng| p(pool[rng.below(pool.len())]);
                let peers: Vec<Peer> = (0..rng.below(5)).map(|_| pick(&mut rng)).collect();
                let maybe = |rng: &mut crate::sim::SimRng, x: Peer| (rng.below(3) > 0).then_some(x);
                let a = pick(&mut rng);
                let b = pick(&mut rng);
                match rng.below(9) {
                    0 => {
                        now += rng.below(400) as u64;
                        tokens.extend(n.tick(now).iter().map(|o| o.token));
                    }
                    1 => {
                        n.handle(None, Request::Rectify { candidate: a }, now);
                    }
                    2 => {
                        let pred = maybe(&mut rng, b);
                        let req = Request::Leaving {
                            leaver: a,
                            predecessor: pred,
                            successors: peers,
                        };
                        n.handle(None, req, now);
                    }
                    3 => {
                        let key = rng.next_u64();
                        let _ = n.handle(None, Request::FindSuccessor { key }, now);
                        let _ = n.is_responsible(key);
                    }
                    4 => n.peer_failed(a.id),
                    _ => {
                        let token = if tokens.is_empty() || rng.below(4) == 0 {
                            rng.next_u64() % 64
                        } else {
                            tokens.swap_remove(rng.below(tokens.len()))
                        };
                        let reply = match rng.below(6) {
                            0 => Err(Failure::Timeout),
                            1 => Ok(Response::Ack),
                            2 => Ok(Response::NotInRing),
                            3 => Ok(Response::Found(FindStep::Done(a))),
                            4 => Ok(Response::Found(FindStep::Next(a))),
                            _ => Ok(Response::State {
                                predecessor: maybe(&mut rng, b),
                                successors: peers,
                            }),
                        };
                        tokens.extend(n.on_reply(token, reply, now).iter().map(|o| o.token));
                    }
                }
                assert!(n.joined());
                let list = ids(&n);
                assert!(!list.is_empty() && list.len() <= 3, "{list:?}");
                if list != [start] {
                    assert!(!list.contains(&start), "{list:?}");
                    let d: Vec<u64> = list.iter().map(|x| x.wrapping_sub(start)).collect();
                    assert!(d.windows(2).all(|w| w[0] < w[1]), "{list:?}");
                }
                assert_ne!(n.predecessor().map(|p| p.id), Some(start));
                assert!(n.in_flight_requests() <= 4 + MAX_PROBES + 1);
            }
        }
    }
}
