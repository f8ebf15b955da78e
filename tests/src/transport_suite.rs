//! Transport conformance suite: every [`Transport`] backend must pass these.
//!
//! Each check is a plain function taking `&dyn Transport`;
//! [`transport_suite!`](crate::transport_suite) stamps them out as `#[test]`s
//! in a module named after the backend, e.g. `nng::reqrep_round_trip`.
//!
//! Rules the checks follow: every loop that sends traffic is bounded, and
//! conditions that need time (connecting, reconnecting) are polled with a
//! deadline — a fixed sleep is never the assertion.

use crate::ports::tcp_url;
use gestor_sdk::transport::{Endpoint, Subscriber, Transport, TransportOptions};
use gestor_sdk::{Publisher, Replier, RequestHandler, Requester, TransportError, Triage};
use rand::{Rng, RngCore};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How long PUB-SUB and reconnects get to settle before a check fails.
const SETTLE: Duration = Duration::from_secs(5);
/// Request timeout for requests that are expected to succeed.
const OK_TIMEOUT: Duration = Duration::from_secs(5);

/// Stamp out the whole suite for one backend.
///
/// * `$name` — module name, which prefixes the test names.
/// * `$make` — an expression whose value implements `Transport`
///   (evaluated once per test).
#[macro_export]
macro_rules! transport_suite {
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let transport = $make;
                $crate::transport_suite::$test(&transport);
            }
        )*
    };
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::transport_suite!(@tests $make;
                reqrep_round_trip,
                reqrep_triage_answers_or_hands_on,
                reqrep_concurrent_slow_handler,
                reqrep_continuation_is_told_how_long_it_queued,
                reqrep_urgent_requests_go_first,
                reqrep_timeout_when_peer_down,
                reqrep_recovers_after_replier_restart,
                reqrep_one_mebibyte,
                oversize_send_is_too_large,
                oversize_frame_is_dropped_and_replier_keeps_serving,
                pubsub_prefix_filtering,
                pubsub_fan_out,
                pubsub_bound_subscriber_many_publishers,
                pubsub_oversize_frame_is_dropped,
                publish_never_blocks,
                ipc_addresses_work,
                inproc_addresses_work,
                drop_releases_address,
                address_errors_are_typed,
            );
        }
    };
}

// ---------------------------------------------------------------- helpers

fn opts() -> TransportOptions {
    TransportOptions::default()
}

fn echo() -> Arc<dyn RequestHandler> {
    Arc::new(|req: &[u8]| req.to_vec())
}

fn replier(t: &dyn Transport, url: &str, h: Arc<dyn RequestHandler>) -> Box<dyn Replier> {
    match t.replier(url, h, &opts()) {
        Ok(r) => r,
        Err(e) => panic!("{}: replier on {url}: {e}", t.name()),
    }
}

fn requester(t: &dyn Transport, url: &str) -> Box<dyn Requester> {
    match t.requester(url, &opts()) {
        Ok(r) => r,
        Err(e) => panic!("{}: requester to {url}: {e}", t.name()),
    }
}

fn publisher(t: &dyn Transport, ep: &Endpoint, o: &TransportOptions) -> Box<dyn Publisher> {
    match t.publisher(ep, o) {
        Ok(p) => p,
        Err(e) => panic!("{}: publisher {ep:?}: {e}", t.name()),
    }
}

fn subscriber(t: &dyn Transport, ep: &Endpoint, prefixes: &[&[u8]]) -> Box<dyn Subscriber> {
    match t.subscriber(ep, prefixes, &opts()) {
        Ok(s) => s,
        Err(e) => panic!("{}: subscriber {ep:?}: {e}", t.name()),
    }
}

fn must_request(r: &mut dyn Requester, payload: &[u8]) -> Vec<u8> {
    match r.request(payload, OK_TIMEOUT) {
        Ok(reply) => reply,
        Err(e) => panic!("request to {}: {e}", r.url()),
    }
}

