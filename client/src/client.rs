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
/// for it, when the client's timeout is longer. A killed gestor stays in
/// tables until the ring notices, and REQ sockets give no sign that the
/// peer is gone, so without this one stale route cost the whole timeout
/// before the request went to another gestor. It is above the longest a
/// live owner takes before it answers `busy` (a registration waits up to
/// 2 s for a hashing slot), so a slow owner is not mistaken for a dead
/// one and sent the request twice.
pub const OWNER_ATTEMPT: Duration = Duration::from_secs(3);

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

    fn call_once<T: DeserializeOwned>(
        &mut self,
        preferred: Option<&str>,
        frame: &[u8],
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
            let timeout = if preferred == Some(url.as_str()) {
                self.timeout.min(OWNER_ATTEMPT)
            } else {
                self.timeout
            };
            match self.send_to::<T>(&url, frame, timeout) {
                Ok((reply, answered_by)) => {
                    if !reply.initial_gestors.is_empty()
                        && reply.initial_gestors != self.initial_gestors
                    {
                        self.add_fallbacks(&reply.initial_gestors);
                        self.initial_gestors = reply.initial_gestors;
                    }
                    return match (reply.ok, reply.body, reply.error) {
                        (true, Some(body), _) => Ok(Answer { body, answered_by }),
                        // A `null` body: fine for kinds that answer nothing.
                        (true, None, _) => match Value::Null.deserialized::<T>() {
                            Ok(body) => Ok(Answer { body, answered_by }),
                            Err(e) => Err(ClientError::Malformed {
                                url,
                                reason: format!("reply body: {e}"),
                            }),
                        },
                        (false, _, error) => Err(ClientError::Remote(error.unwrap_or_else(|| {
                            HandlerError::internal("error reply without error")
                        }))),
                    };
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
