//! # gestor-transport-nng — the nng backend of the gestor transport contract
//!
//! Implements [`gestor_sdk::Transport`] on [nng](https://nng.nanomsg.org/)
//! (scalability protocols REQ0/REP0 and PUB0/SUB0).
//!
//! ## REQ-REP
//!
//! A [`Replier`] is one REP0 socket with `replier_workers` worker threads
//! and [`QUEUED_PER_WORKER`] times as many **contexts**, each with one
//! [`Aio`]. The Aio's callback (on an nng thread) receives a request and
//! offers it to [`RequestHandler::triage`]: a reply made there is sent at
//! once from the callback; anything else is queued for the workers, and
//! the worker that takes it runs the handler (or the continuation, told
//! how long the request queued) and sends the reply on the request's
//! context. The end of a reply starts the context's next receive, so each
//! context holds one request at a time. Contexts outnumber workers so that
//! waiting requests wait in our queue, where the wait is measured, and not
//! unread in nng's pipes; a slow handler only occupies its own worker. nng
//! routes each reply back to the requester that sent the request. Dropping
//! the replier joins the workers (waiting for handlers already running,
//! dropping what is still queued), cancels the Aios and waits for their
//! callbacks, and only then closes the contexts and the socket, because
//! nng 1.4 aborts when a context operation races with its socket's close.
//!
//! A [`Requester`] is a REQ0 socket dialled without blocking, so it can be
//! created before anyone listens and reconnects by itself. `request` sends
//! and receives with socket timeouts derived from the caller's deadline.
//! The resend timer (`ResendTime`) is off: nng would insert a timer for
//! every request into its one global, sorted, locked timer list, which cost
//! a bench client with 32 threads 7% of its CPU. So a request whose
//! connection drops fails at once (`ECONNRESET`) instead of being re-sent
//! by nng, and the caller retries as after any transport error; a request
//! may still run twice (a reply lost with its connection), which is why the
//! contract asks handlers to be idempotent.
//!
//! ## PUB-SUB
//!
//! A signal is one message `topic ++ 0x00 ++ payload`. SUB0 filters by the
//! raw prefix bytes of the message, so subscribing to a topic prefix is
//! exactly "topic starts with prefix". PUB0 never blocks: each connection
//! has a queue of `queue_depth` messages and drops when it is full.
//!
//! ## Limits
//!
//! Sends over `max_message_bytes` fail with `TooLarge` before touching the
//! socket; `RecvMaxSize` makes nng drop the connection of a peer that sends
//! a bigger frame (the peer reconnects; nothing reaches the application).

use crossbeam_channel::{Receiver, Sender};
use gestor_sdk::transport::{decode_signal, encode_signal, Continuation, QUEUED_PER_WORKER};
use gestor_sdk::{
    Endpoint, Publisher, Replier, RequestHandler, Requester, Subscriber, Transport, TransportError,
    TransportOptions, Triage,
};
use nng::options::protocol::pubsub::Subscribe;
use nng::options::protocol::reqrep::ResendTime;
use nng::options::{
    Options, ReconnectMaxTime, ReconnectMinTime, RecvBufferSize, RecvMaxSize, RecvTimeout,
    SendBufferSize, SendTimeout,
};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BACKEND: &str = "nng";
/// Quick reconnects so a restarted peer is found again within a request timeout.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// A reply that cannot be handed to nng within this time is dropped. It
/// only waits while the previous reply on the same connection is still
/// being written; short, since shutdown waits for workers to finish.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The same bound for a reply sent from an nng thread, which must not
/// wait: a REQ peer has one request out per connection, so its
/// connection only lags the reply by the moment nng takes to mark the
/// previous reply written.
const IO_THREAD_SEND_WAIT: Duration = Duration::from_millis(5);
/// nng accepts socket buffer depths in 0..=8192 messages.
const MAX_NNG_BUFFER: usize = 8192;

/// The nng backend. Stateless: every socket is independent (nng's `inproc://`
/// namespace is process-wide).
#[derive(Debug, Default, Clone, Copy)]
pub struct NngTransport;

impl NngTransport {
    pub fn new() -> Self {
        NngTransport
    }
}

