//! One-hop requests (PROTOCOL.md §10.1) on real rings, every backend pair:
//! a client that knows one gestor learns the ring table and sends each
//! per-user request straight to its owner; after gestores join and fail its
//! stale routes still give right answers (forwarded, with a redirect hint
//! or a fallback), and it then learns the new owners.

use gestor::config::{StorageKind, TransportKind};
use gestor_client::client::{Client, RoutingStats};
use gestor_sdk::hash::ring_position;
use gestor_tests::cluster::{client_layer, wait_until};
use gestor_tests::ring::Ring;
use std::time::Duration;

const USERS: usize = 40;

fn name(i: usize) -> String {
    format!("hop{i}")
}

fn address(i: usize) -> String {
    format!("127.0.0.1:{}", 21_000 + i)
}

/// One lookup of every user, each checked; the routing counts it added.
fn pass(c: &mut Client) -> Result<RoutingStats, String> {
    let before = c.routing_stats();
    for i in 0..USERS {
        let found = c
            .lookup(&name(i))
            .map_err(|e| format!("lookup {}: {e}", name(i)))?;
        if found.address != address(i) {
            return Err(format!("{}: address {}", name(i), found.address));
        }
    }
    let after = c.routing_stats();
    Ok(RoutingStats {
        direct: after.direct - before.direct,
        redirected: after.redirected - before.redirected,
        owner_unreachable: after.owner_unreachable - before.owner_unreachable,
        owner_slow: after.owner_slow - before.owner_slow,
        table_fetches: after.table_fetches - before.table_fetches,
    })
}

/// Until a whole pass goes straight to the owners.
fn wait_all_direct(c: &mut Client, ring: &Ring, when: &str) {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(45), || {
        let p = pass(c);
        let done = matches!(&p, Ok(s) if s.direct == USERS as u64 && s.redirected == 0);
        last = Some(p);
        done
    });
    assert!(
        ok,
        "{when}: never a pass all in one hop: {last:?}\n{}",
        ring.logs()
    );
}

/// The gestor (not the first, which the client knows) owning the most of
/// the users, so its failure leaves the client's table stale for some.
fn busiest_owner(ring: &Ring) -> usize {
    let positions = ring.positions();
    let mut owned = vec![0usize; ring.urls().len()];
    for u in 0..USERS {
        owned[Ring::owner_in(&positions, ring_position(name(u).as_bytes()))] += 1;
    }
    (1..owned.len())
        .max_by_key(|&i| owned[i])
        .expect("more than one gestor")
}

fn one_hop_routes_survive_joins_and_failures(transport: TransportKind, storage: StorageKind) {
    let mut ring = Ring::start(3, transport, storage);
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let first = ring.urls()[0].clone();
    // The client knows one gestor; the table tells it the others.
    let mut c = Client::new(client_layer(transport), vec![first], Duration::from_secs(3));
    for i in 0..USERS {
        c.register(&name(i), "pw-hop")
            .unwrap_or_else(|e| panic!("register: {e}"));
        c.login(&name(i), "pw-hop", &address(i))
            .unwrap_or_else(|e| panic!("login: {e}"));
    }
    wait_all_direct(&mut c, &ring, "3 gestores");

    // Two gestores join: the table the client holds is stale, yet every
    // answer is right at once, and the new owners answer with a hint.
    ring.add_node();
    ring.add_node();
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not settle after joins: {e}\n{}", ring.logs()));
    let stale = pass(&mut c).unwrap_or_else(|e| panic!("with a stale table: {e}"));
    assert!(
        stale.redirected > 0,
        "two new gestores own none of {USERS} users? {stale:?}"
    );
    wait_all_direct(&mut c, &ring, "after two joins");

    // An owner fails: its users are still found (the client falls back,
    // the ring takes over), and the client then routes by the new table.
    let victim = busiest_owner(&ring);
    ring.kill(&[victim]);
    let before = c.routing_stats();
    let mut last = None;
    let found = wait_until(Duration::from_secs(60), || {
        let p = pass(&mut c);
        let ok = p.is_ok();
        last = Some(p);
        ok
    });
    assert!(
        found,
        "users not all found after a failure: {last:?}\n{}",
        ring.logs()
    );
    assert!(
        c.routing_stats().owner_unreachable > before.owner_unreachable,
        "the dead owner was never tried? {:?}",
        c.routing_stats()
    );
    wait_all_direct(&mut c, &ring, "after a failure");
}

gestor_tests::matrix!(one_hop_routes_survive_joins_and_failures);
