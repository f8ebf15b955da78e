//! The Chord ring at the network edge: seed process *Ring_update*.
//!
//! All ring rules live in `gestor-chord` as I/O-free code; this plugin only
//! moves its messages. A gestor runs `virtual_nodes` Chord nodes at one URL
//! (its *virtual nodes*): the first has the gestor's own id, the others
//! positions chosen when it first joins ([`placement`]) and kept in its
//! store. Each is a full Chord member with its own predecessor, successor
//! list and fingers; `ring.rpc` names the virtual node it is for. One loop
//! thread calls `Node::tick` on each and performs the requests they return
//! (to another gestor over the network, to a sibling virtual node
//! directly), feeding each answer back with `Node::on_reply`.
//!
//! Request kinds (declared in `gestor_api::ring`): `ring.rpc`,
//! `ring.whoami`, `ring.lookup`, `ring.responsible`, `ring.neighbours` (the
//! first virtual node), `ring.ranges` (every virtual node), `ring.suspect`
//! (local: a peer seen dead elsewhere), `ring.route` (local: an owner from
//! the table, for first attempts), `ring.table` (the members, walked every
//! `table_every_ms`, for one-hop routing), and the status section
//! `status.ring`.

mod liveness;
mod placement;
mod table;

use gestor_api::ring::{self, Neighbourhood, Owner, PeerRef, RingTable, RpcBody, VirtualNodes};
use gestor_api::status::{self, FingerEntry, RingStatus};
use gestor_chord::{
    Config as ChordConfig, Failure, Lookup, LookupAction, Node, Outbound, Peer, Request, Response,
};
use gestor_sdk::{
    declare_plugin, CallError, Empty, HandlerError, Plugin, PluginContext, PluginError,
};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `[plugins.config.gestor_ring]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// Successor-list length r (per virtual node, before the allowance
    /// for sibling virtual nodes: see [`chord_successors`]).
    pub successors: usize,
    /// Positions this gestor takes on the ring (1 = classic Chord). More
    /// positions balance the key space between gestores; each one is a
    /// Chord node to maintain. Read when the gestor first joins; later
    /// changes add or drop positions at the next start.
    pub virtual_nodes: usize,
    pub stabilize_every_ms: u64,
    pub fix_fingers_every_ms: u64,
    /// Finger repair halves its pace after each cycle that changed no
    /// finger, at most this many times (3: every 1.6 s instead of 200 ms
    /// on a still ring), and is back at full pace on any change.
    pub fix_fingers_backoff: u32,
    pub check_predecessor_every_ms: u64,
    /// Deadline for one ring RPC; a peer that misses it is treated as dead.
    pub rpc_timeout_ms: u64,
    /// How often the maintenance loop wakes.
    pub tick_every_ms: u64,
    /// How often a member probes one of its seeds (join URLs, initial
    /// gestors) or past successors for another ring to merge with, and how
    /// often the seeds are looked up again.
    pub merge_probe_every_ms: u64,
    /// A peer is dropped after this many missed answers in a row (probed in
    /// between), so a slow gestor is not taken for a dead one.
    pub dead_after_misses: u32,
    /// How often the ring is walked for `ring.table` (the members clients
    /// route by).
    pub table_every_ms: u64,
    /// How long a joining gestor waits for the ring to stand still (two
    /// surveys in a row that agree) to place its extra positions by; then
    /// it places them by its last complete survey, or by hashes without one.
    pub placement_wait_ms: u64,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            successors: 8,
            virtual_nodes: 6,
            stabilize_every_ms: 500,
            fix_fingers_every_ms: 200,
            fix_fingers_backoff: 3,
            check_predecessor_every_ms: 1000,
            rpc_timeout_ms: 1000,
            tick_every_ms: 100,
            merge_probe_every_ms: 5_000,
            dead_after_misses: 3,
            table_every_ms: 2_000,
            placement_wait_ms: 10_000,
        }
    }
}

/// The most virtual nodes a gestor may take (each is a Chord node).
pub const MAX_VIRTUAL_NODES: usize = 64;

/// A successor list long enough to name `successors` other gestores even
/// when sibling virtual nodes sit in between: copies go to distinct
/// gestores, found in this list.
fn chord_successors(config: &RingConfig) -> usize {
    let extra = 3 * (config.virtual_nodes.clamp(1, MAX_VIRTUAL_NODES) - 1);
    (config.successors.max(1) + extra).min(64)
}

/// `ring.rpc` with the Chord messages it carries.
type Rpc = ring::Rpc<Request, Response>;

/// The API's view of a Chord peer (the same fields on the wire).
fn peer_ref(p: &Peer) -> PeerRef {
    PeerRef {
        id: p.id,
        addr: p.addr.to_string(),
    }
}

fn chord_peer(p: PeerRef) -> Peer {
    Peer::new(p.id, p.addr)
}

fn neighbourhood(node: &Node) -> Neighbourhood {
    Neighbourhood {
        me: peer_ref(node.me()),
        predecessor: node.predecessor().map(peer_ref),
        successors: node.successors().iter().map(peer_ref).collect(),
    }
}

/// Every virtual node's neighbourhood, as `ring.ranges` answers.
fn virtual_nodes(nodes: &[Node]) -> VirtualNodes {
    VirtualNodes {
        nodes: nodes.iter().map(neighbourhood).collect(),
    }
}

/// Every peer our virtual nodes know: successors, predecessors, fingers.
fn known_peers(nodes: &[Node]) -> impl Iterator<Item = Peer> + '_ {
    nodes.iter().flat_map(|n| {
        let mut peers: Vec<Peer> = n.successors().to_vec();
        peers.extend(n.predecessor().cloned());
        peers.extend(n.fingers().into_iter().flatten());
        peers
    })
}

/// The ids of every position at `addr` that our virtual nodes know.
fn ids_at(nodes: &[Node], addr: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = known_peers(nodes)
        .filter(|p| *p.addr == *addr)
        .map(|p| p.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The store namespace and key of our positions.
const POSITIONS: (&str, &[u8]) = ("ring", b"positions");

struct Shared {
    /// Our virtual nodes, the first with our own id. Only ever appended
    /// to, so an index names one virtual node for the process's life.
    nodes: Mutex<Vec<Node>>,
    ctx: PluginContext,
    config: RingConfig,
    chord: ChordConfig,
    epoch: Instant,
    stats: Mutex<(u64, u64)>,
    /// The last walk of the ring, served as `ring.table`.
    table: Mutex<RingTable>,
    /// When the first virtual node joined, while the others wait to be
    /// placed.
    placing_since: Mutex<Option<u64>>,
    /// The ring as our surveys saw it, while our positions wait to be placed.
    settling: Mutex<placement::Settling>,
    /// When the last table walk started.
    walked_at: Mutex<Option<u64>>,
    /// Which gestores are failing, by URL (see `liveness`).
    liveness: Mutex<liveness::Liveness>,
    /// For `status.ring`: see `RingStatus`.
    timeouts_alive: AtomicU64,
    gestors_dropped: AtomicU64,
    /// Held by each maintenance tick; true once the gestor leaves the
    /// ring. Without it a tick during the graceful leave found the first
    /// position outside and started joining it again (nothing was sent
    /// once stopping, but the position was `Joining` and the log said
    /// "joining the ring"), and ticks changed positions mid-leave.
    upkeep: Mutex<bool>,
}

/// `request` from our virtual node `from` to the virtual node `to`.
fn rpc_body(from: &Peer, to: &Peer, request: Request) -> RpcBody<Request> {
    RpcBody {
        from: Some(peer_ref(from)),
        to: Some(to.id),
        request,
    }
}

/// A lane of leave notices: each with the position it is from.
type LeaveLane = Vec<(Peer, Outbound)>;

/// Threads that send a leaving gestor's notices at most; each serves one
/// or more neighbouring gestores.
const MAX_LEAVE_LANES: usize = 16;

/// How often the ring is walked while our positions wait to be placed.
const PLACING_WALK_EVERY_MS: u64 = 500;

/// Gestores asked per table walk: rings up to about this many times the
/// successor-list length get a complete table.
const MAX_WALK_ASKS: usize = 64;

/// What a timeout to a gestor means, after a ping (`Shared::doubt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doubt {
    /// It answers pings: busy, not gone; the timeout does not count.
    Slow,
    /// The ping went unanswered too.
    Silent,
    /// It answers pings but has served no request for the whole grace.
    Wedged,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn nodes(&self) -> MutexGuard<'_, Vec<Node>> {
        guard(&self.nodes)
    }

    fn me(&self) -> Peer {
        self.nodes()[0].me().clone()
    }

    fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.config.rpc_timeout_ms)
    }

    /// Answer one Chord message for our virtual node `to` (the first when
    /// unnamed); a node we do not have is no ring member.
    fn handle(&self, from: Option<&Peer>, to: Option<u64>, request: Request) -> Response {
        let now = self.now();
        let mut nodes = self.nodes();
        let at = match to {
            None => Some(0),
            Some(id) => nodes.iter().position(|n| n.me().id == id),
        };
        match at {
            Some(i) => nodes[i].handle(from, request, now),
            None => Response::NotInRing,
        }
    }

    fn rpc(&self, from: &Peer, to: &Peer, request: Request) -> Result<Response, Failure> {
        if *to.addr == *from.addr {
            // A sibling virtual node: no network.
            return Ok(self.handle(Some(from), Some(to.id), request));
        }
        if guard(&self.liveness).gate(&to.addr, self.now()) == liveness::Gate::Skip {
            return Err(Failure::Skipped);
        }
        let body = rpc_body(from, to, request);
        // `NotInRing` goes to the Chord core as an answer: the peer is alive
        // but no member, which drops it at once (and counts for the joining
        // tie-break), unlike a miss.
        let sent = self.now();
        let result = self.ctx.call::<Rpc>(&to.addr, &body, self.rpc_timeout());
        // Not sent (a fast-path request on the I/O thread): no evidence.
        if let Err(CallError::Transport(gestor_sdk::TransportError::WouldBlock { .. })) = &result {
            return Err(Failure::Skipped);
        }
        // A gestor whose workers are all busy times out but still answers
        // pings: no evidence against it either.
        let mut doubt = None;
        if let Err(CallError::Transport(gestor_sdk::TransportError::Timeout { .. })) = &result {
            match self.doubt(&to.addr) {
                Doubt::Slow => return Err(Failure::Skipped),
                other => doubt = Some(other),
            }
        }
        if let Err(CallError::Transport(_)) = &result {
            // Overlapped a failure already counted: no new evidence.
            if !self.gestor_failed(&to.addr, doubt, Some(sent)) {
                return Err(Failure::Skipped);
            }
        } else {
            // An answer, even an error reply: the process is alive.
            guard(&self.liveness).answered(&to.addr);
        }
        match result {
            Ok(r) => Ok(r),
            Err(CallError::Transport(gestor_sdk::TransportError::Timeout { .. })) => {
                Err(Failure::Timeout)
            }
            Err(e) => {
                tracing::debug!(peer = %to.addr, "ring rpc failed: {e}");
                Err(Failure::Unreachable)
            }
        }
    }

    /// Graceful leave of every virtual node. Notices between our own
    /// positions apply at once, in order, so each later notice carries the
    /// neighbours an earlier leave gave its position. The rest go out
    /// together, one lane per neighbouring gestor (beyond 16 gestores,
    /// some share a lane), each gestor's in order: a stalled neighbour
    /// holds up only its own lane. Every position stays a member until all
    /// are out (see `Node::leave_notices`).
    fn leave_ring(&self) {
        let count = self.nodes().len();
        let mut by_gestor: Vec<(String, LeaveLane)> = Vec::new();
        for i in 0..count {
            let (me, out) = {
                let mut nodes = self.nodes();
                (nodes[i].me().clone(), nodes[i].leave_notices())
            };
            for o in out {
                if *o.to.addr == *me.addr {
                    self.handle(Some(&me), Some(o.to.id), o.request);
                } else if let Some((_, list)) =
                    by_gestor.iter_mut().find(|(addr, _)| **addr == *o.to.addr)
                {
                    list.push((me.clone(), o));
                } else {
                    by_gestor.push((o.to.addr.to_string(), vec![(me.clone(), o)]));
                }
            }
        }
        let lanes = by_gestor.len().clamp(1, MAX_LEAVE_LANES);
        let mut work: Vec<LeaveLane> = (0..lanes).map(|_| Vec::new()).collect();
        for (k, (_, notices)) in by_gestor.into_iter().enumerate() {
            work[k % lanes].extend(notices);
        }
        // Each lane in a slot, so that one whose thread cannot start is
        // still sent, on ours.
        let slots: Vec<Mutex<Option<LeaveLane>>> = work
            .into_iter()
            .map(|lane| Mutex::new(Some(lane)))
            .collect();
        // A gestor that did not take one notice is not sent the rest: a
        // stalled one would hold up our exit by an RPC timeout for each.
        let send_lane = |slot: &Mutex<Option<LeaveLane>>| {
            let mut unreached: Vec<Arc<str>> = Vec::new();
            for (from, o) in guard(slot).take().unwrap_or_default() {
                if unreached.contains(&o.to.addr) {
                    continue;
                }
                if !self.send_leave_notice(&from, &o.to, o.request) {
                    unreached.push(o.to.addr.clone());
                }
            }
        };
        std::thread::scope(|scope| {
            for slot in &slots {
                let spawned = std::thread::Builder::new()
                    .name("ring-leave".into())
                    .spawn_scoped(scope, || send_lane(slot));
                if let Err(e) = spawned {
                    tracing::warn!("no thread for leave notices, sending them in turn: {e}");
                    send_lane(slot);
                }
            }
        });
        for node in self.nodes().iter_mut() {
            node.depart();
        }
    }

    /// Deliver one graceful-leave notice. Unlike [`Shared::rpc`] it ignores
    /// the liveness gate: a notice is sent once, as the gestor stops, and a
    /// neighbour that had one timeout counted lately must still hear it, or
    /// it closes the ring only by failure detection. A notice that is not
    /// delivered is logged; nothing is counted, as we are leaving. False
    /// when the gestor did not answer at all.
    fn send_leave_notice(&self, from: &Peer, to: &Peer, request: Request) -> bool {
        match self
            .ctx
            .call::<Rpc>(&to.addr, &rpc_body(from, to, request), self.rpc_timeout())
        {
            Ok(Response::Ack) => {
                tracing::debug!(peer = %to.addr, position = to.id, from = from.id, "leave notice delivered");
                true
            }
            // Left before us (a whole ring stopping): nothing to close.
            Ok(Response::NotInRing) => {
                tracing::debug!(peer = %to.addr, position = to.id, "leave notice: the neighbour has left too");
                true
            }
            Ok(other) => {
                tracing::warn!(peer = %to.addr, position = to.id, "leave notice refused: {other:?}");
                true
            }
            Err(CallError::Transport(e)) => {
                tracing::warn!(peer = %to.addr, position = to.id, "leave notice not delivered: {e}; none more to it");
                false
            }
            Err(e) => {
                tracing::warn!(peer = %to.addr, position = to.id, "leave notice refused: {e}");
                true
            }
        }
    }

    /// Does the gestor at `addr` answer `node.ping` (on its I/O thread, so
    /// busy workers do not matter)? Asked before a timeout counts against
    /// it; a recent verdict is reused (see `liveness`).
    fn answers_ping(&self, addr: &str) -> bool {
        if let Some(verdict) = guard(&self.liveness).recent_ping(addr, self.now()) {
            return verdict;
        }
        if !self.ctx.can_wait() {
            return false;
        }
        let result = self
            .ctx
            .call::<gestor_api::node::Ping>(addr, &Empty, self.rpc_timeout() / 2);
        // Any answer, even an error reply, shows the process alive.
        let answered = !matches!(result, Err(CallError::Transport(_)));
        guard(&self.liveness).pinged(addr, self.now(), answered);
        if answered {
            tracing::debug!(gestor = %addr, "slow to answer but alive: not counted as a miss");
        }
        answered
    }

    /// A request to `addr` timed out: is the gestor only slow? It is while
    /// it answers pings, for a grace of `SLOW_GRACE_ATTEMPTS` RPC timeouts
    /// without serving a request (see `liveness`).
    fn doubt(&self, addr: &str) -> Doubt {
        if !self.answers_ping(addr) {
            return Doubt::Silent;
        }
        if !guard(&self.liveness).forgive(addr, self.now()) {
            tracing::warn!(gestor = %addr, "answers pings but no request for {} RPC timeouts: counted as failing", liveness::SLOW_GRACE_ATTEMPTS);
            return Doubt::Wedged;
        }
        self.timeouts_alive.fetch_add(1, Ordering::Relaxed);
        Doubt::Slow
    }

    /// A real request to the gestor at `addr` failed (after a timeout, what
    /// `doubt` found); after enough in a row every position of it leaves
    /// every one of ours at once. False when the failure did not count: it
    /// overlapped one already counted (`Liveness::failed_silent`).
    fn gestor_failed(&self, addr: &str, doubt: Option<Doubt>, sent_ms: Option<u64>) -> bool {
        let now = self.now();
        let dead = match doubt {
            Some(Doubt::Silent) => guard(&self.liveness).failed_silent(addr, now, sent_ms),
            _ => Some(guard(&self.liveness).failed(addr, now)),
        };
        match dead {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let mut nodes = self.nodes();
        let ids = ids_at(&nodes, addr);
        if !ids.is_empty() {
            self.gestors_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(gestor = %addr, positions = ids.len(), "gestor unreachable; dropped from the ring");
        }
        for node in nodes.iter_mut() {
            ids.iter().for_each(|&id| node.peer_dead(id));
        }
        true
    }

    /// Perform `outbound` of virtual node `index` and everything the
    /// answers lead to.
    fn drive(&self, index: usize, outbound: Vec<Outbound>) {
        let me = self.nodes()[index].me().clone();
        let mut queue: VecDeque<Outbound> = outbound.into();
        // A bound against a node that keeps asking: more than a full
        // maintenance round ever needs.
        let mut budget = 256;
        while let Some(out) = queue.pop_front() {
            if budget == 0 || self.ctx.stopping() && !matches!(out.request, Request::Leaving { .. })
            {
                break;
            }
            budget -= 1;
            let reply = self.rpc(&me, &out.to, out.request.clone());
            let more = self.nodes()[index].on_reply(out.token, reply, self.now());
            queue.extend(more);
        }
    }

    fn maintain(&self) {
        let left = guard(&self.upkeep);
        if *left {
            return;
        }
        let (joined, joining) = {
            let nodes = self.nodes();
            (nodes[0].joined(), nodes[0].joining())
        };
        if !joined && !joining {
            self.start_membership();
        }
        if joined {
            self.place();
        }
        let count = self.nodes().len();
        for i in 0..count {
            if i > 0 && joined {
                self.join_sibling(i);
            }
            let out = self.nodes()[i].tick(self.now());
            self.drive(i, out);
        }
    }

    /// Virtual node `i` (not the first) joins through the first, once that
    /// one is a member: never through seeds alone, whose tie-break could
    /// make it create a ring of its own.
    fn join_sibling(&self, i: usize) {
        let out = {
            let mut nodes = self.nodes();
            if nodes[i].joined() || nodes[i].joining() {
                return;
            }
            let first = nodes[0].me().clone();
            let now = self.now();
            nodes[i].join(first, now)
        };
        self.drive(i, out);
    }

    /// The join URLs and initial gestors we do not know as seeds yet, asked
    /// who they are and handed to the Chord core of every virtual node,
    /// which joins through them, breaks ties among gestores that are all
    /// joining, and probes them for other rings to merge with. Runs on its
    /// own thread so an unreachable URL never delays ring maintenance.
    fn refresh_seeds(&self) {
        let me = self.ctx.request_url();
        let mut urls = self.ctx.join_urls();
        urls.extend(self.ctx.initial_gestors());
        urls.retain(|u| *u != me);
        urls.sort();
        urls.dedup();
        for url in urls {
            let known = self.nodes()[0].seeds().iter().any(|s| *s.addr == *url);
            if known || self.ctx.stopping() {
                continue;
            }
            if let Ok(peer) = self
                .ctx
                .call::<ring::Whoami>(&url, &Empty, self.rpc_timeout())
                .map(chord_peer)
            {
                self.nodes()
                    .iter_mut()
                    .for_each(|n| n.add_seed(peer.clone()));
            }
        }
    }

    /// Create a ring (no join URLs), or join one through the seeds. Once
    /// joining, the Chord core retries by itself (see `Node::join_seeds`).
    fn start_membership(&self) {
        let joins: Vec<String> = self
            .ctx
            .join_urls()
            .into_iter()
            .filter(|u| *u != self.ctx.request_url())
            .collect();
        if joins.is_empty() {
            let now = self.now();
            self.nodes()[0].create(now);
            tracing::info!("created a new ring");
            return;
        }
        if self.nodes()[0].seeds().is_empty() {
            self.refresh_seeds();
        }
        let now = self.now();
        let out = self.nodes()[0].join_seeds(now);
        if out.is_empty() {
            tracing::warn!(
                "cannot reach any gestor to join through ({})",
                joins.join(", ")
            );
            return;
        }
        tracing::info!("joining the ring");
        self.drive(0, out);
    }

    /// Positions kept from an earlier run, if they start with our id.
    fn stored_positions(&self) -> Option<Vec<u64>> {
        let raw = self.ctx.store().kv_get(POSITIONS.0, POSITIONS.1).ok()??;
        let text = String::from_utf8(raw).ok()?;
        let positions: Vec<u64> = text
            .split(',')
            .map(|h| u64::from_str_radix(h, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        (positions.first() == Some(&self.ctx.node_id())).then_some(positions)
    }

    /// Where our extra positions go, once our first virtual node is a
    /// member: the same as last run if stored; evenly spread on a ring of
    /// our own; else placed by the complete table (waiting up to
    /// `placement_wait_ms` for one), else hashed. `None`: wait.
    fn choose_positions(&self, wanted: usize) -> Option<Vec<u64>> {
        let first = self.ctx.node_id();
        if let Some(mut stored) = self.stored_positions() {
            if stored.len() >= wanted {
                stored.truncate(wanted);
                return Some(stored);
            }
        }
        let alone = self.nodes()[0].successors().iter().all(|p| p.id == first);
        if alone {
            return Some(placement::evenly_spaced(first, wanted));
        }
        let me = self.ctx.request_url();
        let now = self.now();
        let since = *guard(&self.placing_since).get_or_insert(now);
        let waited_out = now.saturating_sub(since) >= self.config.placement_wait_ms;
        let view = {
            let settling = guard(&self.settling);
            match settling.settled() {
                Some(view) => Some(view.clone()),
                // A ring that never stands still (gestores joining all the
                // while): the latest complete view is still better than hashes.
                None if waited_out => settling.latest().cloned(),
                None => return None,
            }
        };
        if let Some(view) = view.filter(|v| v.members.iter().any(|m| m.addr != me)) {
            let gestores: std::collections::BTreeSet<&str> =
                view.members.iter().map(|m| m.addr.as_str()).collect();
            tracing::info!(
                members = view.members.len(),
                gestores = gestores.len(),
                settled = !waited_out,
                "placing virtual nodes by the ring"
            );
            return Some(placement::steal(&view, &me, first, wanted, first));
        }
        if !waited_out {
            return None;
        }
        tracing::warn!(
            "no complete survey of the ring to place virtual nodes by; hashing their positions"
        );
        Some(placement::hashed(first, wanted))
    }

    /// Take the positions still missing (once per run, or never with one).
    fn place(&self) {
        let wanted = self.config.virtual_nodes.clamp(1, MAX_VIRTUAL_NODES);
        if self.nodes().len() >= wanted {
            return;
        }
        let Some(positions) = self.choose_positions(wanted) else {
            return;
        };
        let text: Vec<String> = positions.iter().map(|p| format!("{p:016x}")).collect();
        let store = self.ctx.store();
        if let Err(e) = store
            .kv_put(POSITIONS.0, POSITIONS.1, text.join(",").as_bytes())
            .and_then(|_| store.flush())
        {
            // Unsaved positions would move at the next start: wait.
            tracing::warn!("cannot keep the ring positions: {e}");
            return;
        }
        let me = self.ctx.request_url();
        let mut nodes = self.nodes();
        let seeds: Vec<Peer> = nodes[0].seeds().to_vec();
        for &id in &positions[nodes.len()..] {
            let mut node = Node::new(Peer::new(id, me.clone()), self.chord.clone());
            seeds.iter().for_each(|s| node.add_seed(s.clone()));
            nodes.push(node);
        }
        tracing::info!(positions = nodes.len(), "virtual nodes placed");
    }

    /// The joined virtual node closest before `key` (fewest lookup hops).
    fn start_for(nodes: &[Node], key: u64) -> Option<usize> {
        (0..nodes.len())
            .filter(|&i| nodes[i].joined())
            .min_by_key(|&i| key.wrapping_sub(nodes[i].me().id))
    }

    fn count_lookup(&self, hops: u32) {
        let mut stats = guard(&self.stats);
        stats.0 += 1;
        stats.1 += u64::from(hops);
    }

    fn lookup(&self, key: u64) -> Result<Owner, HandlerError> {
        let (index, mut lookup) = {
            let nodes = self.nodes();
            let Some(i) = Self::start_for(&nodes, key) else {
                return Err(HandlerError::unavailable(
                    "this gestor has not joined the ring yet",
                ));
            };
            (i, Lookup::start(&nodes[i], key))
        };
        let me = self.nodes()[index].me().clone();
        // Each step moves strictly closer to the key, or drops a dead peer:
        // 64 fingers plus retries bound it.
        for _ in 0..128 {
            match lookup.next() {
                LookupAction::Done { owner, hops } => {
                    self.count_lookup(hops);
                    return Ok(Owner {
                        id: owner.id,
                        addr: owner.addr.to_string(),
                        hops,
                    });
                }
                LookupAction::Failed => break,
                LookupAction::Ask(peer) => {
                    // On the I/O thread (a fast-path request): no network
                    // there, and no peer is blamed; a worker asks instead.
                    if *peer.addr != *me.addr && !self.ctx.can_wait() {
                        return Err(HandlerError::unavailable("ring lookup must wait"));
                    }
                    match self.rpc(&me, &peer, Request::FindSuccessor { key }) {
                        Ok(Response::Found(step)) => lookup.on_reply(step),
                        other => {
                            let mut nodes = self.nodes();
                            if !matches!(other, Err(Failure::Skipped)) {
                                nodes[index].peer_failed(peer.id);
                            }
                            lookup.on_failure(&nodes[index]);
                        }
                    }
                }
            }
        }
        Err(HandlerError::unavailable(format!(
            "lookup of key {key:016x} failed: ring unreachable"
        )))
    }

    /// Our virtual node responsible for `key` now, if any.
    fn responsible(&self, key: u64) -> Option<Peer> {
        let nodes = self.nodes();
        nodes
            .iter()
            .find(|n| n.joined() && n.is_responsible(key))
            .map(|n| n.me().clone())
    }

    /// `ring.route`: ourselves when we are responsible, else the owner in
    /// the last complete table, else a Chord lookup.
    /// Counted in the lookup statistics as 0 hops when answered without a
    /// lookup, so the mean hop count is per routing decision.
    fn route(&self, key: u64) -> Result<Owner, HandlerError> {
        let known = match self.responsible(key) {
            Some(me) => Some(peer_ref(&me)),
            None => guard(&self.table).owner_of(key).cloned(),
        };
        match known {
            Some(owner) => {
                self.count_lookup(0);
                Ok(Owner {
                    id: owner.id,
                    addr: owner.addr,
                    hops: 0,
                })
            }
            None => self.lookup(key),
        }
    }

    fn ranges(&self) -> VirtualNodes {
        virtual_nodes(&self.nodes())
    }

    /// A plugin of ours found the peer `id` unreachable. Unless its gestor
    /// answers a ping (then it is only slow): one miss against every
    /// virtual node of that gestor in every one of ours (they share its
    /// fate), and one failed attempt against the gestor's URL, as a failed
    /// request of our own would be.
    fn suspect(&self, id: u64) {
        let addr = {
            let nodes = self.nodes();
            let me = nodes[0].me().addr.clone();
            let Some(addr) = known_peers(&nodes)
                .find(|p| p.id == id)
                .map(|p| p.addr.to_string())
            else {
                return;
            };
            if *addr == *me {
                return;
            }
            addr
        };
        let doubt = self.doubt(&addr);
        if doubt == Doubt::Slow {
            return;
        }
        // Reports that overlap a failure already counted add nothing here
        // either: each would be a miss in the Chord cores, which drop a
        // peer after a few.
        if !self.gestor_failed(&addr, Some(doubt), None) {
            return;
        }
        let mut nodes = self.nodes();
        let ids = ids_at(&nodes, &addr);
        for node in nodes.iter_mut() {
            ids.iter().for_each(|&i| node.peer_failed(i));
        }
    }

    /// Walk the ring through successor lists (`ring.ranges`, one ask per
    /// gestor however many virtual nodes it has) for the table clients
    /// route by. A walk that cannot finish publishes a partial table,
    /// which names no owners: clients then go through any gestor, as
    /// without a table.
    fn walk_table(&self) {
        let (start, mine) = {
            let nodes = self.nodes();
            (neighbourhood(&nodes[0]), virtual_nodes(&nodes))
        };
        let (mut walk, mut next) = table::TableWalk::start(start.me.clone(), &start.successors);
        let mut asked: HashMap<String, VirtualNodes> = HashMap::new();
        asked.insert(start.me.addr.clone(), mine);
        let mut asks = 0;
        // Every step learns at least one member, so MAX_TABLE bounds it.
        for _ in 0..ring::MAX_TABLE {
            let Some(peer) = next.take() else { break };
            if self.ctx.stopping() {
                break;
            }
            if !asked.contains_key(&peer.addr) {
                if asks == MAX_WALK_ASKS {
                    break;
                }
                asks += 1;
                match self
                    .ctx
                    .call::<ring::Ranges>(&peer.addr, &Empty, self.rpc_timeout())
                {
                    Ok(v) => asked.insert(peer.addr.clone(), v),
                    Err(e) => {
                        tracing::debug!(peer = %peer.addr, "ring table walk stopped: {e}");
                        break;
                    }
                };
            }
            let list = asked[&peer.addr]
                .nodes
                .iter()
                .find(|nb| nb.me.id == peer.id)
                .map(|nb| nb.successors.clone());
            match list {
                Some(successors) => next = walk.learn(&successors),
                None => {
                    tracing::debug!(peer = %peer.addr, "ring table walk stopped: position gone")
                }
            }
        }
        *guard(&self.table) = walk.finish();
    }

    /// The table thread: walk the ring every `table_every_ms`; while our
    /// positions wait to be placed, every PLACING_WALK_EVERY_MS, each walk
    /// followed by a survey for placement, so the ring is seen to settle soon.
    fn table_tick(&self) {
        let placing = {
            let nodes = self.nodes();
            if !nodes[0].joined() {
                return;
            }
            nodes.len() < self.config.virtual_nodes.clamp(1, MAX_VIRTUAL_NODES)
        };
        let now = self.now();
        let every = if placing {
            PLACING_WALK_EVERY_MS.min(self.config.table_every_ms)
        } else {
            self.config.table_every_ms
        };
        {
            let mut walked_at = guard(&self.walked_at);
            if walked_at.is_some_and(|t| now.saturating_sub(t) < every) {
                return;
            }
            *walked_at = Some(now);
        }
        self.walk_table();
        if placing {
            let view = self.survey(virtual_nodes(&self.nodes()));
            guard(&self.settling).observe(view);
        }
    }

    /// Every position of every gestor that answers (see
    /// [`placement::Survey`]), for placing ours.
    fn survey(&self, mine: VirtualNodes) -> RingTable {
        let me = self.ctx.request_url();
        let mut survey = placement::Survey::start(&me, &mine);
        for _ in 0..MAX_WALK_ASKS {
            let Some(addr) = survey.next() else {
                return survey.finish();
            };
            if self.ctx.stopping() {
                break;
            }
            match self
                .ctx
                .call::<ring::Ranges>(&addr, &Empty, self.rpc_timeout())
            {
                Ok(answer) => survey.learn(&answer),
                Err(e) => tracing::debug!(peer = %addr, "ring survey: no answer: {e}"),
            }
        }
        // Too many gestores to ask in one survey: no view.
        RingTable::default()
    }

    fn status(&self) -> RingStatus {
        let nodes = self.nodes();
        let first = &nodes[0];
        let mut fingers = Vec::new();
        let mut last: Option<u64> = None;
        for (index, f) in first.fingers().into_iter().enumerate() {
            if let Some(p) = f {
                if last != Some(p.id) {
                    last = Some(p.id);
                    fingers.push(FingerEntry {
                        index,
                        id: p.id,
                        addr: p.addr.to_string(),
                    });
                }
            }
        }
        let stats = *guard(&self.stats);
        let wanted = self.config.virtual_nodes.clamp(1, MAX_VIRTUAL_NODES);
        RingStatus {
            // Joined once every position is placed and a member.
            joined: nodes.len() >= wanted && nodes.iter().all(Node::joined),
            id: first.me().id,
            predecessor: first.predecessor().map(peer_ref),
            successors: first.successors().iter().map(peer_ref).collect(),
            fingers,
            lookups: stats.0,
            lookup_hops: stats.1,
            virtual_nodes: nodes.iter().map(neighbourhood).collect(),
            leave_splices: nodes.iter().map(Node::leave_splices).sum(),
            timeouts_alive: self.timeouts_alive.load(Ordering::Relaxed),
            gestors_dropped: self.gestors_dropped.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Ring {
    shared: Mutex<Option<Arc<Shared>>>,
}

/// The kinds other plugins of this gestor call.
fn serve_local(ctx: &PluginContext, shared: &Arc<Shared>) -> Result<(), PluginError> {
    let s = shared.clone();
    ctx.serve::<ring::Lookup>(move |_, body| s.lookup(body.key))?;
    let s = shared.clone();
    ctx.serve::<ring::Route>(move |_, body| s.route(body.key))?;
    let s = shared.clone();
    ctx.serve::<ring::Responsible>(move |_, body| Ok(s.responsible(body.key).is_some()))?;
    let s = shared.clone();
    ctx.serve::<ring::Predecessors>(move |_, _| {
        Ok(s.nodes()
            .iter()
            .map(|n| ring::VnodePredecessor {
                id: n.me().id,
                predecessor: n.predecessor().map(|p| p.id),
            })
            .collect())
    })?;
    // Another plugin found this peer unreachable: stop routing through it
    // now rather than after our own failure detection notices.
    let s = shared.clone();
    ctx.serve::<ring::Suspect>(move |_, body| {
        s.suspect(body.key);
        Ok(true)
    })
}

/// The kinds other gestores (and clients, for the table) call.
fn serve_remote(ctx: &PluginContext, shared: &Arc<Shared>) -> Result<(), PluginError> {
    let s = shared.clone();
    ctx.serve::<Rpc>(move |_, body| {
        let from = body.from.map(chord_peer);
        Ok(s.handle(from.as_ref(), body.to, body.request))
    })?;
    let whoami = peer_ref(&shared.me());
    ctx.serve::<ring::Whoami>(move |_, _| Ok(whoami.clone()))?;
    let s = shared.clone();
    ctx.serve::<ring::Neighbours>(move |_, _| Ok(neighbourhood(&s.nodes()[0])))?;
    let s = shared.clone();
    ctx.serve::<ring::Ranges>(move |_, _| Ok(s.ranges()))?;
    let s = shared.clone();
    ctx.serve::<status::Ring>(move |_, _| Ok(s.status()))?;
    let s = shared.clone();
    ctx.serve::<ring::Table>(move |_, _| Ok(guard(&s.table).clone()))
}

impl Plugin for Ring {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: RingConfig = ctx.config()?;
        if config.virtual_nodes == 0 || config.virtual_nodes > MAX_VIRTUAL_NODES {
            return Err(PluginError::Start {
                plugin: "gestor_ring".into(),
                reason: format!(
                    "plugins.config.gestor_ring.virtual_nodes must be 1 to {MAX_VIRTUAL_NODES}, not {}",
                    config.virtual_nodes
                ),
            });
        }
        let chord = ChordConfig {
            successors: chord_successors(&config),
            stabilize_every_ms: config.stabilize_every_ms,
            fix_fingers_every_ms: config.fix_fingers_every_ms,
            fix_fingers_backoff: config.fix_fingers_backoff,
            check_predecessor_every_ms: config.check_predecessor_every_ms,
            dead_after_misses: config.dead_after_misses.max(1),
            merge_probe_every_ms: config.merge_probe_every_ms.max(100),
        };
        let me = Peer::new(ctx.node_id(), ctx.request_url());
        let shared = Arc::new(Shared {
            nodes: Mutex::new(vec![Node::new(me, chord.clone())]),
            ctx: ctx.clone(),
            config: config.clone(),
            chord,
            epoch: Instant::now(),
            stats: Mutex::new((0, 0)),
            table: Mutex::new(RingTable::default()),
            placing_since: Mutex::new(None),
            settling: Mutex::new(placement::Settling::default()),
            walked_at: Mutex::new(None),
            // Retry a failing gestor after one stabilize period; while an
            // attempt is out (up to one RPC timeout) the others wait.
            liveness: Mutex::new(liveness::Liveness::new(
                config.dead_after_misses,
                config.stabilize_every_ms,
                config.rpc_timeout_ms,
            )),
            timeouts_alive: AtomicU64::new(0),
            gestors_dropped: AtomicU64::new(0),
            upkeep: Mutex::new(false),
        });
        *guard(&self.shared) = Some(shared.clone());
        serve_remote(&ctx, &shared)?;
        serve_local(&ctx, &shared)?;
        let s = shared.clone();
        ctx.every(
            "seeds",
            Duration::from_millis(config.merge_probe_every_ms.max(100)),
            move || s.refresh_seeds(),
        );
        let s = shared.clone();
        // Wakes often; `table_tick` decides whether a walk is due.
        ctx.every(
            "table",
            Duration::from_millis(PLACING_WALK_EVERY_MS.min(config.table_every_ms.max(100))),
            move || s.table_tick(),
        );
        let s = shared;
        ctx.every(
            "maintain",
            Duration::from_millis(config.tick_every_ms.max(10)),
            move || s.maintain(),
        );
        Ok(())
    }

    /// Graceful leave: every virtual node tells its predecessor and
    /// successor, so the ring closes at once. A maintenance tick under way
    /// finishes first, and none runs after (see `Shared::upkeep`).
    fn stop(&self) {
        let Some(shared) = guard(&self.shared).clone() else {
            return;
        };
        let mut left = guard(&shared.upkeep);
        *left = true;
        shared.leave_ring();
        tracing::info!("left the ring");
    }
}

declare_plugin!("gestor_ring", Ring::default);
