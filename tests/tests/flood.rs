//! A register flood from one source does not stop another client's lookups,
//! on both transports and both stores; requests that waited too long for a
//! worker are answered `busy` instead of being run late. Password hashing runs at its production cost
//! here (argon2id, 19 MiB, 2 passes): that is what the flood is made of.
//! Two combinations (nng/sqlite, zmq/sled) run one after another (each
//! floods both cores).

use gestor::config::{StorageKind, TransportKind};
use gestor_api::user::{self, Credentials};
use gestor_api::{dir, node, ring, Empty};
use gestor_client::client::{Client, ClientError};
use gestor_sdk::transport::TransportOptions;
use gestor_sdk::wire::{from_cbor, to_cbor, to_value, Reply, Request};
use gestor_sdk::{ErrorCode, Kind, Requester};
use gestor_tests::cluster::{client_layer, test_cluster};
use gestor_tests::ring::{Ring, TEST_CONFIG};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOOD_THREADS: usize = 32;
// Long enough for many flood waves and for a stall (gap over 10 s) to show.
const FLOOD: Duration = Duration::from_secs(20);
// Registered at the production argon2 cost before the flood: enough to spread
// over every gestor, few enough to keep the set-up short.
const USERS: usize = 64;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn client(transport: TransportKind, url: &str) -> Client {
    Client::new(
        client_layer(transport),
        vec![url.to_string()],
        Duration::from_secs(10),
    )
}