/// Publish `(topic, payload)` until `sub` yields a message (or the deadline).
/// Needed because a PUB-SUB connection takes time and early messages are lost.
fn publish_until_received(
    publ: &mut dyn Publisher,
    sub: &mut dyn Subscriber,
    topic: &[u8],
    payload: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if let Err(e) = publ.publish(topic, payload) {
            panic!("publish: {e}");
        }
        match sub.recv(Duration::from_millis(50)) {
            Ok(Some(msg)) => return msg,
            Ok(None) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("subscriber saw nothing within {SETTLE:?}");
}

fn ipc_url(dir: &tempfile::TempDir, name: &str) -> String {
    format!("ipc://{}", dir.path().join(name).display())
}

// ----------------------------------------------------------------- REQ-REP

pub fn reqrep_round_trip(t: &dyn Transport) {
    let url = tcp_url();
    let rep = replier(t, &url, Arc::new(|req: &[u8]| [b"re:", req].concat()));
    assert_eq!(rep.url(), url);
    let mut req = requester(t, &url);
    assert_eq!(req.url(), url);
    for i in 0..10u8 {
        assert_eq!(
            must_request(req.as_mut(), &[i, 0, i]),
            vec![b'r', b'e', b':', i, 0, i]
        );
    }
    // Empty messages are messages too.
    assert_eq!(must_request(req.as_mut(), b""), b"re:".to_vec());
}

/// Answers `fast…` in triage, hands `cont…` on as a continuation and
/// everything else to `handle`; counts what ran where.
#[derive(Default)]
struct Triaged {
    triaged: AtomicUsize,
    handled: AtomicUsize,
    continued: Arc<AtomicUsize>,
}

impl RequestHandler for Triaged {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        [b"worker:", request].concat()
    }
    fn triage(&self, request: &[u8], _source: Option<&str>) -> Triage {
        self.triaged.fetch_add(1, Ordering::SeqCst);
        if request.starts_with(b"fast") {
            Triage::Reply([b"io:", request].concat())
        } else if request.starts_with(b"cont") {
            let (request, continued) = (request.to_vec(), Arc::clone(&self.continued));
            Triage::Continue(Box::new(move |_queued| {
                continued.fetch_add(1, Ordering::SeqCst);
                [b"continued:", &request[..]].concat()
            }))
        } else {
            Triage::Worker
        }
    }
}

/// Every backend offers each request to `triage` and follows its answer:
/// a reply made there, a continuation or the handler on a worker.
pub fn reqrep_triage_answers_or_hands_on(t: &dyn Transport) {
    let url = tcp_url();
    let handler = Arc::new(Triaged::default());
    let _rep = replier(t, &url, handler.clone());
    let mut req = requester(t, &url);
    for i in 0..5u8 {
        assert_eq!(
            must_request(req.as_mut(), &[b'f', b'a', b's', b't', i]),
            [b"io:fast", &[i][..]].concat()
        );
        assert_eq!(
            must_request(req.as_mut(), &[b'c', b'o', b'n', b't', i]),
            [b"continued:cont", &[i][..]].concat()
        );
        assert_eq!(
            must_request(req.as_mut(), &[b's', b'l', b'o', b'w', i]),
            [b"worker:slow", &[i][..]].concat()
        );
    }
    assert_eq!(handler.triaged.load(Ordering::SeqCst), 15);
    assert_eq!(handler.continued.load(Ordering::SeqCst), 5);
    assert_eq!(
        handler.handled.load(Ordering::SeqCst),
        5,
        "only the slow requests reach handle"
    );
}

/// A one-worker replier's handler for the queueing checks: every request
/// is continued on the worker (`urgent…` ones as `Triage::Urgent`), `hold`
/// keeps the worker until released, and each run is recorded with how long
/// its request queued.
#[derive(Default)]
struct HeldWorker {
    triaged: AtomicUsize,
    holding: AtomicBool,
    release: AtomicBool,
    ran: std::sync::Mutex<Vec<(Vec<u8>, Duration)>>,
}

