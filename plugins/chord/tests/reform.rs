//! The ring always re-forms (issue 9): seeded simulator runs that start from
//! the states a flood once left a real ring in, and from lossy, slow
//! networks, and must all end in one ordered ring with exact successor lists.
//!
//! 2,000 schedules in all by default (under a minute in a debug build);
//! `REFORM_RUNS=N` runs N schedules per test instead.

use gestor_chord::sim::{Faults, Sim, SimRng};
use gestor_chord::{Config, Id};

fn runs(default: u64) -> u64 {
    std::env::var("REFORM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Production's detector and merge period, at simulation speed.
fn config(r: usize) -> Config {
    Config {
        merge_probe_every_ms: 1000,
        dead_after_misses: 3,
        ..Sim::fast_config(r)
    }
}

/// Random seeds for `ids`: every node knows at least one earlier node (so
/// the "who knows whom" graph is connected, but only one way), node 0 one
/// random other, and some nodes a few extra.
fn random_seeds(rng: &mut SimRng, ids: &[Id]) -> Vec<Vec<Id>> {
    (0..ids.len())
        .map(|i| {
            let mut seeds = Vec::new();
            let first = if i == 0 {
                1 + rng.below(ids.len() - 1)
            } else {
                rng.below(i)
            };
            seeds.push(ids[first]);
            for _ in 0..rng.below(3) {
                let other = rng.below(ids.len());
                if other != i && !seeds.contains(&ids[other]) {
                    seeds.push(ids[other]);
                }
            }
            seeds
        })
        .collect()
}

fn random_faults(rng: &mut SimRng, max_loss: f64, max_delay_ms: u64) -> Faults {
    let loss = max_loss * (rng.below(1001) as f64 / 1000.0);
    let max = rng.below(max_delay_ms as usize + 1) as u64;
    Faults {
        loss,
        min_delay_ms: rng.below(max as usize + 1) as u64 / 2,
        max_delay_ms: max,
    }
}

/// Seconds of simulated time in steps of `Sim::fast_config` (100 ms).
fn steps(seconds: u32) -> u32 {
    seconds * 10
}

/// A ring of `min` to `min + extra - 1` nodes grown by joins and settled,
/// the simulator left without its join oracle afterwards.
fn settled_ring(seed: u64, salt: u64, min: usize, extra: usize) -> (Sim, usize) {
    let mut sim = Sim::new(salt + seed, config(3 + (seed % 6) as usize));
    let n = min + sim.rng().below(extra);
    for _ in 0..n {
        sim.add_node();
        sim.step();
    }
    sim.settle(2_000)
        .unwrap_or_else(|e| panic!("seed {seed}: ring of {n} did not settle: {e}"));
    sim.set_rebootstrap(false);
    (sim, n)
}

fn describe(sim: &Sim) -> String {
    let joining = sim.len() - sim.members().len();
    let state = match sim.check() {
        Ok(()) => "invariants hold".to_string(),
        Err(v) => format!("{} violations, first: {}", v.len(), v[0]),
    };
    format!(
        "{} nodes, {joining} joining, {state}, {} wrong pointers",
        sim.len(),
        sim.wrong_pointers()
    )
}

/// Nodes that were never in a ring all start joining at once, each knowing
/// only a few others (and some only one way); for the first 10 simulated
/// seconds the network may also lose and delay messages.
#[test]
fn nodes_that_all_start_joining_form_one_ring() {
    for seed in 0..runs(900) {
        let mut sim = Sim::new(seed, config(3 + (seed % 4) as usize));
        sim.set_rebootstrap(false);
        let n = 2 + sim.rng().below(11);
        let ids: Vec<Id> = (0..n).map(|_| sim.rng().next_u64()).collect();
        let seeds = random_seeds(sim.rng(), &ids);
        let troubled = seed % 2 == 1;
        if troubled {
            let f = random_faults(sim.rng(), 0.5, 2000);
            sim.set_faults(Some(f));
        }
        for (id, s) in ids.iter().zip(&seeds) {
            sim.add_joining(*id, s);
        }
        if troubled {
            for _ in 0..steps(10) {
                sim.step();
            }
            sim.set_faults(None);
        }
        if sim.run_until_converged(steps(120)).is_none() {
            panic!(
                "seed {seed}: {n} joining nodes did not form one ring in 120 s: {}",
                describe(&sim)
            );
        }
    }
}

/// A settled ring whose every member forgets it at once and rejoins
/// through the peers it knew (everyone "rejoining via" someone joining).
#[test]
fn a_ring_whose_members_all_rejoin_at_once_re_forms() {
    for seed in 0..runs(450) {
        let (mut sim, n) = settled_ring(seed, 1_000_000, 2, 15);
        sim.all_rejoin();
        if sim.run_until_converged(steps(120)).is_none() {
            panic!(
                "seed {seed}: ring of {n} did not re-form after everyone rejoined: {}",
                describe(&sim)
            );
        }
    }
}

/// A settled ring under message loss up to 50% and delays up to several
/// seconds (longer than every request timeout) for 30 simulated seconds:
/// nodes drop each other and rings split; afterwards one ring re-forms.
#[test]
fn loss_up_to_half_and_long_delays_for_30_seconds_end_in_one_ring() {
    for seed in 0..runs(450) {
        let (mut sim, n) = settled_ring(seed, 2_000_000, 3, 14);
        let max_delay = if seed % 3 == 0 { 5_000 } else { 1_000 };
        let faults = random_faults(sim.rng(), 0.5, max_delay);
        sim.set_faults(Some(faults));
        for _ in 0..steps(30) {
            sim.step();
        }
        sim.set_faults(None);
        if sim.run_until_converged(steps(120)).is_none() {
            panic!(
                "seed {seed}: ring of {n} did not re-form within 120 s after 30 s of {faults:?}: {}",
                describe(&sim)
            );
        }
    }
}

/// A slow ring stays whole: every message is delayed (each request waits
/// for the next step to be delivered, and so does its reply), and no node is
/// ever dropped — the ring stays one ordered ring at every step.
#[test]
fn slow_but_alive_peers_are_not_taken_for_dead() {
    for seed in 0..runs(200) {
        let mut sim = Sim::new(3_000_000 + seed, config(4));
        let n = 3 + sim.rng().below(10);
        for _ in 0..n {
            sim.add_node();
            sim.step();
        }
        sim.settle(2_000)
            .unwrap_or_else(|e| panic!("seed {seed}: ring of {n} did not settle: {e}"));
        // Request and reply each wait up to 100 ms, i.e. one step each:
        // a round trip of up to 200 ms, under the 300 ms a request may stay
        // in flight.
        sim.set_faults(Some(Faults {
            loss: 0.0,
            min_delay_ms: 1,
            max_delay_ms: 100,
        }));
        for step in 0..steps(20) {
            sim.step();
            assert!(
                sim.members().len() == n && sim.check().is_ok(),
                "seed {seed}, step {step}: a slow ring broke: {}",
                describe(&sim)
            );
        }
    }
}
