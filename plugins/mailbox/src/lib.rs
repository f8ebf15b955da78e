//! Offline mailboxes and presence push for chat clients, built against the
//! SDK only (the proof that a plugin adds a service to the ring).
//!
//! **Mailbox.** A message for a user who is offline is left with the gestor
//! responsible for the *recipient* (the same gestor that holds the user's
//! directory record), which copies it to `copies` other gestores. The
//! recipient fetches it at its next login (authenticated through the local
//! `dir.authenticate`) and acknowledges it; the ack deletes the message on
//! the owner and on the copies and leaves a tombstone so that a late copy
//! cannot bring it back. When the owner fails its successor becomes
//! responsible for the recipient and already holds the copy. Messages are
//! bounded per user and in size, and expire after `ttl_ms`; an expired
//! message is not dropped silently — a *bounce* is left in the sender's own
//! mailbox.
//!
//! **Ranges.** A gestor holds `ring.virtual_nodes` positions on the ring
//! (`ring.ranges`); each virtual node owns the keys in `(predecessor, me]`
//! and the gestor owns their union. A mailbox's copies go to the first
//! `copies` distinct *gestores* (by URL, never the owner's own) in the
//! successor list of the virtual node holding the recipient's key, so
//! mailboxes of different virtual nodes of one gestor are copied to
//! different gestores. A node that joins just before one of our virtual
//! nodes takes part of that virtual node's range: resync remembers each
//! virtual node's predecessor and hands the mailboxes that left its range
//! to the joiner. With one virtual node this is the plain Chord range.
//!
//! The rules (keys, de-duplication, quota, copies, removals, expiry,
//! resync and handoff) are the I/O-free [`core`]; [`boxes`] applies them to
//! the store, a page at a time; this file is the shell: routing,
//! authentication, ring calls, copies over the network, the node clock and
//! the loops (docs/ARCHITECTURE.md §7.1).
//!
//! **Presence push** ([`presence`]): a client subscribes to its contacts; the
//! gestor responsible for each contact watches that contact's directory
//! record and pushes `chat.presence` to the subscriber's own address when the
//! contact comes online, goes offline or changes address.
//!
//! Client-facing kinds (`mail.put`, `mail.fetch`, `mail.ack`,
//! `presence.watch`) may reach any gestor; it routes them with `ring.lookup`
//! like the directory routes `user.*`. See docs/PROTOCOL.md, "Chat, mailbox
//! and presence".

pub mod boxes;
pub mod core;
pub mod presence;
pub mod rules;

use crate::core::{Admit, Expiry, COPY_BATCH};
use boxes::Boxes;
use gestor_api::mail::{self, AckBody, Acked, Bounce, Fetched, PutDone, PutMail};
use gestor_api::mailbox::{self, CopyBody, Held};
use gestor_api::status::{self, MailboxStatus};
use gestor_api::user::{Auth, Found, UserOnly};
use gestor_api::{dir, ring, routing};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{
    declare_plugin, Empty, ErrorCode, HandlerError, Kind, Plugin, PluginContext, PluginError,
    RequestMeta,
};
use serde::Deserialize;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the copy loop runs.
const COPY_EVERY: Duration = Duration::from_millis(100);

/// `[plugins.config.gestor_mailbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxConfig {
    /// Messages (and bounces) held per user; a put beyond answers `conflict`.
    pub max_per_user: usize,
    /// Largest message text in bytes; larger answers `bad_request`.
    pub max_text_bytes: usize,
    /// A message not fetched within this many ms expires and bounces to its sender.
    pub ttl_ms: u64,
    /// Other gestores that hold a copy of each mailbox: the first distinct
    /// ones after the virtual node that owns it.
    pub copies: usize,
    /// How often expired messages are looked for.
    pub expire_every_ms: u64,
    /// How often the owner re-sends its mailboxes to their current copy
    /// holders and hands moved ones to joiners (repairs copies after the
    /// ring changed or a copy was lost).
    pub resync_every_ms: u64,
    /// Deadline of a forwarded request to the responsible gestor.
    pub forward_timeout_ms: u64,
    /// A presence subscription lasts this long unless renewed.
    pub watch_ttl_ms: u64,
    /// How often watched users' presence is checked on their owner; 0 means a
    /// third of the directory's `alive_every_ms` (clamped to 50–2000 ms).
    pub presence_poll_ms: u64,
    /// Deadline of a presence push to a client.
    pub notify_timeout_ms: u64,
    /// Contacts per subscription.
    pub max_contacts: usize,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            max_per_user: 1000,
            max_text_bytes: 16 * 1024,
            ttl_ms: 7 * 24 * 3600 * 1000,
            copies: 2,
            expire_every_ms: 5_000,
            resync_every_ms: 10_000,
            forward_timeout_ms: 5_000,
            watch_ttl_ms: 30_000,
            presence_poll_ms: 0,
            notify_timeout_ms: 500,
            max_contacts: 256,
        }
    }
}

