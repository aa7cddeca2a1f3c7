//! The storm simulator at small scale (20,000 clients, 10 nodes): herdgate's admission with
//! the reference client meets the bench's targets, and the bench tells strategies apart
//! (immediate retry without admission breaks the rate). Virtual clock only: no sockets, no
//! wall time, deterministic for a seed.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herdgate_sim as sim;
use herdgate_sim::report::{self, Summary};
use herdgate_sim::{Contender, Fleet, Scenario, SimConfig};

fn config(scenario: Scenario, rate: f64) -> SimConfig {
    SimConfig {
        clients: 20_000,
        nodes: 10,
        admit_rate: rate,
        seed: 7,
        ..SimConfig::new(scenario)
    }
}

fn contender(label: &str) -> Contender {
    Contender::standard()
        .into_iter()
        .chain(Contender::hint_ignorers())
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no contender {label}"))
}

fn storm(cfg: &SimConfig, label: &str) -> Summary {
    let fleet = Fleet::build(cfg).expect("fleet");
    report::summarize(sim::run(cfg, &fleet, &contender(label)).expect("run"))
}

fn assert_targets(s: &Summary) {
    assert_eq!(s.back, s.clients, "{}: everyone back", s.label);
    assert!(
        s.rate_ok(),
        "{}: peak {}/s per node over {:.0}",
        s.label,
        s.peak_node_rate,
        s.peak_limit()
    );
    assert!(
        s.time_ok(),
        "{}: 100% at {:?}, limit {:?}",
        s.label,
        s.to_100,
        s.time_limit()
    );
    assert!(
        s.retries_ok(),
        "{}: {:?} retries per turned-away client, limit {}",
        s.label,
        s.retries_per_turned_away,
        s.retries_limit()
    );
}

#[test]
fn fleet_restart_herdgate_meets_every_target() {
    // 2,000 clients per node at 500/s: 4 s of capacity, nearly everyone turned away once.
    let cfg = config(Scenario::FleetRestart, 500.0);
    for label in ["herdgate + tickets", "herdgate, no tickets"] {
        let s = storm(&cfg, label);
        assert_targets(&s);
        assert!(s.turned_away > s.clients / 2, "{label}: a real storm");
        assert!(s.ideal >= Duration::from_secs(3), "{:?}", s.ideal);
    }
    // With tickets, every turned-away client comes back exactly once.
    let s = storm(&cfg, "herdgate + tickets");
    assert_eq!(s.retries_per_turned_away, Some(1.0));
}

#[test]
fn node_death_herdgate_meets_every_target() {
    // The dead node's ~2,000 clients over 9 survivors at 100/s: about 2.2 s of capacity.
    let cfg = config(Scenario::NodeDeath, 100.0);
    for label in ["herdgate + tickets", "herdgate, no tickets"] {
        let s = storm(&cfg, label);
        assert_targets(&s);
        assert!(s.turned_away > s.clients / 4, "{label}: a real storm");
    }
}

#[test]
fn immediate_retry_without_admission_breaks_the_rate() {
    for (scenario, rate) in [
        (Scenario::FleetRestart, 500.0),
        (Scenario::NodeDeath, 100.0),
    ] {
        let cfg = config(scenario, rate);
        let s = storm(&cfg, "immediate, no admission");
        assert!(
            !s.rate_ok(),
            "{scenario:?}: peak {}/s per node should exceed {:.0}",
            s.peak_node_rate,
            s.peak_limit()
        );
        // The whole herd lands in the first bar.
        assert!(f64::from(s.bins[0]) > 2.0 * s.capacity_per_bin());
        let j = storm(&cfg, "full jitter, no admission");
        assert!(
            !j.rate_ok(),
            "{scenario:?}: full jitter spreads over 1 s only"
        );
    }
}

#[test]
fn admission_holds_the_rate_even_for_clients_that_ignore_hints() {
    let cfg = config(Scenario::NodeDeath, 100.0);
    let s = storm(&cfg, "immediate, admission");
    assert!(s.rate_ok(), "peak {}", s.peak_node_rate);
    assert_eq!(s.back, s.clients);
    // ...but they pay for it in attempts.
    assert!(!s.retries_ok(), "{:?}", s.retries_per_turned_away);
}

#[test]
fn same_seed_same_storm() {
    let cfg = config(Scenario::NodeDeath, 100.0);
    let a = storm(&cfg, "herdgate, no tickets");
    let b = storm(&cfg, "herdgate, no tickets");
    assert_eq!(a.bins, b.bins);
    assert_eq!(a.to_100, b.to_100);
    assert_eq!(a.turned_away, b.turned_away);
}

