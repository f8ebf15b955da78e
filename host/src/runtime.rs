//! A running gestor node: the host side of the plugin contract.
//!
//! [`Node::start`] opens the store, builds the transport, binds the REQ-REP
//! and signal endpoints, loads and starts the plugins. Requests arrive on
//! transport worker threads and go through [`HostCore::handle_frame`]: decode
//! the envelope, find the handler registered for its kind, call it, attach the
//! initial-gestors list, encode. Signals arrive on one subscriber thread and
//! go to every handler whose topic prefix matches. Each plugin loop has a
//! thread of its own. [`Node::stop`] reverses all of it.

use crate::boundary::{catch, GuardedStore};
use crate::config::Config;
use crate::loader::{self, LoadedPlugin};
use crate::metrics::{KindMeter, Metrics, OriginLabel, SignalDrop};
use crate::record_cache::CachedStore;
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use gestor_api::node::{self, NodeStatus, SecurityStatus};
use gestor_api::{ring, status};
use gestor_backends::{build_transport, open_store};
use gestor_sdk::hlc::system_ms;
use gestor_sdk::plugin::{LoopFn, RequestFn, SignalFn};
use gestor_sdk::transport::{Endpoint, Publisher, Replier, Requester, Transport, TransportOptions};
use gestor_sdk::wire::to_value;
use gestor_sdk::wire::{
    decode_item, decode_request, encode_reply, from_cbor, peek_kind, to_cbor, Reply, Request,
};
use gestor_sdk::{
    CallError, Clock, ErrorCode, HandlerError, Host, Kind, KindClass, PluginContext, PluginError,
    RequestMeta, Store, TransportError, Value,
};
use gestor_secure::{Peer, SecureLayer};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requesters kept open per peer URL; more concurrent calls open more.
const POOLED_REQUESTERS_PER_PEER: usize = 8;
/// How often blocking waits wake to check for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// Peers with pooled requesters or cached publishers; beyond this the cache
/// is emptied (sockets are cheap to reopen, unbounded fds are not).
const MAX_CACHED_PEERS: usize = 256;
/// How often the revocation list file is checked for changes.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// Where a request came from: this process, or the network through a
/// secure session whose peer is proven.
#[derive(Debug, Clone)]
pub enum Origin {
    Local,
    Network(Peer),
}

pub fn transport_options(config: &Config) -> TransportOptions {
    TransportOptions {
        max_message_bytes: config.transport.max_message_bytes,
        replier_workers: config.transport.replier_workers,
        ..TransportOptions::default()
    }
}

/// A request handler and what it was registered with.
struct Registered {
    plugin: String,
    /// Who may send this kind (stored, not enforced here).
    class: KindClass,
    /// Tried on the transport's I/O thread first ([`gestor_sdk::Kind::FAST_PATH`]).
    fast_path: bool,
    /// May run on the workers reserved for gestores
    /// ([`gestor_sdk::Kind::UPKEEP`]).
    upkeep: bool,
    handler: RequestFn,
    meter: Arc<KindMeter>,
}

/// The largest frame [`HostCore::handle_frame_fast`] decodes.
const FAST_PATH_MAX_FRAME: usize = 4 * 1024;

thread_local! {
    /// Set while a fast-path request runs on the transport's I/O thread;
    /// `refused` records that it asked for a call that would wait there.
    static ON_IO_THREAD: std::cell::Cell<IoThread> = const {
        std::cell::Cell::new(IoThread { active: false, refused: false })
    };
}

#[derive(Clone, Copy)]
struct IoThread {
    active: bool,
    refused: bool,
}

/// `Err(WouldBlock)` when called on the I/O thread (and noted there, so
/// the request goes to a worker); the network may wait, that thread may not.
fn may_wait_for(url: &str) -> Result<(), CallError> {
    ON_IO_THREAD.with(|state| {
        let mut now = state.get();
        if !now.active {
            return Ok(());
        }
        now.refused = true;
        state.set(now);
        Err(CallError::Transport(TransportError::WouldBlock {
            url: url.to_string(),
        }))
    })
}

