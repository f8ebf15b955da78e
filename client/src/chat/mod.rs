//! The chat client library, used by `gestor chat`/`send`/`inbox`, the tests
//! and the examples.
//!
//! A [`ChatClient`] logs a user in with the address it listens on and runs
//! the three client processes of the seed:
//!
//! * **send-alive** — a thread publishing alive signals to the user's
//!   responsible gestor (PUB-SUB, [`AliveSender`]) and renewing the presence
//!   subscription to the user's contacts (`presence.watch`);
//! * **receive** — a replier bound on `tcp://ADDRESS`, with the ring's
//!   transport, serving `chat.message` (store, de-duplicate by id, keep order
//!   per sender, acknowledge) and `chat.presence` (pushed by gestores);
//! * **send-pending** — a thread draining the on-disk outbox in order per
//!   recipient: directly to an online recipient, else into the recipient's
//!   mailbox on the ring (unless disabled). It sleeps until woken by a new
//!   message or a presence event; a slow timer is only the fallback.
//!
//! The pieces the CLI uses one-shot ([`ChatStore`], [`Session`] handling,
//! [`deliver_pending`], [`fetch_mailbox`]) are public too. Wire formats are
//! in docs/PROTOCOL.md, "Chat, mailbox and presence".

pub mod store;

pub use store::{Accepted, ChatStore, Outgoing};

use crate::client::{Client, ClientError};
use crate::directory::{AliveSender, Found, Session};
use crate::sessions::{FileError, SessionStore};
use crate::trust::Trust;
use crossbeam_channel::{Receiver, Sender};
use gestor_api::chat::MessageAck;
use gestor_api::mail::{self, AckBody, Fetched, PutMail};
use gestor_api::presence::{self as presence_api, WatchBody};
use gestor_api::user::Auth;
use gestor_api::{chat, node};
use gestor_backends::TransportKind;
use gestor_sdk::hlc::system_ms;
use gestor_sdk::transport::{Replier, TransportOptions};
use gestor_sdk::wire::{decode_request, from_value, to_cbor, to_value, Reply};
use gestor_sdk::{ErrorCode, HandlerError, Kind, Value};
use gestor_secure::{Peer, SecureLayer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use gestor_api::chat::ChatMessage;
pub use gestor_api::presence::Presence;

/// A message of ours that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(flatten)]
    pub message: ChatMessage,
    pub reason: String,
    pub reported_ms: u64,
}

/// How a message left the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Direct,
    Mailbox,
}

/// What a running client reports to its user interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// Delivered to our inbox (in order per sender).
    Message(ChatMessage),
    /// A contact came online, went offline or changed address.
    Presence(Presence),
    /// One of our messages left the outbox.
    Sent {
        id: String,
        to: String,
        seq: u64,
        via: Via,
    },
    /// One of our messages will not be delivered.
    Undeliverable(Failure),
    /// Something went wrong in a background thread (already logged).
    Problem(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("chat state: {0}")]
    Io(String),
    #[error("client state: {0}")]
    File(#[from] FileError),
    #[error("transport: {0}")]
    Transport(#[from] gestor_sdk::TransportError),
    #[error("{0}")]
    Usage(String),
}

impl ChatError {
    /// The wire error code when a gestor answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ChatError::Client(ClientError::Remote(h)) => Some(h.code),
            _ => None,
        }
    }
}

/// A new random message id.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `tcp://ADDRESS`: where a client with login address `ADDRESS` listens.
pub fn listen_url(address: &str) -> String {
    format!("tcp://{address}")
}

