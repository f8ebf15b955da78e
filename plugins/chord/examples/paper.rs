//! The Chord paper's two static experiments, on our Chord core in the
//! simulator (Stoica et al., "Chord: A Scalable Peer-to-peer Lookup Service
//! for Internet Applications", SIGCOMM 2001, §6.3 path length and §6.5
//! simultaneous node failures):
//!
//! 1. Path length: rings of N = 2^3 … 2^14 nodes grown by real joins and
//!    settled; hops of random lookups (mean, 1st and 99th percentile). The
//!    paper finds a mean of about ½·log2 N.
//! 2. Simultaneous failures: a settled ring of 10^4 nodes, a fraction p of
//!    them crashes at once; the ring stabilizes, then random lookups run.
//!    The paper finds the fraction of failed lookups almost exactly p — just
//!    the keys whose node failed (no replication in that experiment) — so no
//!    failure is due to routing. We report the keys whose owner crashed, the
//!    lookups that did not name the right live owner after stabilizing, the
//!    maintenance steps that took, and (not in the paper's table) lookups run
//!    at once after the crash, before any repair and without retries.
//!
//! `cargo run -p gestor-chord --release --example paper [seed] [lookups]`

use gestor_chord::sim::Sim;
use std::time::Instant;

/// Joins per maintenance step while growing: enough for 16,384 nodes in
/// well under a minute, few enough that joins mostly land in settled gaps.
fn batch(n: usize) -> usize {
    (n / 256).clamp(8, 64)
}

fn grow_to(sim: &mut Sim, n: usize) -> Result<u32, String> {
    let b = batch(n);
    let mut added = 0;
    while sim.len() < n {
        sim.add_node();
        added += 1;
        if added >= b {
            added = 0;
            sim.step();
        }
    }
    sim.settle(10_000)
        .map_err(|e| format!("ring of {n} did not settle: {e}"))
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn path_lengths(seed: u64, lookups: usize) -> Result<(), String> {
    println!("Path length (paper: mean ≈ ½·log2 N)");
    println!(
        "{:>6} | {:>9} | {:>8} | {:>3} | {:>4} | {:>6} | {:>7}",
        "N", "mean hops", "½·log2 N", "1st", "99th", "settle", "seconds"
    );
    let mut sim = Sim::new(seed, Sim::fast_config(8));
    for k in 3..=14 {
        let n = 1usize << k;
        let started = Instant::now();
        let settle = grow_to(&mut sim, n)?;
        let mut hops = Vec::with_capacity(lookups);
        for _ in 0..lookups {
            let o = sim.random_lookup().ok_or("no member")?;
            if !o.correct() {
                return Err(format!("N = {n}: wrong lookup {o:?}"));
            }
            hops.push(o.hops);
        }
        hops.sort_unstable();
        let mean = hops.iter().map(|h| f64::from(*h)).sum::<f64>() / hops.len() as f64;
        println!(
            "{:>6} | {:>9.3} | {:>8.1} | {:>3} | {:>4} | {:>6} | {:>7.1}",
            n,
            mean,
            0.5 * (n as f64).log2(),
            percentile(&hops, 0.01),
            percentile(&hops, 0.99),
            settle,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn simultaneous_failures(seed: u64, lookups: usize) -> Result<(), String> {
    let n = 10_000;
    let started = Instant::now();
    let mut base = Sim::new(seed ^ 0x5eed, Sim::fast_config(8));
    grow_to(&mut base, n)?;
    println!();
    println!(
        "Simultaneous failures, N = {n} (grown and settled in {:.1} s; paper: failed lookups ≈ p)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:>4} | {:>13} | {:>14} | {:>6} | {:>17} | {:>9}",
        "p", "keys lost ≈p", "failed, after", "steps", "failed, at once", "hops then"
    );
    for p in [0.05, 0.10, 0.20, 0.30, 0.40, 0.50] {
        let mut sim = base.clone();
        let before: Vec<u64> = sim.members();
        let doomed = (n as f64 * p).round() as usize;
        let mut victims = before.clone();
        sim.rng().shuffle(&mut victims);
        victims.truncate(doomed);
        let victims: std::collections::BTreeSet<u64> = victims.into_iter().collect();
        for v in &victims {
            sim.kill(*v);
        }
        // Right after the crash, before any stabilization: a lookup that
        // ends at a crashed owner counts as failed (no retry here; the
        // gestor's edge reports the dead owner and retries).
        let (mut failed_at_once, mut hops) = (0usize, 0u64);
        for _ in 0..lookups {
            let o = sim.random_lookup().ok_or("no member")?;
            failed_at_once += usize::from(!o.correct());
            hops += u64::from(o.hops);
        }
        let steps = sim
            .settle(10_000)
            .map_err(|e| format!("p = {p}: did not settle: {e}"))?;
        // After stabilizing, as the paper measures: keys whose node crashed
        // are lost (no replication in the paper's experiment), and every
        // other lookup must name the right live owner.
        let owner_before = |key: u64| -> u64 {
            let i = before.partition_point(|id| *id < key);
            before[i % before.len()]
        };
        let (mut lost, mut failed_after) = (0usize, 0usize);
        for _ in 0..lookups {
            let o = sim.random_lookup().ok_or("no member")?;
            lost += usize::from(victims.contains(&owner_before(o.key)));
            failed_after += usize::from(!o.correct());
        }
        let pct = |x: usize| 100.0 * x as f64 / lookups as f64;
        println!(
            "{:>4.2} | {:>12.2}% | {:>13.2}% | {:>6} | {:>16.2}% | {:>9.2}",
            p,
            pct(lost),
            pct(failed_after),
            steps,
            pct(failed_at_once),
            hops as f64 / lookups as f64
        );
    }
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let lookups = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let started = Instant::now();
    if let Err(e) = path_lengths(seed, lookups).and_then(|()| simultaneous_failures(seed, lookups))
    {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}