fn register_flood_leaves_lookups_alone(transport: TransportKind, storage: StorageKind) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let config = TEST_CONFIG
        .replace("password_memory_kib = 64", "password_memory_kib = 19456")
        .replace(
            "password_iterations = 1",
            "password_iterations = 2\nhash_slots = 1",
        );
    let ring = Ring::start_with_config(5, transport, storage, &config);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}"));
    let urls = ring.urls();
    // 200 users to look up, registered before the flood (busy answers retried).
    std::thread::scope(|s| {
        for t in 0..4 {
            let urls = urls.clone();
            s.spawn(move || {
                let mut c = client(transport, &urls[1 + t % 4]);
                for i in (t..USERS).step_by(4) {
                    let name = format!("known{i:03}");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        match c.register(&name, "pw-known") {
                            Ok(_) => break,
                            Err(ClientError::Remote(e))
                                if e.code == ErrorCode::Busy && Instant::now() < deadline =>
                            {
                                std::thread::sleep(Duration::from_millis(50))
                            }
                            Err(e) => panic!("register {name}: {e}"),
                        }
                    }
                }
            });
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let flood: Vec<_> = (0..FLOOD_THREADS)
        .map(|t| {
            let (stop, ok, busy, failed) = (stop.clone(), ok.clone(), busy.clone(), failed.clone());
            let entry = urls[0].clone();
            std::thread::spawn(move || {
                let mut c = client(transport, &entry);
                // Bounded: stops at the flag, or after 100,000 attempts.
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match c.register(&format!("flood{t:02}x{i}"), "pw-flood") {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(ClientError::Remote(e))
                            if matches!(e.code, ErrorCode::Busy | ErrorCode::RateLimited) =>
                        {
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    // Meanwhile another client looks the known users up through the others.
    let started = Instant::now();
    let (mut found, mut busy_lookups, mut errors) = (0u64, 0u64, Vec::new());
    let mut last_success = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut lookups = client(transport, &urls[1]);
    let mut k = 0usize;
    while started.elapsed() < FLOOD {
        let name = format!("known{:03}", k % USERS);
        if k.is_multiple_of(50) {
            lookups = client(transport, &urls[1 + (k / 50) % 4]);
        }
        match lookups.lookup(&name) {
            Ok(f) => {
                assert_eq!(f.user, name);
                found += 1;
                longest_gap = longest_gap.max(last_success.elapsed());
                last_success = Instant::now();
            }
            Err(ClientError::Remote(e)) if e.code == ErrorCode::Busy => busy_lookups += 1,
            Err(e) => errors.push(format!("{name}: {e}")),
        }
        k += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        let _ = f.join();
    }
    println!(
        "[{transport}/{storage}] flood: {} registered, {} busy/rate-limited, {} failed; \
         lookups meanwhile: {found} found, {busy_lookups} busy, {} errors, longest gap {:?}",
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        errors.len(),
        longest_gap
    );
    assert!(
        errors.is_empty(),
        "[{transport}/{storage}] lookups failed during the flood (only busy is acceptable): {:?}",
        &errors[..errors.len().min(10)]
    );
    assert!(
        found >= 100,
        "[{transport}/{storage}] only {found} lookups succeeded in {FLOOD:?}"
    );
    assert!(
        longest_gap < Duration::from_secs(10),
        "[{transport}/{storage}] lookups stalled for {longest_gap:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "the flood registered nobody: the test did not flood"
    );
    // Afterwards the ring is whole within 10 s and every known user is found.
    ring.wait_stable(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ring after the flood: {e}"));
    for i in 0..USERS {
        let name = format!("known{i:03}");
        client(transport, &urls[i % urls.len()])
            .lookup(&name)
            .unwrap_or_else(|e| panic!("{name} after the flood: {e}"));
    }
}

// What is under test is the hashing pool's scheduling against the I/O
// threads' fast path: it differs by transport, not by store. Each transport
// and each store still runs once; the ring and replication code is covered
// on the full matrix by ring_matrix and faults' kills.
gestor_tests::half_matrix!(straight => register_flood_leaves_lookups_alone);

/// One `node.status` request, sent once (no retry), and its reply.
fn status_once(requester: &mut dyn Requester) -> Reply {
    send_once::<node::Status>(requester, &Empty)
}

/// While the one request worker hashes a password, requests sent behind it
/// wait in the queue; with `max_queue_wait_ms` they are answered `busy`
/// unrun once they waited longer than that (the client then retries), and
/// counted. With 0 the same requests all run, late.
fn requests_that_waited_too_long_are_answered_busy(transport: TransportKind, storage: StorageKind) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for max_queue_wait_ms in [50, 0] {
        // One worker for everyone, and a hash long enough to queue behind.
        let config = TEST_CONFIG
            .replace("password_memory_kib = 64", "password_memory_kib = 19456")
            .replace("password_iterations = 1", "password_iterations = 24")
            + &format!(
                "\n[transport]\nreplier_workers = 1\nreserved_for_gestores = 0\n\
                 max_queue_wait_ms = {max_queue_wait_ms}\n"
            );
        let ring = Ring::start_with_config(1, transport, storage, &config);
        ring.wait_stable(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("gestor did not start: {e}\n{}", ring.logs()));
        let url = ring.urls()[0].clone();
        let mut probe = client_layer(transport)
            .requester(&url, &TransportOptions::default())
            .unwrap_or_else(|e| panic!("requester: {e}"));
        assert!(status_once(probe.as_mut()).ok, "an idle gestor answers");

        let done = Arc::new(AtomicBool::new(false));
        let registering = {
            let (url, done) = (url.clone(), done.clone());
            std::thread::spawn(move || {
                let result = client(transport, &url).register("queued-behind", "pw-slow");
                done.store(true, Ordering::SeqCst);
                result
            })
        };
        // Bounded: until the registration is done, or 5,000 requests.
        let (mut ran, mut shed) = (0, Vec::new());
        for _ in 0..5_000 {
            if done.load(Ordering::SeqCst) {
                break;
            }
            let reply = status_once(probe.as_mut());
            match reply.error {
                None => ran += 1,
                Some(e) if e.code == ErrorCode::Busy => shed.push(e.message),
                Some(e) => panic!("node.status: {e}"),
            }
        }
        registering
            .join()
            .expect("register thread")
            .unwrap_or_else(|e| panic!("register behind the probes: {e}"));
        let counted = ring
            .status(&url)
            .and_then(|s| s["security"]["clients_shed"].as_u64())
            .expect("node.status counts shed requests");
        let case = format!("[{transport}/{storage}] max_queue_wait_ms = {max_queue_wait_ms}");
        if max_queue_wait_ms == 0 {
            assert!(shed.is_empty(), "{case}: shed {shed:?}");
            assert_eq!(counted, 0, "{case}");
        } else {
            assert!(
                !shed.is_empty(),
                "{case}: {ran} requests ran, none waited behind the hash long enough to be shed"
            );
            assert!(
                shed.iter().all(|m| m.contains("waited")),
                "{case}: {shed:?}"
            );
            assert_eq!(counted, shed.len() as u64, "{case}");
        }
        assert!(
            status_once(probe.as_mut()).ok,
            "{case}: idle again, answers"
        );
    }
}

gestor_tests::half_matrix!(crossed => requests_that_waited_too_long_are_answered_busy);

/// The test settings with hashes of about a second (argon2id, 19 MiB, 96
/// passes) and two request workers, `reserved` of them for gestores.
fn long_hashes_on_two_workers(reserved: usize) -> String {
    TEST_CONFIG
        .replace("password_memory_kib = 64", "password_memory_kib = 19456")
        .replace("password_iterations = 1", "password_iterations = 96")
        + &format!("\n[transport]\nreplier_workers = 2\nreserved_for_gestores = {reserved}\n")
}

/// The envelope of one request of kind `K`.
fn request_frame<K: Kind>(body: &K::Request) -> Vec<u8> {
    to_cbor(&Request::new(K::NAME, to_value(body)))
}

/// One request of kind `K` sent once (no retry) through `requester`.
fn send_once<K: Kind>(requester: &mut dyn Requester, body: &K::Request) -> Reply {
    let frame = request_frame::<K>(body);
    let bytes = requester
        .request(&frame, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{}: {e}", K::NAME));
    from_cbor::<Reply>(&bytes).unwrap_or_else(|e| panic!("{} reply: {e}", K::NAME))
}

/// Only the gestores' upkeep kinds may use the reserved workers: a client
/// kind, or the owner side of a client's request that a gestor forwards
/// (`dir.register` hashes and waits for copies like the client's own
/// registration), takes one of the workers clients may hold, whoever sends
/// it, and the reserved one stays free for ring upkeep and copies.
fn client_kinds_from_gestores_leave_the_reserved_worker_free(
    transport: TransportKind,
    storage: StorageKind,
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Two workers, one of them reserved; a hash long enough to overlap.
    let config = long_hashes_on_two_workers(1);
    let ring = Ring::start_with_config(1, transport, storage, &config);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("gestor did not start: {e}\n{}", ring.logs()));
    let url = ring.urls()[0].clone();
    let gestor = || {
        test_cluster()
            .operator_layer(transport)
            .requester(&url, &TransportOptions::default())
            .unwrap_or_else(|e| panic!("requester: {e}"))
    };
    let mut probe = gestor();
    assert!(
        send_once::<node::Status>(probe.as_mut(), &Empty).ok,
        "an idle gestor answers a gestor's node.status"
    );

    let done = Arc::new(AtomicBool::new(false));
    let registering = {
        let (mut requester, done) = (gestor(), done.clone());
        std::thread::spawn(move || {
            let body = Credentials {
                username: "sent-by-a-gestor".into(),
                password: "pw-slow".into(),
                address: None,
            };
            // What a gestor forwards to the owner: an internal kind, but
            // client work. The probes below take the client worker for
            // moments too: a registration that met one is sent again
            // (bounded).
            let mut reply = send_once::<dir::Register>(requester.as_mut(), &body);
            for _ in 0..100 {
                match &reply.error {
                    Some(e) if e.code == ErrorCode::Busy => {
                        std::thread::sleep(Duration::from_millis(10));
                        reply = send_once::<dir::Register>(requester.as_mut(), &body);
                    }
                    _ => break,
                }
            }
            done.store(true, Ordering::SeqCst);
            reply
        })
    };
    // Bounded: until the registration is done, or for 30 s.
    let mut turned_away = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !done.load(Ordering::SeqCst) {
        let reply = send_once::<node::Status>(probe.as_mut(), &Empty);
        if let Some(e) = reply.error {
            assert_eq!(e.code, ErrorCode::Busy, "node.status: {e}");
            turned_away = Some(e.message);
            break;
        }
        // Gaps, so that the registration finds the worker free.
        std::thread::sleep(Duration::from_millis(5));
    }
    let case = format!("[{transport}/{storage}]");
    let Some(message) = turned_away else {
        let registered = registering.join().map(|r| format!("{r:?}"));
        panic!("{case}: a gestor's node.status always ran beside its registration: {registered:?}")
    };
    assert!(
        message.contains("for clients is taken"),
        "{case}: {message}"
    );
    // The same kind in an indefinite-length envelope, whose kind the
    // headers do not show: still client work.
    let mut indefinite = vec![0xbf];
    for item in [
        to_cbor(&"v"),
        to_cbor(&1u32),
        to_cbor(&"kind"),
        to_cbor(&<node::Status as Kind>::NAME),
        to_cbor(&"body"),
        to_cbor(&()),
    ] {
        indefinite.extend(item);
    }
    indefinite.push(0xff);
    let bytes = probe
        .request(&indefinite, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("indefinite node.status: {e}"));
    let reply = from_cbor::<Reply>(&bytes).expect("indefinite node.status reply");
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(ErrorCode::Busy),
        "{case}: an indefinite-length envelope reached the reserved worker"
    );
    // The gestores' own kind still finds the reserved worker.
    let whoami = send_once::<ring::Whoami>(probe.as_mut(), &Empty);
    assert!(whoami.ok, "{case}: ring.whoami: {:?}", whoami.error);
    let registered = registering.join().expect("register thread");
    assert!(registered.ok, "{case}: register: {:?}", registered.error);
}

gestor_tests::half_matrix!(straight => client_kinds_from_gestores_leave_the_reserved_worker_free);

/// A gestor whose workers are all busy misses the ring's requests, but its
/// transport's I/O thread still answers pings: the others count it slow,
/// not dead, and keep it. (Dropping it moved its keys about and turned an
/// overload into errors; ARCHITECTURE §2, "Overload".)
fn a_gestor_with_every_worker_busy_stays_in_the_ring(
    transport: TransportKind,
    storage: StorageKind,
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Two workers, none reserved, and hashes of about a second: two
    // registrations hold every worker far past the ring's RPC timeout.
    let config = long_hashes_on_two_workers(0);
    let ring = Ring::start_with_config(3, transport, storage, &config);
    ring.wait_stable(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let urls = ring.urls();
    let case = format!("[{transport}/{storage}]");

    // Bounded: two threads registering one user after another at every
    // gestor for 5 s (many stabilize rounds and RPC timeouts), at most
    // 40 attempts each.
    let until = Instant::now() + Duration::from_secs(5);
    let loaders: Vec<_> = (0..2 * urls.len())
        .map(|t| {
            let url = urls[t % urls.len()].clone();
            std::thread::spawn(move || {
                let mut requester = client_layer(transport)
                    .requester(&url, &TransportOptions::default())
                    .unwrap_or_else(|e| panic!("requester: {e}"));
                for i in 0..40 {
                    if Instant::now() >= until {
                        break;
                    }
                    let body = Credentials {
                        username: format!("busy-{t}-{i}"),
                        password: "pw-slow".into(),
                        address: None,
                    };
                    let frame = request_frame::<user::Register>(&body);
                    // Busy answers and timeouts are expected: only the load matters.
                    let _ = requester.request(&frame, Duration::from_secs(10));
                }
            })
        })
        .collect();
    for loader in loaders {
        loader.join().expect("load thread");
    }

    // Once the load is over every gestor answers its status again.
    let mut statuses = Vec::new();
    for url in &urls {
        let mut status = None;
        gestor_tests::cluster::wait_until(Duration::from_secs(30), || {
            status = ring.status(url);
            status.is_some()
        });
        let status = status.unwrap_or_else(|| panic!("{case}: {url} gives no status"));
        statuses.push((url.clone(), status["sections"]["ring"].clone()));
    }
    let figure = |ring: &serde_json::Value, name: &str| ring[name].as_u64().unwrap_or(0);
    let alive: u64 = statuses
        .iter()
        .map(|(_, r)| figure(r, "timeouts_alive"))
        .sum();
    let dropped: Vec<String> = statuses
        .iter()
        .filter(|(_, r)| figure(r, "gestors_dropped") > 0)
        .map(|(url, r)| format!("{url} dropped {}", r["gestors_dropped"]))
        .collect();
    assert!(
        dropped.is_empty(),
        "{case}: live gestores dropped each other: {dropped:?}\n{}",
        ring.logs()
    );
    // The load did what it is for: requests timed out to live gestores.
    assert!(
        alive > 0,
        "{case}: no request timed out to a live gestor; the load did not hold the workers"
    );
    ring.wait_stable(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{case}: ring not whole after the load: {e}"));
}

gestor_tests::half_matrix!(straight => a_gestor_with_every_worker_busy_stays_in_the_ring);
