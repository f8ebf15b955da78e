//! Offline mailboxes and presence push for chat clients, built against the
//! SDK only (the proof that a plugin adds a service to the ring).
//!
//! **Mailbox.** A message for a user who is offline is left with the gestor
//! responsible for the *recipient* (the same gestor that holds the user's
//! directory record), which copies it to its first `copies` successors. The
//! recipient fetches it at its next login (authenticated through the local
//! `dir.authenticate`) and acknowledges it; the ack deletes the message on
//! the owner and on the copies and leaves a tombstone so that a late copy
//! cannot bring it back. When the owner fails its successor becomes
//! responsible for the recipient and already holds the copy. Messages are
//! bounded per user and in size, and expire after `ttl_ms`; an expired
//! message is not dropped silently — a *bounce* is left in the sender's own
//! mailbox.
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

pub mod presence;
pub mod rules;

use gestor_api::mail::{self, AckBody, Acked, Bounce, Fetched, PutDone, PutMail};
use gestor_api::mailbox::{self, CopyBody, Held};
use gestor_api::status::{self, MailboxStatus};
use gestor_api::user::{Auth, Found, UserOnly};
use gestor_api::{dir, ring, routing};
use gestor_sdk::hash::ring_position;
use gestor_sdk::hlc::system_ms;
use gestor_sdk::{
    declare_plugin, Empty, ErrorCode, HandlerError, Kind, Plugin, PluginContext, PluginError,
    RequestMeta,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Successors that hold a copy of the owner's mailboxes.
    pub copies: usize,
    /// How often expired messages are looked for.
    pub expire_every_ms: u64,
    /// How often the owner re-sends its mailboxes to its current successors
    /// (repairs copies after the ring changed or a copy was lost).
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

/// Store key of a mailbox item: mail sorts by sender then sequence, so a
/// prefix scan is the delivery order; bounces sort after mail.
fn item_key(held: &Held) -> String {
    if held.bounce.is_some() {
        format!("{}/b/{}", held.mail.from, held.mail.id)
    } else {
        format!(
            "{}/m/{}/{:020}/{}",
            held.mail.to, held.mail.from, held.mail.seq, held.mail.id
        )
    }
}

/// Whether the item stored under `key` has `held`'s id: a mailbox holds an
/// id once (de-duplication is by id, as at the receiver), whatever the
/// `seq` or sender of the copy that came first.
fn same_id(key: &[u8], held: &Held) -> bool {
    if held.bounce.is_some() {
        return key == item_key(held).as_bytes();
    }
    // `holder/m/from/seq/id`, and ids hold no '/'.
    let mail = format!("{}/m/", held.holder());
    key.starts_with(mail.as_bytes()) && key.ends_with(format!("/{}", held.mail.id).as_bytes())
}

const ITEMS: &str = "mailbox";
/// `holder/id` → expiry (wall ms, 8 bytes big-endian) of an acknowledged message.
const ACKED: &str = "mailbox.acked";
/// Items per `mailbox.copy` request.
const COPY_BATCH: usize = 200;

pub(crate) struct Shared {
    pub config: Mutex<MailboxConfig>,
    pub ctx: Mutex<Option<PluginContext>>,
    /// Changes not yet pushed to the successors.
    pending: Mutex<CopyBody>,
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

    fn tombstoned(
        &self,
        ctx: &PluginContext,
        holder: &str,
        id: &str,
    ) -> Result<bool, HandlerError> {
        Ok(ctx
            .store()
            .kv_get(ACKED, format!("{holder}/{id}").as_bytes())?
            .is_some())
    }

    fn items_of(&self, ctx: &PluginContext, holder: &str) -> Result<Vec<Held>, HandlerError> {
        let pairs = ctx
            .store()
            .kv_scan_prefix(ITEMS, format!("{holder}/").as_bytes())?;
        Ok(pairs
            .into_iter()
            .filter_map(|(k, v)| match gestor_sdk::wire::from_cbor::<Held>(&v) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), "unreadable mailbox item skipped: {e}");
                    None
                }
            })
            .collect())
    }

    fn queue_copy(&self, f: impl FnOnce(&mut CopyBody)) {
        f(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
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
        let key = item_key(&held);
        if self.tombstoned(&ctx, &holder, &held.mail.id)? {
            return Ok(done(false));
        }
        let items = ctx
            .store()
            .kv_scan_prefix(ITEMS, format!("{holder}/").as_bytes())?;
        if items.iter().any(|(k, _)| same_id(k, &held)) {
            return Ok(done(false));
        }
        let count = items.len();
        if count >= config.max_per_user {
            return Err(HandlerError::new(
                ErrorCode::Conflict,
                format!(
                    "the mailbox of {holder} is full ({} messages)",
                    config.max_per_user
                ),
            ));
        }
        held.stored_ms = system_ms();
        ctx.store()
            .kv_put(ITEMS, key.as_bytes(), &gestor_sdk::wire::to_cbor(&held))?;
        tracing::debug!(%holder, id = %held.mail.id, bounce = held.bounce.is_some(), "mail held");
        self.queue_copy(|c| c.puts.push(held));
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
        for h in self.items_of(&ctx, &req.username)? {
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
        let removed = self.remove(&ctx, &req.username, &req.ids)?;
        let pairs: Vec<(String, String)> = req
            .ids
            .iter()
            .map(|id| (req.username.clone(), id.clone()))
            .collect();
        self.queue_copy(|c| c.removed.extend(pairs));
        Ok(Acked { removed })
    }

    /// Delete `ids` from `holder`'s mailbox and tombstone them until they
    /// would have expired anyway.
    fn remove(
        &self,
        ctx: &PluginContext,
        holder: &str,
        ids: &[String],
    ) -> Result<u64, HandlerError> {
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let store = ctx.store();
        let until = system_ms().saturating_add(self.config().ttl_ms);
        for id in &wanted {
            store.kv_put(
                ACKED,
                format!("{holder}/{id}").as_bytes(),
                &until.to_be_bytes(),
            )?;
        }
        let mut removed = 0;
        for h in self.items_of(ctx, holder)? {
            if wanted.contains(h.mail.id.as_str())
                && store.kv_delete(ITEMS, item_key(&h).as_bytes())?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether the sender of a `mailbox.copy` may remove items of `holder`'s
    /// mailbox. Mail is removed only by its recipient's ack or by expiry;
    /// both happen on the gestor responsible for the recipient, so removals
    /// are believed only from that gestor — as this node's own ring view
    /// names it, and as a session this node itself made with that URL
    /// proves it (a sender's own claims prove nothing). A copy holder also
    /// expires mail on its own.
    fn removal_from_owner(&self, ctx: &PluginContext, meta: &RequestMeta, holder: &str) -> bool {
        let key = ring_position(holder.as_bytes());
        let owner = match ctx.call_local::<ring::Lookup>(&ring::KeyBody { key }) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(%holder, "mailbox copy: owner unknown, removals refused: {e}");
                return false;
            }
        };
        // The owner's acks reach it directly, never by copy.
        if owner.addr == ctx.request_url() {
            return false;
        }
        let timeout = Duration::from_millis(self.config().forward_timeout_ms.min(2_000));
        match ctx.gestor_key(&owner.addr, timeout) {
            Ok(Some(key)) => meta.caller_key == Some(key),
            // Insecure (development) node: nobody proves who they are, so
            // every peer passes, as for everything else in that mode.
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(%holder, owner = %owner.addr, "mailbox copy: owner not verified, removals refused: {e}");
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
        let mut applied = 0;
        let mut from_owner: BTreeMap<&str, bool> = BTreeMap::new();
        let mut refused = 0u64;
        for (holder, id) in &body.removed {
            let allowed = *from_owner
                .entry(holder.as_str())
                .or_insert_with(|| self.removal_from_owner(&ctx, meta, holder));
            if allowed {
                applied += self.remove(&ctx, holder, std::slice::from_ref(id))?;
            } else {
                refused += 1;
            }
        }
        if refused > 0 {
            self.removals_refused.fetch_add(refused, Ordering::Relaxed);
            tracing::debug!(
                refused,
                "mailbox copy: removals from a gestor that does not own their mailboxes refused"
            );
        }
        for held in body.puts {
            if self.tombstoned(&ctx, held.holder(), &held.mail.id)? {
                continue;
            }
            let key = item_key(&held);
            let known = ctx.store().kv_get(ITEMS, key.as_bytes())?.is_some();
            if !known
                && ctx
                    .store()
                    .kv_scan_prefix(ITEMS, format!("{}/", held.holder()).as_bytes())?
                    .len()
                    >= config.max_per_user
            {
                // The same quota as the owner's: a copy can never hold more.
                continue;
            }
            ctx.store()
                .kv_put(ITEMS, key.as_bytes(), &gestor_sdk::wire::to_cbor(&held))?;
            applied += 1;
        }
        Ok(applied)
    }

    // ---- loops -------------------------------------------------------------

    fn successors(&self, ctx: &PluginContext) -> Vec<String> {
        let copies = self.config().copies;
        match ctx.call_local::<ring::Neighbours>(&Empty) {
            Ok(n) => {
                let mut out: Vec<String> = Vec::new();
                for p in n.successors {
                    if p.id != n.me.id && !out.contains(&p.addr) && out.len() < copies {
                        out.push(p.addr);
                    }
                }
                out
            }
            Err(e) => {
                tracing::debug!("ring.neighbours: {e}");
                Vec::new()
            }
        }
    }

    fn push(&self, ctx: &PluginContext, body: &CopyBody) {
        if body.puts.is_empty() && body.removed.is_empty() {
            return;
        }
        let timeout = Duration::from_millis(self.config().forward_timeout_ms.min(2_000));
        for url in self.successors(ctx) {
            for chunk in batches(body) {
                if let Err(e) = ctx.call::<mailbox::Copy>(&url, &chunk, timeout) {
                    // The resync loop repairs what a failed push missed.
                    tracing::debug!(successor = %url, "mailbox copy failed: {e}");
                    break;
                }
            }
        }
    }

    /// Push queued changes to the successors.
    fn flush_copies(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let body = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        self.push(&ctx, &body);
    }

    /// Re-send every mailbox this node is responsible for to its successors.
    fn resync(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let Ok(all) = ctx.store().kv_scan_prefix(ITEMS, b"") else {
            return;
        };
        let mut mine: BTreeMap<String, bool> = BTreeMap::new();
        let mut body = CopyBody::default();
        for (_, v) in all {
            let Ok(held) = gestor_sdk::wire::from_cbor::<Held>(&v) else {
                continue;
            };
            let holder = held.holder().to_string();
            let is_mine = match mine.get(&holder) {
                Some(b) => *b,
                None => {
                    let b = self.responsible(&ctx, &holder).unwrap_or(false);
                    mine.insert(holder, b);
                    b
                }
            };
            if is_mine {
                body.puts.push(held);
            }
        }
        self.push(&ctx, &body);
    }

    /// Drop expired items; the holder's owner bounces expired mail to its sender.
    fn expire(&self) {
        let Ok(ctx) = self.ctx() else { return };
        let ttl = self.config().ttl_ms;
        let now = system_ms();
        let store = ctx.store();
        if let Ok(all) = store.kv_scan_prefix(ITEMS, b"") {
            for (k, v) in all {
                let Ok(held) = gestor_sdk::wire::from_cbor::<Held>(&v) else {
                    continue;
                };
                // A bounce is the only trace of an undelivered message: it
                // stays until its sender fetches it (bounded by max_per_user).
                if held.bounce.is_some() || now.saturating_sub(held.stored_ms) <= ttl {
                    continue;
                }
                let owner = self.responsible(&ctx, held.holder()).unwrap_or(false);
                if owner && held.bounce.is_none() {
                    let bounce = Held {
                        mail: held.mail.clone(),
                        stored_ms: 0,
                        bounce: Some(format!("not fetched by {} within {} ms", held.mail.to, ttl)),
                    };
                    // Keep the message until its bounce is held somewhere.
                    if let Err(e) = self.route::<mailbox::Put>(&held.mail.from, &bounce) {
                        tracing::warn!(id = %held.mail.id, from = %held.mail.from, "cannot bounce expired mail yet: {e}");
                        continue;
                    }
                    tracing::info!(id = %held.mail.id, from = %held.mail.from, to = %held.mail.to, "expired mail bounced to its sender");
                }
                if let Err(e) =
                    self.remove(&ctx, held.holder(), std::slice::from_ref(&held.mail.id))
                {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), "cannot expire: {e}");
                } else if owner {
                    let pair = (held.holder().to_string(), held.mail.id.clone());
                    self.queue_copy(|c| c.removed.push(pair));
                }
            }
        }
        if let Ok(tombs) = store.kv_scan_prefix(ACKED, b"") {
            for (k, v) in tombs {
                let until = v
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if until < now {
                    let _ = store.kv_delete(ACKED, &k);
                }
            }
        }
    }
}

