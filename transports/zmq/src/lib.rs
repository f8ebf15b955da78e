//! # gestor-transport-zmq — the ZeroMQ backend of the gestor transport contract
//!
//! Implements [`gestor_sdk::Transport`] on libzmq (vendored through the `zmq`
//! crate). A [`ZmqTransport`] owns one `zmq::Context`, shared by every socket
//! it creates, so `inproc://` endpoints work between sockets of the same
//! transport instance.
//!
//! ## REQ-REP
//!
//! A `zmq::Socket` is `Send` but not `Sync`, so each socket is owned by
//! exactly one thread. A [`Replier`] is:
//!
//! * one **I/O thread** owning a bound ROUTER socket and an `inproc` PULL
//!   socket; it polls both (100 ms timeout, to notice shutdown). A request
//!   arriving on the ROUTER (routing envelope + empty delimiter + body) is
//!   first offered to [`RequestHandler::triage`] there: a reply made at
//!   once goes straight back out on the ROUTER; anything else is handed to
//!   the worker pool through one of two bounded channels, the urgent one
//!   ([`Triage::Urgent`]) emptied first, with the time it was queued (a
//!   continuation is told how long it waited). A reply arriving on the
//!   PULL (the same envelope + reply body) is forwarded to the ROUTER, which
//!   routes it back to the right requester.
//! * `replier_workers` **worker threads**, each owning a PUSH socket connected
//!   to that PULL. A worker takes a request from the channels (blocking
//!   until one comes or the I/O thread exits), runs the handler and pushes
//!   the reply.
//!
//! So a slow handler occupies only its worker. Dropping the replier sets a
//! stop flag and joins every thread; the ROUTER is unbound and closed with
//! `LINGER 0`.
//!
//! A [`Requester`] is a REQ socket with `REQ_RELAXED` + `REQ_CORRELATE`, so
//! after a timeout the same socket may send again and a late reply to the
//! old request is discarded. `connect` is asynchronous and zmq reconnects by
//! itself; a request queued while the peer is down is delivered when it
//! comes back (hence handlers must be idempotent).
//!
//! ## PUB-SUB
//!
//! A signal is one frame `topic ++ 0x00 ++ payload`; SUB filters by the raw
//! prefix bytes of that frame. PUB uses `SNDHWM = queue_depth` and sends with
//! `DONTWAIT`: at the high-water mark zmq drops, so publishing never blocks.
//! Multipart messages and frames without a separator are skipped.
//!
//! ## Limits
//!
//! Sends over `max_message_bytes` fail with `TooLarge` before touching the
//! socket. On receive, bound sockets set `MAXMSGSIZE`, so zmq disconnects a
//! peer that sends a bigger frame (the peer reconnects). Dialing sockets
//! (REQ, dialing SUB) cannot: libzmq never reconnects a connecting socket
//! after a `MAXMSGSIZE` violation, so they receive the frame and discard it
//! in `request`/`recv` instead — the limit holds for the application, but
//! such a frame is buffered in memory once.

use crossbeam_channel::{Receiver, Sender};
use gestor_sdk::transport::{decode_signal, encode_signal, Continuation, QUEUED_PER_WORKER};
use gestor_sdk::{
    Endpoint, Publisher, Replier, RequestHandler, Requester, Subscriber, Transport, TransportError,
    TransportOptions, Triage,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BACKEND: &str = "zmq";
/// How often the replier's I/O thread looks at the stop flag, in ms (its
/// exit then wakes the workers).
const SHUTDOWN_POLL_MS: i64 = 100;
const DRAIN_BATCH: usize = 256;
/// Quick reconnects so a restarted peer is found again within a request timeout.
const RECONNECT_IVL_MS: i32 = 50;
const RECONNECT_IVL_MAX_MS: i32 = 500;

/// Names the internal inproc reply channel of each replier uniquely.
static REPLIER_SEQ: AtomicU64 = AtomicU64::new(0);
/// Names the inproc endpoint of each listener's close monitor uniquely.
static MONITOR_SEQ: AtomicU64 = AtomicU64::new(0);

/// The ZeroMQ backend: a factory of sockets sharing one `zmq::Context`.
#[derive(Clone)]
pub struct ZmqTransport {
    ctx: zmq::Context,
}

impl ZmqTransport {
    pub fn new() -> Self {
        ZmqTransport {
            ctx: zmq::Context::new(),
        }
    }
}

impl Default for ZmqTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ZmqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqTransport").finish_non_exhaustive()
    }
}

