//! The Chord ring at the network edge: seed process *Ring_update*.
//!
//! All ring rules live in `gestor-chord` as I/O-free code; this plugin only
//! moves its messages. One loop thread calls `Node::tick` and performs the
//! requests it returns as `ring.rpc` calls to other gestores, feeding each
//! answer (or failure) back with `Node::on_reply`. Incoming `ring.rpc`
//! requests go to `Node::handle`. Other plugins resolve keys through
//! `ring.lookup` (a local call), which runs an iterative `Lookup`.
//!
//! Request kinds (declared in `gestor_api::ring`): `ring.rpc`,
//! `ring.whoami`, `ring.lookup`, `ring.responsible`, `ring.neighbours`,
//! `ring.suspect` (local: a peer seen dead elsewhere), `ring.route` (local:
//! an owner from the table, for first attempts), `ring.table` (the
//! members, walked every `table_every_ms`, for one-hop routing), and the
//! status section `status.ring`.

mod table;

use gestor_api::ring::{self, Neighbourhood, Owner, PeerRef, RingTable, RpcBody};
use gestor_api::status::{self, FingerEntry, RingStatus};
use gestor_chord::{
    Config as ChordConfig, Failure, Lookup, LookupAction, Node, Outbound, Peer, Request, Response,
};
use gestor_sdk::{
    declare_plugin, CallError, Empty, HandlerError, Plugin, PluginContext, PluginError,
};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[plugins.config.gestor_ring]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// Successor-list length r.
    pub successors: usize,
    pub stabilize_every_ms: u64,
    pub fix_fingers_every_ms: u64,
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
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            successors: 8,
            stabilize_every_ms: 500,
            fix_fingers_every_ms: 200,
            check_predecessor_every_ms: 1000,
            rpc_timeout_ms: 1000,
            tick_every_ms: 100,
            merge_probe_every_ms: 5_000,
            dead_after_misses: 3,
            table_every_ms: 2_000,
        }
    }
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

struct Shared {
    node: Mutex<Node>,
    ctx: PluginContext,
    config: RingConfig,
    epoch: Instant,
    stats: Mutex<(u64, u64)>,
    /// The last walk of the ring, served as `ring.table`.
    table: Mutex<RingTable>,
}