/// Settings of a [`ChatClient`] and of the one-shot helpers.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub username: String,
    pub password: String,
    /// `host:port` this client listens on; sent as the login address.
    pub address: String,
    pub transport: TransportKind,
    /// Which gestores to believe (default: `GESTOR_CLUSTER_PUB`).
    pub trust: Trust,
    /// Gestor request URLs to start from.
    pub gestores: Vec<String>,
    /// `$GESTOR_HOME`: sessions and `chat/USER/` live here.
    pub home: PathBuf,
    /// Deadline of one request to a gestor or a peer.
    pub timeout: Duration,
    /// Leave messages for offline recipients in their mailbox.
    pub use_mailbox: bool,
    /// A message still in the outbox after this long is reported undeliverable.
    pub max_age: Duration,
    /// Fallback: retry the outbox this often even without a presence event.
    pub retry_every: Duration,
    /// Fallback: fetch the mailbox this often while online.
    pub mailbox_every: Duration,
    /// How long a message that arrived out of order waits for the missing ones.
    pub gap_wait: Duration,
    /// Users to watch (added to the saved contacts).
    pub contacts: Vec<String>,
}

impl ChatOptions {
    pub fn new(username: &str, password: &str, address: &str, gestores: Vec<String>) -> Self {
        ChatOptions {
            username: username.to_string(),
            password: password.to_string(),
            address: address.to_string(),
            transport: TransportKind::Nng,
            trust: Trust::from_env(),
            gestores,
            home: crate::sessions::home(),
            timeout: Duration::from_secs(5),
            use_mailbox: true,
            max_age: Duration::from_secs(24 * 3600),
            retry_every: Duration::from_secs(5),
            mailbox_every: Duration::from_secs(30),
            gap_wait: Duration::from_secs(5),
            contacts: Vec::new(),
        }
    }

    /// A secure layer for this client (its own key; sessions made on use).
    pub fn layer(&self) -> SecureLayer {
        self.trust.layer(self.transport)
    }

    /// The session store under `home` (the same files as `gestor login`).
    pub fn sessions(&self) -> SessionStore {
        SessionStore::new(&self.home)
    }

    /// A client starting from `gestores`, then the saved initial gestors.
    pub fn client(&self) -> Client {
        let mut c = Client::new(self.layer(), self.gestores.clone(), self.timeout);
        c.add_fallbacks(&self.sessions().initial_gestors());
        c
    }
}

/// Remember the newest initial-gestors list (a hint: failing to save it is
/// only logged).
pub fn remember_gestores(sessions: &SessionStore, client: &Client) {
    if let Err(e) = sessions.save_initial_gestors(client.initial_gestors()) {
        tracing::warn!("{e}");
    }
}

/// Log in with `address` and save the session.
pub fn login(
    client: &mut Client,
    sessions: &SessionStore,
    user: &str,
    password: &str,
    address: &str,
) -> Result<Session, ChatError> {
    if password.is_empty() {
        return Err(ChatError::Usage(format!(
            "{user} must log in: a password is required (--password or GESTOR_PASSWORD)"
        )));
    }
    let session = client.login(user, password, address)?;
    sessions.save(&session)?;
    remember_gestores(sessions, client);
    Ok(session)
}

// ---- requests ----------------------------------------------------------------

/// Leave `message` in its recipient's mailbox (`mail.put`).
pub fn put_in_mailbox(
    client: &mut Client,
    session: &Session,
    message: &ChatMessage,
) -> Result<bool, ChatError> {
    let done = client.request::<mail::Put>(&PutMail {
        token: session.token.clone(),
        mail: message.clone(),
    })?;
    Ok(done.stored)
}

/// Send `message` straight to the recipient's client at `address`; true when
/// the recipient acknowledged it (stored, held or already had it).
pub fn send_direct(
    secure: SecureLayer,
    address: &str,
    message: &ChatMessage,
    timeout: Duration,
) -> Result<Accepted, ChatError> {
    let mut peer = Client::to_client_endpoint(secure, listen_url(address), timeout);
    let ack = peer.request::<chat::Message>(message)?;
    Ok(ack.status)
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub sent: Vec<(ChatMessage, Via)>,
    pub failed: Vec<Failure>,
    /// Messages still waiting.
    pub waiting: usize,
    /// The session token was refused: log in again.
    pub unauthorized: bool,
    /// For each recipient with messages still waiting: the id of the first
    /// one (the others wait behind it, in order) and why it was not handed off.
    pub stuck: BTreeMap<String, (String, String)>,
    /// Waiting messages that may have arrived all the same: a request
    /// carrying them got no answer (timeout), rather than a refusal.
    pub uncertain: std::collections::BTreeSet<String>,
}