fn backend(context: &str, e: zmq::Error) -> TransportError {
    TransportError::Backend {
        backend: BACKEND,
        reason: format!("{context}: {e}"),
    }
}

fn timeout_error(url: &str, timeout: Duration) -> TransportError {
    TransportError::Timeout {
        url: url.to_string(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn is_address_error(e: zmq::Error) -> bool {
    matches!(
        e,
        zmq::Error::EINVAL
            | zmq::Error::EPROTONOSUPPORT
            | zmq::Error::ENOCOMPATPROTO
            | zmq::Error::ENODEV
            | zmq::Error::ENAMETOOLONG
    )
}

/// libzmq takes endpoints as C strings, and the `zmq` crate panics on an
/// interior NUL: such a URL (from a peer's reply, say) is refused here.
fn no_nul(url: &str) -> Result<(), TransportError> {
    if url.contains('\0') {
        return Err(TransportError::BadAddress {
            url: url.to_string(),
            reason: "a NUL byte in the address".into(),
        });
    }
    Ok(())
}

fn bind(socket: &zmq::Socket, url: &str) -> Result<(), TransportError> {
    no_nul(url)?;
    socket.bind(url).map_err(|e| {
        if is_address_error(e) {
            TransportError::BadAddress {
                url: url.to_string(),
                reason: e.to_string(),
            }
        } else {
            TransportError::Bind {
                url: url.to_string(),
                reason: e.to_string(),
            }
        }
    })
}

/// Asynchronous: succeeds with nobody listening; zmq keeps reconnecting.
fn connect(socket: &zmq::Socket, url: &str) -> Result<(), TransportError> {
    no_nul(url)?;
    socket.connect(url).map_err(|e| {
        if is_address_error(e) {
            TransportError::BadAddress {
                url: url.to_string(),
                reason: e.to_string(),
            }
        } else {
            backend(&format!("connect {url}"), e)
        }
    })
}

fn attach(socket: &zmq::Socket, endpoint: &Endpoint) -> Result<(), TransportError> {
    match endpoint {
        Endpoint::Bind(url) => bind(socket, url),
        Endpoint::Dial(url) => connect(socket, url),
    }
}

/// A bound address, and a monitor on its socket that reports when the
/// listener is really closed. zmq tears listeners down asynchronously; the
/// monitor lets `release` wait for that, so the same URL can be bound again
/// as soon as the owner has been dropped.
struct Listener {
    url: String,
    monitor: Option<zmq::Socket>,
}

/// Upper bound on waiting for a listener to close; normally well under 1 ms.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

impl Listener {
    fn new(ctx: &zmq::Context, socket: &zmq::Socket, url: &str) -> Listener {
        // Only network listeners hold an OS resource worth waiting for.
        let monitor = if url.starts_with("tcp://") || url.starts_with("ipc://") {
            match watch_close(ctx, socket) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::debug!(%url, error = %e, "zmq: no close monitor; unbind is async");
                    None
                }
            }
        } else {
            None
        };
        Listener {
            url: url.to_string(),
            monitor,
        }
    }

    /// Unbind and wait (bounded) until zmq reports the listener closed.
    fn release(&self, socket: &zmq::Socket) {
        if let Err(e) = socket.unbind(&self.url) {
            tracing::debug!(url = %self.url, error = %e, "zmq: unbind failed");
            return;
        }
        let Some(monitor) = &self.monitor else { return };
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match monitor.poll(zmq::POLLIN, ms(remaining)) {
                Ok(n) if n > 0 => {}
                Err(zmq::Error::EINTR) => continue,
                _ => break,
            }
            // An event is two frames: u16 event id + u32 value, then the address.
            match monitor.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => {
                    let id = parts
                        .first()
                        .and_then(|f| f.get(..2))
                        .map(|b| u16::from_le_bytes([b[0], b[1]]));
                    if id == Some(zmq::SocketEvent::CLOSED.to_raw()) {
                        return;
                    }
                }
                Err(zmq::Error::EAGAIN) => {}
                Err(_) => break,
            }
        }
        tracing::debug!(url = %self.url, "zmq: listener close not confirmed in time");
    }
}