pub(crate) struct Shared {
    pub config: Mutex<MailboxConfig>,
    pub ctx: Mutex<Option<PluginContext>>,
    /// Changes not yet pushed to the copy holders.
    pending: Mutex<core::Pending>,
    /// What resync remembers between rounds, per virtual node (handoffs due).
    resync: Mutex<core::Resyncs>,
    pub presence: presence::Watches,
    /// Removals in copies refused: the sender did not own the recipient.
    removals_refused: AtomicU64,
}

impl Shared {
    pub fn ctx(&self) -> Result<PluginContext, HandlerError> {
        self.ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| HandlerError::unavailable("mailbox not started"))
    }

    pub fn config(&self) -> MailboxConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forward `K` to the gestor responsible for `username`
    /// (`gestor_api::routing::forward`: fresh lookups with backoff).
    pub fn route<K: Kind>(
        &self,
        username: &str,
        body: &K::Request,
    ) -> Result<K::Reply, HandlerError> {
        let ctx = self.ctx()?;
        let deadline = Duration::from_millis(self.config().forward_timeout_ms);
        routing::forward::<K>(&ctx, username, body, deadline).map(|(rep, _hops)| rep)
    }

    pub fn responsible(&self, ctx: &PluginContext, username: &str) -> Result<bool, HandlerError> {
        routing::is_responsible(ctx, username)
    }

    /// Owner side: refuse unless this node is responsible for `username`.
    pub fn owner_check(&self, ctx: &PluginContext, username: &str) -> Result<(), HandlerError> {
        rules::validate_username(username)?;
        if !self.responsible(ctx, username)? {
            return Err(HandlerError::unavailable(format!(
                "{} is not responsible for {username}",
                ctx.request_url()
            )));
        }
        Ok(())
    }

    pub fn authenticate(
        &self,
        ctx: &PluginContext,
        username: &str,
        token: &str,
    ) -> Result<(), HandlerError> {
        let ok = ctx
            .call_local::<dir::Authenticate>(&Auth {
                username: username.to_string(),
                token: token.to_string(),
            })
            .map_err(HandlerError::from)?;
        if ok {
            Ok(())
        } else {
            Err(HandlerError::new(
                ErrorCode::Unauthorized,
                "invalid session token",
            ))
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, core::Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until when a tombstone made now is kept.
    fn tomb_until(&self, ctx: &PluginContext) -> u64 {
        core::tomb_until(ctx.now_ms(), self.config().ttl_ms)
    }

    // ---- owner-side handlers ---------------------------------------------------

    /// On the sender's owner: authenticate the sender, then hand the message
    /// to the recipient's owner.
    fn send(&self, req: PutMail) -> Result<PutDone, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.mail.from)?;
        self.authenticate(&ctx, &req.mail.from, &req.token)?;
        let held = Held {
            mail: req.mail,
            stored_ms: 0,
            bounce: None,
        };
        self.route::<mailbox::Put>(&held.mail.to, &held)
    }

    /// On the holder's owner: store one item (mail or bounce).
    fn put(&self, mut held: Held) -> Result<PutDone, HandlerError> {
        let ctx = self.ctx()?;
        let config = self.config();
        let holder = held.holder().to_string();
        self.owner_check(&ctx, &holder)?;
        rules::validate_held(&held, config.max_text_bytes)?;
        // The holder must exist; dir.lookup answers not_found otherwise.
        let _: Found = ctx
            .call_local::<dir::Lookup>(&UserOnly {
                username: holder.clone(),
            })
            .map_err(HandlerError::from)?;
        let done = |stored| PutDone {
            stored,
            holder: ctx.request_url(),
        };
        held.stored_ms = ctx.now_ms();
        let store = ctx.store();
        match Boxes::new(&*store).admit(&held, config.max_per_user)? {
            Admit::Known => return Ok(done(false)),
            Admit::Full => {
                return Err(HandlerError::new(
                    ErrorCode::Conflict,
                    format!(
                        "the mailbox of {holder} is full ({} messages)",
                        config.max_per_user
                    ),
                ))
            }
            Admit::Store => Boxes::new(&*store).store(&held)?,
        }
        tracing::debug!(%holder, id = %held.mail.id, bounce = held.bounce.is_some(), "mail held");
        self.pending().put(held);
        Ok(done(true))
    }

    fn fetch(&self, req: Auth) -> Result<Fetched, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        self.authenticate(&ctx, &req.username, &req.token)?;
        let mut out = Fetched {
            messages: Vec::new(),
            bounces: Vec::new(),
        };
        // Key order is (sender, seq) for mail.
        for h in Boxes::new(&*ctx.store()).items_of(&req.username)? {
            match h.bounce {
                Some(reason) => out.bounces.push(Bounce {
                    mail: h.mail,
                    reason,
                }),
                None => out.messages.push(h.mail),
            }
        }
        Ok(out)
    }

    fn ack(&self, req: AckBody) -> Result<Acked, HandlerError> {
        let ctx = self.ctx()?;
        self.owner_check(&ctx, &req.username)?;
        self.authenticate(&ctx, &req.username, &req.token)?;
        let until = self.tomb_until(&ctx);
        let removed = Boxes::new(&*ctx.store()).remove(&req.username, &req.ids, until)?;
        let mut pending = self.pending();
        for id in &req.ids {
            pending.removed(&req.username, id);
        }
        Ok(Acked { removed })
    }

    /// Whether the sender of a `mailbox.copy` may remove items of `holder`'s
    /// mailbox. Mail is removed only by its recipient's ack or by expiry;
    /// both happen on the gestor responsible for the recipient, so removals
    /// are believed only from that gestor — as this node's own ring view
    /// names it, and as a session this node itself made with that URL
    /// proves it (a sender's own claims prove nothing). On the owner itself
    /// (whose own acks never come by copy), only from the first other
    /// gestor after the virtual node of ours that holds the mailbox: the
    /// previous owner handing over the range that virtual node took
    /// ([`core::removal_authority`]). A copy holder also expires mail on
    /// its own.
    fn removal_from_owner(&self, ctx: &PluginContext, meta: &RequestMeta, holder: &str) -> bool {
        let Some((_, owner)) = self.owner_of(ctx, holder) else {
            tracing::debug!(%holder, "mailbox copy: owner unknown, removals refused");
            return false;
        };
        let me = ctx.request_url();
        let successor = if owner == me {
            let pos = ring_position(holder.as_bytes());
            self.ranges(ctx)
                .and_then(|r| core::copy_targets(&r, pos, 1).into_iter().next())
        } else {
            None
        };
        let Some(authority) = core::removal_authority(&me, &owner, successor.as_deref()) else {
            return false;
        };
        let timeout = Duration::from_millis(self.config().forward_timeout_ms.min(2_000));
        match ctx.gestor_key(authority, timeout) {
            Ok(Some(key)) => meta.caller_key == Some(key),
            // Insecure (development) node: nobody proves who they are, so
            // every peer passes, as for everything else in that mode.
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(%holder, %authority, "mailbox copy: sender not verified, removals refused: {e}");
                false
            }
        }
    }

    /// On a successor: apply the owner's changes.
    fn copy(&self, meta: &RequestMeta, body: CopyBody) -> Result<u64, HandlerError> {
        let ctx = self.ctx()?;
        let config = self.config();
        // Defence in depth: copies come only from admitted gestores, but a
        // buggy or compromised one must not do what a client cannot.
        if body.puts.len() + body.removed.len() > 2 * COPY_BATCH {
            return Err(HandlerError::bad_request(format!(
                "a mailbox copy carries at most {} items",
                2 * COPY_BATCH
            )));
        }
        for (holder, id) in &body.removed {
            rules::validate_username(holder)?;
            rules::validate_id(id)?;
        }
        for held in &body.puts {
            rules::validate_held(held, config.max_text_bytes)?;
        }
        let plan = core::plan_copy(body, |holder| self.removal_from_owner(&ctx, meta, holder));
        if plan.refused > 0 {
            self.removals_refused
                .fetch_add(plan.refused, Ordering::Relaxed);
            tracing::debug!(
                refused = plan.refused,
                "mailbox copy: removals from a gestor that does not own their mailboxes refused"
            );
        }
        let until = self.tomb_until(&ctx);
        let (applied, owned) =
            Boxes::new(&*ctx.store()).apply_copy(&plan, until, config.max_per_user, |holder| {
                self.responsible(&ctx, holder).unwrap_or(false)
            })?;
        let mut pending = self.pending();
        for held in owned {
            pending.put(held);
        }
        Ok(applied)
    }

    // ---- loops -------------------------------------------------------------

    /// Every virtual node of this gestor with its neighbours (`None`: the
    /// ring cannot say now).
    fn ranges(&self, ctx: &PluginContext) -> Option<ring::VirtualNodes> {
        match ctx.call_local::<ring::Ranges>(&Empty) {
            Ok(r) if r.nodes.is_empty() => None,
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!("ring.ranges: {e}");
                None
            }
        }
    }

    /// Send `batches` to each of `targets`; a target that fails is skipped
    /// for the rest (the resync repairs what it missed). Returns whether
    /// every target took everything.
    fn push(&self, ctx: &PluginContext, targets: &[String], batches: &[CopyBody]) -> bool {
        let timeout = Duration::from_millis(self.config().forward_timeout_ms.min(2_000));
        let mut all = true;
        for url in targets {
            for chunk in batches {
                if let Err(e) = ctx.call::<mailbox::Copy>(url, chunk, timeout) {
                    tracing::debug!(target = %url, "mailbox copy failed: {e}");
                    all = false;
                    break;
                }
            }
        }
        all
    }

    /// Push queued changes to the copy targets of each change's mailbox.
    fn flush_copies(&self) {
        let Ok(ctx) = self.ctx() else { return };
        // The predecessors are seen every tick, so resync tells a join from
        // a failure (see `ResyncState::observe`). With nothing to send they
        // are all this needs, and far cheaper to ask than every range.
        if self.pending().is_empty() {
            match ctx.call_local::<ring::Predecessors>(&Empty) {
                Ok(vnodes) if !vnodes.is_empty() => {
                    self.resync_state().observe_predecessors(&vnodes);
                    return;
                }
                Ok(_) => return,
                // A ring plugin without the kind: read the ranges.
                Err(e) => tracing::debug!("ring.predecessors: {e}"),
            }
        }
        let Some(ranges) = self.ranges(&ctx) else {
            return;
        };
        self.resync_state().observe(&ranges);
        let body = self.pending().take();
        let (groups, not_ours) = core::copy_groups(&ranges, self.config().copies, body);
        // Not ours: a joiner took it (the resync hands it over), unless a
        // range cannot be told now; then keep it for the next tick.
        if core::ranges_unsettled(&ranges) {
            self.pending().requeue(not_ours);
        }
        for (targets, batches) in groups {
            self.push(&ctx, &targets, &batches);
        }
    }

    /// The owner of `holder`, as this node's ring view names it.
    fn owner_of(&self, ctx: &PluginContext, holder: &str) -> Option<(u64, String)> {
        let key = ring_position(holder.as_bytes());
        match ctx.call_local::<ring::Lookup>(&ring::KeyBody { key }) {
            Ok(o) => Some((o.id, o.addr)),
            Err(e) => {
                tracing::debug!(%holder, "owner unknown: {e}");
                None
            }
        }
    }

    /// Re-send every mailbox this gestor owns, and its tombstones, to the
    /// copy targets of the virtual node holding it; hand the mailboxes a
    /// node that joined before one of our virtual nodes took over to it. A
    /// page of the store at a time.
    fn resync(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let Some(ranges) = self.ranges(&ctx) else {
            return;
        };
        // The round plans with what it saw at its start; `handed` keeps
        // what moved meanwhile for the next round.
        let round = {
            let mut state = self.resync_state();
            state.observe(&ranges);
            state.clone()
        };
        let round_ring = (&round, &ranges);
        let store = ctx.store();
        let boxes = Boxes::new(&*store);
        let mut all_handed = true;
        // Tombstones first: a new owner must know what was acknowledged
        // before it is handed mail that a stale copy may still hold.
        let tombs = boxes.walk(core::ACKED, b"", |page| {
            let keys = page.iter().map(|(k, _)| k.as_slice());
            let plan = self.planner(&ctx, round_ring, |p| p.tombs(keys));
            all_handed &= self.send_plan(&ctx, plan);
            ControlFlow::Continue(())
        });
        let walked = boxes.walk_items(b"", |page| {
            let items = page.into_iter().map(|(_, h)| h).collect();
            let plan = self.planner(&ctx, round_ring, |p| p.items(items));
            all_handed &= self.send_plan(&ctx, plan);
            ControlFlow::Continue(())
        });
        match walked.and(tombs) {
            Err(e) => tracing::warn!("mailbox resync: {e}"),
            Ok(()) if all_handed => self.resync_state().handed(&round),
            Ok(()) => {}
        }
    }

    fn resync_state(&self) -> std::sync::MutexGuard<'_, core::Resyncs> {
        self.resync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plan one resync page with this round's state and ring view.
    fn planner(
        &self,
        ctx: &PluginContext,
        (state, ranges): (&core::Resyncs, &ring::VirtualNodes),
        f: impl FnOnce(
            &mut core::Planner<'_, &dyn Fn(&str) -> bool, &dyn Fn(&str) -> Option<(u64, String)>>,
        ) -> core::ResyncPlan,
    ) -> core::ResyncPlan {
        let mine = |holder: &str| self.responsible(ctx, holder).unwrap_or(false);
        let owner_of = |holder: &str| self.owner_of(ctx, holder);
        let mut planner = core::Planner::new(
            state,
            ranges,
            self.config().copies,
            &mine as &dyn Fn(&str) -> bool,
            &owner_of as &dyn Fn(&str) -> Option<(u64, String)>,
        );
        f(&mut planner)
    }

    /// Send a resync plan; whether every handoff in it went through.
    fn send_plan(&self, ctx: &PluginContext, plan: core::ResyncPlan) -> bool {
        for (targets, body) in &plan.copies {
            self.push(ctx, targets, &core::batches(body));
        }
        let mut all = !plan.unplaced;
        for (owner, body) in plan.handoffs {
            let ok = self.push(ctx, std::slice::from_ref(&owner), &core::batches(&body));
            if ok {
                tracing::debug!(%owner, items = body.puts.len(), removals = body.removed.len(), "mailboxes handed to their new owner");
            }
            all &= ok;
        }
        all
    }

    /// Drop expired items; the holder's owner bounces expired mail to its
    /// sender. A page of the store at a time.
    fn expire(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let (ttl, now) = (self.config().ttl_ms, ctx.now_ms());
        let store = ctx.store();
        let boxes = Boxes::new(&*store);
        let walked = boxes.walk_items(b"", |page| {
            for (key, held) in page {
                if core::expiry(&held, now, ttl, false) == Expiry::Keep {
                    continue;
                }
                let owner = self.responsible(&ctx, held.holder()).unwrap_or(false);
                self.expire_one(
                    &ctx,
                    &boxes,
                    &key,
                    &held,
                    core::expiry(&held, now, ttl, owner),
                );
            }
            ControlFlow::Continue(())
        });
        if let Err(e) = walked.and(boxes.expire_tombs(now).map(|_| ())) {
            tracing::warn!("mailbox expiry: {e}");
        }
    }

    fn expire_one(
        &self,
        ctx: &PluginContext,
        boxes: &Boxes,
        key: &[u8],
        held: &Held,
        what: Expiry,
    ) {
        let owner = match what {
            Expiry::Keep => return,
            Expiry::Remove => false,
            Expiry::BounceThenRemove(bounce) => {
                // Keep the message until its bounce is held somewhere.
                if let Err(e) = self.route::<mailbox::Put>(&held.mail.from, &bounce) {
                    tracing::warn!(id = %held.mail.id, from = %held.mail.from, "cannot bounce expired mail yet: {e}");
                    return;
                }
                tracing::info!(id = %held.mail.id, from = %held.mail.from, to = %held.mail.to, "expired mail bounced to its sender");
                true
            }
        };
        match boxes.remove_item(key, held, self.tomb_until(ctx)) {
            Err(e) => tracing::warn!(key = %String::from_utf8_lossy(key), "cannot expire: {e}"),
            Ok(_) if owner => self.pending().removed(held.holder(), &held.mail.id),
            Ok(_) => {}
        }
    }
}