/// Whether a request that failed with `e` may have reached its receiver
/// (no answer, a garbled answer) — as opposed to a refusal, or an address
/// it could never have reached.
pub fn may_have_arrived(e: &ChatError) -> bool {
    use gestor_sdk::TransportError as T;
    let transport = |t: &T| {
        !matches!(
            t,
            T::BadAddress { .. } | T::Bind { .. } | T::TooLarge { .. } | T::Untrusted { .. }
        )
    };
    match e {
        ChatError::Client(ClientError::Remote(_)) => false,
        ChatError::Client(ClientError::Unreachable { last, .. }) => transport(last),
        ChatError::Client(ClientError::Transport(t)) | ChatError::Transport(t) => transport(t),
        ChatError::Client(ClientError::Malformed { .. }) => true,
        ChatError::Io(_) | ChatError::File(_) | ChatError::Usage(_) => false,
    }
}

/// One send-pending pass: hand off the outbox, in order per recipient
/// (optionally only messages to `only`). Stops at the first message to a
/// recipient that cannot be handed off, so a later one never overtakes it.
pub fn deliver_pending(
    client: &mut Client,
    secure: SecureLayer,
    store: &ChatStore,
    session: &Session,
    opts: &ChatOptions,
    only: Option<&str>,
) -> Result<PassReport, ChatError> {
    let mut pass = Pass {
        client,
        secure,
        store,
        session,
        opts,
        now: system_ms(),
        report: PassReport::default(),
    };
    for (peer, messages) in pass.waiting_by_peer()? {
        if only.is_some_and(|o| o != peer) {
            pass.report.waiting += messages.len();
            continue;
        }
        pass.deliver_to(&peer, &messages)?;
        if pass.report.unauthorized {
            break;
        }
    }
    Ok(pass.report)
}

/// A send-pending pass under way.
struct Pass<'a> {
    client: &'a mut Client,
    secure: SecureLayer,
    store: &'a ChatStore,
    session: &'a Session,
    opts: &'a ChatOptions,
    now: u64,
    report: PassReport,
}

/// Why a message was not handed off.
struct Stuck {
    why: String,
    /// A request carrying it got no answer: it may have arrived.
    maybe_arrived: bool,
}

