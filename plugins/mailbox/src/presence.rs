//! Presence push (like an OpenDHT listen or an etcd watch).
//!
//! `presence.watch {username, token, contacts}` reaches the watcher's owner
//! (`presence.subscribe`), which authenticates the watcher, reads its
//! current address from its own directory record and registers, on the
//! owner of each contact (`presence.add`), a lease: "tell `tcp://ADDRESS`
//! when this contact changes". The contact's owner holds the contact's
//! record, so it polls the record locally (`dir.lookup`, no network) every
//! `presence_poll_ms` and pushes `chat.presence` to each watcher when
//! `online` or `address` changed. Leases expire after `watch_ttl_ms`;
//! clients renew them. Leases live in memory: after a gestor restart or a
//! ring change the next renewal puts them on the right gestor again.

use crate::{rules, MailboxConfig, Shared};
use gestor_api::presence::{self, AddWatch, Presence, WatchBody, Watching};
use gestor_api::user::{Found, UserOnly};
use gestor_api::{chat, dir};
use gestor_sdk::{ErrorCode, HandlerError, PluginContext, PluginError};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Watcher {
    notify: String,
    expires_ms: u64,
    failures: u32,
}

#[derive(Default)]
struct Watched {
    /// Last pushed `(online, address)`.
    last: Option<(bool, String)>,
    watchers: HashMap<String, Watcher>,
}

/// Leases held on this gestor, by watched user.
#[derive(Default)]
pub struct Watches {
    inner: Mutex<HashMap<String, Watched>>,
}

/// Pushes that fail this many times in a row end the lease early.
const MAX_NOTIFY_FAILURES: u32 = 3;

impl Watches {
    /// `(watched users, leases)`, for `status.mailbox`.
    pub fn counts(&self) -> (u64, u64) {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let leases = w.values().map(|x| x.watchers.len() as u64).sum();
        (w.len() as u64, leases)
    }
}

fn lookup(ctx: &PluginContext, user: &str) -> Result<Found, HandlerError> {
    ctx.call_local::<dir::Lookup>(&UserOnly {
        username: user.to_string(),
    })
    .map_err(HandlerError::from)
}

fn presence_of(user: &str, found: Result<Found, HandlerError>) -> Presence {
    match found {
        Ok(f) => Presence {
            user: user.to_string(),
            exists: true,
            online: f.online,
            address: f.address,
            last_seen_ms: f.last_seen_ms,
            error: None,
        },
        Err(e) => Presence {
            user: user.to_string(),
            exists: e.code != ErrorCode::NotFound,
            online: false,
            address: String::new(),
            last_seen_ms: 0,
            error: (e.code != ErrorCode::NotFound).then(|| e.to_string()),
        },
    }
}

