//! The directory on a ring of 8 real `gestor node` processes, for every
//! backend combination (nng/zmq × sqlite/sled).

use gestor::config::{StorageKind, TransportKind};
use gestor_backends::build_transport;
use gestor_chord::check_invariants;
use gestor_client::client::{Client, ClientError};
use gestor_client::directory::AliveSender;
use gestor_sdk::wire::{from_cbor, Reply};
use gestor_sdk::{ErrorCode, TransportOptions};
use gestor_tests::cluster::client_layer;
use gestor_tests::cluster::wait_until;
use gestor_tests::ring::Ring;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const NODES: usize = 8;
const USERS_VIA_ONE: usize = 200;
const USERS_VIA_RANDOM: usize = 800;

fn client(ring: &Ring, url: &str) -> Client {
    Client::new(
        client_layer(ring.transport),
        vec![url.to_string()],
        Duration::from_secs(10),
    )
}

fn address_of(i: usize) -> String {
    format!("127.0.0.1:{}", 20_000 + i)
}

fn remote_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Remote(h) => h.code,
        other => panic!("expected an error reply, got: {other}"),
    }
}

fn directory_on_ring(transport: TransportKind, storage: StorageKind) {
    let ring = Ring::start(NODES, transport, storage);
    let views = ring
        .wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    assert_eq!(ring.joined(), NODES);
    check_invariants(&views).expect("one ordered ring");
    let urls = ring.urls();

    // 200 users registered and logged in through one gestor, 800 more through
    // random gestores, from 4 client threads.
    let total = USERS_VIA_ONE + USERS_VIA_RANDOM;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let ring = &ring;
            let urls = &urls;
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                for i in (t..total).step_by(4) {
                    let entry = if i < USERS_VIA_ONE {
                        &urls[0]
                    } else {
                        &urls[rng.gen_range(0..urls.len())]
                    };
                    let mut c = client(ring, entry);
                    let name = format!("user{i}");
                    c.register(&name, &format!("pw-{i}"))
                        .unwrap_or_else(|e| panic!("register {name} via {entry}: {e}"));
                    c.login(&name, &format!("pw-{i}"), &address_of(i))
                        .unwrap_or_else(|e| panic!("login {name}: {e}"));
                }
            });
        }
    });

    // Every hash held one of the ring's shared slots (TEST_CONFIG rings
    // share them, see `Ring::empty`): 2 hashes per user, none without.
    let (mut taken, mut without) = (0, 0);
    for url in &urls {
        let status = ring.status(url).expect("status");
        let dir = &status["sections"]["directory"];
        assert!(dir["machine_slots"].as_u64() > Some(0), "{dir}");
        taken += dir["machine_slots_taken"].as_u64().expect("taken");
        without += dir["machine_slots_without"].as_u64().expect("without");
    }
    assert!(taken >= 2 * total as u64, "{taken} hashes held a slot");
    assert_eq!(without, 0);

    // Every user is found, with the right data, through another gestor.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let ring = &ring;
            let urls = &urls;
            scope.spawn(move || {
                for i in (t..total).step_by(4) {
                    let entry = &urls[1 + i % (urls.len() - 1)];
                    let name = format!("user{i}");
                    let found = client(ring, entry)
                        .lookup(&name)
                        .unwrap_or_else(|e| panic!("lookup {name} via {entry}: {e}"));
                    assert_eq!(found.user, name);
                    assert_eq!(found.address, address_of(i), "{name} via {entry}");
                    assert!(found.last_update.wall_ms > 0);
                    assert!(found.hops <= 8, "{name}: {} hops", found.hops);
                }
            });
        }
    });

    // Every record ends up on its owner and 3 successors (4 distinct gestores).
    let mut last = None;
    let copied = wait_until(Duration::from_secs(30), || {
        let report = gestor::copies::run(&ring.operator(), &urls[0], 3).expect("copies report");
        let ok = report.records == total && report.under.is_empty() && report.wanted == 4;
        last = Some((report.records, report.under.len(), report.histogram));
        ok
    });
    assert!(copied, "copy counts never reached 4 per record: {last:?}");

    // Authentication: wrong password, a taken name, another user's token.
    let mut c = client(&ring, &urls[3]);
    assert_eq!(
        remote_code(c.login("user1", "wrong", "127.0.0.1:1").unwrap_err()),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        remote_code(c.register("user1", "x").unwrap_err()),
        ErrorCode::Conflict
    );
    // The same name with its own password (and address, none here) is a
    // retry: answered as the first time. Since user1 logged in at an
    // address, the same register is no longer a retry (PROTOCOL.md §7).
    c.register("retried", "pw-r").unwrap();
    assert_eq!(c.register("retried", "pw-r").unwrap().username, "retried");
    assert_eq!(
        remote_code(c.register("user1", "pw-1").unwrap_err()),
        ErrorCode::Conflict
    );
    assert_eq!(
        remote_code(c.lookup("nobody-here").unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(
        remote_code(c.lookup("Bad Name").unwrap_err()),
        ErrorCode::BadRequest
    );
    let s1 = c.login("user1", "pw-1", &address_of(1)).unwrap();
    let s2 = c.login("user2", "pw-2", &address_of(2)).unwrap();
    assert_eq!(
        remote_code(c.logout("user1", &s2.token).unwrap_err()),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        remote_code(
            c.set_address("user1", &s2.token, "127.0.0.1:666")
                .unwrap_err()
        ),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        c.lookup("user1").unwrap().address,
        address_of(1),
        "refused writes change nothing"
    );
    c.set_address("user1", &s1.token, "127.0.0.1:777").unwrap();
    assert_eq!(
        client(&ring, &urls[5]).lookup("user1").unwrap().address,
        "127.0.0.1:777"
    );

    // Every reply carries the initial-gestors list; the ring fills it to 5.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let mut c = client(&ring, &urls[6]);
            c.lookup("user3").is_ok() && c.initial_gestors().len() == 5
        }),
        "initial gestors list never reached 5 entries"
    );

    // Presence: online while alive signals flow, offline when they stop,
    // online again when they resume.
    let secure = client_layer(transport);
    let mut alive = AliveSender::new(&secure, &s2).unwrap();
    let mut online = |want: bool| {
        wait_until(Duration::from_secs(15), || {
            if want {
                let _ = alive.beat();
            }
            client(&ring, &urls[4])
                .lookup("user2")
                .map(|f| f.online == want)
                .unwrap_or(false)
        })
    };
    assert!(online(true), "user2 should be online while signalling");
    assert!(online(false), "user2 should go offline once signals stop");
    let mut alive2 = AliveSender::new(&secure, &s2).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let _ = alive2.beat();
            client(&ring, &urls[4])
                .lookup("user2")
                .map(|f| f.online)
                .unwrap_or(false)
        }),
        "user2 should come back online when signals resume"
    );
    c.logout("user2", &s2.token).unwrap();
    assert!(
        !client(&ring, &urls[2]).lookup("user2").unwrap().online,
        "offline at once after logout"
    );
    // A repeated logout (a retry) is harmless, and the old token is dead.
    c.logout("user2", &s2.token).unwrap();
    assert_eq!(
        remote_code(
            c.set_address("user2", &s2.token, "127.0.0.1:9")
                .unwrap_err()
        ),
        ErrorCode::Unauthorized
    );

    // Garbage frames on a ring node get error replies; the node keeps serving.
    // Outside a secure session: a plaintext refusal from the secure layer.
    let mut raw = build_transport(transport)
        .requester(&urls[7], &TransportOptions::default())
        .unwrap();
    let refusal = raw
        .request(&[0x9f, 0xff, 0x42], Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        &refusal[..2],
        &[
            gestor_secure::frame::ERROR,
            gestor_secure::refusal::MALFORMED
        ]
    );
    // Inside one: the envelope is malformed, and the reply says so.
    let mut sealed = secure
        .requester(&urls[7], &TransportOptions::default())
        .unwrap();
    let reply: Reply = from_cbor(
        &sealed
            .request(&[0x9f, 0xff, 0x42], Duration::from_secs(5))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.error.unwrap().code, ErrorCode::Malformed);
    assert!(
        !reply.initial_gestors.is_empty(),
        "even error replies carry the initial gestors"
    );
    assert_eq!(
        client(&ring, &urls[7]).lookup("user9").unwrap().address,
        address_of(9)
    );

    // The ring is still one ordered ring after all that.
    let views = ring.views();
    check_invariants(&views).expect("ring still ordered");

    // Graceful leave: on SIGTERM a gestor tells its neighbours, so the ring
    // closes at once — no failure detection involved.
    let mut ring = ring;
    let victim = 5;
    let victim_ids: Vec<u64> =
        gestor::demo::view_of(&ring.status(&ring.nodes[victim].url).unwrap())
            .iter()
            .map(|v| v.id)
            .collect();
    assert!(
        !victim_ids.is_empty(),
        "the victim reports its virtual nodes"
    );
    // A position whose successor or predecessor is one of the victim's.
    let beside_victim = |v: &gestor_chord::View| {
        victim_ids.contains(&v.successors[0])
            || v.predecessor.is_some_and(|p| victim_ids.contains(&p))
    };
    // Which other gestors have a victim position beside one of theirs, and
    // how many leave notices each has applied so far.
    let splices_of = |s: &serde_json::Value| {
        s.get("sections")
            .and_then(|s| s.get("ring"))
            .and_then(|r| r.get("leave_splices"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    let neighbours: Vec<(String, u64)> = ring
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .filter_map(|(_, n)| Some((n.url.clone(), ring.status(&n.url)?)))
        .filter(|(_, s)| gestor::demo::view_of(s).iter().any(beside_victim))
        .map(|(url, s)| (url, splices_of(&s)))
        .collect();
    assert!(!neighbours.is_empty(), "the victim has neighbours");
    assert_eq!(
        ring.nodes[victim].terminate(Duration::from_secs(10)),
        Some(0),
        "clean exit on SIGTERM"
    );
    // Every virtual node of the leaver told its neighbours: nobody points
    // at it any more, and the rest is one ordered ring. What closed it
    // must be the notices, not failure detection: every gestor that had a
    // victim position beside one of its own applied at least one notice.
    // The deadline only bounds the wait; the evidence is the count.
    let closed = |views: &[gestor_chord::View]| -> Result<(), String> {
        if let Some(v) = views.iter().find(|v| beside_victim(v)) {
            return Err(format!(
                "{:016x} still has the leaver as its successor or predecessor",
                v.id
            ));
        }
        check_invariants(views).map_err(|e| format!("{e:?}"))
    };
    let mut last = Ok(());
    let ok = wait_until(Duration::from_secs(20), || {
        last = closed(&ring.views());
        last.is_ok()
    });
    assert!(
        ok,
        "the ring did not close after a graceful leave: {last:?}\n{}",
        ring.logs()
    );
    for (url, before) in &neighbours {
        let after = ring.status(url).map(|s| splices_of(&s)).unwrap_or(0);
        assert!(
            after > *before,
            "{url} had the leaver as a neighbour but applied no leave notice \
             ({before} before, {after} after)\n{}",
            ring.logs()
        );
    }
}

macro_rules! matrix {
    ($($name:ident => ($t:expr, $s:expr)),*) => { $(
        #[test]
        fn $name() { directory_on_ring($t, $s) }
    )* };
}

matrix!(
    nng_sqlite => (TransportKind::Nng, StorageKind::Sqlite),
    nng_sled => (TransportKind::Nng, StorageKind::Sled),
    zmq_sqlite => (TransportKind::Zmq, StorageKind::Sqlite),
    zmq_sled => (TransportKind::Zmq, StorageKind::Sled)
);
