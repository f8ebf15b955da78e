//! Talking to gestores as a client: one request, with fallback.
//!
//! A client knows one or more gestor URLs. Every reply carries the current
//! list of initial gestors (seed §1), which the client keeps: when the gestor
//! it asked does not answer, it tries the others it knows, in order.
//! Every request goes through the secure layer: a gestor that cannot prove
//! admission to the trusted cluster gets nothing but a handshake's first
//! message — that holds for URLs learned from the initial-gestors list too.
//!
//! Per-user requests go in one hop (docs/PROTOCOL.md §10.1): the client
//! keeps the ring table (`ring.table`) and sends each one straight to the
//! username's owner, falling back to the other gestors. A reply naming
//! another gestor as responsible (the redirect hint) marks the table stale,
//! and the next per-user request fetches it again. An owner that does not
//! answer in time is pinged before the request goes elsewhere: an owner
//! that answers the ping is overloaded, and sending its requests round
//! through other gestores would only add their forwarding to its load.

use gestor_api::ring::{self, RingTable, MAX_TABLE};
use gestor_sdk::hash::ring_position;
use gestor_sdk::transport::{Requester, TransportOptions};
use gestor_sdk::wire::{from_cbor, peek_text, to_cbor, Reply, PROTOCOL_VERSION};
use gestor_sdk::{ErrorCode, HandlerError, Kind, TransportError, Value};
use gestor_secure::SecureLayer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A ring table is fetched again after this long even without a redirect
/// hint (writes' replies carry none).
const TABLE_MAX_AGE: Duration = Duration::from_secs(10);
/// Not more often than this, however stale: a ring that keeps changing
/// must not turn every request into two.
const TABLE_MIN_INTERVAL: Duration = Duration::from_millis(500);
/// The longest a request sent straight to the owner the table names waits
/// for it (less when the request's deadline is near: see `GO_ROUND_TIME`). A killed gestor stays in
/// tables until the ring notices, and REQ sockets give no sign that the
/// peer is gone, so without this one stale route cost the whole timeout
/// before the request went to another gestor. It is above the longest a
/// live owner usually takes before it answers `busy` (a registration waits
/// up to 1.5 s for a hashing slot; a request waits at most 1 s for a worker
/// by default). An owner silent for longer is pinged: one that answers is
/// slow, not gone, and gets the request again after a pause; only one that
/// does not is gone round.
pub const OWNER_ATTEMPT: Duration = Duration::from_secs(3);
/// How long an owner that did not answer in time gets to answer a
/// `node.ping`, which its transport's I/O thread answers even while every
/// request worker is taken. An answer means it is alive and only slow.
const PING_WAIT: Duration = Duration::from_secs(1);
/// What a request to the owner leaves of the time left, when it can: to
/// ping a silent owner ([`PING_WAIT`]) and to send to another gestor.
const GO_ROUND_TIME: Duration = Duration::from_secs(2);
/// A `busy` answer is not retried with less time than this left.
const LEAST_RETRY_WINDOW: Duration = Duration::from_millis(500);

/// How one-hop routing went for a client (tests and the bench read it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingStats {
    /// Answered by the owner the table named.
    pub direct: u64,
    /// Sent to the owner the table named, answered as responsible by
    /// another gestor: a redirect hint, the table was stale.
    pub redirected: u64,
    /// Sent to the owner the table named, which did not answer.
    pub owner_unreachable: u64,
    /// Sent to the owner the table named, which did not answer in time but
    /// answered a ping: retried there after a pause (as after `busy`), not
    /// sent to another gestor, which would only forward it to the same
    /// owner and hold a worker on both.
    pub owner_slow: u64,
    /// `ring.table` fetches.
    pub table_fetches: u64,
}

/// One-hop routing state.
#[derive(Default)]
struct Routes {
    table: Option<RingTable>,
    fetched: Option<Instant>,
    stale: bool,
    /// Owners that did not answer lately, and when: not tried first again
    /// until TABLE_MAX_AGE has passed (a table can name a crashed gestor
    /// until the ring notices).
    silent: HashMap<String, Instant>,
    stats: RoutingStats,
    /// The gestores do not serve `ring.table` (an older ring): route
    /// through them as before.
    unsupported: bool,
}