fn watch_close(ctx: &zmq::Context, socket: &zmq::Socket) -> Result<zmq::Socket, zmq::Error> {
    let endpoint = format!(
        "inproc://gestor-zmq-monitor-{}",
        MONITOR_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    socket.monitor(&endpoint, zmq::SocketEvent::CLOSED.to_raw() as i32)?;
    let pair = ctx.socket(zmq::PAIR)?;
    pair.set_linger(0)?;
    pair.connect(&endpoint)?;
    Ok(pair)
}

/// `attach`, keeping a [`Listener`] when the endpoint binds.
fn attach_listening(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    endpoint: &Endpoint,
) -> Result<Option<Listener>, TransportError> {
    attach(socket, endpoint)?;
    Ok(match endpoint {
        Endpoint::Bind(url) => Some(Listener::new(ctx, socket, url)),
        Endpoint::Dial(_) => None,
    })
}

/// libzmq (4.3) treats a frame over MAXMSGSIZE as a protocol error, and a
/// *connecting* socket never reconnects after one: the link would be dead
/// for good. So sockets that dial do not set MAXMSGSIZE; they receive the
/// frame and drop it themselves (see `recv`/`request`), keeping the link.
/// Bound sockets keep MAXMSGSIZE: the offending connection is closed and
/// the remote dialer, seeing a plain disconnect, reconnects.
fn dialing_without_size_cap(socket: &zmq::Socket) -> Result<(), TransportError> {
    socket
        .set_maxmsgsize(-1)
        .map_err(|e| backend("set MAXMSGSIZE", e))
}

fn hwm(queue_depth: usize) -> i32 {
    i32::try_from(queue_depth.max(1)).unwrap_or(i32::MAX)
}

/// Whole milliseconds, rounded up so a poll never returns early and spins.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

impl ZmqTransport {
    /// A socket with the options every gestor socket shares.
    fn socket(
        &self,
        kind: zmq::SocketType,
        options: &TransportOptions,
    ) -> Result<zmq::Socket, TransportError> {
        let s = self
            .ctx
            .socket(kind)
            .map_err(|e| backend("open socket", e))?;
        // Never let unsent messages hold up close or context teardown.
        s.set_linger(0).map_err(|e| backend("set LINGER", e))?;
        s.set_maxmsgsize(i64::try_from(options.max_message_bytes).unwrap_or(i64::MAX))
            .map_err(|e| backend("set MAXMSGSIZE", e))?;
        s.set_reconnect_ivl(RECONNECT_IVL_MS)
            .map_err(|e| backend("set RECONNECT_IVL", e))?;
        s.set_reconnect_ivl_max(RECONNECT_IVL_MAX_MS)
            .map_err(|e| backend("set RECONNECT_IVL_MAX", e))?;
        Ok(s)
    }
}

impl Transport for ZmqTransport {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn replier(
        &self,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        ZmqReplier::start(self, url, handler, options).map(|r| Box::new(r) as Box<dyn Replier>)
    }

    fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        let socket = self.socket(zmq::REQ, options)?;
        socket
            .set_req_relaxed(true)
            .map_err(|e| backend("set REQ_RELAXED", e))?;
        socket
            .set_req_correlate(true)
            .map_err(|e| backend("set REQ_CORRELATE", e))?;
        dialing_without_size_cap(&socket)?;
        connect(&socket, url)?;
        Ok(Box::new(ZmqRequester {
            socket,
            url: url.to_string(),
            max: options.max_message_bytes,
        }))
    }

    fn publisher(
        &self,
        endpoint: &Endpoint,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        let socket = self.socket(zmq::PUB, options)?;
        socket
            .set_sndhwm(hwm(options.queue_depth))
            .map_err(|e| backend("set SNDHWM", e))?;
        let listener = attach_listening(&self.ctx, &socket, endpoint)?;
        Ok(Box::new(ZmqPublisher {
            socket,
            listener,
            max: options.max_message_bytes,
        }))
    }

    fn subscriber(
        &self,
        endpoint: &Endpoint,
        prefixes: &[&[u8]],
        options: &TransportOptions,
    ) -> Result<Box<dyn Subscriber>, TransportError> {
        let socket = self.socket(zmq::SUB, options)?;
        socket
            .set_rcvhwm(hwm(options.queue_depth))
            .map_err(|e| backend("set RCVHWM", e))?;
        for prefix in prefixes {
            socket
                .set_subscribe(prefix)
                .map_err(|e| backend("subscribe", e))?;
        }
        if matches!(endpoint, Endpoint::Dial(_)) {
            dialing_without_size_cap(&socket)?;
        }
        let listener = attach_listening(&self.ctx, &socket, endpoint)?;
        Ok(Box::new(ZmqSubscriber {
            socket,
            listener,
            max: options.max_message_bytes,
        }))
    }
}