/// Successor lists asked per walk: rings up to about this many times the
/// successor-list length get a complete table.
const MAX_WALK_ASKS: usize = 64;

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.config.rpc_timeout_ms)
    }

    fn rpc(&self, to: &Peer, request: Request) -> Result<Response, Failure> {
        let me = self.node().me().clone();
        let body = RpcBody {
            from: Some(peer_ref(&me)),
            request,
        };
        // `NotInRing` goes to the Chord core as an answer: the peer is alive
        // but no member, which drops it at once (and counts for the joining
        // tie-break), unlike a miss.
        match self.ctx.call::<Rpc>(&to.addr, &body, self.rpc_timeout()) {
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

    /// Perform `outbound` and everything the answers lead to.
    fn drive(&self, outbound: Vec<Outbound>) {
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
            let reply = self.rpc(&out.to, out.request.clone());
            let more = self.node().on_reply(out.token, reply, self.now());
            queue.extend(more);
        }
    }

    fn maintain(&self) {
        let (joined, joining) = {
            let n = self.node();
            (n.joined(), n.joining())
        };
        if !joined && !joining {
            self.start_membership();
        }
        let out = self.node().tick(self.now());
        self.drive(out);
    }

    /// The join URLs and initial gestors we do not know as seeds yet, asked
    /// who they are and handed to the Chord core, which joins through them,
    /// breaks ties among gestores that are all joining, and probes them for
    /// other rings to merge with. Runs on its own thread so an unreachable
    /// URL never delays ring maintenance.
    fn refresh_seeds(&self) {
        let me = self.ctx.request_url();
        let mut urls = self.ctx.join_urls();
        urls.extend(self.ctx.initial_gestors());
        urls.retain(|u| *u != me);
        urls.sort();
        urls.dedup();
        for url in urls {
            let known = self.node().seeds().iter().any(|s| *s.addr == *url);
            if known || self.ctx.stopping() {
                continue;
            }
            if let Ok(peer) = self
                .ctx
                .call::<ring::Whoami>(&url, &Empty, self.rpc_timeout())
                .map(chord_peer)
            {
                self.node().add_seed(peer);
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
            self.node().create(now);
            tracing::info!("created a new ring");
            return;
        }
        if self.node().seeds().is_empty() {
            self.refresh_seeds();
        }
        let now = self.now();
        let out = self.node().join_seeds(now);
        if out.is_empty() {
            tracing::warn!(
                "cannot reach any gestor to join through ({})",
                joins.join(", ")
            );
            return;
        }
        tracing::info!("joining the ring");
        self.drive(out);
    }

    fn lookup(&self, key: u64) -> Result<Owner, HandlerError> {
        let mut lookup = {
            let node = self.node();
            if !node.joined() {
                return Err(HandlerError::unavailable(
                    "this gestor has not joined the ring yet",
                ));
            }
            Lookup::start(&node, key)
        };
        // Each step moves strictly closer to the key, or drops a dead peer:
        // 64 fingers plus retries bound it.
        for _ in 0..128 {
            match lookup.next() {
                LookupAction::Done { owner, hops } => {
                    let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    stats.0 += 1;
                    stats.1 += hops as u64;
                    return Ok(Owner {
                        id: owner.id,
                        addr: owner.addr.to_string(),
                        hops,
                    });
                }
                LookupAction::Failed => break,
                LookupAction::Ask(peer) => match self.rpc(&peer, Request::FindSuccessor { key }) {
                    Ok(Response::Found(step)) => lookup.on_reply(step),
                    _ => {
                        let mut node = self.node();
                        node.peer_failed(peer.id);
                        lookup.on_failure(&node);
                    }
                },
            }
        }
        Err(HandlerError::unavailable(format!(
            "lookup of key {key:016x} failed: ring unreachable"
        )))
    }

    /// `ring.route`: ourselves when we are responsible, else the owner in
    /// the last complete table, else a Chord lookup.
    /// Counted in the lookup statistics as 0 hops when answered without a
    /// lookup, so the mean hop count is per routing decision.
    fn route(&self, key: u64) -> Result<Owner, HandlerError> {
        let count_local = || {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.0 += 1;
        };
        {
            let node = self.node();
            if node.joined() && node.is_responsible(key) {
                let me = node.me();
                count_local();
                return Ok(Owner {
                    id: me.id,
                    addr: me.addr.to_string(),
                    hops: 0,
                });
            }
        }
        let known = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .owner_of(key)
            .cloned();
        match known {
            Some(owner) => {
                count_local();
                Ok(Owner {
                    id: owner.id,
                    addr: owner.addr,
                    hops: 0,
                })
            }
            None => self.lookup(key),
        }
    }

    /// Walk the ring through successor lists (`ring.neighbours`) for the
    /// table clients route by. A walk that cannot finish publishes a
    /// partial table, which names no owners: clients then go through any
    /// gestor, as without a table.
    fn walk_table(&self) {
        let (me, successors) = {
            let node = self.node();
            if !node.joined() {
                return;
            }
            let successors: Vec<PeerRef> = node.successors().iter().map(peer_ref).collect();
            (peer_ref(node.me()), successors)
        };
        let (mut walk, mut next) = table::TableWalk::start(me, &successors);
        for _ in 0..MAX_WALK_ASKS {
            let Some(peer) = next.take() else { break };
            if self.ctx.stopping() {
                break;
            }
            match self
                .ctx
                .call::<ring::Neighbours>(&peer.addr, &Empty, self.rpc_timeout())
            {
                Ok(nb) => next = walk.learn(&nb.successors),
                Err(e) => tracing::debug!(peer = %peer.addr, "ring table walk stopped: {e}"),
            }
        }
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = walk.finish();
    }

    fn status(&self) -> RingStatus {
        let node = self.node();
        let mut fingers = Vec::new();
        let mut last: Option<u64> = None;
        for (index, f) in node.fingers().into_iter().enumerate() {
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
        let stats = *self.stats.lock().unwrap_or_else(|p| p.into_inner());
        RingStatus {
            joined: node.joined(),
            id: node.me().id,
            predecessor: node.predecessor().map(peer_ref),
            successors: node.successors().iter().map(peer_ref).collect(),
            fingers,
            lookups: stats.0,
            lookup_hops: stats.1,
        }
    }
}

#[derive(Default)]
struct Ring {
    shared: Mutex<Option<Arc<Shared>>>,
}

impl Plugin for Ring {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: RingConfig = ctx.config()?;
        let chord = ChordConfig {
            successors: config.successors.max(1),
            stabilize_every_ms: config.stabilize_every_ms,
            fix_fingers_every_ms: config.fix_fingers_every_ms,
            check_predecessor_every_ms: config.check_predecessor_every_ms,
            dead_after_misses: config.dead_after_misses.max(1),
            merge_probe_every_ms: config.merge_probe_every_ms.max(100),
        };
        let me = Peer::new(ctx.node_id(), ctx.request_url());
        let shared = Arc::new(Shared {
            node: Mutex::new(Node::new(me.clone(), chord)),
            ctx: ctx.clone(),
            config: config.clone(),
            epoch: Instant::now(),
            stats: Mutex::new((0, 0)),
            table: Mutex::new(RingTable::default()),
        });
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());

        let s = shared.clone();
        ctx.serve::<Rpc>(move |_, body| {
            let now = s.now();
            let from = body.from.map(chord_peer);
            Ok(s.node().handle(from.as_ref(), body.request, now))
        })?;
        let whoami = peer_ref(&me);
        ctx.serve::<ring::Whoami>(move |_, _| Ok(whoami.clone()))?;
        let s = shared.clone();
        ctx.serve::<ring::Lookup>(move |_, body| s.lookup(body.key))?;
        let s = shared.clone();
        ctx.serve::<ring::Route>(move |_, body| s.route(body.key))?;
        let s = shared.clone();
        ctx.serve::<ring::Responsible>(move |_, body| Ok(s.node().is_responsible(body.key)))?;
        let s = shared.clone();
        ctx.serve::<ring::Neighbours>(move |_, _| {
            let node = s.node();
            Ok(Neighbourhood {
                me: peer_ref(node.me()),
                predecessor: node.predecessor().map(peer_ref),
                successors: node.successors().iter().map(peer_ref).collect(),
            })
        })?;
        // Another plugin found this peer unreachable: stop routing through it
        // now rather than after our own failure detection notices.
        let s = shared.clone();
        ctx.serve::<ring::Suspect>(move |_, body| {
            let mut node = s.node();
            if body.key != node.me().id {
                node.peer_failed(body.key);
            }
            Ok(true)
        })?;
        let s = shared.clone();
        ctx.serve::<status::Ring>(move |_, _| Ok(s.status()))?;
        let s = shared.clone();
        ctx.serve::<ring::Table>(move |_, _| {
            Ok(s.table.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })?;

        let s = shared.clone();
        ctx.every(
            "seeds",
            Duration::from_millis(config.merge_probe_every_ms.max(100)),
            move || s.refresh_seeds(),
        );
        let s = shared.clone();
        ctx.every(
            "table",
            Duration::from_millis(config.table_every_ms.max(100)),
            move || s.walk_table(),
        );
        let s = shared.clone();
        ctx.every(
            "maintain",
            Duration::from_millis(config.tick_every_ms.max(10)),
            move || s.maintain(),
        );
        Ok(())
    }

    /// Graceful leave: tell predecessor and successor so the ring closes at once.
    fn stop(&self) {
        let Some(shared) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let out = shared.node().leave();
        for o in out {
            let _ = shared.rpc(&o.to, o.request);
        }
        tracing::info!("left the ring");
    }
}

declare_plugin!("gestor_ring", Ring::default);
