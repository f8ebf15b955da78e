//! The transport contract: REQ-REP for requests, PUB-SUB for signals.
//!
//! Backends (nng, ZeroMQ) implement [`Transport`]; the host owns every socket
//! and plugins never see one. Both backends must give the same semantics, and
//! the conformance suite in `tests/` checks them with the same code:
//!
//! * **REQ-REP.** A [`Replier`] serves many requesters concurrently on a pool
//!   of `replier_workers` threads, so a slow handler does not hold up the
//!   others. A [`Requester`] has one request outstanding at a time, fails with
//!   [`TransportError::Timeout`] when no reply comes by the deadline, and
//!   recovers by itself once the peer is back. Requests may be retried by the
//!   library after a reconnect, so handlers must be idempotent. A backend
//!   with an I/O thread first offers each request to
//!   [`RequestHandler::triage`] there: a request answered at once skips the
//!   hand-off to a worker and back (see [`Triage`]). A request it hands on
//!   waits in a bounded queue the backend owns, and its continuation is told
//!   how long it waited, so a server can turn away work its requester has
//!   probably given up on instead of doing it late. A backend keeps two
//!   such queues and serves [`Triage::Urgent`] requests before
//!   [`Triage::Continue`] ones.
//! * **PUB-SUB.** A message is one frame: `topic ++ 0x00 ++ payload`.
//!   Subscribers filter on a topic prefix. Either side may bind. Publishing
//!   never blocks: messages to a slow or absent subscriber are dropped.
//! * **Limits.** Messages larger than `max_message_bytes` are refused with
//!   [`TransportError::TooLarge`] on send and dropped on receive.
//!
//! Addresses are URLs: `tcp://host:port`, `ipc:///path`, `inproc://name`.

use crate::error::TransportError;
use std::sync::Arc;
use std::time::Duration;

/// Serves one request: bytes in, bytes out. Must not panic (the host wraps
/// plugin code so it cannot), and must be idempotent.
pub trait RequestHandler: Send + Sync {
    fn handle(&self, request: &[u8]) -> Vec<u8>;

    /// Like [`handle`](Self::handle), told the network source of the request
    /// (the peer's IP address, without port) when the backend knows it.
    /// Backends call this one; the default ignores the source.
    fn handle_from(&self, request: &[u8], source: Option<&str>) -> Vec<u8> {
        let _ = source;
        self.handle(request)
    }

    /// Called on the backend's I/O thread, where nothing may wait: answer
    /// now if that needs no waiting, or say how a worker should. The
    /// default sends everything to a worker.
    fn triage(&self, request: &[u8], source: Option<&str>) -> Triage {
        let _ = (request, source);
        Triage::Worker
    }
}

/// What [`RequestHandler::triage`] decided.
pub enum Triage {
    /// The reply, made on the I/O thread.
    Reply(Vec<u8>),
    /// A worker runs [`RequestHandler::handle_from`] on the request.
    Worker,
    /// A worker runs this instead: triage already consumed the request
    /// (say, decrypted it) and left the rest of the work here. It is given
    /// how long the request waited between triage and the worker.
    Continue(Continuation),
    /// Like [`Triage::Continue`], but served before every `Continue` still
    /// waiting: for requests that other servers are waiting on (a gestor's
    /// from other gestores), so that one busy server's backlog of client
    /// work does not make its peers time out and take it for dead.
    Urgent(Continuation),
}

/// The rest of a request's work after triage, run by a worker with how
/// long the request waited for it.
pub type Continuation = Box<dyn FnOnce(Duration) -> Vec<u8> + Send>;

impl std::fmt::Debug for Triage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Triage::Reply(r) => write!(f, "Reply({} bytes)", r.len()),
            Triage::Worker => f.write_str("Worker"),
            Triage::Continue(_) => f.write_str("Continue(..)"),
            Triage::Urgent(_) => f.write_str("Urgent(..)"),
        }
    }
}

impl<F> RequestHandler for F
where
    F: Fn(&[u8]) -> Vec<u8> + Send + Sync,
{
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        self(request)
    }
}

/// Which side of a connection a socket takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Listen on the URL.
    Bind(String),
    /// Connect to the URL (reconnecting in the background).
    Dial(String),
}

impl Endpoint {
    pub fn url(&self) -> &str {
        match self {
            Endpoint::Bind(u) | Endpoint::Dial(u) => u,
        }
    }
}

/// Requests a replier takes in and holds for its workers, per worker,
/// beyond those being served: the bound of its queue. A backend does not
/// read more while it is full.
pub const QUEUED_PER_WORKER: usize = 64;

/// Tunables shared by both backends.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Threads serving requests on one replier.
    pub replier_workers: usize,
    /// Messages queued per subscriber or publisher before new ones are dropped.
    pub queue_depth: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_message_bytes: 4 * 1024 * 1024,
            replier_workers: 8,
            queue_depth: 1024,
        }
    }
}

/// The topic separator in a PUB-SUB frame.
pub const TOPIC_SEPARATOR: u8 = 0;

/// Build the single PUB-SUB frame for `topic` and `payload`.
pub fn encode_signal(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(topic.len() + 1 + payload.len());
    frame.extend_from_slice(topic);
    frame.push(TOPIC_SEPARATOR);
    frame.extend_from_slice(payload);
    frame
}

/// Split a PUB-SUB frame into topic and payload; `None` when it has no separator.
pub fn decode_signal(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = frame.iter().position(|b| *b == TOPIC_SEPARATOR)?;
    Some((&frame[..at], &frame[at + 1..]))
}

/// A backend: a factory of sockets.
pub trait Transport: Send + Sync {
    /// Short backend name (`"nng"`, `"zmq"`), used in logs and test names.
    fn name(&self) -> &'static str;

    /// Bind `url` and serve requests with `handler` until the replier is dropped.
    fn replier(
        &self,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError>;

    /// A requester connected (lazily, reconnecting) to `url`.
    fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError>;

    fn publisher(
        &self,
        endpoint: &Endpoint,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError>;

    /// A subscriber receiving every message whose topic starts with one of `prefixes`.
    fn subscriber(
        &self,
        endpoint: &Endpoint,
        prefixes: &[&[u8]],
        options: &TransportOptions,
    ) -> Result<Box<dyn Subscriber>, TransportError>;
}

/// A bound, serving REP endpoint. Dropping it stops its threads and unbinds.
pub trait Replier: Send {
    /// The URL it is bound to.
    fn url(&self) -> &str;
}

/// One outstanding request at a time; use several for concurrency.
pub trait Requester: Send {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError>;
    fn url(&self) -> &str;
}

pub trait Publisher: Send {
    /// Queue `payload` under `topic`; never blocks on subscribers.
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError>;
}

/// A received signal: `(topic, payload)`.
pub type Signal = (Vec<u8>, Vec<u8>);

pub trait Subscriber: Send {
    /// The next matching message as `(topic, payload)`, or `None` after `timeout`.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Signal>, TransportError>;
}