// ---------------------------------------------------------------- replier

/// A request as received by the ROUTER: the routing envelope (up to and
/// including the empty delimiter) and the body.
struct Job {
    envelope: Vec<Vec<u8>>,
    work: Work,
    /// When triage handed it on: a continuation is told how long it queued.
    queued_at: Instant,
    /// Served before every job that is not ([`Triage::Urgent`]).
    urgent: bool,
}

/// The workers' two queues, each bounded so a flood of requests cannot
/// grow memory without limit (the I/O thread drops a request when its
/// queue is full). Workers take from `urgent` first.
#[derive(Clone)]
struct Queues<T> {
    normal: T,
    urgent: T,
}

impl<J> Queues<Sender<J>> {
    /// Senders and receivers of two channels made by `channel`.
    fn pair(channel: impl Fn() -> (Sender<J>, Receiver<J>)) -> (Self, Queues<Receiver<J>>) {
        let ((normal_tx, normal_rx), (urgent_tx, urgent_rx)) = (channel(), channel());
        (
            Queues {
                normal: normal_tx,
                urgent: urgent_tx,
            },
            Queues {
                normal: normal_rx,
                urgent: urgent_rx,
            },
        )
    }
}

/// What a worker does for one request.
enum Work {
    /// Run the handler on the request.
    Handle {
        body: Vec<u8>,
        /// The requester's IP address, when libzmq knows it.
        source: Option<String>,
    },
    /// Finish what triage started on the I/O thread.
    Continue(Continuation),
}