/// Everything plugins reach through [`Host`].
pub struct HostCore {
    node_id: u64,
    request_url: String,
    signal_url: String,
    join_urls: Vec<String>,
    secure: SecureLayer,
    transport_options: TransportOptions,
    transport_name: String,
    storage_name: String,
    /// The store as plugins get it: behind [`GuardedStore`].
    store: Arc<dyn Store>,
    clock: Arc<Clock>,
    plugin_configs: HashMap<String, Value>,
    handlers: RwLock<HashMap<String, Registered>>,
    /// Signal handlers by topic prefix.
    signals: RwLock<Vec<(String, SignalFn)>>,
    loops: Mutex<Vec<JoinHandle<()>>>,
    requesters: Mutex<HashMap<String, Vec<Box<dyn Requester>>>>,
    publishers: Mutex<HashMap<String, Box<dyn Publisher>>>,
    initial_gestors: RwLock<Vec<String>>,
    plugin_names: RwLock<Vec<String>>,
    stopping: AtomicBool,
    shutdown_tx: Mutex<Option<Sender<()>>>,
    shutdown_rx: Receiver<()>,
    malformed_signals: AtomicU64,
    forbidden_requests: AtomicU64,
    forbidden_signals: AtomicU64,
    /// Request workers client requests may hold at once (the rest are the
    /// gestores' lane), how many they hold now, and how many were turned away.
    client_workers: usize,
    clients_in_flight: std::sync::atomic::AtomicUsize,
    clients_turned_away: AtomicU64,
    /// Client work that waited in the queue past `max_queue_wait`.
    clients_shed: AtomicU64,
    /// How long client work may wait for a worker and still be run.
    max_queue_wait: Option<Duration>,
    started_ms: u64,
    /// What `/metrics` reports of the host's own work.
    metrics: Metrics,
}

fn toml_to_cbor(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Integer((*i).into()),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Text(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_cbor).collect()),
        toml::Value::Table(t) => Value::Map(
            t.iter()
                .map(|(k, v)| (Value::Text(k.clone()), toml_to_cbor(v)))
                .collect(),
        ),
    }
}

/// A request worker held by a client request; released on drop.
struct ClientWorker<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for ClientWorker<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::err(HandlerError::new(code, message))
}

fn origin_label(origin: &Origin) -> OriginLabel {
    match origin {
        Origin::Local => OriginLabel::Local,
        Origin::Network(peer) if peer.is_gestor() => OriginLabel::Gestor,
        Origin::Network(_) => OriginLabel::Client,
    }
}