/// A reply envelope with its body decoded straight into `T` (one pass, no
/// intermediate CBOR value tree); `None` for a `null` body.
#[derive(Deserialize)]
struct ReplyOf<T> {
    ok: bool,
    #[serde(default = "none")]
    body: Option<T>,
    #[serde(default)]
    error: Option<HandlerError>,
    #[serde(default)]
    initial_gestors: Vec<String>,
}

fn none<T>() -> Option<T> {
    None
}

/// A reply frame as `ReplyOf<T>`. A frame that is a valid envelope whose
/// body is not a `T` is read again generically, so an error reply keeps
/// its error whatever its body, and a wrong successful body is reported as
/// such.
fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<ReplyOf<T>, String> {
    if let Ok(reply) = from_cbor::<ReplyOf<T>>(bytes) {
        return Ok(reply);
    }
    let reply = from_cbor::<Reply>(bytes)?;
    if reply.ok {
        let body = reply
            .body
            .deserialized()
            .map_err(|e| format!("reply body: {e}"))?;
        return Ok(ReplyOf {
            ok: true,
            body: Some(body),
            error: None,
            initial_gestors: reply.initial_gestors,
        });
    }
    Ok(ReplyOf {
        ok: false,
        body: None,
        error: reply.error,
        initial_gestors: reply.initial_gestors,
    })
}

/// A successful answer: the body, and the gestor it names as responsible.
struct Answer<T> {
    body: T,
    answered_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No gestor answered; lists what was tried.
    #[error("gestor unreachable: no reply from {tried}")]
    Unreachable { tried: String, last: TransportError },
    /// A gestor answered with an error reply.
    #[error("{0}")]
    Remote(HandlerError),
    #[error("malformed reply from {url}: {reason}")]
    Malformed { url: String, reason: String },
    // Transparent: the transport error is the whole message (not repeated as a cause).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

pub struct Client {
    secure: SecureLayer,
    /// The other side is a client endpoint (a chat peer), not a gestor.
    to_client_endpoint: bool,
    options: TransportOptions,
    /// Gestores to try, preferred first.
    gestores: Vec<String>,
    /// The newest initial-gestors list seen in a reply.
    initial_gestors: Vec<String>,
    timeout: Duration,
    requesters: HashMap<String, Box<dyn Requester>>,
    routes: Routes,
    /// How long the owner the table names gets before it is pinged.
    owner_attempt: Duration,
}

impl Client {
    pub fn new(secure: SecureLayer, gestores: Vec<String>, timeout: Duration) -> Self {
        Client {
            secure,
            to_client_endpoint: false,
            options: TransportOptions::default(),
            gestores,
            initial_gestors: Vec::new(),
            timeout,
            requesters: HashMap::new(),
            routes: Routes::default(),
            owner_attempt: OWNER_ATTEMPT,
        }
    }

    /// Wait `attempt` (default [`OWNER_ATTEMPT`]) for the owner the ring
    /// table names before pinging it to tell a slow owner from a dead one.
    pub fn with_owner_attempt(mut self, attempt: Duration) -> Self {
        self.owner_attempt = attempt;
        self
    }

    /// A client of another client's endpoint (a chat peer's receiver):
    /// sealed, but the peer need not hold a gestor credential.
    pub fn to_client_endpoint(secure: SecureLayer, url: String, timeout: Duration) -> Self {
        let mut c = Client::new(secure, vec![url], timeout);
        c.to_client_endpoint = true;
        c
    }

    pub fn initial_gestors(&self) -> &[String] {
        &self.initial_gestors
    }

    /// Learn initial gestors from elsewhere (e.g. a saved list).
    pub fn add_fallbacks(&mut self, urls: &[String]) {
        for u in urls {
            if !self.gestores.contains(u) {
                self.gestores.push(u.clone());
            }
        }
    }

    /// Send the typed kind `K` to the first gestor that answers.
    pub fn request<K: Kind>(&mut self, body: &K::Request) -> Result<K::Reply, ClientError> {
        Ok(self.call_via::<K::Reply>(None, K::NAME, body)?.body)
    }