fn backend(context: &str, e: nng::Error) -> TransportError {
    TransportError::Backend {
        backend: BACKEND,
        reason: format!("{context}: {e}"),
    }
}

fn too_large(size: usize, limit: usize) -> TransportError {
    TransportError::TooLarge { size, limit }
}

fn timeout(url: &str, timeout: Duration) -> TransportError {
    TransportError::Timeout {
        url: url.to_string(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

/// nng's verdict that the URL itself is unusable (syntax or unknown scheme).
fn is_address_error(e: nng::Error) -> bool {
    matches!(
        e,
        nng::Error::AddressInvalid | nng::Error::NotSupported | nng::Error::InvalidInput
    )
}

fn bad_address(url: &str, e: nng::Error) -> TransportError {
    TransportError::BadAddress {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// Map a listen error: address problems are the caller's, the rest is `Bind`.
fn listen(socket: &Socket, url: &str) -> Result<(), TransportError> {
    socket.listen(url).map_err(|e| {
        if is_address_error(e) {
            bad_address(url, e)
        } else {
            TransportError::Bind {
                url: url.to_string(),
                reason: e.to_string(),
            }
        }
    })
}

/// Dial without blocking, so the peer may come up later; nng keeps redialling.
fn dial(socket: &Socket, url: &str) -> Result<(), TransportError> {
    socket.dial_async(url).map_err(|e| {
        if is_address_error(e) {
            bad_address(url, e)
        } else {
            backend(&format!("dial {url}"), e)
        }
    })
}

fn attach(socket: &Socket, endpoint: &Endpoint) -> Result<(), TransportError> {
    match endpoint {
        Endpoint::Bind(url) => listen(socket, url),
        Endpoint::Dial(url) => dial(socket, url),
    }
}

fn new_socket(protocol: Protocol, options: &TransportOptions) -> Result<Socket, TransportError> {
    let socket = Socket::new(protocol).map_err(|e| backend("open socket", e))?;
    socket
        .set_opt::<RecvMaxSize>(options.max_message_bytes)
        .map_err(|e| backend("set RecvMaxSize", e))?;
    socket
        .set_opt::<ReconnectMinTime>(Some(RECONNECT_MIN))
        .map_err(|e| backend("set ReconnectMinTime", e))?;
    socket
        .set_opt::<ReconnectMaxTime>(Some(RECONNECT_MAX))
        .map_err(|e| backend("set ReconnectMaxTime", e))?;
    Ok(socket)
}

fn buffer_depth(queue_depth: usize) -> i32 {
    i32::try_from(queue_depth.clamp(1, MAX_NNG_BUFFER)).unwrap_or(1)
}

impl Transport for NngTransport {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn replier(
        &self,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        NngReplier::start(url, handler, options).map(|r| Box::new(r) as Box<dyn Replier>)
    }

    fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        let socket = new_socket(Protocol::Req0, options)?;
        socket
            .set_opt::<ResendTime>(None)
            .map_err(|e| backend("set ResendTime", e))?;
        dial(&socket, url)?;
        Ok(Box::new(NngRequester {
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
        let socket = new_socket(Protocol::Pub0, options)?;
        // Per-connection queue; PUB0 drops rather than blocks when it is full.
        socket
            .set_opt::<SendBufferSize>(buffer_depth(options.queue_depth))
            .map_err(|e| backend("set SendBufferSize", e))?;
        attach(&socket, endpoint)?;
        Ok(Box::new(NngPublisher {
            socket,
            max: options.max_message_bytes,
        }))
    }

    fn subscriber(
        &self,
        endpoint: &Endpoint,
        prefixes: &[&[u8]],
        options: &TransportOptions,
    ) -> Result<Box<dyn Subscriber>, TransportError> {
        let socket = new_socket(Protocol::Sub0, options)?;
        socket
            .set_opt::<RecvBufferSize>(buffer_depth(options.queue_depth))
            .map_err(|e| backend("set RecvBufferSize", e))?;
        for prefix in prefixes {
            socket
                .set_opt::<Subscribe>(prefix.to_vec())
                .map_err(|e| backend("subscribe", e))?;
        }
        attach(&socket, endpoint)?;
        Ok(Box::new(NngSubscriber { socket }))
    }
}

// ---------------------------------------------------------------- replier

struct NngReplier {
    url: String,
    socket: Socket,
    stop: Arc<AtomicBool>,
    slots: Vec<Slot>,
    /// The workers' queues; kept to send each worker its stop.
    to_workers: Queues<Sender<Option<Job>>>,
    workers: Vec<JoinHandle<()>>,
}

/// One REP context, driven by its Aio's callback on an nng thread. The
/// callback offers each request to the handler's triage: a reply made
/// there is sent from the callback at once; anything else is queued for
/// the worker pool, and the worker that takes it sends the reply on the
/// same context. The end of each reply starts the next receive, so a
/// context holds one request at a time. There are more contexts than
/// workers ([`QUEUED_PER_WORKER`] per worker), so requests wait in our
/// queue, where their wait is timed, rather than unread inside nng.
struct Slot {
    ctx: Context,
    aio: Aio,
}

/// The worker pool's two queues: workers take from `urgent` first
/// ([`Triage::Urgent`]). Unbounded, yet together never longer than the
/// number of contexts. A stop (`None`) goes through `normal`.
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

/// A request a context took in, for the worker pool.
struct Job {
    serving: Arc<Serving>,
    aio: Aio,
    work: Work,
    queued_at: Instant,
}

/// What a worker does for one request.
enum Work {
    /// Run the handler on the request.
    Handle {
        request: Message,
        source: Option<String>,
    },
    /// Finish what triage started on the nng thread.
    Continue(Continuation),
}

/// What a context's callback and the worker serving its request share.
struct Serving {
    ctx: Context,
    /// Sends the context's replies.
    replies: InlineAio,
    handler: Arc<dyn RequestHandler>,
    stop: Arc<AtomicBool>,
    max: usize,
    url: String,
}

impl Serving {
    /// Start the next receive. It has no timeout: shutdown cancels it.
    fn receive(&self, aio: &Aio) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        let url = &self.url;
        if let Err(e) = self.ctx.recv(aio) {
            tracing::error!(%url, error = %e, "nng replier: cannot start receive; context stops serving");
        }
    }

    /// Send `reply` on the context, then start the next receive. `wait`
    /// bounds how long the connection may take to accept it: only a peer
    /// with another reply still being written to it makes the send wait.
    fn reply(&self, aio: &Aio, reply: Vec<u8>, wait: Duration) {
        let url = &self.url;
        if reply.len() > self.max {
            tracing::error!(%url, size = reply.len(), limit = self.max,
                "nng replier: reply exceeds max_message_bytes; dropped");
            return self.receive(aio);
        }
        if let Err(e) = self.replies.send(&self.ctx, &reply, wait) {
            tracing::debug!(%url, error = %e, "nng replier: reply not delivered");
        }
        self.receive(aio);
    }

    /// The Aio's callback. Never blocks: triage answers from memory or
    /// hands the request on.
    fn on_event(
        self: &Arc<Self>,
        aio: &Aio,
        result: AioResult,
        workers: &Queues<Sender<Option<Job>>>,
    ) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        let url = &self.url;
        match result {
            AioResult::Recv(Ok(mut request)) => {
                let source = source_of(&mut request);
                let triage = catch_unwind(AssertUnwindSafe(|| {
                    self.handler.triage(request.as_slice(), source.as_deref())
                }));
                let (work, urgent) = match triage {
                    Ok(Triage::Reply(reply)) => return self.reply(aio, reply, IO_THREAD_SEND_WAIT),
                    Ok(Triage::Worker) => (Work::Handle { request, source }, false),
                    Ok(Triage::Continue(rest)) => (Work::Continue(rest), false),
                    Ok(Triage::Urgent(rest)) => (Work::Continue(rest), true),
                    Err(_) => {
                        tracing::error!(%url, "nng replier: triage panicked; request dropped");
                        return self.receive(aio);
                    }
                };
                // The queue holds at most one job per context: a context
                // takes no other request until its reply is sent.
                let job = Job {
                    serving: Arc::clone(self),
                    aio: aio.clone(),
                    work,
                    queued_at: Instant::now(),
                };
                let queue = if urgent {
                    &workers.urgent
                } else {
                    &workers.normal
                };
                if queue.send(Some(job)).is_err() {
                    tracing::debug!(%url, "nng replier: workers gone; request dropped");
                }
            }
            AioResult::Recv(Err(nng::Error::Closed)) => {}
            AioResult::Recv(Err(e)) => {
                tracing::debug!(%url, error = %e, "nng replier: receive failed");
                self.receive(aio);
            }
            // This Aio only receives (replies go through `InlineAio`).
            AioResult::Send(_) | AioResult::Sleep(_) => self.receive(aio),
        }
    }
}

/// The next job, an urgent one first; `None` at the stop.
fn next_job(jobs: &Queues<Receiver<Option<Job>>>) -> Option<Job> {
    if let Ok(job) = jobs.urgent.try_recv() {
        return job;
    }
    crossbeam_channel::select_biased! {
        recv(jobs.urgent) -> job => job.ok().flatten(),
        recv(jobs.normal) -> job => job.ok().flatten(),
    }
}

/// A worker of the pool: serves queued requests until it is sent `None`.
/// After the stop flag it drops what is still queued instead of serving it.
fn work(jobs: &Queues<Receiver<Option<Job>>>, stop: &AtomicBool) {
    while let Some(job) = next_job(jobs) {
        if stop.load(Ordering::Acquire) {
            continue;
        }
        let Job {
            serving,
            aio,
            work,
            queued_at,
        } = job;
        let reply = catch_unwind(AssertUnwindSafe(|| match work {
            Work::Handle { request, source } => serving
                .handler
                .handle_from(request.as_slice(), source.as_deref()),
            Work::Continue(rest) => rest(queued_at.elapsed()),
        }));
        match reply {
            Ok(reply) => serving.reply(&aio, reply, REPLY_SEND_TIMEOUT),
            Err(_) => {
                // The contract says handlers never panic; keep the context serving anyway.
                let url = &serving.url;
                tracing::error!(%url, "nng replier: handler panicked; request dropped");
                serving.receive(&aio);
            }
        }
    }
}

/// An nng aio without a callback, for sending replies. nng completes such
/// an operation on the thread that finishes it, so a reply sent from an
/// Aio callback or a worker costs no hand-off to an nng task thread (the
/// `nng` crate's `Aio` always has a callback, which nng runs on a task
/// thread: one more wake-up per request, measured in the README).
struct InlineAio(std::ptr::NonNull<nng::ffi::nng_aio>);

// SAFETY: nng aios may be used from any thread; this one is used by one at
// a time, since a context holds one request at a time and its reply is
// sent either by the Aio callback or by the one worker that took it.
unsafe impl Send for InlineAio {}
unsafe impl Sync for InlineAio {}

/// An nng error code as the `nng` crate's error.
fn nng_error(code: std::os::raw::c_int) -> nng::Error {
    nng::Error::from(std::num::NonZeroU32::new(code as u32).unwrap_or(std::num::NonZeroU32::MIN))
}

impl InlineAio {
    fn new() -> Result<Self, TransportError> {
        let mut aio = std::ptr::null_mut();
        // SAFETY: `aio` is a valid out-pointer; no callback, so no argument.
        let rv = unsafe { nng::ffi::nng_aio_alloc(&mut aio, None, std::ptr::null_mut()) };
        if rv != 0 {
            return Err(backend("allocate aio", nng_error(rv)));
        }
        std::ptr::NonNull::new(aio)
            .map(InlineAio)
            .ok_or_else(|| backend("allocate aio", nng::Error::OutOfMemory))
    }

    /// Send a copy of `body` on `ctx` and wait for the outcome, at most
    /// `wait` for the connection to take it.
    fn send(&self, ctx: &Context, body: &[u8], wait: Duration) -> Result<(), nng::Error> {
        let aio = self.0.as_ptr();
        let wait = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `aio` is ours and idle (one operation at a time, each
        // waited for below); the message is allocated with room for `body`
        // and owned by the aio until nng takes it, or freed here if not.
        unsafe {
            let mut msg = std::ptr::null_mut();
            let rv = nng::ffi::nng_msg_alloc(&mut msg, body.len());
            if rv != 0 {
                return Err(nng_error(rv));
            }
            std::ptr::copy_nonoverlapping(
                body.as_ptr(),
                nng::ffi::nng_msg_body(msg).cast::<u8>(),
                body.len(),
            );
            nng::ffi::nng_aio_set_timeout(aio, wait);
            nng::ffi::nng_aio_set_msg(aio, msg);
            nng::ffi::nng_ctx_send(ctx.nng_ctx(), aio);
            nng::ffi::nng_aio_wait(aio);
            let rv = nng::ffi::nng_aio_result(aio);
            if rv != 0 {
                // On failure the message is still the aio's.
                let msg = nng::ffi::nng_aio_get_msg(aio);
                nng::ffi::nng_aio_set_msg(aio, std::ptr::null_mut());
                if !msg.is_null() {
                    nng::ffi::nng_msg_free(msg);
                }
                return Err(nng_error(rv));
            }
        }
        Ok(())
    }
}

impl Drop for InlineAio {
    fn drop(&mut self) {
        // SAFETY: idle (every send is waited for) and never used again.
        unsafe { nng::ffi::nng_aio_free(self.0.as_ptr()) }
    }
}

impl NngReplier {
    fn start(
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<NngReplier, TransportError> {
        let socket = new_socket(Protocol::Rep0, options)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (to_workers, jobs) = Queues::pair(crossbeam_channel::unbounded);
        let mut replier = NngReplier {
            url: url.to_string(),
            socket,
            stop,
            slots: Vec::new(),
            to_workers,
            workers: Vec::new(),
        };
        let workers = options.replier_workers.max(1);
        for i in 0..workers {
            let (jobs, stop) = (jobs.clone(), Arc::clone(&replier.stop));
            let spawned = std::thread::Builder::new()
                .name(format!("nng-rep-{i}"))
                .spawn(move || work(&jobs, &stop));
            match spawned {
                Ok(h) => replier.workers.push(h),
                // Dropping `replier` stops what was started.
                Err(e) => {
                    return Err(TransportError::Backend {
                        backend: BACKEND,
                        reason: format!("spawn replier worker: {e}"),
                    })
                }
            }
        }
        for _ in 0..workers * QUEUED_PER_WORKER {
            let serving = Arc::new(Serving {
                ctx: Context::new(&replier.socket).map_err(|e| backend("open context", e))?,
                replies: InlineAio::new()?,
                handler: Arc::clone(&handler),
                stop: Arc::clone(&replier.stop),
                max: options.max_message_bytes,
                url: replier.url.clone(),
            });
            let to_workers = replier.to_workers.clone();
            let ctx = serving.ctx.clone();
            // Runs on an nng thread.
            let aio = Aio::new(move |aio, result| serving.on_event(&aio, result, &to_workers))
                .map_err(|e| backend("allocate aio", e))?;
            replier.slots.push(Slot { ctx, aio });
        }
        listen(&replier.socket, url)?;
        for slot in &replier.slots {
            slot.ctx
                .recv(&slot.aio)
                .map_err(|e| backend("start receive", e))?;
        }
        tracing::debug!(
            url,
            workers,
            contexts = replier.slots.len(),
            "nng replier serving"
        );
        Ok(replier)
    }
}

impl Replier for NngReplier {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NngReplier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A worker finishes the request it is serving (and sends its
        // reply) before it reads the stop; what is still queued is dropped.
        for _ in &self.workers {
            let _ = self.to_workers.normal.send(None);
        }
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!(url = %self.url, "nng replier worker panicked");
            }
        }
        // nng 1.4 crashes when a context operation races with the close of
        // its socket, so every Aio must be idle first. A callback that read
        // the flag just before it was set may start one more operation, so
        // twice: cancel, then wait for the callback.
        for _ in 0..2 {
            for slot in &self.slots {
                slot.aio.cancel();
                slot.aio.wait();
            }
        }
        for slot in self.slots.drain(..) {
            slot.ctx.close();
        }
        // Releases the listening address.
        self.socket.close();
        tracing::debug!(url = %self.url, "nng replier stopped");
    }
}

// -------------------------------------------------------------- requester

struct NngRequester {
    socket: Socket,
    url: String,
    max: usize,
}

impl Requester for NngRequester {
    fn request(&mut self, payload: &[u8], timeout_: Duration) -> Result<Vec<u8>, TransportError> {
        if payload.len() > self.max {
            return Err(too_large(payload.len(), self.max));
        }
        let deadline = Instant::now() + timeout_;
        // REQ0 send waits for a connected peer, so it is bounded by the deadline too.
        self.socket
            .set_opt::<SendTimeout>(Some(timeout_))
            .map_err(|e| backend("set SendTimeout", e))?;
        match self.socket.send(Message::from(payload)) {
            Ok(()) => {}
            Err((_, nng::Error::TimedOut)) => return Err(timeout(&self.url, timeout_)),
            Err((_, nng::Error::Closed)) => return Err(TransportError::Closed),
            Err((_, e)) => return Err(backend("send request", e)),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A zero timeout would mean "poll"; give the reply at least 1 ms.
        self.socket
            .set_opt::<RecvTimeout>(Some(remaining.max(Duration::from_millis(1))))
            .map_err(|e| backend("set RecvTimeout", e))?;
        match self.socket.recv() {
            Ok(msg) => Ok(msg.as_slice().to_vec()),
            Err(nng::Error::TimedOut) => Err(timeout(&self.url, timeout_)),
            Err(nng::Error::ConnectionReset) => Err(TransportError::ConnectionLost {
                url: self.url.clone(),
            }),
            Err(nng::Error::Closed) => Err(TransportError::Closed),
            Err(e) => Err(backend("receive reply", e)),
        }
    }

    fn url(&self) -> &str {
        &self.url
    }
}

// -------------------------------------------------------------- pub / sub

struct NngPublisher {
    socket: Socket,
    max: usize,
}

impl Publisher for NngPublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        let size = topic.len() + 1 + payload.len();
        if size > self.max {
            return Err(too_large(size, self.max));
        }
        let frame = encode_signal(topic, payload);
        // PUB0 send never waits for subscribers: full per-connection queues drop.
        match self.socket.send(Message::from(&frame[..])) {
            Ok(()) => Ok(()),
            Err((_, nng::Error::TryAgain)) | Err((_, nng::Error::TimedOut)) => {
                tracing::trace!("nng publisher: message dropped");
                Ok(())
            }
            Err((_, nng::Error::Closed)) => Err(TransportError::Closed),
            Err((_, e)) => Err(backend("publish", e)),
        }
    }
}

struct NngSubscriber {
    socket: Socket,
}

impl Subscriber for NngSubscriber {
    fn recv(&mut self, timeout_: Duration) -> Result<Option<(Vec<u8>, Vec<u8>)>, TransportError> {
        let deadline = Instant::now() + timeout_;
        loop {
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            self.socket
                .set_opt::<RecvTimeout>(Some(remaining))
                .map_err(|e| backend("set RecvTimeout", e))?;
            match self.socket.recv() {
                Ok(msg) => match decode_signal(msg.as_slice()) {
                    Some((topic, payload)) => return Ok(Some((topic.to_vec(), payload.to_vec()))),
                    None => {
                        tracing::debug!(
                            len = msg.len(),
                            "nng subscriber: frame without separator skipped"
                        );
                        if Instant::now() >= deadline {
                            return Ok(None);
                        }
                    }
                },
                Err(nng::Error::TimedOut) => return Ok(None),
                Err(nng::Error::Closed) => return Err(TransportError::Closed),
                Err(e) => return Err(backend("receive signal", e)),
            }
        }
    }
}

/// The IP address a request came from (the remote end of its pipe).
fn source_of(msg: &mut Message) -> Option<String> {
    use nng::options::{Options, RemAddr};
    match msg.pipe()?.get_opt::<RemAddr>().ok()? {
        nng::SocketAddr::Inet(a) => Some(a.ip().to_string()),
        nng::SocketAddr::Inet6(a) => Some(a.ip().to_string()),
        _ => None,
    }
}
