//! `presence.*`: presence push (served by `gestor_mailbox`).

use serde::{Deserialize, Serialize};

/// `presence.watch` (and `presence.subscribe`) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBody {
    pub username: String,
    pub token: String,
    pub contacts: Vec<String>,
}

/// `presence.watch` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watching {
    /// Current presence of each contact, in request order.
    pub contacts: Vec<Presence>,
    /// Renew before this many ms have passed.
    pub ttl_ms: u64,
}

/// A contact's presence: the `presence.watch` reply entries and the
/// `chat.presence` event body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    /// False when no such user exists (then `online` is false).
    pub exists: bool,
    pub online: bool,
    pub address: String,
    pub last_seen_ms: u64,
    /// Why the contact could not be watched (e.g. its owner was unreachable).
    #[serde(default)]
    pub error: Option<String>,
}

/// `presence.add`, on the contact's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddWatch {
    pub contact: String,
    pub watcher: String,
    /// Where to push: the watcher's own request URL.
    pub notify: String,
    pub ttl_ms: u64,
}

kinds! {
    /// `presence.watch` — **client**: subscribe to contacts' presence
    /// (session token); the chat client renews it.
    Watch = "presence.watch", Client, WatchBody => Watching;
    /// `presence.subscribe` — **internal**: `presence.watch` forwarded to
    /// the watcher's owner.
    Subscribe = "presence.subscribe", Internal, WatchBody => Watching;
    /// `presence.add` — **internal**: the watcher's owner registers a lease
    /// on each contact's owner. It carries no credential (the watcher was
    /// authenticated by its owner) and names the URL to push to: only
    /// gestores may send it.
    Add = "presence.add", Internal, AddWatch => Presence;
}