/// Split a change set into requests of at most [`COPY_BATCH`] items.
fn batches(body: &CopyBody) -> Vec<CopyBody> {
    let mut out = Vec::new();
    for chunk in body.removed.chunks(COPY_BATCH) {
        out.push(CopyBody {
            puts: Vec::new(),
            removed: chunk.to_vec(),
        });
    }
    for chunk in body.puts.chunks(COPY_BATCH) {
        out.push(CopyBody {
            puts: chunk.to_vec(),
            removed: Vec::new(),
        });
    }
    out
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
        ctx.every("mailbox-copy", Duration::from_millis(100), move || {
            s.flush_copies()
        });
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
            let held = store.kv_scan_prefix(ITEMS, b"")?.len() as u64;
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
            pending: Mutex::new(CopyBody::default()),
            presence: presence::Watches::default(),
            removals_refused: AtomicU64::new(0),
        }),
    }
}

declare_plugin!("gestor_mailbox", make);

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_api::chat::ChatMessage;

    fn held(from: &str, seq: u64, id: &str, bounce: Option<&str>) -> Held {
        Held {
            mail: ChatMessage {
                id: id.into(),
                from: from.into(),
                to: "bob".into(),
                seq,
                sent_ms: 1,
                text: "hi".into(),
            },
            stored_ms: 0,
            bounce: bounce.map(str::to_string),
        }
    }

    /// PROTOCOL.md §18.3: `stored` is false when the mailbox already holds
    /// the id, whatever the seq or sender it came with.
    #[test]
    fn a_mailbox_holds_an_id_once() {
        let first = item_key(&held("alice", 1, "id1", None));
        assert!(same_id(first.as_bytes(), &held("alice", 1, "id1", None)));
        assert!(same_id(first.as_bytes(), &held("alice", 7, "id1", None)));
        assert!(same_id(first.as_bytes(), &held("carol", 1, "id1", None)));
        assert!(!same_id(first.as_bytes(), &held("alice", 1, "id2", None)));
        // An id that ends like another is another id.
        assert!(!same_id(first.as_bytes(), &held("alice", 1, "d1", None)));
        // A bounce is held for its sender, apart from the mail it holds.
        let bounce = held("bob", 1, "id1", Some("expired"));
        assert!(!same_id(first.as_bytes(), &bounce));
        assert!(same_id(item_key(&bounce).as_bytes(), &bounce));
    }
}
