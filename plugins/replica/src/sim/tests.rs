//! The replication property over many seeded schedules.
//! `REPLICA_SIM_RUNS` sets how many (default 2,000); `REPLICA_SIM_SEED`
//! replays one seed and prints its log.

use super::*;

fn runs() -> u64 {
    std::env::var("REPLICA_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Run one seed: `(keys acknowledged, failures)`; the error names the
/// seed and ends with the schedule.
fn run_seed(seed: u64, tune: impl Fn(&mut Params)) -> Result<(usize, usize), String> {
    let mut rng = SimRng::seed_from_u64(seed ^ 0x5eed);
    let mut params = Params::random(&mut rng);
    tune(&mut params);
    let mut sim = Sim::new(seed, params.clone());
    sim.run().map_err(|e| {
        let tail: Vec<&String> = sim.log.iter().rev().take(60).collect();
        format!("seed {seed} ({params:?}): {e}\nlast events, newest first: {tail:#?}")
    })?;
    let failures = sim
        .log
        .iter()
        .filter(|l| l.contains("crash") || l.contains("death"));
    Ok((sim.acked.len(), failures.count()))
}

#[test]
fn acknowledged_writes_survive_any_two_failures() {
    if let Some(seed) = std::env::var("REPLICA_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let (acked, failures) = run_seed(seed, |_| {}).unwrap();
        eprintln!("seed {seed}: {acked} keys acknowledged, {failures} failures");
        return;
    }
    // Seeds split over the cores: each schedule is independent.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let (acked, failures): (Vec<usize>, Vec<usize>) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let seeds = (t..runs()).step_by(threads as usize);
                    let summaries = seeds.map(|seed| run_seed(seed, |_| {}));
                    summaries.collect::<Result<Vec<_>, String>>()
                })
            })
            .collect();
        let all = workers.into_iter().map(|w| w.join().expect("a worker"));
        match all.collect::<Result<Vec<_>, String>>() {
            Ok(per_worker) => per_worker.into_iter().flatten().unzip(),
            Err(e) => panic!("{e}"),
        }
    });
    // Not vacuous: schedules acknowledge writes and fail gestores.
    let with = |v: &[usize]| v.iter().filter(|n| **n > 0).count() as u64;
    assert!(
        with(&acked) > runs() * 9 / 10,
        "acked in {} runs",
        with(&acked)
    );
    assert!(
        with(&failures) > runs() * 8 / 10,
        "failures in {} runs",
        with(&failures)
    );
}

/// The check bites: acknowledging after one copy (`ack_copies = 1`) loses
/// writes under two failures in some schedule.
#[test]
fn acknowledging_after_one_copy_is_caught() {
    let caught = (0..runs()).find_map(|seed| {
        run_seed(seed, |p| {
            p.config.ack_copies = 1;
            p.loss = p.loss.max(0.5);
            p.delay = p.delay.max(0.3);
        })
        .err()
    });
    let caught = caught.expect("some schedule loses a write acknowledged after one copy");
    assert!(caught.contains("acked"), "{caught}");
    eprintln!("caught: {}", caught.lines().next().unwrap_or_default());
}

#[test]
fn schedules_are_reproducible() {
    let mut rng = SimRng::seed_from_u64(7);
    let params = Params::random(&mut rng);
    let (mut a, mut b) = (Sim::new(7, params.clone()), Sim::new(7, params));
    assert_eq!(a.run(), b.run());
    assert_eq!(a.log, b.log);
    assert_eq!(a.acked, b.acked);
}
