//! The initial-gestors list: seed process *Initial_gestors_update*.
//!
//! Up to `size` (default 5) gestores that clients may start from. Every node
//! keeps the list, versioned with an HLC stamp; the newest version wins. The
//! host attaches it to every reply. Each round a node:
//! 1. if it has no list yet, asks a gestor it joined through (`initial.get`),
//!    so a joining node learns the list at once;
//! 2. pings the members; one that failed `evict_after` rounds in a row is
//!    removed (new version);
//! 3. adds itself if the list has room (new version) — concurrent additions
//!    resolve by last-writer-wins, and the loser retries next round;
//! 4. publishes the list (topic `initial`) to the signal endpoints of its
//!    successors, so it spreads around the ring.

use gestor_api::initial::{self, InitialList};
use gestor_api::{node, ring, status, topics};
use gestor_sdk::{declare_plugin, Empty, Plugin, PluginContext, PluginError};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitialConfig {
    /// How many initial gestors the ring keeps.
    pub size: usize,
    pub gossip_every_ms: u64,
    /// Failed pings in a row before a member is replaced.
    pub evict_after: u32,
    pub ping_timeout_ms: u64,
}

impl Default for InitialConfig {
    fn default() -> Self {
        InitialConfig {
            size: 5,
            gossip_every_ms: 1000,
            evict_after: 3,
            ping_timeout_ms: 1000,
        }
    }
}

struct Shared {
    ctx: PluginContext,
    config: InitialConfig,
    list: Mutex<InitialList>,
    failures: Mutex<HashMap<String, u32>>,
    signal_urls: Mutex<HashMap<String, String>>,
}

/// Most entries and longest URL accepted in an offered list.
const MAX_OFFERED: usize = 64;
const MAX_URL: usize = 256;

impl Shared {
    fn current(&self) -> InitialList {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adopt `offer` if it is newer; returns whether it was.
    fn adopt(&self, offer: InitialList) -> bool {
        // Only gestores' signals reach us, but a buggy one must not be able
        // to plant an unbounded list or garbage URLs in every reply.
        let plausible = offer.gestores.len() <= MAX_OFFERED
            && offer.gestores.iter().all(|u| {
                u.len() <= MAX_URL
                    && ["tcp://", "ipc://", "inproc://"]
                        .iter()
                        .any(|scheme| u.starts_with(scheme))
            });
        if !plausible {
            tracing::warn!("implausible initial-gestors list refused");
            return false;
        }
        if self.ctx.clock().observe(offer.version).is_err() {
            tracing::warn!(version = %offer.version, "initial-gestors list from the future refused");
            return false;
        }
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if offer.version <= list.version {
            return false;
        }
        *list = offer;
        self.ctx.set_initial_gestors(list.gestores.clone());
        true
    }

    fn publish_new(&self, gestores: Vec<String>) {
        let offer = InitialList {
            version: self.ctx.clock().now(),
            gestores,
        };
        tracing::info!(list = ?offer.gestores, "initial gestors updated");
        self.adopt(offer);
    }

    fn signal_url(&self, addr: &str) -> Option<String> {
        if let Some(u) = self
            .signal_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
        {
            return Some(u.clone());
        }
        let timeout = Duration::from_millis(self.config.ping_timeout_ms);
        let url = self
            .ctx
            .call::<node::Status>(addr, &Empty, timeout)
            .ok()?
            .signal;
        self.signal_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), url.clone());
        Some(url)
    }

    fn round(&self) {
        let me = self.ctx.request_url();
        let timeout = Duration::from_millis(self.config.ping_timeout_ms);
        if self.current().gestores.is_empty() {
            for url in self.ctx.join_urls() {
                if let Ok(offer) = self.ctx.call::<initial::Get>(&url, &Empty, timeout) {
                    self.adopt(offer);
                    break;
                }
            }
        }
        // Only ring members take part; a node still joining has nothing to say.
        let Ok(neighbours) = self.ctx.call_local::<ring::Neighbours>(&Empty) else {
            return;
        };
        if neighbours.successors.is_empty() {
            return;
        }

        let list = self.current();
        let mut dead = Vec::new();
        for member in list.gestores.iter().filter(|m| **m != me) {
            let alive = self.ctx.call::<node::Ping>(member, &Empty, timeout).is_ok();
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if alive {
                failures.remove(member);
            } else {
                let n = failures.entry(member.clone()).or_insert(0);
                *n += 1;
                if *n >= self.config.evict_after {
                    dead.push(member.clone());
                }
            }
        }
        let mut gestores: Vec<String> = list
            .gestores
            .iter()
            .filter(|m| !dead.contains(m))
            .cloned()
            .collect();
        if !dead.is_empty() {
            tracing::info!(?dead, "replacing unreachable initial gestors");
        }
        if gestores.len() < self.config.size && !gestores.contains(&me) {
            gestores.push(me.clone());
        }
        if gestores != list.gestores {
            self.publish_new(gestores);
        }

        let offer = self.current();
        // Once per gestor: with virtual nodes a successor list names the
        // same gestor (and ourselves) several times.
        let mut peers: Vec<&str> = Vec::new();
        for p in neighbours.successors.iter().filter(|p| p.addr != me) {
            if !peers.contains(&p.addr.as_str()) {
                peers.push(&p.addr);
            }
        }
        for peer in peers {
            if let Some(url) = self.signal_url(peer) {
                if let Err(e) = self.ctx.signal(&url, topics::INITIAL, &offer) {
                    tracing::debug!(%peer, "cannot gossip initial gestors: {e}");
                }
            }
        }
    }
}

#[derive(Default)]
struct Initial {
    shared: Mutex<Option<Arc<Shared>>>,
}

impl Plugin for Initial {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: InitialConfig = ctx.config()?;
        let every = Duration::from_millis(config.gossip_every_ms.max(50));
        let shared = Arc::new(Shared {
            ctx: ctx.clone(),
            config,
            list: Mutex::new(InitialList::default()),
            failures: Mutex::new(HashMap::new()),
            signal_urls: Mutex::new(HashMap::new()),
        });
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared.clone());
        let s = shared.clone();
        ctx.serve::<initial::Get>(move |_, _| Ok(s.current()))?;
        let s = shared.clone();
        ctx.on_signal(topics::INITIAL, move |_topic, body| {
            match body.deserialized::<InitialList>() {
                Ok(offer) => {
                    s.adopt(offer);
                }
                Err(e) => tracing::debug!("malformed initial-gestors signal: {e}"),
            }
        })?;
        let s = shared.clone();
        ctx.serve::<status::Initial>(move |_, _| Ok(s.current()))?;
        let s = shared;
        ctx.every("gossip", every, move || s.round());
        Ok(())
    }
}

declare_plugin!("gestor_initial", Initial::default);