struct ZmqReplier {
    url: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ZmqReplier {
    fn start(
        t: &ZmqTransport,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<ZmqReplier, TransportError> {
        let router = t.socket(zmq::ROUTER, options)?;
        bind(&router, url)?;
        let listener = Listener::new(&t.ctx, &router, url);

        let reply_url = format!(
            "inproc://gestor-zmq-replies-{}",
            REPLIER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let pull = t.socket(zmq::PULL, options)?;
        // Replies were size-checked by the workers; do not cap the internal hop.
        pull.set_maxmsgsize(-1)
            .map_err(|e| backend("set MAXMSGSIZE", e))?;
        bind(&pull, &reply_url)?;

        let workers = options.replier_workers.max(1);
        let mut pushes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let push = t.socket(zmq::PUSH, options)?;
            connect(&push, &reply_url)?;
            pushes.push(push);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut replier = ZmqReplier {
            url: url.to_string(),
            stop,
            threads: Vec::with_capacity(workers + 1),
        };
        let (jobs_tx, jobs_rx) =
            Queues::pair(|| crossbeam_channel::bounded(workers * QUEUED_PER_WORKER));
        let max = options.max_message_bytes;
        for (i, push) in pushes.into_iter().enumerate() {
            let rx = jobs_rx.clone();
            let handler = Arc::clone(&handler);
            let stop = Arc::clone(&replier.stop);
            let url = replier.url.clone();
            replier.spawn(format!("zmq-rep-{i}"), move || {
                worker(&rx, &push, handler.as_ref(), max, &stop, &url)
            })?;
        }
        let stop = Arc::clone(&replier.stop);
        let url_owned = replier.url.clone();
        replier.spawn("zmq-rep-io".to_string(), move || {
            let served = Served {
                router: &router,
                handler: handler.as_ref(),
                max,
                url: &url_owned,
            };
            io_loop(&served, &pull, &jobs_tx, &stop);
            listener.release(&router);
        })?;
        tracing::debug!(url, workers, "zmq replier serving");
        Ok(replier)
    }

    fn spawn(
        &mut self,
        name: String,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), TransportError> {
        match std::thread::Builder::new().name(name).spawn(f) {
            Ok(h) => {
                self.threads.push(h);
                Ok(())
            }
            // Dropping `self` stops whatever was started.
            Err(e) => Err(TransportError::Backend {
                backend: BACKEND,
                reason: format!("spawn replier thread: {e}"),
            }),
        }
    }
}

/// What the I/O thread serves with: its ROUTER and the handler.
struct Served<'a> {
    router: &'a zmq::Socket,
    handler: &'a dyn RequestHandler,
    max: usize,
    url: &'a str,
}

impl Served<'_> {
    /// Offer the request to the handler's triage; a reply made here goes
    /// straight out, anything else becomes a job for the workers.
    fn triage(&self, envelope: Vec<Vec<u8>>, body: Vec<u8>, source: Option<String>) -> Option<Job> {
        let url = self.url;
        let triage = catch_unwind(AssertUnwindSafe(|| {
            self.handler.triage(&body, source.as_deref())
        }));
        let work = match triage {
            Ok(Triage::Reply(reply)) => {
                self.send(envelope, reply);
                return None;
            }
            Ok(Triage::Worker) => Work::Handle { body, source },
            Ok(Triage::Continue(rest)) => Work::Continue(rest),
            Ok(Triage::Urgent(rest)) => {
                return Some(Job {
                    envelope,
                    work: Work::Continue(rest),
                    queued_at: Instant::now(),
                    urgent: true,
                })
            }
            Err(_) => {
                tracing::error!(%url, "zmq replier: triage panicked; request dropped");
                return None;
            }
        };
        Some(Job {
            envelope,
            work,
            queued_at: Instant::now(),
            urgent: false,
        })
    }

    fn send(&self, mut envelope: Vec<Vec<u8>>, reply: Vec<u8>) {
        let url = self.url;
        if reply.len() > self.max {
            tracing::error!(%url, size = reply.len(), limit = self.max,
                "zmq replier: reply exceeds max_message_bytes; dropped");
            return;
        }
        envelope.push(reply);
        // ROUTER drops replies to requesters that went away.
        if let Err(e) = self.router.send_multipart(envelope, zmq::DONTWAIT) {
            tracing::debug!(%url, error = %e, "zmq replier: reply not routed");
        }
    }
}

/// Owns the ROUTER and the reply PULL: serves what triage answers at once,
/// hands the rest to the workers, routes their replies.
fn io_loop(served: &Served<'_>, pull: &zmq::Socket, jobs: &Queues<Sender<Job>>, stop: &AtomicBool) {
    let (router, url) = (served.router, served.url);
    while !stop.load(Ordering::Acquire) {
        let (router_ready, pull_ready) = {
            let mut items = [
                router.as_poll_item(zmq::POLLIN),
                pull.as_poll_item(zmq::POLLIN),
            ];
            match zmq::poll(&mut items, SHUTDOWN_POLL_MS) {
                Ok(_) => (items[0].is_readable(), items[1].is_readable()),
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(%url, error = %e, "zmq replier: poll failed; stopping");
                    return;
                }
            }
        };
        if pull_ready {
            for reply in drain(pull) {
                // ROUTER drops replies to requesters that went away.
                if let Err(e) = router.send_multipart(reply, zmq::DONTWAIT) {
                    tracing::debug!(%url, error = %e, "zmq replier: reply not routed");
                }
            }
        }
        if router_ready {
            for (mut parts, source) in drain_with_source(router) {
                let Some(delimiter) = parts.iter().position(|p| p.is_empty()) else {
                    tracing::debug!(%url, "zmq replier: request without envelope dropped");
                    continue;
                };
                // Exactly one body frame after the delimiter (a REQ request).
                if parts.len() != delimiter + 2 {
                    tracing::debug!(%url, "zmq replier: multipart request dropped");
                    continue;
                }
                let body = parts.pop().unwrap_or_default();
                let Some(job) = served.triage(parts, body, source) else {
                    continue;
                };
                let queue = if job.urgent {
                    &jobs.urgent
                } else {
                    &jobs.normal
                };
                if queue.try_send(job).is_err() {
                    tracing::warn!(%url, "zmq replier: workers saturated; request dropped");
                }
            }
        }
    }
}

