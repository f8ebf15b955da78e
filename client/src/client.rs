//! Talking to gestores as a client: one request, with fallback.
//!
//! A client knows one or more gestor URLs. Every reply carries the current
//! list of initial gestors (seed §1), which the client keeps: when the gestor
//! it asked does not answer, it tries the others it knows, in order.
//! Every request goes through the secure layer: a gestor that cannot prove
//! admission to the trusted cluster gets nothing but a handshake's first
//! message — that holds for URLs learned from the initial-gestors list too.

use gestor_sdk::transport::{Requester, TransportOptions};
use gestor_sdk::wire::{from_cbor, to_cbor, to_value, Reply, Request};
use gestor_sdk::{HandlerError, Kind, TransportError, Value};
use gestor_secure::SecureLayer;
use std::collections::HashMap;
use std::time::Duration;

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

    /// Send `kind` with an untyped `body` to the first gestor that answers
    /// (`gestor call`, and kinds this crate has no type for).
    /// A `busy` answer (the gestor's password-hashing slots are full) is
    /// retried with jittered, doubling backoff until the request deadline.
    pub fn call(&mut self, kind: &str, body: Value) -> Result<Value, ClientError> {
        let frame = to_cbor(&Request::new(kind, body));
        let deadline = std::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.call_once(&frame) {
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

    fn call_once(&mut self, frame: &[u8]) -> Result<Value, ClientError> {
        let mut tried = Vec::new();
        let mut last = TransportError::Closed;
        let candidates: Vec<String> = self.gestores.clone();
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
