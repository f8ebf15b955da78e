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
//! `ring.suspect` (local: a peer seen dead elsewhere), and the status
//! section `status.ring`.

use gestor_api::ring::{self, KeyBody, Neighbourhood, Owner, PeerRef, RpcBody};
use gestor_api::status::{self, FingerEntry, RingStatus};
use gestor_chord::{
    Config as ChordConfig, Failure, Lookup, LookupAction, Node, Outbound, Peer, Request, Response,
};
use gestor_sdk::{
    declare_plugin, CallError, Empty, HandlerError, Plugin, PluginContext, PluginError,
};
use serde::Deserialize;
use std::collections::VecDeque;

/// How many past successors are remembered as probes for ring merging.
const SEEN_PEERS: usize = 64;
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
    /// How often a gestor that finds itself alone (every successor lost, as
    /// after a partition) tries to rejoin through its join URLs and the
    /// initial gestors.
    pub rejoin_check_every_ms: u64,
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
            rejoin_check_every_ms: 5_000,
        }
    }
}

/// `ring.rpc` with the Chord messages it carries.
type Rpc = ring::Rpc<Request, Response>;

/// The API's view of a Chord peer (the same fields on the wire).
fn peer_ref(p: &Peer) -> PeerRef {
    PeerRef {
        id: p.id,
        addr: p.addr.clone(),
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
    join_cursor: Mutex<usize>,
    last_rejoin_check: Mutex<u64>,
    probe_cursor: Mutex<usize>,
    /// Gestores seen in our successor list (bounded), for ring merging.
    seen: Mutex<VecDeque<String>>,
    chord_config: ChordConfig,
    stats: Mutex<(u64, u64)>,
}

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
        match self.ctx.call::<Rpc>(&to.addr, &body, self.rpc_timeout()) {
            Ok(Response::NotInRing) => Err(Failure::Unreachable),
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
        self.remember_peers();
        self.rejoin_if_alone();
    }

    /// After a partition: a member whose successors all failed is a ring of
    /// one, and once the gestores it knows of are reachable again it starts
    /// over and joins through one of them; a member of a larger ring probes
    /// for another ring to merge with (`probe_other_rings`).
    fn rejoin_if_alone(&self) {
        let now = self.now();
        {
            let mut last = self
                .last_rejoin_check
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if now.saturating_sub(*last) < self.config.rejoin_check_every_ms {
                return;
            }
            *last = now;
        }
        let (me, alone, successors) = {
            let node = self.node();
            if !node.joined() {
                return;
            }
            let alone = node.successors().iter().all(|p| p.id == node.me().id);
            (node.me().clone(), alone, node.successors().to_vec())
        };
        if !alone {
            self.probe_other_rings(&me, &successors);
            return;
        }
        let mut candidates = self.ctx.join_urls();
        candidates.extend(self.ctx.initial_gestors());
        candidates.retain(|u| *u != me.addr);
        candidates.dedup();
        for url in candidates {
            let Ok(via) = self
                .ctx
                .call::<ring::Whoami>(&url, &Empty, self.rpc_timeout())
                .map(chord_peer)
            else {
                continue;
            };
            if via.id == me.id {
                continue;
            }
            tracing::info!(via = %url, "alone in the ring; rejoining");
            let out = {
                let mut node = self.node();
                *node = Node::new(me.clone(), self.chord_config.clone());
                node.join(via, now)
            };
            self.drive(out);
            return;
        }
    }

    /// After a partition the two sides may each have formed a ring. Ask one
    /// gestor we know of (join URLs, initial gestors, peers seen before)
    /// where our own id belongs in *its* ring. If the answer is not us, that
    /// ring does not contain us: offer its node to Chord as a closer
    /// successor and announce ourselves to it (rectify). Stabilization then
    /// zips the rings together. In one healthy ring the answer is us, or a
    /// node we had not met yet between us and our successor — adopting that
    /// is right too.
    fn probe_other_rings(&self, me: &Peer, successors: &[Peer]) {
        let mut candidates = self.ctx.join_urls();
        candidates.extend(self.ctx.initial_gestors());
        candidates.extend(
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        candidates.retain(|u| *u != me.addr && !successors.iter().any(|s| s.addr == *u));
        candidates.sort();
        candidates.dedup();
        if candidates.is_empty() {
            return;
        }
        let url = {
            let mut cursor = self.probe_cursor.lock().unwrap_or_else(|p| p.into_inner());
            *cursor = (*cursor + 1) % candidates.len();
            candidates[*cursor].clone()
        };
        let Ok(owner) =
            self.ctx
                .call::<ring::Lookup>(&url, &KeyBody { key: me.id }, self.rpc_timeout())
        else {
            return;
        };
        if owner.id == me.id {
            return;
        }
        let candidate = Peer::new(owner.id, owner.addr);
        let Ok(Response::State {
            successors: list, ..
        }) = self.rpc(&candidate, Request::GetState)
        else {
            return;
        };
        let out = self.node().offer_successor(candidate.clone(), &list);
        if !out.is_empty() {
            tracing::info!(peer = %candidate.addr, via = %url, "found a closer successor through another gestor; merging rings");
            self.drive(out);
        }
        // Let the other side learn of us too, in case we are its closer predecessor.
        let _ = self.rpc(
            &candidate,
            Request::Rectify {
                candidate: me.clone(),
            },
        );
    }

    /// Remember gestores seen in our successor list, as probes for
    /// `probe_other_rings` after they have left our view.
    fn remember_peers(&self) {
        let addrs: Vec<String> = self
            .node()
            .successors()
            .iter()
            .map(|p| p.addr.clone())
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for a in addrs {
            if !seen.contains(&a) {
                seen.push_back(a);
                if seen.len() > SEEN_PEERS {
                    seen.pop_front();
                }
            }
        }
    }

    /// Create a ring, or join one through the configured gestores.
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
        let url = {
            let mut cursor = self.join_cursor.lock().unwrap_or_else(|p| p.into_inner());
            *cursor = (*cursor + 1) % joins.len();
            joins[*cursor].clone()
        };
        match self
            .ctx
            .call::<ring::Whoami>(&url, &Empty, self.rpc_timeout())
            .map(chord_peer)
        {
            Ok(via) => {
                tracing::info!(via = %url, "joining the ring");
                let now = self.now();
                let out = self.node().join(via, now);
                self.drive(out);
            }
            Err(e) => tracing::warn!(via = %url, "cannot reach gestor to join through: {e}"),
        }
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
                        addr: owner.addr,
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
                        addr: p.addr,
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
        };
        let me = Peer::new(ctx.node_id(), ctx.request_url());
        let shared = Arc::new(Shared {
            node: Mutex::new(Node::new(me.clone(), chord.clone())),
            ctx: ctx.clone(),
            config: config.clone(),
            epoch: Instant::now(),
            join_cursor: Mutex::new(0),
            last_rejoin_check: Mutex::new(0),
            probe_cursor: Mutex::new(0),
            seen: Mutex::new(VecDeque::new()),
            chord_config: chord.clone(),
            stats: Mutex::new((0, 0)),
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
