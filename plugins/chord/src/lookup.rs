//! Iterative lookup, driven by whoever does the I/O.

use crate::{FindStep, Id, Node, Peer};

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
    Done { owner: Peer, hops: u32 },
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
}

impl Lookup {
    /// Start at `node`: the first decision is local (`node.find_step`).
    /// Fails at once if `node` is not a ring member.
    pub fn start(node: &Node, key: Id) -> Lookup {
        let state = match node.route(key, &[]) {
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

    /// The peer we asked answered with `step`. Ignored unless asking.
    pub fn on_reply(&mut self, step: FindStep) {
        let State::Asking(asked) = &self.state else {
            return;
        };
        self.hops = self.hops.saturating_add(1);
        self.state = match step {
            FindStep::Done(owner) => State::Done(owner),
            // No progress (pointing at itself, or at a peer we know is dead)
            // or too long: stale routing state somewhere, give up rather
            // than loop.
            FindStep::Next(n)
                if n.id == asked.id || self.dead.contains(&n.id) || self.hops >= MAX_HOPS =>
            {
                State::Failed
            }
            FindStep::Next(n) => State::Asking(n),
        };
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
            match node.route(self.key, &self.dead) {
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
