//! `user.*`: the directory as clients see it (served by `gestor_directory`).
//!
//! Any gestor accepts these; it looks up the gestor responsible for the
//! username and forwards the request there as the matching [`crate::dir`]
//! kind, then fills in the lookup's `hops`.

use gestor_sdk::Timestamp;
use serde::{Deserialize, Serialize};

/// `user.register`, `user.login`, `user.delete` (and their `dir.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The client's `host:port` (login); omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `user.lookup` (and `dir.lookup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOnly {
    pub username: String,
}

/// `user.set_address`, `user.logout` (and their `dir.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated {
    pub username: String,
    pub token: String,
    /// The new address (`set_address`); omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A user and its session token: the body of `mail.fetch`,
/// `dir.authenticate` and of the `alive` signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub username: String,
    pub token: String,
}

/// The `alive` signal body (topic [`crate::topics::ALIVE`]).
pub type Alive = Auth;

/// `user.register` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub username: String,
    /// Request URL of the gestor responsible for this user.
    pub gestor: String,
    pub hops: u32,
}

/// `user.login` reply: the session a client keeps (saved by the CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub username: String,
    pub token: String,
    /// Request URL of the gestor responsible for this user.
    pub gestor: String,
    /// Where to publish alive signals.
    pub signal: String,
    pub alive_every_ms: u64,
    pub presence_timeout_ms: u64,
    pub hops: u32,
}

/// `user.lookup` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub user: String,
    pub address: String,
    pub online: bool,
    pub last_seen_ms: u64,
    pub last_update: Timestamp,
    /// Request URL of the responsible gestor.
    pub gestor: String,
    /// Its signal URL: where the user's alive signals go. Clients refresh it
    /// from lookups of themselves, since the responsible gestor can change.
    #[serde(default)]
    pub signal: String,
    pub hops: u32,
}

/// Reply of the writes that return nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
    pub hops: u32,
}

kinds! {
    /// `user.register` — **client**: create an account (any gestor).
    Register = "user.register", Client, Credentials => Registered;
    /// `user.login` — **client**: start a session with an address.
    Login = "user.login", Client, Credentials => LoggedIn;
    /// `user.lookup` — **client**: where is a user, is it online. Fast
    /// path: the owner answers it on its I/O thread; any other gestor
    /// forwards it from a worker.
    Lookup = "user.lookup", Client + fast_path, UserOnly => Found;
    /// `user.set_address` — **client**: change the address (session token).
    SetAddress = "user.set_address", Client, Authenticated => Done;
    /// `user.logout` — **client**: end the session (offline at once).
    Logout = "user.logout", Client, Authenticated => Done;
    /// `user.delete` — **client**: remove the account (password), leaving a
    /// tombstone.
    Delete = "user.delete", Client, Credentials => Done;
}