struct Held(Arc<HeldWorker>);

impl RequestHandler for Held {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        request.to_vec()
    }
    fn triage(&self, request: &[u8], _source: Option<&str>) -> Triage {
        self.0.triaged.fetch_add(1, Ordering::SeqCst);
        let (w, request) = (Arc::clone(&self.0), request.to_vec());
        let urgent = request.starts_with(b"urgent");
        let rest: gestor_sdk::transport::Continuation = Box::new(move |queued| {
            if request == b"hold" {
                w.holding.store(true, Ordering::SeqCst);
                let cap = Instant::now() + Duration::from_secs(10);
                while !w.release.load(Ordering::SeqCst) && Instant::now() < cap {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            w.ran.lock().unwrap().push((request.clone(), queued));
            request
        });
        if urgent {
            Triage::Urgent(rest)
        } else {
            Triage::Continue(rest)
        }
    }
}

/// Sends `hold` to a one-worker replier serving [`HeldWorker`], and once it
/// holds the worker, each of `behind` in turn, each taken in (triaged)
/// before the next is sent; after `hold_for` more it releases the worker.
/// Every request must succeed. What ran, in order, with its queueing time.
fn queue_behind_held_worker(
    t: &dyn Transport,
    behind: &[&'static [u8]],
    hold_for: Duration,
) -> Vec<(Vec<u8>, Duration)> {
    let url = tcp_url();
    let worker = Arc::new(HeldWorker::default());
    let one_worker = TransportOptions {
        replier_workers: 1,
        ..opts()
    };
    let _rep = t
        .replier(&url, Arc::new(Held(Arc::clone(&worker))), &one_worker)
        .unwrap_or_else(|e| panic!("{}: replier on {url}: {e}", t.name()));
    let send = |payload: &'static [u8]| {
        let mut req = requester(t, &url);
        thread::spawn(move || req.request(payload, OK_TIMEOUT))
    };
    let deadline = Instant::now() + SETTLE;
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        while !cond() {
            assert!(Instant::now() < deadline, "{}: {what}", t.name());
            thread::sleep(Duration::from_millis(2));
        }
    };
    let mut sent = vec![send(b"hold")];
    wait_for("hold never ran", &|| worker.holding.load(Ordering::SeqCst));
    for (i, payload) in behind.iter().enumerate() {
        sent.push(send(payload));
        wait_for("a request behind a busy worker was not taken in", &|| {
            worker.triaged.load(Ordering::SeqCst) == i + 2
        });
    }
    // The stimulus, not a wait for a condition: the worker stays busy this
    // much longer while the others sit in the queue.
    thread::sleep(hold_for);
    worker.release.store(true, Ordering::SeqCst);
    for (s, payload) in sent
        .into_iter()
        .zip([&b"hold"[..]].into_iter().chain(behind.iter().copied()))
    {
        let reply = s
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
        assert_eq!(reply, payload, "{}", t.name());
    }
    let ran = worker.ran.lock().unwrap().clone();
    ran
}

/// With one worker held by a request, the next one is still taken in and
/// triaged at once (it waits in the backend's queue, not unread in the
/// library), and its continuation is told how long it waited there — what
/// a server needs to turn away work its caller has likely given up on.
pub fn reqrep_continuation_is_told_how_long_it_queued(t: &dyn Transport) {
    const HOLD: Duration = Duration::from_millis(300);
    let ran = queue_behind_held_worker(t, &[b"queued"], HOLD);
    let waited = ran
        .iter()
        .find(|(r, _)| r == b"queued")
        .map(|(_, d)| *d)
        .expect("queued request ran");
    assert!(
        waited >= HOLD,
        "{}: waited {waited:?} behind a worker held {HOLD:?} after it was queued",
        t.name()
    );
}

