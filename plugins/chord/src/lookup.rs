//! Iterative lookup, driven by whoever does the I/O.

use crate::{distance, in_half_open, in_open, FindStep, Id, Node, Peer};

/// Give up after this many requests: a correct ring needs O(log N), and
/// routing loops through stale state must terminate.
const MAX_HOPS: u32 = 128;
/// Give up after this many unreachable peers.
const MAX_FAILURES: u32 = 8;

#[derive(Clone, Debug)]
enum State {
    Asking(Peer),
    Done(Peer),
    Failed,
}

/// What the driver of a [`Lookup`] should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupAction {
    /// Send `Request::FindSuccessor { key }` to this peer.
    Ask(Peer),
    /// The key's successor, and how many hops it took.
    Done {
        owner: Peer,
        hops: u32,
    },
    Failed,
}

/// An iterative `find_successor(key)`: the starting node decides locally,
/// then asks ever closer nodes. Hops = `FindSuccessor` requests sent to
/// remote nodes (answered or not).
#[derive(Clone, Debug)]
pub struct Lookup {
    key: Id,
    state: State,
    hops: u32,
    failures: u32,
    /// Peers found unreachable during this lookup.
    dead: Vec<Id>,
    /// Live peers whose answer was useless (named a dead peer): not asked
    /// again, but still counted as ring members when deciding `Done`.
    unhelpful: Vec<Id>,
    /// The starting node and a snapshot of its routing table (sorted by
    /// distance from it), for falling back when a reply is useless.
    origin: Id,
    table: Vec<Peer>,
}

impl Lookup {
    /// Start at `node`: the first decision is local (`node.find_step`).
    /// Fails at once if `node` is not a ring member.
    pub fn start(node: &Node, key: Id) -> Lookup {
        let state = match node.route(key, &[], &[]) {
            Some(FindStep::Done(p)) => State::Done(p),
            Some(FindStep::Next(p)) => State::Asking(p),
            None => State::Failed,
        };
        Lookup {
            key,
            state,
            hops: 0,
            failures: 0,
            dead: Vec::new(),
            unhelpful: Vec::new(),
            origin: node.me().id,
            table: node.known_peers(),
        }
    }

    /// Start by asking `via` (used by join, when we have no table yet).
    pub(crate) fn via(via: Peer, key: Id) -> Lookup {
        Lookup {
            key,
            state: State::Asking(via),
            hops: 0,
            failures: 0,
            dead: Vec::new(),
            unhelpful: Vec::new(),
            origin: key,
            table: Vec::new(),
        }
    }

    pub fn key(&self) -> Id {
        self.key
    }

    pub fn next(&self) -> LookupAction {
        match &self.state {
            State::Asking(p) => LookupAction::Ask(p.clone()),
            State::Done(p) => LookupAction::Done {
                owner: p.clone(),
                hops: self.hops,
            },
            State::Failed => LookupAction::Failed,
        }
    }

    /// The peer we asked answered with `step`. Ignored unless asking. An
    /// answer naming a peer this lookup already found dead (or the asked
    /// peer itself) is useless: we then avoid the asked peer too and fall
    /// back to the starting node's table.
    pub fn on_reply(&mut self, step: FindStep) {
        let State::Asking(asked) = &self.state else {
            return;
        };
        let asked = asked.id;
        self.hops = self.hops.saturating_add(1);
        let named = match &step {
            FindStep::Done(p) | FindStep::Next(p) => p.id,
        };
        if self.hops >= MAX_HOPS {
            self.state = State::Failed;
        } else if self.dead.contains(&named)
            || matches!(step, FindStep::Next(_))
                && (named == asked || self.unhelpful.contains(&named))
        {
            self.unhelpful.push(asked);
            self.failures += 1;
            self.state = if self.failures > MAX_FAILURES {
                State::Failed
            } else {
                self.route_snapshot()
            };
        } else {
            self.state = match step {
                FindStep::Done(owner) => State::Done(owner),
                FindStep::Next(n) => State::Asking(n),
            };
        }
    }

    /// `Node::route` over the snapshot taken at start, avoiding `dead`.
    fn route_snapshot(&self) -> State {
        let live: Vec<&Peer> = self
            .table
            .iter()
            .filter(|p| !self.dead.contains(&p.id))
            .collect();
        let Some(first) = live.first() else {
            return State::Failed;
        };
        if in_half_open(self.key, self.origin, first.id) {
            return State::Done((*first).clone());
        }
        live.iter()
            .filter(|p| !self.unhelpful.contains(&p.id))
            .filter(|p| in_open(p.id, self.origin, self.key))
            .max_by_key(|p| distance(self.origin, p.id))
            .map(|p| State::Asking((*p).clone()))
            .unwrap_or(State::Failed)
    }

    /// The peer we asked was unreachable: fall back to `node`'s own table,
    /// avoiding every peer this lookup found dead. Bounded: after
    /// `MAX_FAILURES` failures the lookup fails.
    pub fn on_failure(&mut self, node: &Node) {
        let State::Asking(asked) = &self.state else {
            return;
        };
        self.dead.push(asked.id);
        self.hops = self.hops.saturating_add(1);
        self.failures += 1;
        self.state = if self.failures > MAX_FAILURES || self.hops >= MAX_HOPS {
            State::Failed
        } else {
            match node.route(self.key, &self.dead, &self.unhelpful) {
                Some(FindStep::Done(p)) => State::Done(p),
                Some(FindStep::Next(p)) => State::Asking(p),
                None => State::Failed,
            }
        };
    }

    pub fn hops(&self) -> u32 {
        self.hops
    }
}
