//! What a gestor counts for `/metrics` (Prometheus text format, through the
//! `prometheus-client` crate).
//!
//! Two kinds of numbers:
//!
//! * **Counted by the host as it works** ([`Metrics`]): every request
//!   dispatched to a plugin or answered by the host (`HostCore::dispatch`),
//!   by kind, origin and outcome, with its latency per kind; requests refused
//!   before they had a kind (malformed, too large, `busy` at the gestores'
//!   lane); signals received and dropped by topic; HTTP requests by path.
//!   Label values come from fixed sets only: a kind is labelled with its name
//!   if `gestor-api` declares it or a loaded plugin registered it (at most
//!   [`MAX_PLUGIN_KINDS`] of those), anything else a peer sends is
//!   `unknown`, so nothing from the network can grow the registry.
//! * **Read at scrape time** ([`encode_status`]): what `node.status` already
//!   reports — ring membership and lookup hops, records held, copies under
//!   target, mailbox items, the directory's password-hash slots, the secure
//!   layer's counters — turned into gauges and counters, never re-derived.

use crate::boundary::FlushMeter;
use crate::record_cache::CachedStore;
use gestor_api::node::{NodeStatus, SecurityStatus};
use gestor_api::status::{self, DirectoryStatus, MailboxStatus, ReplicaStatus, RingStatus};
use gestor_sdk::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Label for a kind nobody declared or registered (anything a peer made up).
pub const UNKNOWN: &str = "unknown";
/// Kinds registered by plugins but not declared in `gestor-api` (a
/// third-party plugin's own kinds) that get a label of their own; past this,
/// they are `unknown` too.
pub const MAX_PLUGIN_KINDS: usize = 256;

/// Request latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Who sent a request, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginLabel {
    /// A call from inside this process (`call_local`, or a request to itself).
    Local = 0,
    /// A network peer proving a gestor credential of this cluster.
    Gestor = 1,
    /// Any other network peer.
    Client = 2,
}

impl OriginLabel {
    fn as_str(self) -> &'static str {
        match self {
            OriginLabel::Local => "local",
            OriginLabel::Gestor => "gestor",
            OriginLabel::Client => "client",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    origin: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    topic: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FastPathLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    path: &'static str,
    code: &'static str,
}

/// Why a signal was not delivered.
#[derive(Debug, Clone, Copy)]
pub enum SignalDrop {
    /// A gestor topic sent by a non-gestor.
    Forbidden,
    /// Not CBOR.
    Malformed,
    /// No plugin registered a handler for its topic.
    Unhandled,
}

impl SignalDrop {
    fn as_str(self) -> &'static str {
        match self {
            SignalDrop::Forbidden => "forbidden",
            SignalDrop::Malformed => "malformed",
            SignalDrop::Unhandled => "unhandled",
        }
    }
}

type LatencyFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

