//! Rough lookup costs, printed, never asserted (timings depend on the machine).
//! Run: `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --test routing_bench -- --ignored --nocapture`
//! (or `--release`).
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use herdgate::routing::{key_hash, HashAlgo, HashRing, NodeRef, StickyTable};

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

#[test]
#[ignore = "timing report, not a check: run on an optimised build with --nocapture"]
fn lookup_costs() {
    let keys: Vec<u64> = (0..200_000u64)
        .map(|i| key_hash(&i.to_le_bytes()))
        .collect();
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
                for &k in &keys {
                    acc ^= ring.pick(k, |_| true).unwrap_or(0);
                }
                let ok = per_op(t, keys.len());
                let t = Instant::now();
                for &k in &keys {
                    acc ^= ring.pick(k, |i| i % 10 != 0).unwrap_or(0);
                }
                let degraded = per_op(t, keys.len());
                black_box(acc);
                println!(
                    "{algo:?} n={n} {label}: build {build:?}, pick {ok:.0} ns, \
                     pick with 10% down {degraded:.0} ns"
                );
            }
        }
    }
    let table: StickyTable<u32> = StickyTable::new(Duration::from_secs(600), 100_000).unwrap();
    let t0 = Instant::now();
    let t = Instant::now();
    for (i, &k) in keys.iter().enumerate() {
        table.insert(k, i as u32, t0);
    }
    println!(
        "sticky insert (half evicting): {:.0} ns",
        per_op(t, keys.len())
    );
    let t = Instant::now();
    let mut hits = 0;
    for &k in &keys {
        hits += usize::from(table.get(k, t0).is_some());
    }
    println!("sticky get: {:.0} ns ({hits} hits)", per_op(t, keys.len()));
}

#[test]
#[ignore = "measurement: Maglev disruption for a large pool, printed"]
fn maglev_disruption_large_pool() {
    let keys: Vec<u64> = (0..200_000u64)
        .map(|i| key_hash(&i.to_le_bytes()))
        .collect();
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
    for &k in &keys {
        let a = full.name(full.pick(k, |_| true).unwrap()).unwrap();
        let b = less.name(less.pick(k, |_| true).unwrap()).unwrap();
        if a != "node-250" && a != b {
            collateral += 1;
        }
    }
    println!(
        "Maglev n=500 (table {}): removing one node moves {:.3}% other keys",
        match &full {
            HashRing::Maglev(m) => m.table_size(),
            HashRing::Rendezvous(_) => 0,
        },
        100.0 * collateral as f64 / keys.len() as f64
    );
}
