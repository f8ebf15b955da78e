//! A [`Transport`] inside one process: REQ-REP and PUB-SUB between sockets
//! made from the same [`MemoryNetwork`], with the contract's semantics
//! (module docs of [`crate::transport`]) and bounded queues everywhere.
//!
//! * A replier serves on `replier_workers` threads from a queue of
//!   `queue_depth` requests; a request to a URL nobody binds, or that finds
//!   the queue full, waits until its deadline and fails with `Timeout`, as a
//!   REQ socket does while it cannot connect.
//! * A signal goes to every subscriber attached to the URL (whichever side
//!   bound it) whose prefix matches; a full subscriber queue drops it.

use crate::error::TransportError;
use crate::transport::{
    decode_signal, encode_signal, Endpoint, Publisher, Replier, RequestHandler, Requester, Signal,
    Subscriber, Transport, TransportOptions,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bounded FIFO: pushing never blocks (a full queue refuses), popping
/// waits up to a timeout; once closed, pops return `None`.
pub struct BoundedQueue<T> {
    items: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
    capacity: usize,
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize) -> Self {
        BoundedQueue {
            items: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queue `item`; gives it back when the queue is full or closed.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        let mut q = lock(&self.items);
        if q.1 || q.0.len() >= self.capacity {
            return Err(item);
        }
        q.0.push_back(item);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest item, waiting up to `timeout`.
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.items);
        loop {
            if let Some(item) = q.0.pop_front() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if q.1 || left.is_zero() {
                return None;
            }
            q = self
                .ready
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Refuse further pushes and wake every waiter.
    pub fn close(&self) {
        lock(&self.items).1 = true;
        self.ready.notify_all();
    }

    pub fn len(&self) -> usize {
        lock(&self.items).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request waiting for a worker, with where its reply goes.
struct Job {
    payload: Vec<u8>,
    reply: Arc<BoundedQueue<Vec<u8>>>,
}

struct Subscription {
    prefixes: Vec<Vec<u8>>,
    queue: BoundedQueue<Signal>,
    max_bytes: usize,
}

#[derive(Default)]
struct Registry {
    repliers: HashMap<String, Arc<BoundedQueue<Job>>>,
    /// Subscriptions per signal URL.
    subscribers: HashMap<String, Vec<Weak<Subscription>>>,
    /// Signal URLs bound by a publisher or subscriber.
    signal_binds: HashSet<String>,
}

/// The in-process network: sockets made from clones of one value see each
/// other; sockets of different networks never do.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    registry: Arc<Mutex<Registry>>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }
}

fn check_url(url: &str) -> Result<(), TransportError> {
    let ok = ["tcp://", "ipc://", "inproc://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(TransportError::BadAddress {
            url: url.to_string(),
            reason: "expected tcp://, ipc:// or inproc:// followed by an address".into(),
        })
    }
}

fn check_size(size: usize, options: &TransportOptions) -> Result<(), TransportError> {
    if size > options.max_message_bytes {
        return Err(TransportError::TooLarge {
            size,
            limit: options.max_message_bytes,
        });
    }
    Ok(())
}

struct MemoryReplier {
    url: String,
    queue: Arc<BoundedQueue<Job>>,
    registry: Arc<Mutex<Registry>>,
}

impl Replier for MemoryReplier {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for MemoryReplier {
    fn drop(&mut self) {
        let mut reg = lock(&self.registry);
        if reg
            .repliers
            .get(&self.url)
            .is_some_and(|q| Arc::ptr_eq(q, &self.queue))
        {
            reg.repliers.remove(&self.url);
        }
        drop(reg);
        self.queue.close();
    }
}

fn serve(queue: Arc<BoundedQueue<Job>>, handler: Arc<dyn RequestHandler>, max_bytes: usize) {
    // `pop` returns `None` only once the queue is closed and drained, or
    // on a quiet timeout; both end nothing but this wait.
    loop {
        match queue.pop(Duration::from_millis(100)) {
            Some(job) => {
                let reply = handler.handle_from(&job.payload, Some("127.0.0.1"));
                if reply.len() <= max_bytes {
                    let _ = job.reply.try_push(reply);
                }
            }
            None if lock(&queue.items).1 => return,
            None => {}
        }
    }
}

struct MemoryRequester {
    url: String,
    registry: Arc<Mutex<Registry>>,
    options: TransportOptions,
}

impl Requester for MemoryRequester {
    fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, TransportError> {
        check_size(payload.len(), &self.options)?;
        let deadline = Instant::now() + timeout;
        let reply = Arc::new(BoundedQueue::new(1));
        let mut job = Job {
            payload: payload.to_vec(),
            reply: reply.clone(),
        };
        // Like a REQ socket: keep trying to hand the request over (no peer
        // yet, or its queue full) until the deadline.
        loop {
            let queue = lock(&self.registry).repliers.get(&self.url).cloned();
            match queue.map(|q| q.try_push(job)) {
                Some(Ok(())) => break,
                Some(Err(back)) => job = back,
                None => {
                    job = Job {
                        payload: payload.to_vec(),
                        reply: reply.clone(),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        reply.pop(left).ok_or_else(|| self.timeout(timeout))
    }

    fn url(&self) -> &str {
        &self.url
    }
}

impl MemoryRequester {
    fn timeout(&self, timeout: Duration) -> TransportError {
        TransportError::Timeout {
            url: self.url.clone(),
            timeout_ms: timeout.as_millis() as u64,
        }
    }
}

struct MemoryPublisher {
    url: String,
    bound: bool,
    registry: Arc<Mutex<Registry>>,
    options: TransportOptions,
}

impl Publisher for MemoryPublisher {
    fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TransportError> {
        let frame = encode_signal(topic, payload);
        check_size(frame.len(), &self.options)?;
        let subs: Vec<Arc<Subscription>> = {
            let mut reg = lock(&self.registry);
            let list = reg.subscribers.entry(self.url.clone()).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for sub in subs {
            let Some((t, p)) = decode_signal(&frame) else {
                continue;
            };
            let wanted = sub.prefixes.iter().any(|pre| t.starts_with(pre));
            if wanted && frame.len() <= sub.max_bytes {
                // A full queue drops the signal: publishing never blocks.
                let _ = sub.queue.try_push((t.to_vec(), p.to_vec()));
            }
        }
        Ok(())
    }
}

impl Drop for MemoryPublisher {
    fn drop(&mut self) {
        if self.bound {
            lock(&self.registry).signal_binds.remove(&self.url);
        }
    }
}

struct MemorySubscriber {
    url: String,
    bound: bool,
    sub: Arc<Subscription>,
    registry: Arc<Mutex<Registry>>,
}

impl Subscriber for MemorySubscriber {
    fn recv(&mut self, timeout: Duration) -> Result<Option<Signal>, TransportError> {
        Ok(self.sub.queue.pop(timeout))
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        if self.bound {
            lock(&self.registry).signal_binds.remove(&self.url);
        }
    }
}

impl MemoryNetwork {
    /// Claim `endpoint` for a signal socket; true when it binds.
    fn attach_signal(&self, endpoint: &Endpoint) -> Result<bool, TransportError> {
        check_url(endpoint.url())?;
        let Endpoint::Bind(url) = endpoint else {
            return Ok(false);
        };
        if !lock(&self.registry).signal_binds.insert(url.clone()) {
            return Err(TransportError::Bind {
                url: url.clone(),
                reason: "address in use".into(),
            });
        }
        Ok(true)
    }
}

impl Transport for MemoryNetwork {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn replier(
        &self,
        url: &str,
        handler: Arc<dyn RequestHandler>,
        options: &TransportOptions,
    ) -> Result<Box<dyn Replier>, TransportError> {
        check_url(url)?;
        let queue = Arc::new(BoundedQueue::new(options.queue_depth));
        {
            let mut reg = lock(&self.registry);
            if reg.repliers.contains_key(url) {
                return Err(TransportError::Bind {
                    url: url.to_string(),
                    reason: "address in use".into(),
                });
            }
            reg.repliers.insert(url.to_string(), queue.clone());
        }
        for _ in 0..options.replier_workers.max(1) {
            let (q, h) = (queue.clone(), handler.clone());
            let max = options.max_message_bytes;
            std::thread::spawn(move || serve(q, h, max));
        }
        Ok(Box::new(MemoryReplier {
            url: url.to_string(),
            queue,
            registry: self.registry.clone(),
        }))
    }

    fn requester(
        &self,
        url: &str,
        options: &TransportOptions,
    ) -> Result<Box<dyn Requester>, TransportError> {
        check_url(url)?;
        Ok(Box::new(MemoryRequester {
            url: url.to_string(),
            registry: self.registry.clone(),
            options: options.clone(),
        }))
    }

    fn publisher(
        &self,
        endpoint: &Endpoint,
        options: &TransportOptions,
    ) -> Result<Box<dyn Publisher>, TransportError> {
        let bound = self.attach_signal(endpoint)?;
        Ok(Box::new(MemoryPublisher {
            url: endpoint.url().to_string(),
            bound,
            registry: self.registry.clone(),
            options: options.clone(),
        }))
    }

    fn subscriber(
        &self,
        endpoint: &Endpoint,
        prefixes: &[&[u8]],
        options: &TransportOptions,
    ) -> Result<Box<dyn Subscriber>, TransportError> {
        let bound = self.attach_signal(endpoint)?;
        let sub = Arc::new(Subscription {
            prefixes: prefixes.iter().map(|p| p.to_vec()).collect(),
            queue: BoundedQueue::new(options.queue_depth),
            max_bytes: options.max_message_bytes,
        });
        let url = endpoint.url().to_string();
        lock(&self.registry)
            .subscribers
            .entry(url.clone())
            .or_default()
            .push(Arc::downgrade(&sub));
        Ok(Box::new(MemorySubscriber {
            url,
            bound,
            sub,
            registry: self.registry.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "inproc://a";
    const SECOND: Duration = Duration::from_secs(1);

    fn echo(net: &MemoryNetwork, opts: &TransportOptions) -> Box<dyn Replier> {
        let handler = |req: &[u8]| [b"re:".as_slice(), req].concat();
        net.replier(URL, Arc::new(handler), opts).unwrap()
    }

    #[test]
    fn request_reply_round_trip_and_timeout_without_peer() {
        let net = MemoryNetwork::new();
        let opts = TransportOptions::default();
        let mut req = net.requester(URL, &opts).unwrap();
        let short = Duration::from_millis(30);
        assert!(matches!(
            req.request(b"x", short),
            Err(TransportError::Timeout { .. })
        ));
        let rep = echo(&net, &opts);
        assert_eq!(req.request(b"hi", SECOND).unwrap(), b"re:hi");
        drop(rep);
        assert!(req.request(b"x", short).is_err(), "dropping unbinds");
        let _again = echo(&net, &opts);
        assert_eq!(req.request(b"back", SECOND).unwrap(), b"re:back");
        let other = MemoryNetwork::new();
        let mut lost = other.requester(URL, &opts).unwrap();
        assert!(lost.request(b"x", short).is_err(), "networks are separate");
    }

    #[test]
    fn limits_and_addresses_are_typed_errors() {
        let net = MemoryNetwork::new();
        let opts = TransportOptions {
            max_message_bytes: 8,
            ..TransportOptions::default()
        };
        let _rep = echo(&net, &opts);
        assert!(matches!(
            net.replier(URL, Arc::new(|r: &[u8]| r.to_vec()), &opts),
            Err(TransportError::Bind { .. })
        ));
        let mut req = net.requester(URL, &opts).unwrap();
        assert!(matches!(
            req.request(&[0; 9], SECOND),
            Err(TransportError::TooLarge { size: 9, limit: 8 })
        ));
        assert!(matches!(
            net.requester("nowhere", &opts),
            Err(TransportError::BadAddress { .. })
        ));
    }

    #[test]
    fn slow_handler_does_not_hold_up_the_others() {
        let net = MemoryNetwork::new();
        let opts = TransportOptions {
            replier_workers: 2,
            ..TransportOptions::default()
        };
        let handler = |req: &[u8]| {
            if req == b"slow" {
                std::thread::sleep(Duration::from_millis(500));
            }
            req.to_vec()
        };
        let _rep = net.replier(URL, Arc::new(handler), &opts).unwrap();
        let mut slow = net.requester(URL, &opts).unwrap();
        let t = std::thread::spawn(move || slow.request(b"slow", SECOND * 5));
        std::thread::sleep(Duration::from_millis(50));
        let mut fast = net.requester(URL, &opts).unwrap();
        let started = Instant::now();
        assert_eq!(fast.request(b"fast", SECOND).unwrap(), b"fast");
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(t.join().unwrap().unwrap(), b"slow");
    }

    #[test]
    fn signals_fan_out_by_prefix_and_full_queues_drop() {
        let net = MemoryNetwork::new();
        let opts = TransportOptions {
            queue_depth: 3,
            ..TransportOptions::default()
        };
        let bound = Endpoint::Bind("inproc://sig".into());
        let dial = Endpoint::Dial("inproc://sig".into());
        let mut sub = net.subscriber(&bound, &[b"a."], &opts).unwrap();
        assert!(net.subscriber(&bound, &[b"a."], &opts).is_err());
        let mut all = net.subscriber(&dial, &[b""], &opts).unwrap();
        let mut publ = net.publisher(&dial, &opts).unwrap();
        publ.publish(b"a.x", b"1").unwrap();
        publ.publish(b"b.y", b"2").unwrap();
        assert_eq!(
            sub.recv(SECOND).unwrap(),
            Some((b"a.x".to_vec(), b"1".to_vec()))
        );
        assert_eq!(sub.recv(Duration::from_millis(20)).unwrap(), None);
        assert_eq!(all.recv(SECOND).unwrap().unwrap().1, b"1");
        assert_eq!(all.recv(SECOND).unwrap().unwrap().1, b"2");
        for _ in 0..10 {
            publ.publish(b"a.z", b"3").unwrap();
        }
        let mut got = 0;
        while sub.recv(Duration::from_millis(20)).unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, 3, "a full subscriber queue drops, never blocks");
    }
}