struct Mailbox {
    state: Arc<Shared>,
}

impl Plugin for Mailbox {
    fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        let config: MailboxConfig = ctx.config()?;
        *self.state.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        *self.state.ctx.lock().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());

        // Client-facing: any gestor.
        let s = self.state.clone();
        ctx.serve::<mail::Put>(move |_, r| s.route::<mailbox::Send>(&r.mail.from, &r))?;
        let s = self.state.clone();
        ctx.serve::<mail::Fetch>(move |_, r| s.route::<mailbox::Fetch>(&r.username, &r))?;
        let s = self.state.clone();
        ctx.serve::<mail::Ack>(move |_, r| s.route::<mailbox::Ack>(&r.username, &r))?;

        // Owner and successor side.
        let s = self.state.clone();
        ctx.serve::<mailbox::Send>(move |_, r| s.send(r))?;
        let s = self.state.clone();
        ctx.serve::<mailbox::Put>(move |_, r| s.put(r))?;
        let s = self.state.clone();
        ctx.serve::<mailbox::Fetch>(move |_, r| s.fetch(r))?;
        let s = self.state.clone();
        ctx.serve::<mailbox::Ack>(move |_, r| s.ack(r))?;
        let s = self.state.clone();
        ctx.serve::<mailbox::Copy>(move |meta, r| s.copy(meta, r))?;

        let s = self.state.clone();
        ctx.every("mailbox-copy", COPY_EVERY, move || s.flush_copies());
        let s = self.state.clone();
        ctx.every(
            "mailbox-resync",
            Duration::from_millis(config.resync_every_ms.max(100)),
            move || s.resync(),
        );
        let s = self.state.clone();
        ctx.every(
            "mailbox-expire",
            Duration::from_millis(config.expire_every_ms.max(50)),
            move || s.expire(),
        );

        presence::start(&self.state, &ctx, &config)?;

        let s = self.state.clone();
        let store = ctx.store();
        ctx.serve::<status::Mailbox>(move |_, _| {
            let held = Boxes::new(&*store).count()?;
            let (watched_users, watchers) = s.presence.counts();
            Ok(MailboxStatus {
                held,
                watched_users,
                watchers,
                removals_refused: s.removals_refused.load(Ordering::Relaxed),
            })
        })?;
        Ok(())
    }

    fn stop(&self) {
        self.state
            .ctx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

fn make() -> Mailbox {
    Mailbox {
        state: Arc::new(Shared {
            config: Mutex::new(MailboxConfig::default()),
            ctx: Mutex::new(None),
            pending: Mutex::new(core::Pending::default()),
            resync: Mutex::new(core::Resyncs::default()),
            presence: presence::Watches::default(),
            removals_refused: AtomicU64::new(0),
        }),
    }
}

declare_plugin!("gestor_mailbox", make);