    /// Send the per-user kind `K` for `username` straight to its owner when
    /// the ring table names one (else, or when it does not answer, to the
    /// first gestor that does), and learn from the reply whether the table
    /// is stale.
    pub fn request_for<K: Kind>(
        &mut self,
        username: &str,
        body: &K::Request,
    ) -> Result<K::Reply, ClientError> {
        let owner = self.owner_of(username);
        let reply = self.call_via::<K::Reply>(owner.as_deref(), K::NAME, body)?;
        if let Some(owner) = &owner {
            match reply.answered_by {
                Some(g) if g != *owner => {
                    self.routes.stats.redirected += 1;
                    self.routes.stale = true;
                }
                Some(_) => self.routes.stats.direct += 1,
                None => {}
            }
        }
        Ok(reply.body)
    }

    /// The owner of `username` in the ring table, fetching the table first
    /// when there is none, it is stale or old.
    fn owner_of(&mut self, username: &str) -> Option<String> {
        if self.to_client_endpoint || self.routes.unsupported {
            return None;
        }
        let age = self.routes.fetched.map(|t| t.elapsed());
        let due = match age {
            None => true,
            Some(age) => (self.routes.stale || age > TABLE_MAX_AGE) && age > TABLE_MIN_INTERVAL,
        };
        if due {
            self.refresh_table();
        }
        let key = ring_position(username.as_bytes());
        let owner = self.routes.table.as_ref()?.owner_of(key)?.addr.clone();
        (!self.silent_lately(&owner)).then_some(owner)
    }

    /// `url` did not answer a request, nor a ping, within TABLE_MAX_AGE.
    fn silent_lately(&self, url: &str) -> bool {
        self.routes
            .silent
            .get(url)
            .is_some_and(|t| t.elapsed() < TABLE_MAX_AGE)
    }

    /// How one-hop routing went so far.
    pub fn routing_stats(&self) -> RoutingStats {
        self.routes.stats
    }

    fn refresh_table(&mut self) {
        self.routes.fetched = Some(Instant::now());
        self.routes.stats.table_fetches += 1;
        self.routes
            .silent
            .retain(|_, t| t.elapsed() < TABLE_MAX_AGE);
        match self.call_via::<RingTable>(None, <ring::Table as Kind>::NAME, &Value::Null) {
            Ok(Answer { body: t, .. }) if t.members.len() <= MAX_TABLE => {
                self.routes.table = Some(t);
                self.routes.stale = false;
            }
            Ok(_) | Err(ClientError::Malformed { .. }) => self.routes.table = None,
            Err(ClientError::Remote(e)) if e.code == ErrorCode::UnknownKind => {
                self.routes.unsupported = true;
                self.routes.table = None;
            }
            // Unreachable now: keep what we had; the fallbacks still work.
            Err(_) => {}
        }
    }

    /// Send `kind` with an untyped `body` to the first gestor that answers
    /// (`gestor call`, and kinds this crate has no type for).
    /// A `busy` answer (the gestor's password-hashing slots are full) is
    /// retried with jittered, doubling backoff until the request deadline.
    pub fn call(&mut self, kind: &str, body: Value) -> Result<Value, ClientError> {
        Ok(self.call_via::<Value>(None, kind, &body)?.body)
    }