/// Like [`drain`], with each message's source IP (libzmq's `Peer-Address`).
fn drain_with_source(
    socket: &zmq::Socket,
) -> impl Iterator<Item = (Vec<Vec<u8>>, Option<String>)> + '_ {
    (0..DRAIN_BATCH).map_while(move |_| {
        let mut parts = Vec::new();
        let mut source = None;
        loop {
            let mut msg = socket.recv_msg(zmq::DONTWAIT).ok()?;
            if source.is_none() {
                source = msg.gets("Peer-Address").map(str::to_string);
            }
            let more = msg.get_more();
            parts.push(msg.to_vec());
            if !more {
                return Some((parts, source));
            }
        }
    })
}

/// Up to `DRAIN_BATCH` messages that are ready now; bounded so a flood cannot
/// keep the I/O thread from serving the other socket or noticing shutdown.
fn drain(socket: &zmq::Socket) -> impl Iterator<Item = Vec<Vec<u8>>> + '_ {
    (0..DRAIN_BATCH).map_while(move |_| socket.recv_multipart(zmq::DONTWAIT).ok())
}

/// The next job, an urgent one first; `None` once the I/O thread is gone.
fn next_job(jobs: &Queues<Receiver<Job>>) -> Option<Job> {
    if let Ok(job) = jobs.urgent.try_recv() {
        return Some(job);
    }
    crossbeam_channel::select_biased! {
        recv(jobs.urgent) -> job => job.ok(),
        recv(jobs.normal) -> job => job.ok(),
    }
}

fn worker(
    jobs: &Queues<Receiver<Job>>,
    push: &zmq::Socket,
    handler: &dyn RequestHandler,
    max: usize,
    stop: &AtomicBool,
    url: &str,
) {
    // Blocks until a job comes: the I/O thread owns the only sender, so its
    // exit at shutdown wakes every worker (an idle replier makes no
    // periodic wake-ups).
    while let Some(job) = next_job(jobs) {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let reply = match catch_unwind(AssertUnwindSafe(|| match job.work {
            Work::Handle { body, source } => handler.handle_from(&body, source.as_deref()),
            Work::Continue(rest) => rest(job.queued_at.elapsed()),
        })) {
            Ok(reply) => reply,
            Err(_) => {
                // The contract says handlers never panic; keep the worker alive anyway.
                tracing::error!(%url, "zmq replier: handler panicked; request dropped");
                continue;
            }
        };
        if reply.len() > max {
            tracing::error!(%url, size = reply.len(), limit = max,
                "zmq replier: reply exceeds max_message_bytes; dropped");
            continue;
        }
        let mut parts = job.envelope;
        parts.push(reply);
        // inproc PUSH to a live PULL only blocks if the I/O thread is far
        // behind; DONTWAIT keeps shutdown prompt and drops in that case.
        if let Err(e) = push.send_multipart(parts, zmq::DONTWAIT) {
            tracing::warn!(%url, error = %e, "zmq replier: reply dropped");
        }
    }
}

impl Replier for ZmqReplier {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ZmqReplier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!(url = %self.url, "zmq replier thread panicked");
            }
        }
        tracing::debug!(url = %self.url, "zmq replier stopped");
    }
}

// -------------------------------------------------------------- requester

struct ZmqRequester {
    socket: zmq::Socket,
    url: String,
    max: usize,
}

impl ZmqRequester {
    /// Bound the next blocking send or receive by `left` (at least 1 ms:
    /// 0 would mean "do not wait").
    fn set_timeouts(&self, left: Duration) -> Result<(), TransportError> {
        let left = ms(left).clamp(1, i64::from(i32::MAX)) as i32;
        self.socket
            .set_sndtimeo(left)
            .and_then(|()| self.socket.set_rcvtimeo(left))
            .map_err(|e| backend("set timeouts", e))
    }
}

