//! Routing lookup costs and Maglev disruption, printed, never asserted (timings depend on
//! the machine). CPU only, no sockets, no child processes; about 20 s.
//!
//! Run: `cargo bench --bench routing` (an optimised build).
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use herdgate::routing::{key_hash, HashAlgo, HashRing, NodeRef, StickyTable};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (then we do nothing:
    // a timing report is not a test).
    if !std::env::args().any(|a| a == "--bench") {
        println!("routing bench: skipped (run it with `cargo bench --bench routing`)");
        return;
    }
    let keys: Vec<u64> = (0..200_000u64)
        .map(|i| key_hash(&i.to_le_bytes()))
        .collect();
    println!();
    println!("## routing: {} keys", keys.len());
    lookup_costs(&keys);
    maglev_disruption_large_pool(&keys);
    println!();
}

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Build and pick costs of both rings by pool size and weights, then the sticky table.
fn lookup_costs(keys: &[u64]) {
    println!();
    println!("| ring | nodes | weights | build | pick ns | pick ns, 10% of nodes down |");
    println!("|---|---:|---|---:|---:|---:|");
    for n in [10usize, 100, 500] {
        let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        for (label, spread) in [("uniform", 1u32), ("weighted", 4)] {
            for algo in [HashAlgo::Rendezvous, HashAlgo::Maglev] {
                let t = Instant::now();
                let nodes = names.iter().enumerate().map(|(i, s)| NodeRef {
                    name: s,
                    weight: 1 + i as u32 % spread,
                });
                let ring = HashRing::build(algo, nodes).unwrap();
                let build = t.elapsed();
                let t = Instant::now();
                let mut acc = 0usize;
                for &k in keys {
                    acc ^= ring.pick(k, |_| true).unwrap_or(0);
                }
                let ok = per_op(t, keys.len());
                let t = Instant::now();
                for &k in keys {
                    acc ^= ring.pick(k, |i| i % 10 != 0).unwrap_or(0);
                }
                let degraded = per_op(t, keys.len());
                black_box(acc);
                println!("| {algo:?} | {n} | {label} | {build:?} | {ok:.0} | {degraded:.0} |");
            }
        }
    }
    let table: StickyTable<u32> =
        StickyTable::new(Duration::from_secs(600), 100_000, 100_000).unwrap();
    let t0 = Instant::now();
    let t = Instant::now();
    for (i, &k) in keys.iter().enumerate() {
        table.insert(k, i as u32, std::net::IpAddr::from([10, 0, 0, 1]), t0);
    }
    let insert = per_op(t, keys.len());
    let t = Instant::now();
    let mut hits = 0;
    for &k in keys {
        hits += usize::from(table.get(k, t0).is_some());
    }
    let get = per_op(t, keys.len());
    println!();
    println!("| sticky table, 100,000 entries | ns |");
    println!("|---|---:|");
    println!("| insert (half evicting) | {insert:.0} |");
    println!("| get ({hits} hits) | {get:.0} |");
}

/// Keys of other nodes that move when one node of 500 leaves a Maglev ring.
fn maglev_disruption_large_pool(keys: &[u64]) {
    let names: Vec<String> = (0..500).map(|i| format!("node-{i}")).collect();
    let build = |skip: Option<usize>| {
        let nodes = names
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, s)| NodeRef { name: s, weight: 1 });
        HashRing::build(HashAlgo::Maglev, nodes).unwrap()
    };
    let (full, less) = (build(None), build(Some(250)));
    let mut collateral = 0;
    for &k in keys {
        let a = full.name(full.pick(k, |_| true).unwrap()).unwrap();
        let b = less.name(less.pick(k, |_| true).unwrap()).unwrap();
        if a != "node-250" && a != b {
            collateral += 1;
        }
    }
    println!();
    println!(
        "Maglev n=500 (table {}): removing one node moves {:.3}% other keys",
        match &full {
            HashRing::Maglev(m) => m.table_size(),
            HashRing::Rendezvous(_) => 0,
        },
        100.0 * collateral as f64 / keys.len() as f64
    );
}