impl HostCore {
    /// The core of a node of `config`, before anything is bound or loaded.
    fn new(config: &Config, secure: SecureLayer, store: Arc<dyn Store>) -> Result<HostCore> {
        let node_id = config.node_id()?;
        let offset = config.clock.offset_ms;
        let clock = Arc::new(Clock::with_wall_clock(
            node_id,
            Duration::from_millis(config.clock.max_ahead_ms),
            Box::new(move || (system_ms() as i64).saturating_add(offset).max(0) as u64),
        ));
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(0);
        let metrics = Metrics::new();
        Ok(HostCore {
            node_id,
            request_url: config.advertise_url(),
            signal_url: config.advertised_signal_url()?,
            join_urls: config.node.join.clone(),
            secure,
            transport_options: transport_options(config),
            transport_name: config.transport.backend.to_string(),
            storage_name: config.storage.backend.to_string(),
            store: Arc::new(GuardedStore::new(store, metrics.store_flushes())),
            clock,
            plugin_configs: config
                .plugins
                .config
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_cbor(v)))
                .collect(),
            handlers: RwLock::new(HashMap::new()),
            signals: RwLock::new(Vec::new()),
            loops: Mutex::new(Vec::new()),
            requesters: Mutex::new(HashMap::new()),
            publishers: Mutex::new(HashMap::new()),
            initial_gestors: RwLock::new(Vec::new()),
            plugin_names: RwLock::new(Vec::new()),
            stopping: AtomicBool::new(false),
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            malformed_signals: AtomicU64::new(0),
            forbidden_requests: AtomicU64::new(0),
            forbidden_signals: AtomicU64::new(0),
            client_workers: config
                .transport
                .replier_workers
                .saturating_sub(config.transport.reserved_for_gestores)
                .max(1),
            clients_in_flight: std::sync::atomic::AtomicUsize::new(0),
            clients_turned_away: AtomicU64::new(0),
            clients_shed: AtomicU64::new(0),
            max_queue_wait: config.max_queue_wait(),
            started_ms: system_ms(),
            metrics,
        })
    }

    /// Decode, dispatch and encode one request frame from `origin`, which
    /// waited `queued` for a worker. Never panics on input.
    pub fn handle_frame(&self, frame: &[u8], origin: &Origin, queued: Duration) -> Vec<u8> {
        let from_client = matches!(origin, Origin::Network(Peer::Client { .. }));
        // The gestores' lane: client work never holds the last workers.
        // Everything but the ring's upkeep and copies is client work,
        // whoever sends it: a gestor forwarding a client's request to its
        // owner (`dir.register`, say) waits, as the client's own request
        // would, on hashing and on copies. The reserved workers stay free
        // for the upkeep kinds, which wait on no other gestor's workers.
        let client_work = from_client || !self.is_upkeep_frame(frame);
        // Client work that waited this long has most likely been given up
        // on and sent again (or elsewhere): running it late would only make
        // the queue behind it longer. Upkeep is not shed; it has its own
        // lane below.
        if client_work && self.max_queue_wait.is_some_and(|limit| queued > limit) {
            self.clients_shed.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .refused_frame(origin_label(origin), ErrorCode::Busy);
            let reply = error_reply(
                ErrorCode::Busy,
                format!(
                    "the request waited {} ms for a request worker, so it was not run; retry shortly",
                    queued.as_millis()
                ),
            );
            return self.encode_reply(&reply);
        }
        let _client_slot = match client_work {
            true => match self.take_client_worker() {
                Some(slot) => Some(slot),
                None => {
                    self.clients_turned_away.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .refused_frame(origin_label(origin), ErrorCode::Busy);
                    let reply = error_reply(
                        ErrorCode::Busy,
                        "every request worker for clients is taken; retry shortly",
                    );
                    return self.encode_reply(&reply);
                }
            },
            false => None,
        };
        let refused = |code: ErrorCode| self.metrics.refused_frame(origin_label(origin), code);
        let reply = if frame.len() > self.transport_options.max_message_bytes {
            refused(ErrorCode::TooLarge);
            error_reply(
                ErrorCode::TooLarge,
                format!("request of {} bytes exceeds the limit", frame.len()),
            )
        } else {
            match decode_request(frame) {
                Err(e) => {
                    refused(e.code);
                    Reply::err(e)
                }
                Ok(req) => Reply::from_result(self.dispatch(&req.kind, &req.body, origin)),
            }
        };
        self.encode_reply(&reply)
    }

    /// `reply` as sent: with the current initial-gestors list (seed §1).
    fn encode_reply(&self, reply: &Reply) -> Vec<u8> {
        let list = self
            .initial_gestors
            .read()
            .unwrap_or_else(|p| p.into_inner());
        encode_reply(reply, &list)
    }

    /// [`Self::handle_frame`] on the transport's I/O thread, for fast-path
    /// kinds only: `None` sends the frame to a worker (not a fast-path
    /// kind, not a valid request, or it had to wait on another gestor —
    /// then a worker runs it again from the start, which is why fast-path
    /// kinds change nothing before such a call).
    pub fn handle_frame_fast(&self, frame: &[u8], origin: &Origin) -> Option<Vec<u8>> {
        // Fast-path requests are small; a bigger frame (an import batch) is
        // not decoded here only to be decoded again by a worker.
        if frame.len() > FAST_PATH_MAX_FRAME.min(self.transport_options.max_message_bytes) {
            return None;
        }
        // Most frames are not fast-path kinds: tell from the headers
        // before decoding (a worker decodes those anyway).
        if !self.is_fast_path(peek_kind(frame)?) {
            return None;
        }
        // A valid envelope has one `kind`, the one peeked above.
        let req = decode_request(frame).ok()?;
        let started = Instant::now();
        let outer = ON_IO_THREAD.replace(IoThread {
            active: true,
            refused: false,
        });
        let (result, meter) = self.dispatch_uncounted(&req.kind, &req.body, origin);
        let state = ON_IO_THREAD.replace(outer);
        self.metrics.fast_path(&req.kind, !state.refused);
        if state.refused {
            return None;
        }
        self.count(&req.kind, meter.as_deref(), origin, &result, started);
        Some(self.encode_reply(&Reply::from_result(result)))
    }

    fn is_fast_path(&self, kind: &str) -> bool {
        if kind == node::Ping::NAME {
            return node::Ping::FAST_PATH;
        }
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .is_some_and(|r| r.fast_path)
    }

    /// Whether `frame` is an upkeep kind ([`gestor_sdk::Kind::UPKEEP`]),
    /// read from the headers. A frame whose kind the headers do not show
    /// (say, an indefinite-length envelope, which the full decode accepts)
    /// is not, so that it cannot reach the reserved workers; gestores
    /// encode their own kinds with definite lengths.
    fn is_upkeep_frame(&self, frame: &[u8]) -> bool {
        peek_kind(frame).is_some_and(|kind| {
            self.handlers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(kind)
                .is_some_and(|r| r.upkeep)
        })
    }

    fn take_client_worker(&self) -> Option<ClientWorker<'_>> {
        let taken = self.clients_in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= self.client_workers {
            self.clients_in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientWorker(&self.clients_in_flight))
    }

    /// The class `kind` was registered with (the host's own `node.*` kinds
    /// are `client`); `None` for a kind nobody serves.
    pub fn class_of(&self, kind: &str) -> Option<KindClass> {
        if kind == node::Status::NAME {
            return Some(node::Status::CLASS);
        }
        if kind == node::Ping::NAME {
            return Some(node::Ping::CLASS);
        }
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .map(|r| r.class)
    }

    /// [`Self::dispatch_uncounted`], counted in the metrics by kind, origin
    /// and outcome, with its latency: every request any plugin serves, and
    /// the host's own `node.*`, passes here.
    fn dispatch(&self, kind: &str, body: &Value, origin: &Origin) -> Result<Value, HandlerError> {
        let started = Instant::now();
        let (result, meter) = self.dispatch_uncounted(kind, body, origin);
        self.count(kind, meter.as_deref(), origin, &result, started);
        result
    }

    /// Count one request in the metrics: through its kind's meter when it
    /// has a handler, by label otherwise.
    fn count(
        &self,
        kind: &str,
        meter: Option<&KindMeter>,
        origin: &Origin,
        result: &Result<Value, HandlerError>,
        started: Instant,
    ) {
        let (origin, outcome) = (origin_label(origin), result.as_ref().err().map(|e| e.code));
        match meter {
            Some(meter) => self
                .metrics
                .metered(meter, origin, outcome, started.elapsed()),
            None => self
                .metrics
                .request(kind, origin, outcome, started.elapsed()),
        }
    }

    /// Authorize and run `kind`'s handler; with the result, the kind's
    /// meter when a plugin serves it.
    fn dispatch_uncounted(
        &self,
        kind: &str,
        body: &Value,
        origin: &Origin,
    ) -> (Result<Value, HandlerError>, Option<Arc<KindMeter>>) {
        if kind == node::Status::NAME {
            return (Ok(to_value(&self.status())), None);
        }
        if kind == node::Ping::NAME {
            return (Ok(to_value("pong")), None);
        }
        let (handler, class, meter) = {
            let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
            match handlers.get(kind) {
                Some(r) => (r.handler.clone(), r.class, r.meter.clone()),
                None => {
                    let error = HandlerError::new(
                        ErrorCode::UnknownKind,
                        format!("no handler for request kind {kind:?}"),
                    );
                    return (Err(error), None);
                }
            }
        };
        (
            self.authorized_call(kind, class, &handler, body, origin),
            Some(meter),
        )
    }

    /// `handler` for `kind` of `class`, if `origin` may call it.
    fn authorized_call(
        &self,
        kind: &str,
        class: KindClass,
        handler: &RequestFn,
        body: &Value,
        origin: &Origin,
    ) -> Result<Value, HandlerError> {
        // Authorization, before any plugin sees the request.
        if let Origin::Network(peer) = origin {
            let refusal = match class {
                KindClass::Local => Some("is local to each gestor and never served to the network"),
                KindClass::Internal if !peer.is_gestor() => {
                    Some("is gestor-internal: only admitted gestores may call it")
                }
                _ => None,
            };
            if let Some(why) = refusal {
                self.forbidden_requests.fetch_add(1, Ordering::Relaxed);
                return Err(HandlerError::new(
                    ErrorCode::Forbidden,
                    format!("{kind} {why}"),
                ));
            }
        }
        if self.stopping() && !kind.starts_with(ring::PREFIX) {
            return Err(HandlerError::unavailable("node is shutting down"));
        }
        handler(
            &RequestMeta {
                kind: kind.to_string(),
                class,
                source: match origin {
                    Origin::Network(Peer::Client { source, .. }) => source.clone(),
                    _ => None,
                },
                caller_key: match origin {
                    Origin::Network(peer) if !self.secure.is_insecure() => Some(*peer.key()),
                    _ => None,
                },
            },
            body,
        )
    }

    /// The host's counters, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Another gestor's `node.status`, over this gestor's own secure session.
    pub fn peer_status(&self, url: &str, timeout: Duration) -> Result<NodeStatus, CallError> {
        let value = self.send_request(url, node::Status::NAME, Value::Null, timeout, false)?;
        value
            .deserialized()
            .map_err(|e| CallError::MalformedReply(format!("node.status of {url}: {e}")))
    }

    /// What `node.status` answers: this gestor and every plugin's section.
    pub fn status(&self) -> NodeStatus {
        let status_kinds: Vec<(String, KindClass, RequestFn)> = {
            let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
            handlers
                .iter()
                .filter(|(k, _)| k.starts_with(status::PREFIX))
                .map(|(k, r)| (k.clone(), r.class, r.handler.clone()))
                .collect()
        };
        let mut sections = BTreeMap::new();
        for (kind, class, handler) in status_kinds {
            let section = kind.trim_start_matches(status::PREFIX).to_string();
            let meta = RequestMeta {
                kind: kind.clone(),
                class,
                source: None,
                caller_key: None,
            };
            let value = match handler(&meta, &Value::Null) {
                Ok(v) => v,
                Err(e) => Value::Text(format!("error: {e}")),
            };
            sections.insert(section, value);
        }
        let records = self
            .store
            .count()
            .map(|c| Value::Integer(c.into()))
            .unwrap_or_else(|e| Value::Text(e.to_string()));
        NodeStatus {
            id: self.node_id,
            id_hex: format!("{:016x}", self.node_id),
            address: self.request_url.clone(),
            signal: self.signal_url.clone(),
            transport: self.transport_name.clone(),
            storage: self.storage_name.clone(),
            plugins: self
                .plugin_names
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            records,
            initial_gestors: self.initial_gestors(),
            uptime_ms: system_ms().saturating_sub(self.started_ms),
            malformed_signals: self.malformed_signals.load(Ordering::Relaxed),
            security: self.security_status(),
            sections,
        }
    }

    fn security_status(&self) -> SecurityStatus {
        let stats = self.secure.stats();
        SecurityStatus {
            mode: if self.secure.is_insecure() {
                "insecure"
            } else {
                "secure"
            }
            .into(),
            credential: self.secure.credential_name().map(str::to_string),
            cluster: self.secure.cluster_fingerprint(),
            sessions: stats.sessions,
            handshakes: stats.handshakes,
            handshakes_refused: stats.handshakes_refused,
            tampered: stats.tampered,
            replayed: stats.replayed,
            unknown_session: stats.unknown_session,
            malformed_frames: stats.malformed,
            forbidden_requests: self.forbidden_requests.load(Ordering::Relaxed),
            forbidden_signals: self.forbidden_signals.load(Ordering::Relaxed),
            clients_turned_away: self.clients_turned_away.load(Ordering::Relaxed),
            clients_shed: self.clients_shed.load(Ordering::Relaxed),
        }
    }

    fn deliver_signal(&self, topic: &[u8], payload: &[u8], from: &Peer) {
        let topic = String::from_utf8_lossy(topic);
        self.metrics.signal_received(&topic);
        if !from.is_gestor() && !gestor_api::topics::FROM_CLIENTS.contains(&topic.as_ref()) {
            self.forbidden_signals.fetch_add(1, Ordering::Relaxed);
            self.metrics.signal_dropped(&topic, SignalDrop::Forbidden);
            tracing::debug!(%topic, "dropping a gestor signal sent by a non-gestor");
            return;
        }
        let body: Value = match decode_item(payload) {
            Ok(v) => v,
            Err(e) => {
                self.malformed_signals.fetch_add(1, Ordering::Relaxed);
                self.metrics.signal_dropped(&topic, SignalDrop::Malformed);
                tracing::debug!(%topic, "dropping malformed signal: {e}");
                return;
            }
        };
        let targets: Vec<SignalFn> = {
            let signals = self.signals.read().unwrap_or_else(|p| p.into_inner());
            signals
                .iter()
                .filter(|(prefix, _)| topic.starts_with(prefix.as_str()))
                .map(|(_, handler)| handler.clone())
                .collect()
        };
        if targets.is_empty() {
            self.metrics.signal_dropped(&topic, SignalDrop::Unhandled);
        }
        for handler in targets {
            handler(&topic, &body);
        }
    }

    /// A pooled requester to `url`; `to_client` pools apart the ones that
    /// may reach a client endpoint (their sessions prove nothing).
    fn checkout_requester(
        &self,
        url: &str,
        to_client: bool,
    ) -> Result<(String, Box<dyn Requester>), CallError> {
        let pool_key = if to_client {
            format!("client:{url}")
        } else {
            url.to_string()
        };
        let pooled = self
            .requesters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&pool_key)
            .and_then(|v| v.pop());
        let requester = match pooled {
            Some(r) => r,
            None if to_client => self
                .secure
                .requester_to_client(url, &self.transport_options)?,
            None => self.secure.requester(url, &self.transport_options)?,
        };
        Ok((pool_key, requester))
    }

    /// One request through a pooled requester.
    fn send_request(
        &self,
        url: &str,
        kind: &str,
        body: Value,
        timeout: Duration,
        to_client: bool,
    ) -> Result<Value, CallError> {
        may_wait_for(url)?;
        let frame = to_cbor(&Request::new(kind, body));
        let (pool_key, mut requester) = self.checkout_requester(url, to_client)?;
        let bytes = requester.request(&frame, timeout)?;
        self.checkin_requester(&pool_key, requester);
        let reply: Reply = from_cbor(&bytes).map_err(CallError::MalformedReply)?;
        reply.into_result().map_err(CallError::Remote)
    }

    /// Publish `body` to the signal endpoint at `url`, through a cached
    /// publisher per gestor.
    fn publish(&self, url: &str, topic: &str, body: &Value) -> Result<(), CallError> {
        let payload = to_cbor(body);
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        if !publishers.contains_key(url) {
            // Sealed with the session this node shares with that gestor;
            // fails (and nothing is cached) until one exists.
            let publisher = self.secure.publisher_to(url, &self.transport_options)?;
            if publishers.len() >= MAX_CACHED_PEERS {
                publishers.clear();
            }
            publishers.insert(url.to_string(), publisher);
        }
        match publishers.get_mut(url) {
            Some(p) => Ok(p.publish(topic.as_bytes(), &payload)?),
            None => Err(CallError::MalformedReply("publisher vanished".into())),
        }
    }

    fn checkin_requester(&self, url: &str, requester: Box<dyn Requester>) {
        let mut pool = self.requesters.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= MAX_CACHED_PEERS && !pool.contains_key(url) {
            pool.clear();
        }
        let slot = pool.entry(url.to_string()).or_default();
        if slot.len() < POOLED_REQUESTERS_PER_PEER {
            slot.push(requester);
        }
    }
}