/// With the one worker held, an `Urgent` request that arrives after
/// `Continue` ones is still served before them.
pub fn reqrep_urgent_requests_go_first(t: &dyn Transport) {
    let ran = queue_behind_held_worker(t, &[b"normal1", b"normal2", b"urgent"], Duration::ZERO);
    let order: Vec<&[u8]> = ran.iter().map(|(r, _)| &r[..]).collect();
    assert_eq!(
        order,
        [&b"hold"[..], b"urgent", b"normal1", b"normal2"],
        "{}: served in this order",
        t.name()
    );
}

/// One request blocks in its handler until the 20 others have completed; if
/// the replier served them one at a time, they could not complete and the
/// slow handler would hit its (deadlock-breaking) cap instead.
pub fn reqrep_concurrent_slow_handler(t: &dyn Transport) {
    const FAST: usize = 20;
    let url = tcp_url();
    let slow_started = Arc::new(AtomicBool::new(false));
    let fast_done = Arc::new(AtomicUsize::new(0));
    let handler: Arc<dyn RequestHandler> = {
        let slow_started = Arc::clone(&slow_started);
        let fast_done = Arc::clone(&fast_done);
        Arc::new(move |req: &[u8]| {
            if req != b"slow" {
                return req.to_vec();
            }
            slow_started.store(true, Ordering::SeqCst);
            let cap = Instant::now() + Duration::from_secs(10);
            while fast_done.load(Ordering::SeqCst) < FAST && Instant::now() < cap {
                thread::sleep(Duration::from_millis(5));
            }
            if fast_done.load(Ordering::SeqCst) >= FAST {
                b"released by fast".to_vec()
            } else {
                b"cap reached".to_vec()
            }
        })
    };
    let _rep = replier(t, &url, handler);

    let slow = {
        let mut req = requester(t, &url);
        thread::spawn(move || req.request(b"slow", Duration::from_secs(20)))
    };
    let deadline = Instant::now() + SETTLE;
    while !slow_started.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "slow request never reached the handler"
        );
        thread::sleep(Duration::from_millis(5));
    }

    let fast: Vec<_> = (0..FAST)
        .map(|i| {
            let mut req = requester(t, &url);
            let fast_done = Arc::clone(&fast_done);
            thread::spawn(move || {
                let payload = format!("fast {i}").into_bytes();
                let reply = req.request(&payload, Duration::from_secs(20));
                if matches!(&reply, Ok(r) if *r == payload) {
                    fast_done.fetch_add(1, Ordering::SeqCst);
                }
                reply.map(|r| r == payload)
            })
        })
        .collect();
    for f in fast {
        match f.join() {
            Ok(Ok(true)) => {}
            other => panic!("fast request failed: {other:?}"),
        }
    }
    match slow.join() {
        Ok(Ok(reply)) => assert_eq!(
            String::from_utf8_lossy(&reply),
            "released by fast",
            "fast requests were held up by the slow one"
        ),
        other => panic!("slow request failed: {other:?}"),
    }
}

