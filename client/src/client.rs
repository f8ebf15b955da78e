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
//! and the next per-user request fetches it again.

use gestor_api::ring::{self, RingTable, MAX_TABLE};
use gestor_sdk::hash::ring_position;
use gestor_sdk::transport::{Requester, TransportOptions};
use gestor_sdk::wire::{from_cbor, to_cbor, to_value, Reply, Request};
use gestor_sdk::{ErrorCode, HandlerError, Kind, TransportError, Value};
use gestor_secure::SecureLayer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A ring table is fetched again after this long even without a redirect
/// hint (writes' replies carry none).
const TABLE_MAX_AGE: Duration = Duration::from_secs(10);
/// Not more often than this, however stale: a ring that keeps changing
/// must not turn every request into two.
const TABLE_MIN_INTERVAL: Duration = Duration::from_millis(500);

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
        }
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
        let reply = self.call(K::NAME, to_value(body))?;
        reply.deserialized().map_err(|e| ClientError::Malformed {
            url: "reply body".into(),
            reason: e.to_string(),
        })
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
        let reply = self.call_via(owner.as_deref(), K::NAME, to_value(body))?;
        if let Some(owner) = &owner {
            let answered_by = reply
                .as_map()
                .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("gestor")))
                .and_then(|(_, v)| v.as_text());
            match answered_by {
                Some(g) if g != owner => {
                    self.routes.stats.redirected += 1;
                    self.routes.stale = true;
                }
                Some(_) => self.routes.stats.direct += 1,
                None => {}
            }
        }
        reply.deserialized().map_err(|e| ClientError::Malformed {
            url: "reply body".into(),
            reason: e.to_string(),
        })
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
        let silent_lately = self
            .routes
            .silent
            .get(&owner)
            .is_some_and(|t| t.elapsed() < TABLE_MAX_AGE);
        (!silent_lately).then_some(owner)
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
        match self.call(<ring::Table as Kind>::NAME, Value::Null) {
            Ok(v) => match v.deserialized::<RingTable>() {
                Ok(t) if t.members.len() <= MAX_TABLE => {
                    self.routes.table = Some(t);
                    self.routes.stale = false;
                }
                _ => self.routes.table = None,
            },
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
        self.call_via(None, kind, body)
    }

    /// [`Client::call`], trying `preferred` first.
    fn call_via(
        &mut self,
        preferred: Option<&str>,
        kind: &str,
        body: Value,
    ) -> Result<Value, ClientError> {
        let frame = to_cbor(&Request::new(kind, body));
        let deadline = std::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.call_once(preferred, &frame) {
                Err(ClientError::Remote(e)) if e.code == gestor_sdk::ErrorCode::Busy => {
                    let jitter = Duration::from_millis(rand::random::<u64>() % 50);
                    if std::time::Instant::now() + backoff + jitter >= deadline {
                        return Err(ClientError::Remote(e));
                    }
                    std::thread::sleep(backoff + jitter);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    fn call_once(&mut self, preferred: Option<&str>, frame: &[u8]) -> Result<Value, ClientError> {
        let mut tried = Vec::new();
        let mut last = TransportError::Closed;
        let mut candidates: Vec<String> = self.gestores.clone();
        if let Some(p) = preferred {
            candidates.retain(|u| u != p);
            candidates.insert(0, p.to_string());
        }
        for url in candidates {
            match self.send_to(&url, frame) {
                Ok(reply) => {
                    if !reply.initial_gestors.is_empty() {
                        self.initial_gestors = reply.initial_gestors.clone();
                        self.add_fallbacks(&reply.initial_gestors.clone());
                    }
                    return reply.into_result().map_err(ClientError::Remote);
                }
                // A gestor that is not one of ours, or that runs in the other
                // security mode, is never a fallback to skip past quietly:
                // say so and stop.
                Err(ClientError::Transport(
                    e @ (TransportError::Untrusted { .. } | TransportError::OtherMode { .. }),
                )) => return Err(ClientError::Transport(e)),
                Err(ClientError::Transport(e)) => {
                    if preferred == Some(url.as_str()) {
                        // The owner the table named is gone: refresh the
                        // table, and go elsewhere until the ring notices.
                        self.routes.stale = true;
                        self.routes.stats.owner_unreachable += 1;
                        self.routes.silent.insert(url.clone(), Instant::now());
                    }
                    tried.push(url.clone());
                    last = e;
                }
                Err(other) => return Err(other),
            }
        }
        Err(ClientError::Unreachable {
            tried: tried.join(", "),
            last,
        })
    }

    fn send_to(&mut self, url: &str, frame: &[u8]) -> Result<Reply, ClientError> {
        if !self.requesters.contains_key(url) {
            let r = if self.to_client_endpoint {
                self.secure.requester_to_client(url, &self.options)?
            } else {
                self.secure.requester(url, &self.options)?
            };
            self.requesters.insert(url.to_string(), r);
        }
        let requester = self.requesters.get_mut(url).ok_or(TransportError::Closed)?;
        match requester.request(frame, self.timeout) {
            Ok(bytes) => from_cbor::<Reply>(&bytes).map_err(|reason| ClientError::Malformed {
                url: url.into(),
                reason,
            }),
            Err(e) => {
                // A fresh socket next time rather than one in an unknown state.
                self.requesters.remove(url);
                Err(ClientError::Transport(e))
            }
        }
    }
}