impl Pass<'_> {
    /// The outbox by recipient, in order; messages older than `max_age`
    /// are given up (reported undeliverable).
    fn waiting_by_peer(&mut self) -> Result<BTreeMap<String, Vec<Outgoing>>, ChatError> {
        let max_age = self.opts.max_age.as_millis() as u64;
        let mut by_peer: BTreeMap<String, Vec<Outgoing>> = BTreeMap::new();
        for m in self.store.outbox()? {
            if self.now.saturating_sub(m.message.sent_ms) > max_age {
                let reason = format!("not delivered within {} ms", max_age);
                let failure = self.store.give_up(&m.message, &reason, self.now)?;
                self.report.failed.push(failure);
                continue;
            }
            by_peer.entry(m.message.to.clone()).or_default().push(m);
        }
        Ok(by_peer)
    }

    /// Hand off `messages` (in order) to `peer`, up to the first that
    /// cannot be; an unknown recipient's messages are given up.
    fn deliver_to(&mut self, peer: &str, messages: &[Outgoing]) -> Result<(), ChatError> {
        let found = match self.client.lookup(peer) {
            Ok(f) => f,
            Err(ClientError::Remote(h)) if h.code == ErrorCode::NotFound => {
                for m in messages {
                    let reason = format!("no such user {peer}");
                    let failure = self.store.give_up(&m.message, &reason, self.now)?;
                    self.report.failed.push(failure);
                }
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(%peer, "lookup failed: {e}");
                let stuck = Stuck {
                    why: format!("cannot look up {peer}: {e}"),
                    maybe_arrived: false,
                };
                self.stuck(peer, messages, stuck);
                return Ok(());
            }
        };
        for (i, m) in messages.iter().enumerate() {
            match self.hand_off(peer, &found, m) {
                Ok(via) => {
                    self.store.sent(&m.message.id)?;
                    self.report.sent.push((m.message.clone(), via));
                }
                Err(stuck) => {
                    self.stuck(peer, &messages[i..], stuck);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `waiting` (to `peer`, in order) stay: the first could not be handed off.
    fn stuck(&mut self, peer: &str, waiting: &[Outgoing], stuck: Stuck) {
        let Some(first) = waiting.first() else { return };
        if stuck.maybe_arrived {
            self.report.uncertain.insert(first.message.id.clone());
        }
        self.report
            .stuck
            .insert(peer.to_string(), (first.message.id.clone(), stuck.why));
        self.report.waiting += waiting.len();
    }

    /// One message: directly to an online recipient, else (when allowed)
    /// into its mailbox on the ring.
    fn hand_off(&mut self, peer: &str, found: &Found, m: &Outgoing) -> Result<Via, Stuck> {
        let mut maybe_arrived = false;
        let mut why = format!("{peer} is offline");
        if found.online && !found.address.is_empty() {
            let address = &found.address;
            match send_direct(self.secure.clone(), address, &m.message, self.opts.timeout) {
                Ok(_) => return Ok(Via::Direct),
                Err(e) => {
                    tracing::debug!(%peer, %address, "direct send failed: {e}");
                    maybe_arrived = may_have_arrived(&e);
                    why = format!("{peer} is online at {address} but did not take it: {e}");
                }
            }
        }
        if !m.mailbox {
            let why = format!("{why}, and the mailbox is not used (--no-mailbox)");
            return Err(Stuck { why, maybe_arrived });
        }
        match put_in_mailbox(self.client, self.session, &m.message) {
            Ok(_) => Ok(Via::Mailbox),
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                self.report.unauthorized = true;
                let why = format!("the session of {} has ended", self.session.username);
                Err(Stuck { why, maybe_arrived })
            }
            Err(e) => {
                tracing::debug!(%peer, "mailbox put failed: {e}");
                maybe_arrived |= may_have_arrived(&e);
                let why = format!("{why}; leaving it in the mailbox failed: {e}");
                Err(Stuck { why, maybe_arrived })
            }
        }
    }
}

/// What a mailbox fetch did.
#[derive(Debug, Default, Clone)]
pub struct FetchReport {
    /// Newly delivered to the inbox, in order.
    pub delivered: Vec<ChatMessage>,
    pub fetched: usize,
    /// Bounces of our own messages, newly recorded.
    pub bounced: Vec<Failure>,
}

/// Fetch the user's mailbox, deliver its messages to the inbox (de-duplicated,
/// in order) and acknowledge them.
pub fn fetch_mailbox(
    client: &mut Client,
    store: &ChatStore,
    session: &Session,
) -> Result<FetchReport, ChatError> {
    let fetched: Fetched = client.request::<mail::Fetch>(&Auth {
        username: session.username.clone(),
        token: session.token.clone(),
    })?;
    let now = system_ms();
    let mut report = FetchReport {
        fetched: fetched.messages.len(),
        ..FetchReport::default()
    };
    let mut ids = Vec::new();
    for m in &fetched.messages {
        if m.to != session.username {
            continue;
        }
        let (_, delivered) = store.accept(m, now)?;
        report.delivered.extend(delivered);
        ids.push(m.id.clone());
    }
    for b in fetched.bounces {
        let failure = Failure {
            message: b.mail,
            reason: b.reason,
            reported_ms: now,
        };
        ids.push(failure.message.id.clone());
        if store.record_failure(&failure)? {
            report.bounced.push(failure);
        }
    }
    if !ids.is_empty() {
        client.request::<mail::Ack>(&AckBody {
            username: session.username.clone(),
            token: session.token.clone(),
            ids,
        })?;
    }
    Ok(report)
}

/// Subscribe `session`'s user to presence events about `contacts`.
pub fn watch(
    client: &mut Client,
    session: &Session,
    contacts: &[String],
) -> Result<(Vec<Presence>, Duration), ChatError> {
    let w = client.request::<presence_api::Watch>(&WatchBody {
        username: session.username.clone(),
        token: session.token.clone(),
        contacts: contacts.to_vec(),
    })?;
    Ok((w.contacts, Duration::from_millis(w.ttl_ms.max(300))))
}

// ---- the running client ------------------------------------------------------

struct Inner {
    opts: ChatOptions,
    store: ChatStore,
    secure: SecureLayer,
    session: Mutex<Session>,
    events: Sender<ChatEvent>,
    stop: AtomicBool,
    /// Set when send-pending should run now.
    wake: (Mutex<bool>, Condvar),
    /// Set when the presence subscription must be renewed now.
    rewatch: AtomicBool,
    presence: Mutex<HashMap<String, Presence>>,
}

impl Inner {
    fn emit(&self, e: ChatEvent) {
        let _ = self.events.send(e);
    }

    fn wake_sender(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Sleep until woken or `timeout`; returns early on stop.
    fn wait(&self, timeout: Duration) {
        let (lock, cv) = &self.wake;
        let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + timeout;
        while !*woken && !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = cv
                .wait_timeout(woken, left.min(Duration::from_millis(200)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *woken = false;
    }

    fn session(&self) -> Session {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn relogin(&self, client: &mut Client) -> Result<(), ChatError> {
        let s = login(
            client,
            &self.opts.sessions(),
            &self.opts.username,
            &self.opts.password,
            &self.opts.address,
        )?;
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = s;
        self.rewatch.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The receive side: one request from a peer or a gestor.
    fn handle(&self, frame: &[u8], peer: &Peer) -> Vec<u8> {
        let result = match decode_request(frame) {
            Err(e) => Err(e),
            // Presence comes from the ring; another client cannot fake it.
            Ok(req) if req.kind == chat::Presence::NAME && !peer.is_gestor() => {
                Err(HandlerError::new(
                    ErrorCode::Forbidden,
                    "presence events are accepted only from admitted gestores",
                ))
            }
            Ok(req) => self.dispatch(&req.kind, &req.body),
        };
        to_cbor(&Reply::from_result(result))
    }

    fn dispatch(&self, kind: &str, body: &Value) -> Result<Value, HandlerError> {
        match kind {
            chat::Message::NAME => {
                let m: ChatMessage = from_value(body)?;
                if m.to != self.opts.username {
                    // The address now belongs to someone else: not delivered.
                    return Err(HandlerError::new(
                        ErrorCode::NotFound,
                        format!("this is {}, not {}", self.opts.username, m.to),
                    ));
                }
                let (status, delivered) = self
                    .store
                    .accept(&m, system_ms())
                    .map_err(|e| HandlerError::internal(e.to_string()))?;
                if status == Accepted::Held {
                    // A gap: the missing ones may be in the mailbox.
                    self.wake_sender();
                }
                let _ = self.store.add_contacts(std::slice::from_ref(&m.from));
                for d in delivered {
                    self.emit(ChatEvent::Message(d));
                }
                Ok(to_value(&MessageAck { id: m.id, status }))
            }
            chat::Presence::NAME => {
                let p: Presence = from_value(body)?;
                self.presence
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.user.clone(), p.clone());
                if p.online {
                    // Act on it now instead of waiting for the fallback timer.
                    self.wake_sender();
                }
                self.emit(ChatEvent::Presence(p));
                Ok(to_value(&true))
            }
            node::Ping::NAME => Ok(to_value("pong")),
            other => Err(HandlerError::new(
                ErrorCode::UnknownKind,
                format!("a chat client does not serve {other:?}"),
            )),
        }
    }

    fn send_alive_loop(&self) {
        /// How often the client checks which gestor is responsible for it.
        const SELF_CHECK_EVERY: Duration = Duration::from_secs(10);
        let mut alive: Option<AliveSender> = None;
        let mut client = self.opts.client();
        let mut next_watch = Instant::now();
        let mut token = String::new();
        let mut signal = String::new();
        let mut next_self_check = Instant::now() + SELF_CHECK_EVERY;
        while !self.stop.load(Ordering::SeqCst) {
            let mut session = self.session();
            // The responsible gestor can change (failure, join): a lookup of
            // ourselves names the current one's signal endpoint.
            if Instant::now() >= next_self_check {
                next_self_check = Instant::now() + SELF_CHECK_EVERY;
                if let Ok(me) = client.lookup(&session.username) {
                    if !me.signal.is_empty() && !signal.is_empty() && me.signal != signal {
                        tracing::info!(signal = %me.signal, "responsible gestor changed; alive signals follow it");
                        signal = me.signal;
                        token.clear();
                    }
                }
            }
            if !signal.is_empty() {
                session.signal = signal.clone();
            }
            if token != session.token {
                token = session.token.clone();
                signal = session.signal.clone();
                alive = match AliveSender::new(&self.secure, &session) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::warn!("cannot open the alive publisher: {e}");
                        None
                    }
                };
            }
            if let Some(a) = alive.as_mut() {
                if let Err(e) = a.beat() {
                    tracing::debug!("alive signal: {e}");
                }
            }
            if self.rewatch.swap(false, Ordering::SeqCst) || Instant::now() >= next_watch {
                let contacts = self.store.contacts().unwrap_or_default();
                next_watch = Instant::now() + Duration::from_secs(5);
                if !contacts.is_empty() {
                    match watch(&mut client, &session, &contacts) {
                        Ok((list, ttl)) => {
                            next_watch = Instant::now() + ttl / 3;
                            let mut known = self.presence.lock().unwrap_or_else(|p| p.into_inner());
                            for p in list {
                                let changed = known.get(&p.user).map(|k| (k.online, &k.address))
                                    != Some((p.online, &p.address));
                                known.insert(p.user.clone(), p.clone());
                                if changed {
                                    if p.online {
                                        self.wake_sender();
                                    }
                                    self.emit(ChatEvent::Presence(p));
                                }
                            }
                        }
                        Err(e) => tracing::debug!("presence.watch: {e}"),
                    }
                }
            }
            let every = Duration::from_millis(session.alive_every_ms.max(50));
            let until = Instant::now() + every;
            while Instant::now() < until
                && !self.stop.load(Ordering::SeqCst)
                && !self.rewatch.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(25).min(every));
            }
        }
    }

    fn send_pending_loop(&self) {
        let mut client = self.opts.client();
        let mut last_fetch = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            self.send_pending_pass(&mut client);
            let held = self.store.held_count().unwrap_or(0);
            if held > 0 || last_fetch.elapsed() >= self.opts.mailbox_every {
                last_fetch = Instant::now();
                self.fetch(&mut client);
            }
            if held > 0 {
                match self
                    .store
                    .release_held(self.opts.gap_wait.as_millis() as u64, system_ms())
                {
                    Ok(list) => list
                        .into_iter()
                        .for_each(|m| self.emit(ChatEvent::Message(m))),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            let wait = if held > 0 {
                Duration::from_millis(500).min(self.opts.retry_every)
            } else {
                self.opts.retry_every
            };
            self.wait(wait);
        }
    }

    fn send_pending_pass(&self, client: &mut Client) -> usize {
        let session = self.session();
        match deliver_pending(
            client,
            self.secure.clone(),
            &self.store,
            &session,
            &self.opts,
            None,
        ) {
            Ok(report) => {
                for (m, via) in report.sent {
                    self.emit(ChatEvent::Sent {
                        id: m.id,
                        to: m.to,
                        seq: m.seq,
                        via,
                    });
                }
                for f in report.failed {
                    self.emit(ChatEvent::Undeliverable(f));
                }
                if report.unauthorized {
                    if let Err(e) = self.relogin(client) {
                        self.emit(ChatEvent::Problem(format!("log in again: {e}")));
                    }
                }
                report.waiting
            }
            Err(e) => {
                tracing::warn!("send-pending: {e}");
                self.emit(ChatEvent::Problem(e.to_string()));
                usize::MAX
            }
        }
    }

    fn fetch(&self, client: &mut Client) {
        match fetch_mailbox(client, &self.store, &self.session()) {
            Ok(r) => {
                r.delivered
                    .into_iter()
                    .for_each(|m| self.emit(ChatEvent::Message(m)));
                r.bounced
                    .into_iter()
                    .for_each(|f| self.emit(ChatEvent::Undeliverable(f)));
            }
            Err(e) => tracing::debug!("mailbox fetch: {e}"),
        }
    }
}

/// A logged-in chat user with its three threads running.
pub struct ChatClient {
    inner: Arc<Inner>,
    events: Receiver<ChatEvent>,
    threads: Vec<JoinHandle<()>>,
    replier: Option<Box<dyn Replier>>,
    /// Delivered from the mailbox at login, before the threads started.
    pub initial: FetchReport,
}

impl ChatClient {
    /// Log in with `opts.address`, deliver the mailbox, bind the receiver on
    /// `tcp://ADDRESS` and start send-alive and send-pending.
    pub fn start(opts: ChatOptions) -> Result<ChatClient, ChatError> {
        let store = ChatStore::open(&opts.home, &opts.username)?;
        let mut client = opts.client();
        let secure = opts.layer();
        let session = login(
            &mut client,
            &opts.sessions(),
            &opts.username,
            &opts.password,
            &opts.address,
        )?;
        // Remembered only once logged in: a chat that could not start
        // leaves no address or contacts behind.
        store.add_contacts(&opts.contacts)?;
        store.set_address(&opts.address)?;
        // The mailbox first, then the receiver: what waited for us comes
        // before anything sent to us directly from now on.
        let initial = fetch_mailbox(&mut client, &store, &session)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner {
            opts: opts.clone(),
            store,
            secure: secure.clone(),
            session: Mutex::new(session),
            events: tx,
            stop: AtomicBool::new(false),
            wake: (Mutex::new(true), Condvar::new()),
            rewatch: AtomicBool::new(true),
            presence: Mutex::new(HashMap::new()),
        });
        let handler_inner = inner.clone();
        let handler =
            Arc::new(move |frame: &[u8], peer: &Peer, _queued| handler_inner.handle(frame, peer));
        let replier = secure.replier(
            &listen_url(&opts.address),
            handler,
            &TransportOptions {
                replier_workers: 2,
                ..TransportOptions::default()
            },
        )?;
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(&Inner), inner: Arc<Inner>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || f(&inner))
                .map_err(|e| ChatError::Io(format!("cannot start thread {}: {e}", name)))
        };
        threads.push(spawn("send-alive", Inner::send_alive_loop, inner.clone())?);
        threads.push(spawn(
            "send-pending",
            Inner::send_pending_loop,
            inner.clone(),
        )?);
        Ok(ChatClient {
            inner,
            events: rx,
            threads,
            replier: Some(replier),
            initial,
        })
    }

    pub fn username(&self) -> &str {
        &self.inner.opts.username
    }

    pub fn session(&self) -> Session {
        self.inner.session()
    }

    pub fn store(&self) -> &ChatStore {
        &self.inner.store
    }

    /// Events for the user interface (messages, presence, sent, undeliverable).
    pub fn events(&self) -> &Receiver<ChatEvent> {
        &self.events
    }

    /// Queue `text` for `to` and wake send-pending; returns the message.
    pub fn send(&self, to: &str, text: &str) -> Result<ChatMessage, ChatError> {
        let m = self
            .inner
            .store
            .enqueue(to, text, self.inner.opts.use_mailbox, system_ms())?;
        self.add_contact(to)?;
        self.inner.wake_sender();
        Ok(m)
    }

    /// Watch `user` from now on (saved in the contacts).
    pub fn add_contact(&self, user: &str) -> Result<(), ChatError> {
        if self.inner.store.add_contacts(&[user.to_string()])? {
            self.inner.rewatch.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Ask the ring where `user` is now.
    pub fn lookup(&self, user: &str) -> Result<Found, ChatError> {
        Ok(self.inner.opts.client().lookup(user)?)
    }

    /// Contacts with their last known presence (from events or the subscription).
    pub fn contacts(&self) -> Result<Vec<(String, Option<Presence>)>, ChatError> {
        let known = self
            .inner
            .presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(self
            .inner
            .store
            .contacts()?
            .into_iter()
            .map(|c| {
                let p = known.get(&c).cloned();
                (c, p)
            })
            .collect())
    }

    pub fn inbox(&self) -> Result<Vec<ChatMessage>, ChatError> {
        self.inner.store.inbox()
    }

    pub fn outbox_len(&self) -> Result<usize, ChatError> {
        Ok(self.inner.store.outbox()?.len())
    }

    /// Wait until the outbox is empty or `deadline` passes; true when empty.
    pub fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            if self.outbox_len().map(|n| n == 0).unwrap_or(false) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.inner.wake_sender();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the threads and the receiver, without logging out (the user
    /// then goes offline when its alive signals lapse — like a crash).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Log out (offline at once) and stop.
    pub fn quit(mut self) -> Result<(), ChatError> {
        self.shutdown();
        let session = self.inner.session();
        let mut client = self.inner.opts.client();
        client.logout(&session.username, &session.token)?;
        self.inner.opts.sessions().forget(&session.username)?;
        Ok(())
    }

    fn shutdown(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake_sender();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.replier.take();
    }
}

impl Drop for ChatClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_sdk::TransportError;

    /// Only a request that may have been taken (no answer, a garbled one)
    /// keeps a failed `gestor send` queued; a refusal or an address that
    /// could not be used does not.
    #[test]
    fn what_may_have_arrived() {
        let timeout = TransportError::Timeout {
            url: "tcp://h:1".into(),
            timeout_ms: 5,
        };
        let unreachable = |last| {
            ChatError::Client(ClientError::Unreachable {
                tried: "tcp://h:1".into(),
                last,
            })
        };
        assert!(may_have_arrived(&unreachable(timeout.clone())));
        assert!(may_have_arrived(&ChatError::Transport(timeout)));
        assert!(may_have_arrived(&ChatError::Client(
            ClientError::Malformed {
                url: "tcp://h:1".into(),
                reason: "cut short".into(),
            }
        )));
        assert!(!may_have_arrived(&ChatError::Client(ClientError::Remote(
            HandlerError::new(ErrorCode::Forbidden, "no")
        ))));
        assert!(!may_have_arrived(&unreachable(
            TransportError::BadAddress {
                url: "x".into(),
                reason: "no scheme".into(),
            }
        )));
        assert!(!may_have_arrived(&ChatError::Usage("no password".into())));
    }
}