    /// [`Client::call`] with the reply body decoded as `T`, trying
    /// `preferred` first.
    fn call_via<T: DeserializeOwned>(
        &mut self,
        preferred: Option<&str>,
        kind: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<Answer<T>, ClientError> {
        // The envelope of `Request`, its body encoded straight from `body`.
        #[derive(Serialize)]
        struct RequestOf<'a, B: ?Sized> {
            v: u32,
            kind: &'a str,
            body: &'a B,
        }
        let frame = to_cbor(&RequestOf {
            v: PROTOCOL_VERSION,
            kind,
            body,
        });
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(50);
        // Once the preferred gestor has answered (`busy`, or a ping), it is
        // known to be up: later attempts need keep no time to go round it.
        let mut preferred_up = false;
        loop {
            match self.call_once(preferred, &frame, deadline, preferred_up) {
                Err(ClientError::Remote(e)) if e.code == gestor_sdk::ErrorCode::Busy => {
                    // Busy from it, or from another gestor after it went
                    // silent (then marked so, during this call).
                    preferred_up = preferred.is_some_and(|p| !self.silent_lately(p));
                    let jitter = Duration::from_millis(rand::random::<u64>() % 50);
                    // A retry with almost no time left would end in a
                    // timeout that hides the answer: the gestor is busy.
                    if Instant::now() + backoff + jitter + LEAST_RETRY_WINDOW >= deadline {
                        return Err(ClientError::Remote(e));
                    }
                    std::thread::sleep(backoff + jitter);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// One try of `frame`: the preferred gestor, then the others in order.
    /// The preferred one (the owner the table names) gets part of what is
    /// left until `deadline` (see `owner_timeout`); each other gestor gets
    /// the client's whole timeout, so that one dead gestor early in the
    /// list cannot leave the rest no time at all.
    fn call_once<T: DeserializeOwned>(
        &mut self,
        preferred: Option<&str>,
        frame: &[u8],
        deadline: Instant,
        preferred_up: bool,
    ) -> Result<Answer<T>, ClientError> {
        let mut tried = Vec::new();
        let mut last = TransportError::Closed;
        // The preferred gestor first, then the others in order; the list is
        // copied only when the first choice does not answer.
        let first = preferred.or(self.gestores.first().map(String::as_str));
        let Some(first) = first.map(str::to_string) else {
            return Err(ClientError::Unreachable {
                tried: String::new(),
                last,
            });
        };
        let mut rest: Option<std::vec::IntoIter<String>> = None;
        let mut next = Some(first.clone());
        while let Some(url) = next.take() {
            let to_owner = preferred == Some(url.as_str());
            let timeout = match to_owner {
                true => self.owner_timeout(deadline, preferred_up),
                false => self.timeout,
            };
            match self.send_to::<T>(&url, frame, timeout) {
                Ok((reply, answered_by)) => return self.answer(url, reply, answered_by),
                // A gestor that is not one of ours, or that runs in the other
                // security mode, is never a fallback to skip past quietly:
                // say so and stop.
                Err(ClientError::Transport(
                    e @ (TransportError::Untrusted { .. } | TransportError::OtherMode { .. }),
                )) => return Err(ClientError::Transport(e)),
                Err(ClientError::Transport(e)) => {
                    if to_owner {
                        if let Some(answer) = self.owner_silent(&url, &e, deadline) {
                            return Err(answer);
                        }
                    }
                    tried.push(url.clone());
                    last = e;
                }
                Err(other) => return Err(other),
            }
            let others = rest.get_or_insert_with(|| {
                let mut others = self.gestores.clone();
                others.retain(|u| *u != first);
                others.into_iter()
            });
            next = others.next();
        }
        Err(ClientError::Unreachable {
            tried: tried.join(", "),
            last,
        })
    }

    /// How long the owner the table names gets. One that may be gone must
    /// leave time to ping it and to go round it: GO_ROUND_TIME of what is
    /// left, or half when that is less. One that answered during this call
    /// (`busy`, or a ping) is up, and may take all of it.
    fn owner_timeout(&self, deadline: Instant, owner_up: bool) -> Duration {
        let left = deadline.saturating_duration_since(Instant::now());
        let for_owner = match owner_up {
            true => left,
            false => (left / 2).max(left.saturating_sub(GO_ROUND_TIME)),
        };
        for_owner.min(self.owner_attempt)
    }

    /// The owner at `url` did not answer (`e`): `Some(error)` to end the
    /// try with, or `None` to go round it. Slow or gone? Only a gone owner
    /// is worth going round: another gestor would forward to it.
    fn owner_silent(
        &mut self,
        url: &str,
        e: &TransportError,
        deadline: Instant,
    ) -> Option<ClientError> {
        if matches!(e, TransportError::Timeout { .. }) {
            match self.answers_ping(url, deadline) {
                Some(true) => {
                    self.routes.stats.owner_slow += 1;
                    return Some(ClientError::Remote(HandlerError::new(
                        ErrorCode::Busy,
                        format!("{url} owns the name and is up, but slow ({e})"),
                    )));
                }
                // No time left to tell: say what happened.
                None => return Some(ClientError::Transport(e.clone())),
                Some(false) => {}
            }
        }
        // The owner the table named is gone: refresh the table, and go
        // elsewhere until the ring notices.
        self.routes.stale = true;
        self.routes.stats.owner_unreachable += 1;
        self.routes.silent.insert(url.to_string(), Instant::now());
        None
    }

    /// A reply from `url` as the call's outcome; its initial-gestors list
    /// is kept.
    fn answer<T: DeserializeOwned>(
        &mut self,
        url: String,
        reply: ReplyOf<T>,
        answered_by: Option<String>,
    ) -> Result<Answer<T>, ClientError> {
        if !reply.initial_gestors.is_empty() && reply.initial_gestors != self.initial_gestors {
            self.add_fallbacks(&reply.initial_gestors);
            self.initial_gestors = reply.initial_gestors;
        }
        match (reply.ok, reply.body, reply.error) {
            (true, Some(body), _) => Ok(Answer { body, answered_by }),
            // A `null` body: fine for kinds that answer nothing.
            (true, None, _) => match Value::Null.deserialized::<T>() {
                Ok(body) => Ok(Answer { body, answered_by }),
                Err(e) => Err(ClientError::Malformed {
                    url,
                    reason: format!("reply body: {e}"),
                }),
            },
            (false, _, error) => {
                Err(ClientError::Remote(error.unwrap_or_else(|| {
                    HandlerError::internal("error reply without error")
                })))
            }
        }
    }

    /// Whether the gestor at `url` answers `node.ping` within [`PING_WAIT`]
    /// and half the time left before `deadline` (the other half is for
    /// another gestor); `None` when the deadline leaves no time to ask.
    fn answers_ping(&mut self, url: &str, deadline: Instant) -> Option<bool> {
        let wait = PING_WAIT.min(deadline.saturating_duration_since(Instant::now()) / 2);
        if wait < Duration::from_millis(10) {
            return None;
        }
        let frame = to_cbor(&gestor_sdk::wire::Request::new(
            <gestor_api::node::Ping as Kind>::NAME,
            Value::Null,
        ));
        Some(matches!(self.send_to::<Value>(url, &frame, wait), Ok((reply, _)) if reply.ok))
    }

    /// One request to `url`: its reply, and which gestor the body says
    /// answered as responsible (the redirect hint), read from the frame.
    fn send_to<T: DeserializeOwned>(
        &mut self,
        url: &str,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<(ReplyOf<T>, Option<String>), ClientError> {
        if !self.requesters.contains_key(url) {
            let r = if self.to_client_endpoint {
                self.secure.requester_to_client(url, &self.options)?
            } else {
                self.secure.requester(url, &self.options)?
            };
            self.requesters.insert(url.to_string(), r);
        }
        let requester = self.requesters.get_mut(url).ok_or(TransportError::Closed)?;
        match requester.request(frame, timeout) {
            Ok(bytes) => {
                let answered_by = peek_text(&bytes, &["body", "gestor"]).map(str::to_string);
                decode_reply(&bytes)
                    .map(|reply| (reply, answered_by))
                    .map_err(|reason| ClientError::Malformed {
                        url: url.into(),
                        reason,
                    })
            }
            Err(e) => {
                // A fresh socket next time rather than one in an unknown state.
                self.requesters.remove(url);
                Err(ClientError::Transport(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The owner-first routing against stand-in gestores on real nng
    //! sockets (insecure mode): enough of the protocol to serve a ring
    //! table, `node.ping` and `user.lookup`.
    use super::*;
    use gestor_api::node;
    use gestor_api::ring::PeerRef;
    use gestor_api::user::{self, Found, UserOnly};
    use gestor_sdk::wire::{decode_request, encode_reply, to_value};
    use gestor_secure::{Peer, SecureConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn free_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
    }

    fn layer(urls: Option<(&str, &str)>) -> SecureLayer {
        let config = match urls {
            Some((request, signal)) => SecureConfig::insecure().with_urls(request, signal),
            None => SecureConfig::insecure(),
        };
        SecureLayer::new(
            gestor_backends::build_transport(gestor_backends::TransportKind::Nng),
            config,
        )
    }

    /// A stand-in gestor at `url`: its table names `owner` as the owner of
    /// every key; it counts the lookups it serves, and makes the first
    /// one wait `first_delay`.
    struct StandIn {
        url: String,
        lookups: Arc<AtomicUsize>,
        _replier: Box<dyn gestor_sdk::Replier>,
    }

    impl StandIn {
        fn start(url: String, owner: &str, first_delay: Duration) -> StandIn {
            let signal = free_url();
            let lookups = Arc::new(AtomicUsize::new(0));
            let table = RingTable {
                members: vec![PeerRef {
                    id: u64::MAX,
                    addr: owner.to_string(),
                }],
                complete: true,
            };
            let here = url.clone();
            let served = Arc::clone(&lookups);
            let replier = layer(Some((&url, &signal)))
                .replier_with_fast_path(
                    &url,
                    Arc::new(move |frame: &[u8], _: &Peer, _queued| {
                        let kind = decode_request(frame).expect("request").kind;
                        assert_eq!(kind, <user::Lookup as Kind>::NAME);
                        if served.fetch_add(1, Ordering::SeqCst) == 0 {
                            std::thread::sleep(first_delay);
                        }
                        let found = Found {
                            user: "ana".into(),
                            address: "127.0.0.1:1".into(),
                            online: true,
                            last_seen_ms: 0,
                            last_update: Default::default(),
                            gestor: here.clone(),
                            signal: String::new(),
                            hops: 0,
                        };
                        encode_reply(&gestor_sdk::wire::Reply::ok(to_value(&found)), &[])
                    }),
                    Arc::new(move |frame: &[u8], _: &Peer| {
                        let kind = decode_request(frame).ok()?.kind;
                        let body = if kind == <node::Ping as Kind>::NAME {
                            to_value("pong")
                        } else if kind == <ring::Table as Kind>::NAME {
                            to_value(&table)
                        } else {
                            return None;
                        };
                        Some(encode_reply(&gestor_sdk::wire::Reply::ok(body), &[]))
                    }),
                    &TransportOptions::default(),
                )
                .expect("stand-in replier");
            StandIn {
                url,
                lookups,
                _replier: replier,
            }
        }

        fn lookups(&self) -> usize {
            self.lookups.load(Ordering::SeqCst)
        }
    }

    fn lookup(client: &mut Client) -> Result<Found, ClientError> {
        client.request_for::<user::Lookup>(
            "ana",
            &UserOnly {
                username: "ana".into(),
            },
        )
    }

    const ATTEMPT: Duration = Duration::from_millis(150);

    #[test]
    fn a_slow_owner_that_answers_a_ping_is_retried_not_gone_round() {
        let owner_url = free_url();
        let owner = StandIn::start(owner_url.clone(), &owner_url, ATTEMPT * 4);
        let other = StandIn::start(free_url(), &owner_url, Duration::ZERO);
        let mut client = Client::new(layer(None), vec![other.url.clone()], Duration::from_secs(5))
            .with_owner_attempt(ATTEMPT);
        let found = lookup(&mut client).expect("lookup through a slow owner");
        assert_eq!(found.gestor, owner_url, "answered by the owner");
        let stats = client.routing_stats();
        assert_eq!(stats.owner_slow, 1, "{stats:?}");
        assert_eq!(stats.owner_unreachable, 0, "{stats:?}");
        assert_eq!(
            other.lookups(),
            0,
            "never sent round through another gestor"
        );
        assert_eq!(owner.lookups(), 2, "the slow first try and its retry");
    }

    #[test]
    fn a_silent_owner_that_answers_no_ping_is_gone_round() {
        let gone = free_url();
        let other = StandIn::start(free_url(), &gone, Duration::ZERO);
        let mut client = Client::new(layer(None), vec![other.url.clone()], Duration::from_secs(5))
            .with_owner_attempt(ATTEMPT);
        let found = lookup(&mut client).expect("lookup with the owner gone");
        assert_eq!(found.gestor, other.url);
        let stats = client.routing_stats();
        assert_eq!(stats.owner_unreachable, 1, "{stats:?}");
        assert_eq!(stats.owner_slow, 0, "{stats:?}");
        assert_eq!(other.lookups(), 1);
    }
}