/// A host panic under a plugin's call, as the plugin sees it.
fn panicked(message: String) -> CallError {
    CallError::Remote(HandlerError::internal(message))
}

impl Host for HostCore {
    fn node_id(&self) -> u64 {
        self.node_id
    }
    fn request_url(&self) -> String {
        self.request_url.clone()
    }
    fn signal_url(&self) -> String {
        self.signal_url.clone()
    }
    fn join_urls(&self) -> Vec<String> {
        self.join_urls.clone()
    }
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    fn clock(&self) -> Arc<Clock> {
        self.clock.clone()
    }
    fn plugin_config(&self, plugin: &str) -> Value {
        self.plugin_configs
            .get(plugin)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn register_request(
        &self,
        plugin: &str,
        kind: &str,
        class: KindClass,
        fast_path: bool,
        upkeep: bool,
        handler: RequestFn,
    ) -> Result<(), PluginError> {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        if kind.starts_with(node::PREFIX) {
            return Err(PluginError::DuplicateKind {
                plugin: plugin.into(),
                kind: kind.into(),
                owner: "host".into(),
            });
        }
        if let Some(existing) = handlers.get(kind) {
            return Err(PluginError::DuplicateKind {
                plugin: plugin.into(),
                kind: kind.into(),
                owner: existing.plugin.clone(),
            });
        }
        self.metrics.register_kind(kind);
        handlers.insert(
            kind.to_string(),
            Registered {
                plugin: plugin.to_string(),
                class,
                fast_path,
                // Only gestores may send an upkeep kind: a client kind
                // never gets the reserved workers, whatever it declares.
                upkeep: upkeep && class == KindClass::Internal,
                handler,
                meter: Arc::new(self.metrics.meter(kind)),
            },
        );
        tracing::debug!(plugin, kind, %class, fast_path, upkeep, "request kind registered");
        Ok(())
    }

    fn register_signal(
        &self,
        plugin: &str,
        topic_prefix: &str,
        handler: SignalFn,
    ) -> Result<(), PluginError> {
        let mut signals = self.signals.write().unwrap_or_else(|p| p.into_inner());
        signals.push((topic_prefix.to_string(), handler));
        tracing::debug!(plugin, topic_prefix, "signal handler registered");
        Ok(())
    }

    fn spawn_loop(&self, plugin: &str, name: &str, every: Duration, body: LoopFn) {
        let shutdown = self.shutdown_rx.clone();
        let thread_name = format!("{plugin}/{name}");
        let spawned = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || loop {
                body();
                match shutdown.recv_timeout(every) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            });
        match spawned {
            Ok(handle) => self
                .loops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle),
            Err(e) => tracing::error!(task = %thread_name, "cannot spawn loop thread: {e}"),
        }
    }

    fn request(
        &self,
        url: &str,
        kind: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        if url == self.request_url {
            return self.call_local(kind, body);
        }
        catch("a request", panicked, || {
            self.send_request(url, kind, body, timeout, false)
        })
    }

    fn request_client(
        &self,
        url: &str,
        kind: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        catch("a request to a client", panicked, || {
            self.send_request(url, kind, body, timeout, true)
        })
    }

    fn call_local(&self, kind: &str, body: Value) -> Result<Value, CallError> {
        catch("a local call", panicked, || {
            self.dispatch(kind, &body, &Origin::Local)
                .map_err(CallError::Remote)
        })
    }

    fn can_wait(&self) -> bool {
        may_wait_for("").is_ok()
    }

    fn gestor_key(&self, url: &str, timeout: Duration) -> Result<Option<[u8; 32]>, CallError> {
        may_wait_for(url)?;
        catch("a key request", panicked, || {
            Ok(self
                .secure
                .gestor_key_at(url, &self.transport_options, timeout)?)
        })
    }

    fn signal(&self, url: &str, topic: &str, body: Value) -> Result<(), CallError> {
        catch("a signal", panicked, || self.publish(url, topic, &body))
    }

    fn initial_gestors(&self) -> Vec<String> {
        self.initial_gestors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set_initial_gestors(&self, list: Vec<String>) {
        *self
            .initial_gestors
            .write()
            .unwrap_or_else(|p| p.into_inner()) = list;
    }
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

struct Backends {
    /// The configured store, behind the record cache when that is on.
    store: Arc<dyn Store>,
    cache: Option<Arc<CachedStore>>,
    transport: Arc<dyn Transport>,
}

/// The configured store (behind the record cache unless
/// `storage.cache_records` is 0), and the transport (behind the fault
/// injector when `transport.fault_file` is set).
fn open_backends(config: &Config) -> Result<Backends> {
    let store = open_store(config.storage.backend, &config.node.data_dir).with_context(|| {
        format!(
            "refusing to start: the {} store in {} cannot be used",
            config.storage.backend,
            config.node.data_dir.display()
        )
    })?;
    let cache = (config.storage.cache_records > 0).then(|| {
        Arc::new(CachedStore::new(
            store.clone(),
            config.storage.cache_records,
        ))
    });
    let store = match &cache {
        Some(cache) => cache.clone() as Arc<dyn Store>,
        None => store,
    };
    let mut transport = build_transport(config.transport.backend);
    if let Some(path) = &config.transport.fault_file {
        tracing::warn!(file = %path.display(), "fault injection enabled: URLs listed there are unreachable");
        transport = Arc::new(crate::faults::FaultyTransport::new(
            transport,
            crate::faults::FaultRules::new(path.clone()),
        ));
    }
    Ok(Backends {
        store,
        cache,
        transport,
    })
}

/// Load the configured plugins (not started yet).
fn load_plugins(config: &Config) -> Result<Vec<LoadedPlugin>> {
    let plugin_dir = match &config.plugins.dir {
        Some(d) => d.clone(),
        None => default_plugin_dir()?,
    };
    let mut plugins = Vec::new();
    for entry in &config.plugins.load {
        let path = loader::resolve(entry, &plugin_dir);
        plugins.push(loader::load(&path)?);
    }
    // Settings for a plugin that is not loaded are a typo or a mistake.
    for name in config.plugins.config.keys() {
        if !plugins.iter().any(|p: &LoadedPlugin| &p.name == name) {
            let loaded: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
            bail!(
                "plugins.config.{name}: no plugin named {name} is loaded (loaded: {})",
                loaded.join(", ")
            );
        }
    }
    Ok(plugins)
}

/// The operator's HTTP endpoint: metrics, health, the ring picture.
fn start_http(addr: std::net::SocketAddr, core: &Arc<HostCore>) -> Result<crate::http::Server> {
    let ops = Arc::new(crate::ops::Ops::new(core.clone()));
    let route = ops.clone();
    let server = crate::http::Server::start(
        addr,
        crate::http::Limits::default(),
        Arc::new(move |req: &crate::http::Request| route.route(req)),
        ops,
    )
    .with_context(|| format!("cannot serve HTTP on http.listen = {addr}"))?;
    tracing::info!(addr = %server.local_addr(), "HTTP endpoint: /metrics /health /ready /ring.json /");
    Ok(server)
}

/// Bind the REQ-REP endpoint on `listen`; frames go to [`HostCore::handle_frame`].
fn serve_requests(core: &Arc<HostCore>, listen: &str) -> Result<Box<dyn Replier>> {
    let handler_core = core.clone();
    // The replier accepts frames up to twice the limit so that a
    // moderately oversize request gets a `too_large` error reply from
    // `handle_frame` instead of silence; beyond that the transport drops it.
    let replier_options = TransportOptions {
        max_message_bytes: core.transport_options.max_message_bytes.saturating_mul(2),
        ..core.transport_options.clone()
    };
    let fast_core = core.clone();
    core.secure
        .replier_with_fast_path(
            listen,
            Arc::new(move |frame: &[u8], peer: &Peer, queued: Duration| {
                handler_core.handle_frame(frame, &Origin::Network(peer.clone()), queued)
            }),
            Arc::new(move |frame: &[u8], peer: &Peer| {
                fast_core.handle_frame_fast(frame, &Origin::Network(peer.clone()))
            }),
            &replier_options,
        )
        .with_context(|| format!("cannot serve requests on {listen}"))
}

/// Bind the signal endpoint and run the thread that hands each signal to
/// the handlers of its topic, until the node stops.
fn start_signal_thread(core: &Arc<HostCore>, bind_signal: &str) -> Result<JoinHandle<()>> {
    let mut subscriber = core
        .secure
        .subscriber(
            &Endpoint::Bind(bind_signal.to_string()),
            &core.transport_options,
        )
        .with_context(|| format!("cannot bind signal endpoint {bind_signal}"))?;
    let signal_core = core.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while !signal_core.stopping() {
                match subscriber.recv_from(SHUTDOWN_POLL) {
                    Ok(Some((topic, payload, peer))) => {
                        signal_core.deliver_signal(&topic, &payload, &peer)
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("signal endpoint: {e}");
                        std::thread::sleep(SHUTDOWN_POLL);
                    }
                }
            }
        })
        .context("cannot spawn signal thread")
}