impl Shared {
    fn subscribe(&self, req: WatchBody) -> Result<Watching, HandlerError> {
        let ctx = self.ctx()?;
        let config = self.config();
        self.owner_check(&ctx, &req.username)?;
        self.authenticate(&ctx, &req.username, &req.token)?;
        if req.contacts.len() > config.max_contacts {
            return Err(HandlerError::bad_request(format!(
                "{} contacts exceed the limit of {}",
                req.contacts.len(),
                config.max_contacts
            )));
        }
        let me = lookup(&ctx, &req.username)?;
        // Cannot happen to a session made by user.login (it requires an
        // address), so PROTOCOL.md does not list it; kept as a guard.
        if me.address.is_empty() {
            return Err(HandlerError::bad_request(
                "log in with an address to receive presence events",
            ));
        }
        let add = |contact: &str| AddWatch {
            contact: contact.to_string(),
            watcher: req.username.clone(),
            notify: format!("tcp://{}", me.address),
            ttl_ms: config.watch_ttl_ms,
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for contact in &req.contacts {
            if !seen.insert(contact.as_str()) {
                continue;
            }
            rules::validate_username(contact)?;
            let found = self.route::<presence::Add>(contact, &add(contact));
            out.push(match found {
                Ok(p) => p,
                Err(e) => presence_of(contact, Err(e)),
            });
        }
        Ok(Watching {
            contacts: out,
            ttl_ms: config.watch_ttl_ms,
        })
    }

    fn add_watch(&self, req: AddWatch) -> Result<Presence, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.contact)?;
        rules::validate_username(&req.watcher)?;
        let found = lookup(&ctx, &req.contact)?;
        let presence = presence_of(&req.contact, Ok(found));
        let ttl = req.ttl_ms.min(self.config().watch_ttl_ms.max(1));
        let mut w = self
            .presence
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = w.entry(req.contact.clone()).or_default();
        entry
            .last
            .get_or_insert_with(|| (presence.online, presence.address.clone()));
        entry.watchers.insert(
            req.watcher,
            Watcher {
                notify: req.notify,
                expires_ms: ctx.now_ms().saturating_add(ttl),
                failures: 0,
            },
        );
        Ok(presence)
    }

    /// Compare each watched user's presence with the last one pushed; push changes.
    fn poll_presence(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let now = ctx.now_ms();
        let users: Vec<String> = {
            let mut w = self
                .presence
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            w.retain(|_, watched| {
                watched.watchers.retain(|_, x| x.expires_ms >= now);
                !watched.watchers.is_empty()
            });
            w.keys().cloned().collect()
        };
        let timeout = Duration::from_millis(self.config().notify_timeout_ms);
        for user in users {
            let found = lookup(&ctx, &user);
            if let Err(e) = &found {
                if e.code != ErrorCode::NotFound {
                    // Not responsible any more (ring change) or a local
                    // failure: say nothing; the next renewal moves the lease.
                    continue;
                }
            }
            let event = presence_of(&user, found);
            let targets: Vec<(String, String)> = {
                let mut w = self
                    .presence
                    .inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let Some(watched) = w.get_mut(&user) else {
                    continue;
                };
                let now_state = (event.online, event.address.clone());
                if watched.last.as_ref() == Some(&now_state) {
                    continue;
                }
                watched.last = Some(now_state);
                watched
                    .watchers
                    .iter()
                    .map(|(name, x)| (name.clone(), x.notify.clone()))
                    .collect()
            };
            tracing::debug!(%user, online = event.online, address = %event.address, watchers = targets.len(), "presence changed");
            for (watcher, url) in targets {
                let result = ctx.call_client::<chat::Presence>(&url, &event, timeout);
                let mut w = self
                    .presence
                    .inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let Some(watched) = w.get_mut(&user) else {
                    break;
                };
                match result {
                    Ok(_) => {
                        if let Some(x) = watched.watchers.get_mut(&watcher) {
                            x.failures = 0;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%user, %watcher, %url, "presence push failed: {e}");
                        let drop = watched.watchers.get_mut(&watcher).is_some_and(|x| {
                            x.failures += 1;
                            x.failures >= MAX_NOTIFY_FAILURES
                        });
                        if drop {
                            watched.watchers.remove(&watcher);
                        }
                    }
                }
            }
        }
    }
}

/// The poll period: configured, or a third of the directory's alive period.
fn poll_every(ctx: &PluginContext, config: &MailboxConfig) -> Duration {
    if config.presence_poll_ms > 0 {
        return Duration::from_millis(config.presence_poll_ms);
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct DirectoryAlive {
        alive_every_ms: Option<u64>,
    }
    let alive = ctx
        .host()
        .plugin_config("gestor_directory")
        .deserialized::<DirectoryAlive>()
        .ok()
        .and_then(|d| d.alive_every_ms)
        .unwrap_or(5_000);
    Duration::from_millis((alive / 3).clamp(50, 2_000))
}

pub(crate) fn start(
    state: &Arc<Shared>,
    ctx: &PluginContext,
    config: &MailboxConfig,
) -> Result<(), PluginError> {
    let s = state.clone();
    ctx.serve::<presence::Watch>(move |_, r| s.route::<presence::Subscribe>(&r.username, &r))?;
    let s = state.clone();
    ctx.serve::<presence::Subscribe>(move |_, r| s.subscribe(r))?;
    let s = state.clone();
    ctx.serve::<presence::Add>(move |_, r| s.add_watch(r))?;
    let s = state.clone();
    let every = poll_every(ctx, config);
    tracing::debug!(
        poll_ms = every.as_millis() as u64,
        "presence watches polled"
    );
    ctx.every("presence-poll", every, move || s.poll_presence());
    Ok(())
}