#[test]
fn slow_start_stretches_the_ideal_and_keeps_the_targets() {
    let cfg = SimConfig {
        slow_start: Duration::from_secs(2),
        ..config(Scenario::FleetRestart, 500.0)
    };
    let s = storm(&cfg, "herdgate + tickets");
    // 2 s of ramp from 10% admits 0.55 × 2 s of full rate: the ideal grows by 0.9 s.
    let plain = sim::ideal(
        &config(Scenario::FleetRestart, 500.0),
        &Fleet::build(&cfg).unwrap(),
    );
    let d = s.ideal.as_secs_f64() - plain.as_secs_f64();
    assert!((d - 0.9).abs() < 1e-6, "ideal {:?} vs {plain:?}", s.ideal);
    assert_targets(&s);
}

#[test]
fn report_renders_every_contender() {
    let cfg = SimConfig {
        clients: 2_000,
        nodes: 4,
        ..config(Scenario::FleetRestart, 100.0)
    };
    let rep = sim::run_scenario(&cfg, &Contender::standard()).expect("scenario");
    assert_eq!(rep.summaries.len(), 5);
    let table = report::table(&rep.title, &rep.summaries);
    for c in Contender::standard() {
        assert!(table.contains(&c.label), "{table}");
    }
    assert!(table.contains("PASS") && table.contains("FAIL"), "{table}");
    let chart = report::terminal_chart(&rep.summaries);
    assert!(
        chart.contains('▲'),
        "immediate retry is off the chart:\n{chart}"
    );
    let svg = report::svg(&rep.title, &rep.fleet, &rep.summaries);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
}

/// What the socket bench saw over TLS: clients told their slots come back late, and late
/// clients arrive bunched (handshakes queue behind one another). Every ticket is still
/// valid, and before forwards were paced they all went to the node at once.
#[test]
fn late_claims_arriving_bunched_are_forwarded_at_the_rate() {
    use herdgate_core::admission::{
        AdmissionParams, AdmitInput, Decision, NodeAdmission, TicketKey, TicketSigner,
        NANOS_PER_SEC,
    };
    use std::sync::Arc;

    const RATE: f64 = 500.0;
    const N: usize = 2_000;
    const MS: u64 = 1_000_000;
    let t0 = 1_704_067_200 * NANOS_PER_SEC;
    for ticketed in [true, false] {
        let signer = Arc::new(TicketSigner::new(
            TicketKey::from_bytes(&[7; 32]).unwrap(),
            1,
        ));
        let params = AdmissionParams::new(RATE, 10).unwrap();
        let node = NodeAdmission::builder(1, params, signer)
            .seed(3)
            .build(t0)
            .unwrap();
        fn input(ticket: Option<&str>, wants_ticket: bool) -> AdmitInput<'_> {
            AdmitInput {
                ticket,
                wants_ticket,
                may_queue: None,
                owner: None,
            }
        }
        // The herd arrives at once: the burst goes through, everyone else gets a slot.
        let mut forwards = Vec::new();
        let mut returns = Vec::new();
        for _ in 0..N {
            match node.check(t0, &input(None, ticketed)) {
                Decision::Admit { .. } => forwards.push(t0),
                // The burst's last one, held RELEASE_MARGIN.
                Decision::Queue { until, .. } => forwards.push(until),
                Decision::Reject {
                    retry_after,
                    ticket,
                    overflow: false,
                    ..
                } => returns.push((t0 + retry_after.as_nanos() as u64, ticket)),
                d => panic!("{d:?}"),
            }
        }
        // A 400 ms stall: whoever was due in the first half second arrives at 500 ms,
        // within a few ms of each other; the rest are on time.
        let mut arrivals: Vec<(u64, Option<String>)> = returns
            .into_iter()
            .enumerate()
            .map(|(i, (at, t))| {
                if at < t0 + 500 * MS {
                    (t0 + 500 * MS + (i as u64 % 5) * MS, t)
                } else {
                    (at, t)
                }
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        for (at, t) in &arrivals {
            match node.check(*at, &input(t.as_deref(), ticketed)) {
                Decision::Admit { .. } => forwards.push(*at),
                Decision::Queue { until, slot, .. } => {
                    assert_eq!(until, slot);
                    assert!(until - at < 500 * MS, "held {} ms", (until - at) / MS);
                    forwards.push(until);
                }
                d => panic!("ticketed {ticketed}: a late but valid claim was turned away: {d:?}"),
            }
        }
        assert_eq!(forwards.len(), N, "ticketed {ticketed}: everyone forwarded");
        forwards.sort_unstable();
        let peak = report::max_in_window(&forwards, NANOS_PER_SEC);
        assert!(
            peak as f64 <= 1.05 * RATE,
            "ticketed {ticketed}: {peak} forwards in one second"
        );
        assert!(node.stats().paced > 100, "{:?}", node.stats());
    }
}