pub fn reqrep_timeout_when_peer_down(t: &dyn Transport) {
    let url = tcp_url(); // nobody listens here
    let mut req = requester(t, &url);
    let started = Instant::now();
    match req.request(b"anyone?", Duration::from_millis(300)) {
        Err(TransportError::Timeout {
            url: u,
            timeout_ms: 300,
        }) => assert_eq!(u, url),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The timeout is honoured, not stretched indefinitely (generous bound).
    assert!(started.elapsed() < Duration::from_secs(5));
    // And it stays usable: a second attempt times out the same way.
    assert!(matches!(
        req.request(b"still?", Duration::from_millis(100)),
        Err(TransportError::Timeout { .. })
    ));
}

pub fn reqrep_recovers_after_replier_restart(t: &dyn Transport) {
    let url = tcp_url();
    let mut req = requester(t, &url);
    let first = replier(t, &url, Arc::new(|_: &[u8]| b"first".to_vec()));
    assert_eq!(must_request(req.as_mut(), b"hi"), b"first");
    drop(first);

    // Unanswered: it times out, or fails as a lost connection when the
    // request went out on the connection the replier was closing (nng's
    // requester does not re-send).
    match req.request(b"hi", Duration::from_millis(300)) {
        Err(TransportError::Timeout { .. } | TransportError::ConnectionLost { .. }) => {}
        other => panic!("expected a failure with the replier gone, got {other:?}"),
    }

    let _second = replier(t, &url, Arc::new(|_: &[u8]| b"second".to_vec()));
    // The same requester reconnects by itself; a stale reply must not leak in.
    assert_eq!(must_request(req.as_mut(), b"hi"), b"second");
    assert_eq!(must_request(req.as_mut(), b"again"), b"second");
}

pub fn reqrep_one_mebibyte(t: &dyn Transport) {
    let url = tcp_url();
    let _rep = replier(t, &url, echo());
    let mut req = requester(t, &url);
    let mut payload = vec![0u8; 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut payload);
    let reply = must_request(req.as_mut(), &payload);
    assert!(reply == payload, "1 MiB payload came back altered");
}

pub fn oversize_send_is_too_large(t: &dyn Transport) {
    let small = TransportOptions {
        max_message_bytes: 1024,
        ..opts()
    };
    let url = tcp_url();
    let mut req = match t.requester(&url, &small) {
        Ok(r) => r,
        Err(e) => panic!("requester: {e}"),
    };
    assert_eq!(
        req.request(&[7u8; 1025], OK_TIMEOUT),
        Err(TransportError::TooLarge {
            size: 1025,
            limit: 1024
        })
    );
    let mut publ = publisher(t, &Endpoint::Bind(tcp_url()), &small);
    // The frame is topic + separator + payload.
    assert_eq!(
        publ.publish(b"topic", &[1u8; 1019]),
        Err(TransportError::TooLarge {
            size: 1025,
            limit: 1024
        })
    );
    assert_eq!(publ.publish(b"topic", &[1u8; 1018]), Ok(()));
}

/// A peer with a bigger limit sends a frame over the replier's limit: the
/// frame never reaches the handler, and the replier keeps serving others.
pub fn oversize_frame_is_dropped_and_replier_keeps_serving(t: &dyn Transport) {
    let limit = 64 * 1024;
    let url = tcp_url();
    let seen_big = Arc::new(AtomicBool::new(false));
    let handler: Arc<dyn RequestHandler> = {
        let seen_big = Arc::clone(&seen_big);
        Arc::new(move |req: &[u8]| {
            if req.len() > limit {
                seen_big.store(true, Ordering::SeqCst);
            }
            req.to_vec()
        })
    };
    let small = TransportOptions {
        max_message_bytes: limit,
        ..opts()
    };
    let _rep = match t.replier(&url, handler, &small) {
        Ok(r) => r,
        Err(e) => panic!("replier: {e}"),
    };
    let mut normal = requester(t, &url);
    assert_eq!(must_request(normal.as_mut(), b"before"), b"before");

    let mut raw = requester(t, &url); // default limit: 4 MiB
                                      // Unanswered: it times out, or (nng, whose requester does not re-send)
                                      // fails when the replier drops the connection.
    match raw.request(&vec![9u8; 2 * limit], Duration::from_millis(500)) {
        Err(TransportError::Timeout { .. } | TransportError::ConnectionLost { .. }) => {}
        other => panic!("oversize request should go unanswered, got {other:?}"),
    }
    drop(raw);
    assert!(
        !seen_big.load(Ordering::SeqCst),
        "oversize frame reached the handler"
    );
    assert_eq!(must_request(normal.as_mut(), b"after"), b"after");
    let mut fresh = requester(t, &url);
    assert_eq!(must_request(fresh.as_mut(), b"fresh"), b"fresh");
}

// ----------------------------------------------------------------- PUB-SUB

pub fn pubsub_prefix_filtering(t: &dyn Transport) {
    let url = tcp_url();
    let mut publ = publisher(t, &Endpoint::Bind(url.clone()), &opts());
    let mut sub = subscriber(t, &Endpoint::Dial(url), &[b"alive.", b"ring"]);

    let first = publish_until_received(publ.as_mut(), sub.as_mut(), b"alive.n1", b"p0");
    assert_eq!(first, (b"alive.n1".to_vec(), b"p0".to_vec()));

    // Connected now: interleave unwanted topics with wanted ones. A topic
    // that merely shares bytes with a prefix across the separator must not
    // match ("alive" + 0x00 + "." is not "alive.").
    let unwanted: [&[u8]; 4] = [b"other", b"alive", b"rin", b"xalive."];
    for i in 0..20u8 {
        for topic in unwanted {
            publ.publish(topic, b".x")
                .unwrap_or_else(|e| panic!("publish: {e}"));
        }
        publ.publish(b"alive.n2", &[i])
            .unwrap_or_else(|e| panic!("publish: {e}"));
        publ.publish(b"ring", &[i])
            .unwrap_or_else(|e| panic!("publish: {e}"));
        publ.publish(b"ring.join", &[0, i, 0])
            .unwrap_or_else(|e| panic!("publish: {e}"));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while got.len() < 60 && Instant::now() < deadline {
        match sub.recv(Duration::from_millis(100)) {
            Ok(Some(msg)) => got.push(msg),
            Ok(None) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    for (topic, _) in &got {
        assert!(
            topic.starts_with(b"alive.") || topic.starts_with(b"ring"),
            "unsubscribed topic delivered: {:?}",
            String::from_utf8_lossy(topic)
        );
    }
    // Each wanted topic shows up, and payloads (even with 0x00) survive.
    assert!(got.iter().any(|(t, p)| t == b"alive.n2" && p.len() == 1));
    assert!(got.iter().any(|(t, _)| t == b"ring"));
    assert!(got
        .iter()
        .any(|(t, p)| t == b"ring.join" && p.len() == 3 && p[0] == 0));
}

pub fn pubsub_fan_out(t: &dyn Transport) {
    let url = tcp_url();
    let mut publ = publisher(t, &Endpoint::Bind(url.clone()), &opts());
    let mut subs: Vec<_> = (0..3)
        .map(|_| subscriber(t, &Endpoint::Dial(url.clone()), &[b"ring"]))
        .collect();
    let mut seen = [false; 3];
    let deadline = Instant::now() + SETTLE;
    while seen.iter().any(|s| !s) {
        assert!(Instant::now() < deadline, "fan-out incomplete: {seen:?}");
        publ.publish(b"ring.update", b"v")
            .unwrap_or_else(|e| panic!("publish: {e}"));
        for (i, sub) in subs.iter_mut().enumerate() {
            if let Ok(Some((topic, payload))) = sub.recv(Duration::from_millis(20)) {
                assert_eq!(
                    (topic.as_slice(), payload.as_slice()),
                    (&b"ring.update"[..], &b"v"[..])
                );
                seen[i] = true;
            }
        }
    }
}

/// A frame over the subscriber's limit never comes out of `recv`; smaller
/// frames from the same publisher still do.
pub fn pubsub_oversize_frame_is_dropped(t: &dyn Transport) {
    let limit = 16 * 1024;
    let url = tcp_url();
    let mut publ = publisher(t, &Endpoint::Bind(url.clone()), &opts()); // 4 MiB limit
    let small = TransportOptions {
        max_message_bytes: limit,
        ..opts()
    };
    let mut sub = match t.subscriber(&Endpoint::Dial(url), &[b"s"], &small) {
        Ok(s) => s,
        Err(e) => panic!("subscriber: {e}"),
    };
    publish_until_received(publ.as_mut(), sub.as_mut(), b"s", b"hello");
    // nng and zmq both drop the connection that carried an oversize frame;
    // the subscriber reconnects and later frames arrive again.
    publ.publish(b"s", &vec![1u8; 4 * limit])
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let deadline = Instant::now() + SETTLE;
    loop {
        assert!(
            Instant::now() < deadline,
            "subscriber stopped receiving after an oversize frame"
        );
        publ.publish(b"s", b"small")
            .unwrap_or_else(|e| panic!("publish: {e}"));
        match sub.recv(Duration::from_millis(50)) {
            Ok(Some((_, payload))) if payload.len() >= limit => panic!("oversize frame delivered"),
            Ok(Some((_, payload))) if payload == b"small" => break,
            Ok(_) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Clients publish alive signals to a gestor's bound SUB.
pub fn pubsub_bound_subscriber_many_publishers(t: &dyn Transport) {
    let url = tcp_url();
    let mut sub = subscriber(t, &Endpoint::Bind(url.clone()), &[b"alive."]);
    let mut pubs: Vec<_> = (0..3)
        .map(|_| publisher(t, &Endpoint::Dial(url.clone()), &opts()))
        .collect();
    let mut seen = [false; 3];
    let deadline = Instant::now() + SETTLE;
    while seen.iter().any(|s| !s) {
        assert!(
            Instant::now() < deadline,
            "publishers not all heard: {seen:?}"
        );
        for (i, p) in pubs.iter_mut().enumerate() {
            p.publish(format!("alive.client{i}").as_bytes(), b"up")
                .unwrap_or_else(|e| panic!("publish: {e}"));
        }
        while let Ok(Some((topic, payload))) = sub.recv(Duration::from_millis(20)) {
            assert_eq!(payload, b"up");
            let i = match topic.as_slice() {
                b"alive.client0" => 0,
                b"alive.client1" => 1,
                b"alive.client2" => 2,
                other => panic!("unexpected topic {:?}", String::from_utf8_lossy(other)),
            };
            seen[i] = true;
        }
    }
}

/// Publish `n` messages on another thread and report whether it finished
/// within `limit`; a blocked publisher fails the check instead of hanging it.
fn publish_n_returns(
    mut publ: Box<dyn Publisher>,
    n: usize,
    limit: Duration,
) -> Box<dyn Publisher> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let payload = vec![0xabu8; 1024];
        let mut result = Ok(());
        for _ in 0..n {
            if let Err(e) = publ.publish(b"flood", &payload) {
                result = Err(e);
                break;
            }
        }
        let _ = tx.send((publ, result));
    });
    match rx.recv_timeout(limit) {
        Ok((publ, Ok(()))) => publ,
        Ok((_, Err(e))) => panic!("publish failed: {e}"),
        Err(_) => panic!("publishing {n} messages did not return within {limit:?}"),
    }
}

pub fn publish_never_blocks(t: &dyn Transport) {
    let shallow = TransportOptions {
        queue_depth: 16,
        ..opts()
    };
    let limit = Duration::from_secs(20);
    // No subscriber at all, bound and dialing.
    let bound = publisher(t, &Endpoint::Bind(tcp_url()), &shallow);
    drop(publish_n_returns(bound, 10_000, limit));
    let dialing = publisher(t, &Endpoint::Dial(tcp_url()), &shallow);
    drop(publish_n_returns(dialing, 10_000, limit));

    // A connected subscriber that stops reading.
    let url = tcp_url();
    let mut publ = publisher(t, &Endpoint::Bind(url.clone()), &shallow);
    let mut sub = match t.subscriber(&Endpoint::Dial(url), &[b"flood"], &shallow) {
        Ok(s) => s,
        Err(e) => panic!("subscriber: {e}"),
    };
    publish_until_received(publ.as_mut(), sub.as_mut(), b"flood", b"hello");
    let _publ = publish_n_returns(publ, 10_000, limit);
    // The subscriber is still alive and can read what was queued for it.
    let got = sub.recv(Duration::from_secs(1));
    assert!(matches!(got, Ok(Some(_))), "subscriber broken: {got:?}");
}

// --------------------------------------------------------------- addresses

pub fn ipc_addresses_work(t: &dyn Transport) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let rep_url = ipc_url(&dir, "rep.sock");
    let _rep = replier(t, &rep_url, echo());
    let mut req = requester(t, &rep_url);
    assert_eq!(must_request(req.as_mut(), b"over ipc"), b"over ipc");

    let sig_url = ipc_url(&dir, "sig.sock");
    let mut sub = subscriber(t, &Endpoint::Bind(sig_url.clone()), &[b""]);
    let mut publ = publisher(t, &Endpoint::Dial(sig_url), &opts());
    let got = publish_until_received(publ.as_mut(), sub.as_mut(), b"t", b"ipc");
    assert_eq!(got, (b"t".to_vec(), b"ipc".to_vec()));
}

pub fn inproc_addresses_work(t: &dyn Transport) {
    let tag: u64 = rand::thread_rng().gen();
    let rep_url = format!("inproc://gestor-suite-rep-{tag}");
    let _rep = replier(t, &rep_url, echo());
    let mut req = requester(t, &rep_url);
    assert_eq!(must_request(req.as_mut(), b"in process"), b"in process");

    let sig_url = format!("inproc://gestor-suite-sig-{tag}");
    let mut publ = publisher(t, &Endpoint::Bind(sig_url.clone()), &opts());
    let mut sub = subscriber(t, &Endpoint::Dial(sig_url), &[b"t"]);
    let got = publish_until_received(publ.as_mut(), sub.as_mut(), b"t", b"inproc");
    assert_eq!(got, (b"t".to_vec(), b"inproc".to_vec()));
}

/// Dropping a replier, publisher or subscriber stops its threads and frees
/// its address, so the same URL can be bound again at once (no retry) and
/// serves normally.
pub fn drop_releases_address(t: &dyn Transport) {
    let url = tcp_url();
    for round in 0..3u8 {
        let rep = replier(t, &url, Arc::new(move |_: &[u8]| vec![round]));
        let mut req = requester(t, &url);
        assert_eq!(must_request(req.as_mut(), b"which"), vec![round]);
        drop(rep);
    }

    // Bound publishers and subscribers release their address on drop too.
    let url = tcp_url();
    for _ in 0..2 {
        match t.publisher(&Endpoint::Bind(url.clone()), &opts()) {
            Ok(p) => drop(p),
            Err(e) => panic!("publisher rebind {url}: {e}"),
        }
        match t.subscriber(&Endpoint::Bind(url.clone()), &[b""], &opts()) {
            Ok(s) => drop(s),
            Err(e) => panic!("subscriber rebind {url}: {e}"),
        }
    }
}

pub fn address_errors_are_typed(t: &dyn Transport) {
    let url = tcp_url();
    let _rep = replier(t, &url, echo());
    match t.replier(&url, echo(), &opts()) {
        Err(TransportError::Bind { url: u, reason }) => {
            assert_eq!(u, url);
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("expected Bind, got {e:?}"),
        Ok(_) => panic!("second replier bound {url} too"),
    }
    // A NUL cannot reach a C library's address parser (the zmq crate would
    // panic building the C string).
    for bad in [
        "nonsense://x",
        "tcp://",
        "no scheme at all",
        "tcp://127.0.0.1:1\0x",
    ] {
        match t.replier(bad, echo(), &opts()) {
            Err(TransportError::BadAddress { url, .. }) => assert_eq!(url, bad),
            Err(e) => panic!("replier {bad:?}: expected BadAddress, got {e:?}"),
            Ok(_) => panic!("replier bound {bad:?}"),
        }
        match t.requester(bad, &opts()) {
            Err(TransportError::BadAddress { url, .. }) => assert_eq!(url, bad),
            Err(e) => panic!("requester {bad:?}: expected BadAddress, got {e:?}"),
            Ok(_) => panic!("requester accepted {bad:?}"),
        }
    }
}