impl Requester for ZmqRequester {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        if payload.len() > self.max {
            return Err(TransportError::TooLarge {
                size: payload.len(),
                limit: self.max,
            });
        }
        // Blocking calls with socket timeouts rather than `zmq_poll` then a
        // non-blocking call: one wait inside libzmq instead of a poll set
        // built, polled and queried for events around every call.
        let deadline = Instant::now() + timeout;
        self.set_timeouts(timeout)?;
        loop {
            match self.socket.send(payload, 0) {
                Ok(()) => break,
                // REQ waits here for a connected peer.
                Err(zmq::Error::EAGAIN) => return Err(timeout_error(&self.url, timeout)),
                Err(zmq::Error::EINTR) if Instant::now() < deadline => {
                    self.set_timeouts(deadline.saturating_duration_since(Instant::now()))?
                }
                Err(zmq::Error::EINTR) => return Err(timeout_error(&self.url, timeout)),
                Err(zmq::Error::ETERM) => return Err(TransportError::Closed),
                Err(e) => return Err(backend("send request", e)),
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout_error(&self.url, timeout));
            }
            self.set_timeouts(left)?;
            match self.socket.recv_multipart(0) {
                Ok(parts) if parts.len() == 1 && parts[0].len() > self.max => {
                    tracing::warn!(url = %self.url, size = parts[0].len(), limit = self.max,
                        "zmq requester: oversize reply dropped");
                }
                Ok(mut parts) if parts.len() == 1 => return Ok(parts.pop().unwrap_or_default()),
                Ok(_) => {
                    tracing::debug!(url = %self.url, "zmq requester: multipart reply ignored")
                }
                // The timeout, a signal, or REQ_CORRELATE discarding a stale
                // reply: the deadline decides.
                Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => {}
                Err(zmq::Error::ETERM) => return Err(TransportError::Closed),
                Err(e) => return Err(backend("receive reply", e)),
            }
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

// -------------------------------------------------------------- pub / sub

struct ZmqPublisher {
    socket: zmq::Socket,
    listener: Option<Listener>,
    max: usize,
}

impl Drop for ZmqPublisher {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.release(&self.socket);
        }
    }
}

impl Publisher for ZmqPublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        let size = topic.len() + 1 + payload.len();
        if size > self.max {
            return Err(TransportError::TooLarge {
                size,
                limit: self.max,
            });
        }
        let frame = encode_signal(topic, payload);
        match self.socket.send(frame, zmq::DONTWAIT) {
            Ok(()) => Ok(()),
            // At the high-water mark: drop, never block.
            Err(zmq::Error::EAGAIN) => {
                tracing::trace!("zmq publisher: message dropped");
                Ok(())
            }
            Err(zmq::Error::ETERM) => Err(TransportError::Closed),
            Err(e) => Err(backend("publish", e)),
        }
    }
}

struct ZmqSubscriber {
    socket: zmq::Socket,
    listener: Option<Listener>,
    max: usize,
}

impl Drop for ZmqSubscriber {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.release(&self.socket);
        }
    }
}

impl Subscriber for ZmqSubscriber {
    fn recv(&mut self, timeout: Duration) -> Result<Option<(Vec<u8>, Vec<u8>)>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.socket.poll(zmq::POLLIN, ms(remaining)) {
                Ok(0) if remaining.is_zero() => return Ok(None),
                Ok(0) => continue,
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(zmq::Error::ETERM) => return Err(TransportError::Closed),
                Err(e) => return Err(backend("poll", e)),
            }
            match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) if parts.len() == 1 && parts[0].len() > self.max => {
                    tracing::debug!(
                        size = parts[0].len(),
                        limit = self.max,
                        "zmq subscriber: oversize frame dropped"
                    );
                }
                Ok(parts) if parts.len() == 1 => {
                    if let Some((topic, payload)) = decode_signal(&parts[0]) {
                        return Ok(Some((topic.to_vec(), payload.to_vec())));
                    }
                    tracing::debug!("zmq subscriber: frame without separator skipped");
                }
                Ok(_) => tracing::debug!("zmq subscriber: multipart message skipped"),
                Err(zmq::Error::EAGAIN) => {}
                Err(zmq::Error::ETERM) => return Err(TransportError::Closed),
                Err(e) => return Err(backend("receive signal", e)),
            }
            // A stream of skipped frames must not keep us past the deadline.
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}