/// A started node.
pub struct Node {
    core: Arc<HostCore>,
    plugins: Vec<LoadedPlugin>,
    replier: Option<Box<dyn Replier>>,
    signal_thread: Option<JoinHandle<()>>,
    /// The operator's HTTP endpoint, when `http.listen` is set.
    http: Option<crate::http::Server>,
}

impl Node {
    pub fn core(&self) -> &Arc<HostCore> {
        &self.core
    }

    /// Where the HTTP endpoint listens, when it is on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr())
    }

    /// Open the store, build the transport, load the plugins, bind the
    /// endpoints, then start the plugins; any failure undoes what was done.
    pub fn start(config: &Config) -> Result<Node> {
        config.validate()?;
        let http_addr = config.http.address()?;
        let request_url = config.advertise_url();
        let signal_url = config.advertised_signal_url()?;
        let bind_signal = config.signal_url()?;
        let backends = open_backends(config)?;
        let secure =
            crate::security::node_layer(config, backends.transport, &request_url, &signal_url)?;
        let core = Arc::new(HostCore::new(config, secure.clone(), backends.store)?);
        if let Some(cache) = backends.cache {
            core.metrics().watch_record_cache(cache);
        }
        // Load every plugin before binding anything: a bad one stops start-up.
        let plugins = load_plugins(config)?;
        // The HTTP endpoint first: if anything below fails, dropping it stops it.
        let http = match http_addr {
            None => None,
            Some(addr) => Some(start_http(addr, &core)?),
        };
        let replier = serve_requests(&core, &config.node.listen)?;
        let signal_thread = start_signal_thread(&core, &bind_signal)?;
        if secure.is_insecure() {
            // Every start says it again, so nobody runs this way by accident.
            tracing::warn!("running INSECURE: plaintext frames; this ring is open to anyone who can reach its ports");
        }
        core.spawn_loop(
            "host",
            "revocations",
            REVOCATION_CHECK,
            Arc::new(move || {
                if let Err(e) = secure.refresh_revocations() {
                    tracing::error!("revocation list not applied: {e}");
                }
            }),
        );
        let node = Node {
            core: core.clone(),
            plugins: Vec::new(),
            replier: Some(replier),
            signal_thread: Some(signal_thread),
            http,
        };
        let node = node.start_plugins(plugins)?;
        tracing::info!(
            id = %format!("{:016x}", core.node_id), %request_url, %signal_url,
            transport = %config.transport.backend, storage = %config.storage.backend,
            plugins = node.plugins.len(), "gestor node started"
        );
        Ok(node)
    }

    /// Start the loaded plugins in order; the first that fails stops the
    /// node (and the plugins started before it).
    fn start_plugins(mut self, plugins: Vec<LoadedPlugin>) -> Result<Node> {
        for loaded in plugins {
            let ctx = PluginContext::new(self.core.clone() as Arc<dyn Host>, loaded.name.clone());
            if let Err(e) = loaded.plugin.start(ctx) {
                self.plugins.push(loaded);
                self.stop();
                return Err(anyhow!(e).context("plugin failed to start"));
            }
            self.core
                .plugin_names
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(loaded.name.clone());
            self.plugins.push(loaded);
        }
        Ok(self)
    }

    /// Stop plugins (newest first), loops, endpoints; flush the store.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.core.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        for loaded in self.plugins.iter().rev() {
            loaded.plugin.stop();
        }
        // Dropping the only sender wakes every loop at once.
        self.core
            .shutdown_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let loops: Vec<_> = self
            .core
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for handle in loops {
            let _ = handle.join();
        }
        if let Some(t) = self.signal_thread.take() {
            let _ = t.join();
        }
        // Until here /ready said `shutting down`.
        if let Some(mut http) = self.http.take() {
            http.stop();
        }
        self.replier.take();
        self.core
            .publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.core
            .requesters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if let Err(e) = self.core.store.flush() {
            tracing::error!("store flush at shutdown failed: {e}");
        }
        tracing::info!("gestor node stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The directory holding the running executable (cargo puts the plugins there).
pub fn default_plugin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the gestor executable")?;
    let dir = exe
        .parent()
        .map(|p| p.to_path_buf())
        .context("executable has no parent directory")?;
    // Test binaries live in target/<profile>/deps; plugins one level up.
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            return Ok(up.to_path_buf());
        }
    }
    Ok(dir)
}