/// One registered kind's successful-request counter per origin and its
/// latency histogram, kept beside its handler. A lookup makes several
/// local calls, and finding each one's counters by label (hashing the
/// labels under the family's lock) showed in its profile. Filled on first
/// use, so a kind that was never called still has no series in `/metrics`.
#[derive(Debug)]
pub struct KindMeter {
    kind: &'static str,
    /// Indexed by [`OriginLabel`].
    ok: [OnceLock<Counter>; 3],
    latency: OnceLock<Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The host's own counters: one per node, shared by every thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    signals_received: Family<TopicLabel, Counter>,
    signals_dropped: Family<DroppedLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    http_refused: Counter,
    fast_path: Family<FastPathLabels, Counter>,
    /// Every kind `gestor-api` declares.
    api_kinds: HashSet<&'static str>,
    /// Kinds registered by plugins that `gestor-api` does not declare,
    /// interned once each (bounded by [`MAX_PLUGIN_KINDS`]).
    plugin_kinds: RwLock<HashMap<String, &'static str>>,
    /// The record cache in front of the store, when it is on.
    record_cache: OnceLock<Arc<CachedStore>>,
    store_flushes: FlushMeter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gestor");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by kind, origin (client, gestor, local) and outcome (ok or the error code)",
            requests.clone(),
        );
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to handle a request, by kind (from dispatch to the reply value; local calls included)",
            latency.clone(),
        );
        let signals_received = Family::<TopicLabel, Counter>::default();
        registry.register(
            "signals_received",
            "Signals that reached the host (after the secure layer), by topic",
            signals_received.clone(),
        );
        let signals_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register(
            "signals_dropped",
            "Signals not delivered to any plugin, by topic and reason",
            signals_dropped.clone(),
        );
        let http = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests to this HTTP endpoint, by path and status code",
            http.clone(),
        );
        let http_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed unanswered because every HTTP worker and queue slot was taken",
            http_refused.clone(),
        );
        let fast_path = Family::<FastPathLabels, Counter>::default();
        registry.register(
            "fast_path_requests",
            "Requests of a fast-path kind tried on the transport's I/O thread, by kind and outcome \
             (served there, or deferred to a worker because they had to wait on another gestor)",
            fast_path.clone(),
        );
        let store_flushes = FlushMeter::default();
        registry.register(
            "store_flushes",
            "Flushes (durability requests) made of the store, by plugins and at shutdown; concurrent ones share one sync",
            store_flushes.flushes.clone(),
        );
        registry.register(
            "store_flush_seconds",
            "Total time spent waiting on store flushes, in seconds",
            store_flushes.seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            signals_received,
            signals_dropped,
            http,
            http_refused,
            fast_path,
            api_kinds: gestor_api::all().iter().map(|k| k.name).collect(),
            plugin_kinds: RwLock::new(HashMap::new()),
            record_cache: OnceLock::new(),
            store_flushes,
        }
    }

    /// Where the store plugins get ([`crate::boundary::GuardedStore`])
    /// counts its flushes.
    pub fn store_flushes(&self) -> FlushMeter {
        self.store_flushes.clone()
    }

    /// Report `cache`'s size, hits and misses with every scrape.
    pub fn watch_record_cache(&self, cache: Arc<CachedStore>) {
        let _ = self.record_cache.set(cache);
    }

    /// A plugin registered `kind`: give it a label of its own if
    /// `gestor-api` does not declare it already (and the bound allows).
    pub fn register_kind(&self, kind: &str) {
        if self.api_kinds.contains(kind) {
            return;
        }
        let mut kinds = self.plugin_kinds.write().unwrap_or_else(|p| p.into_inner());
        if kinds.len() >= MAX_PLUGIN_KINDS || kinds.contains_key(kind) {
            return;
        }
        // Leaked once per distinct kind, at most MAX_PLUGIN_KINDS times.
        let label: &'static str = Box::leak(kind.to_string().into_boxed_str());
        kinds.insert(kind.to_string(), label);
    }

    /// The label for `kind`: its name when declared or registered, else `unknown`.
    pub fn kind_label(&self, kind: &str) -> &'static str {
        if let Some(name) = self.api_kinds.get(kind) {
            return name;
        }
        self.plugin_kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .copied()
            .unwrap_or(UNKNOWN)
    }

    /// The counters of registered `kind`, resolved when they are first
    /// used and kept (see [`KindMeter`]).
    pub fn meter(&self, kind: &str) -> KindMeter {
        KindMeter {
            kind: self.kind_label(kind),
            ok: Default::default(),
            latency: OnceLock::new(),
        }
    }

    /// [`Self::request`] for a registered kind: a successful request
    /// costs no label lookup, only the first of each origin does.
    pub fn metered(
        &self,
        meter: &KindMeter,
        origin: OriginLabel,
        outcome: Option<ErrorCode>,
        elapsed: Duration,
    ) {
        let kind = meter.kind;
        match outcome {
            None => meter.ok[origin as usize]
                .get_or_init(|| self.requests_counter(kind, origin, None))
                .inc(),
            Some(_) => self.requests_counter(kind, origin, outcome).inc(),
        };
        meter
            .latency
            .get_or_init(|| self.latency.get_or_create(&KindLabel { kind }).clone())
            .observe(elapsed.as_secs_f64());
    }

    /// The `gestor_requests_total` series of `kind` from `origin` ending
    /// in `outcome` (`None` = ok).
    fn requests_counter(
        &self,
        kind: &'static str,
        origin: OriginLabel,
        outcome: Option<ErrorCode>,
    ) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                origin: origin.as_str(),
                outcome: outcome.map_or("ok", ErrorCode::as_str),
            })
            .clone()
    }

    /// One request of `kind` handled in `elapsed`, ending in `outcome`
    /// (`None` = ok).
    pub fn request(
        &self,
        kind: &str,
        origin: OriginLabel,
        outcome: Option<ErrorCode>,
        elapsed: Duration,
    ) {
        let kind = self.kind_label(kind);
        self.requests_counter(kind, origin, outcome).inc();
        self.latency
            .get_or_create(&KindLabel { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// A request of a fast-path kind was tried on the I/O thread:
    /// `served` there, or `deferred` to a worker.
    pub fn fast_path(&self, kind: &str, served: bool) {
        self.fast_path
            .get_or_create(&FastPathLabels {
                kind: self.kind_label(kind),
                outcome: if served { "served" } else { "deferred" },
            })
            .inc();
    }

    /// A request refused before its kind was known (malformed, too large,
    /// or `busy` at the gestores' lane).
    pub fn refused_frame(&self, origin: OriginLabel, outcome: ErrorCode) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: UNKNOWN,
                origin: origin.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    fn topic_label(topic: &str) -> &'static str {
        gestor_api::topics::ALL
            .iter()
            .find(|t| **t == topic)
            .copied()
            .unwrap_or(UNKNOWN)
    }

    pub fn signal_received(&self, topic: &str) {
        self.signals_received
            .get_or_create(&TopicLabel {
                topic: Self::topic_label(topic),
            })
            .inc();
    }

    pub fn signal_dropped(&self, topic: &str, why: SignalDrop) {
        self.signals_dropped
            .get_or_create(&DroppedLabels {
                topic: Self::topic_label(topic),
                reason: why.as_str(),
            })
            .inc();
    }

    /// One HTTP request; `path` must come from a fixed set.
    pub fn http_request(&self, path: &'static str, code: u16) {
        let code = match code {
            200 => "200",
            404 => "404",
            405 => "405",
            408 => "408",
            400 => "400",
            431 => "431",
            500 => "500",
            503 => "503",
            _ => "other",
        };
        self.http.get_or_create(&HttpLabels { path, code }).inc();
    }

    pub fn http_refused(&self) {
        self.http_refused.inc();
    }

    /// Encode the host's counters, then what `status` reports, in the
    /// Prometheus text format (version 0.0.4).
    pub fn encode(&self, status: &NodeStatus, ready: &Result<(), String>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(
            &mut out,
            &encode_status(status, ready),
        );
        if let Some(cache) = self.record_cache.get() {
            let (stats, mut r) = (cache.stats(), Registry::with_prefix("gestor"));
            gauge(
                &mut r,
                "record_cache_records",
                "User records held by the cache in front of the store (storage.cache_records)",
                stats.records as i64,
            );
            counter(
                &mut r,
                "record_cache_hits",
                "Store reads answered from the record cache",
                stats.hits,
            );
            counter(
                &mut r,
                "record_cache_misses",
                "Store reads the record cache passed to the store",
                stats.misses,
            );
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    id: String,
    address: String,
    transport: String,
    storage: String,
    mode: String,
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    r.register(name, help, ConstGauge::new(v));
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

/// The password-hash slots of the directory plugin, if it reports them.
fn hash_slots(d: &DirectoryStatus) -> Option<(u64, u64, u64, u64)> {
    (d.hash_slots > 0).then_some((d.hash_running, d.hash_waiting, d.hash_slots, d.hash_queue))
}

/// A registry, built for one scrape, of what `status` reports.
fn encode_status(s: &NodeStatus, ready: &Result<(), String>) -> Registry {
    let mut r = Registry::with_prefix("gestor");
    node_metrics(&mut r, s, ready);
    if let Some(ring) = s.section::<status::Ring>() {
        ring_metrics(&mut r, &ring);
    }
    if let Some(d) = s.section::<status::Directory>() {
        directory_metrics(&mut r, &d);
    }
    if let Some(rep) = s.section::<status::Replica>() {
        replica_metrics(&mut r, &rep);
    }
    if let Some(m) = s.section::<status::Mailbox>() {
        mailbox_metrics(&mut r, &m);
    }
    security_metrics(&mut r, &s.security);
    r
}

/// What every gestor reports: who it is, for how long, whether ready.
fn node_metrics(r: &mut Registry, s: &NodeStatus, ready: &Result<(), String>) {
    let info = Family::<InfoLabels, Gauge>::default();
    info.get_or_create(&InfoLabels {
        id: s.id_hex.clone(),
        address: s.address.clone(),
        transport: s.transport.clone(),
        storage: s.storage.clone(),
        mode: s.security.mode.clone(),
    })
    .set(1);
    r.register(
        "node_info",
        "This gestor: ring id, address, backends, security mode (always 1)",
        info,
    );
    gauge(
        r,
        "uptime_seconds",
        "Seconds since this gestor started",
        (s.uptime_ms / 1000) as i64,
    );
    gauge(
        r,
        "ready",
        "1 when /ready answers 200: joined to the ring and its range merged with its successor",
        i64::from(ready.is_ok()),
    );
    if let Some(n) = s.records.as_integer() {
        gauge(
            r,
            "records",
            "Records in this gestor's store (its own range and the copies it holds), tombstones included",
            i64::try_from(n).unwrap_or(i64::MAX),
        );
    }
    gauge(
        r,
        "initial_gestors",
        "Gestores on this gestor's initial-gestors list",
        s.initial_gestors.len() as i64,
    );
}

fn directory_metrics(r: &mut Registry, d: &DirectoryStatus) {
    gauge(
        r,
        "directory_alive_users",
        "Users whose alive signals this gestor is receiving",
        d.alive_users as i64,
    );
    if let Some((running, waiting, slots, queue)) = hash_slots(d) {
        gauge(
            r,
            "password_hash_running",
            "Password hashes being computed now",
            running as i64,
        );
        gauge(
            r,
            "password_hash_waiting",
            "Password hashes waiting for a slot",
            waiting as i64,
        );
        gauge(
            r,
            "password_hash_slots",
            "Password hashes computed at once at most (hash_slots)",
            slots as i64,
        );
        gauge(
            r,
            "password_hash_queue",
            "Password hashes that may wait for a slot; beyond, busy",
            queue as i64,
        );
        counter(
            r,
            "password_hash_busy",
            "Password operations answered busy: every slot and queue place was taken, or no shared machine slot freed in time",
            d.hash_busy,
        );
        gauge(
            r,
            "password_hash_machine_slots",
            "Hashing slots shared with the gestores of this machine (0 = not shared)",
            d.machine_slots as i64,
        );
        for (name, help, v) in [
            (
                "password_hash_machine_slots_taken",
                "Hashes that held a slot shared with the machine's gestores",
                d.machine_slots_taken,
            ),
            (
                "password_hash_machine_slots_missed",
                "Password operations answered busy because no shared slot freed in time",
                d.machine_slots_missed,
            ),
            (
                "password_hash_machine_slots_without",
                "Hashes run without a shared slot because its files could not be used",
                d.machine_slots_without,
            ),
        ] {
            counter(r, name, help, v);
        }
    }
}

fn security_metrics(r: &mut Registry, sec: &SecurityStatus) {
    gauge(
        r,
        "secure_sessions",
        "Secure-layer sessions open",
        sec.sessions as i64,
    );
    for (name, help, v) in [
        (
            "secure_handshakes",
            "Secure handshakes completed",
            sec.handshakes,
        ),
        (
            "secure_handshakes_refused",
            "Handshakes refused: invalid, foreign or revoked credentials",
            sec.handshakes_refused,
        ),
        (
            "secure_tampered_frames",
            "Sealed frames that failed authentication",
            sec.tampered,
        ),
        (
            "secure_replayed_frames",
            "Frames whose counter was already used or too old",
            sec.replayed,
        ),
        (
            "secure_unknown_session_frames",
            "Frames naming a session this gestor does not know",
            sec.unknown_session,
        ),
        (
            "secure_malformed_frames",
            "Frames that were not secure frames at all",
            sec.malformed_frames,
        ),
        (
            "forbidden_requests",
            "Requests refused forbidden (wrong class for the caller)",
            sec.forbidden_requests,
        ),
        (
            "forbidden_signals",
            "Gestor signals sent by non-gestores, dropped",
            sec.forbidden_signals,
        ),
        (
            "clients_turned_away",
            "Client requests answered busy because every worker clients may hold was taken",
            sec.clients_turned_away,
        ),
        (
            "clients_shed",
            "Client requests answered busy unrun: they had waited for a worker longer than transport.max_queue_wait_ms",
            sec.clients_shed,
        ),
    ] {
        counter(r, name, help, v);
    }
}

fn ring_metrics(r: &mut Registry, ring: &RingStatus) {
    gauge(
        r,
        "ring_joined",
        "1 when this gestor has joined a ring",
        i64::from(ring.joined),
    );
    gauge(
        r,
        "ring_successors",
        "Entries in this gestor's successor list",
        ring.successors.len() as i64,
    );
    gauge(
        r,
        "ring_virtual_nodes",
        "Positions (virtual nodes) this gestor holds on the ring",
        ring.virtual_nodes.len().max(1) as i64,
    );
    // Gestores by URL: with virtual nodes, lists name positions.
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for nb in &ring.virtual_nodes {
        known.insert(&nb.me.addr);
        known.extend(nb.successors.iter().map(|p| p.addr.as_str()));
        known.extend(nb.predecessor.iter().map(|p| p.addr.as_str()));
    }
    known.extend(ring.successors.iter().map(|p| p.addr.as_str()));
    known.extend(ring.predecessor.iter().map(|p| p.addr.as_str()));
    known.extend(ring.fingers.iter().map(|f| f.addr.as_str()));
    // Our own URL, when the status lists no virtual nodes.
    let own = usize::from(ring.virtual_nodes.is_empty());
    gauge(
        r,
        "ring_known_members",
        "Distinct gestores this one knows (itself, and the predecessors, successors and fingers of its positions): the ring size while the ring is no larger than the successor list plus one",
        (known.len() + own) as i64,
    );
    counter(
        r,
        "ring_lookups",
        "Key lookups this gestor resolved through the ring",
        ring.lookups,
    );
    counter(
        r,
        "ring_lookup_hops",
        "Routing hops (FindSuccessor requests to other gestores) of those lookups",
        ring.lookup_hops,
    );
    counter(
        r,
        "ring_timeouts_alive",
        "Requests to other gestores that timed out although the gestor then answered a ping (busy, not dead: not counted against it)",
        ring.timeouts_alive,
    );
    counter(
        r,
        "ring_gestors_dropped",
        "Gestores this one dropped from the ring as unreachable",
        ring.gestors_dropped,
    );
}

fn replica_metrics(r: &mut Registry, rep: &ReplicaStatus) {
    let st = &rep.stats;
    gauge(
        r,
        "replica_primary_records",
        "Live records of this gestor's own range, as of the last anti-entropy round",
        st.primary_records as i64,
    );
    gauge(
        r,
        "replica_records_under_target",
        "Live records of this gestor's range held by fewer gestores than wanted, as of the last round (copies under target)",
        st.under_replicated as i64,
    );
    gauge(
        r,
        "replica_wanted_holders",
        "Gestores that should hold each record of this range (owner included)",
        st.wanted_holders as i64,
    );
    gauge(
        r,
        "replica_confirmed_holders",
        "Copy holders that confirmed the last anti-entropy round (owner excluded)",
        st.confirmed_holders.len() as i64,
    );
    gauge(
        r,
        "replica_range_ready",
        "1 when this gestor has merged a range with its successor and serves it (with virtual nodes: every range)",
        i64::from(if rep.ranges > 0 {
            rep.ranges_ready == rep.ranges
        } else {
            rep.ready_range.is_some()
        }),
    );
    gauge(
        r,
        "replica_ranges",
        "Ranges (virtual nodes) of this gestor (0: not reported)",
        i64::from(rep.ranges),
    );
    gauge(
        r,
        "replica_ranges_ready",
        "Ranges merged with their first copy holder over their whole current extent",
        i64::from(rep.ranges_ready),
    );
    counter(r, "replica_rounds", "Anti-entropy rounds run", st.rounds);
    counter(r, "replica_purged", "Surplus copies dropped", st.purged);
}

fn mailbox_metrics(r: &mut Registry, m: &MailboxStatus) {
    gauge(
        r,
        "mailbox_items",
        "Mailbox items held (own mailboxes and copies)",
        m.held as i64,
    );
    gauge(
        r,
        "mailbox_watched_users",
        "Users whose presence chat clients watch here",
        m.watched_users as i64,
    );
    gauge(
        r,
        "mailbox_watchers",
        "Chat clients watching presence here",
        m.watchers as i64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use gestor_api::{user, Kind};

    #[test]
    fn unknown_kinds_do_not_grow_the_registry() {
        let m = Metrics::new();
        m.register_kind("echo.say");
        for i in 0..1000 {
            m.request(
                &format!("made.up.{i}"),
                OriginLabel::Client,
                Some(ErrorCode::UnknownKind),
                Duration::from_micros(5),
            );
        }
        m.request(
            user::Lookup::NAME,
            OriginLabel::Client,
            None,
            Duration::from_millis(2),
        );
        m.request(
            "echo.say",
            OriginLabel::Local,
            None,
            Duration::from_millis(2),
        );
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &m.registry).unwrap();
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(series("gestor_requests_total{"), 3, "{text}");
        assert_eq!(
            series("gestor_request_duration_seconds_count{"),
            3,
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");
        assert!(text.contains(
            r#"gestor_requests_total{kind="unknown",origin="client",outcome="unknown_kind"} 1000"#
        ));
        assert!(text.contains(r#"gestor_request_duration_seconds_count{kind="user.lookup"} 1"#));
        assert!(text.contains(r#"kind="echo.say""#));
    }

    #[test]
    fn plugin_kinds_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_PLUGIN_KINDS + 10) {
            m.register_kind(&format!("p.k{i}"));
        }
        assert_eq!(m.kind_label("p.k0"), "p.k0");
        assert_eq!(
            m.kind_label(&format!("p.k{}", MAX_PLUGIN_KINDS + 5)),
            UNKNOWN
        );
        assert_eq!(m.kind_label(user::Lookup::NAME), user::Lookup::NAME);
    }

    #[test]
    fn unknown_topics_are_bucketed() {
        let m = Metrics::new();
        m.signal_received(gestor_api::topics::ALIVE);
        m.signal_received("whatever-a-peer-says");
        m.signal_dropped("x", SignalDrop::Forbidden);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &m.registry).unwrap();
        let received = text
            .lines()
            .filter(|l| l.starts_with("gestor_signals_received_total{"))
            .count();
        assert_eq!(received, 2, "{text}");
        assert!(!text.contains("whatever"));
        assert!(
            text.contains(r#"gestor_signals_dropped_total{topic="unknown",reason="forbidden"} 1"#)
        );
    }
}
