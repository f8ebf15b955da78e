//! Lookup path lengths in a simulated ring built by real joins.
//!
//! `cargo run -p gestor-chord --release --example hops [seed] [lookups]`

use gestor_chord::sim::hop_table;

fn main() {
    let mut args = std::env::args().skip(1);
    let seed = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let lookups = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let sizes = [16, 32, 64, 128, 256, 512, 1024];
    match hop_table(seed, &sizes, lookups, 8) {
        Ok(rows) => {
            println!(
                "{:>5} | {:>9} | {:>8} | {:>3}",
                "N", "mean hops", "½·log2 N", "max"
            );
            println!("{:->5}-+-{:->9}-+-{:->8}-+-{:->3}", "", "", "", "");
            for r in rows {
                let half_log = 0.5 * (r.nodes as f64).log2();
                println!(
                    "{:>5} | {:>9.3} | {:>8.1} | {:>3}",
                    r.nodes, r.mean_hops, half_log, r.max_hops
                );
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
