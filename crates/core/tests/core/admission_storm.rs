//! Reconnect storms against one node on a virtual clock: spacing, fairness, slow start,
//! bounded memory.

use std::time::Duration;

use super::admission_sim::*;
use herdgate_core::admission::{
    AdmissionParams, AdmitInput, Decision, ManualClock, NodeAdmission, RESERVATION_WINDOW,
};

const RATE: f64 = 500.0;

fn storm_params(rate: f64, burst: u32, max_retry_after: Duration) -> AdmissionParams {
    AdmissionParams {
        max_retry_after,
        ..params(rate, burst)
    }
}

#[test]
fn rejections_are_scheduled_at_the_node_rate() {
    const N: usize = 100_000;
    let node = node(storm_params(RATE, 50, Duration::from_secs(300)));
    let mut returns = Vec::with_capacity(N);
    let mut admitted = 0;
    for c in herd(N, T0, secs(0.01), 0) {
        match node.check(c.first, &AdmitInput::TICKETLESS) {
            // The burst (its last one held RELEASE_MARGIN).
            Decision::Admit { .. } | Decision::Queue { paced: true, .. } => admitted += 1,
            Decision::Reject {
                retry_after,
                overflow: false,
                ..
            } => returns.push(c.first + retry_after.as_nanos() as u64),
            d => panic!("unexpected {d:?}"),
        }
    }
    assert_eq!(admitted, 50, "the burst");
    returns.sort_unstable();
    // Slots are T = 2 ms apart and jitter stays inside [0, T): at most r + 1 per second.
    let peak = max_in_window(&returns, secs(1.0));
    assert!(peak <= (RATE * 1.01) as usize, "peak {peak}/s");
    let span = (returns[returns.len() - 1] - returns[0]) as f64 / 1e9;
    let ideal = (N - 50) as f64 / RATE;
    assert!(
        (span - ideal).abs() < ideal * 0.005,
        "span {span} s, ideal {ideal} s"
    );
    assert_eq!(node.stats().rejected, (N - 50) as u64);
}

#[test]
fn obedient_clients_get_in_with_one_retry_at_the_physical_limit() {
    const N: usize = 100_000;
    let clock = ManualClock::new(T0);
    let node = node(storm_params(RATE, 50, Duration::from_secs(300)));
    let clients = herd(N, T0, secs(1.0), 0);
    let out = run(
        &node,
        &clock,
        &clients,
        Behaviour::default(),
        T0 + secs(400.0),
    );
    assert_eq!(out.unadmitted(), 0);
    let retries = out.mean_retries(&clients, Kind::Ticketless);
    // Fresh arrivals during the first second can take a due promise: ~r clients retry twice.
    assert!(retries <= 1.01, "mean retries {retries}");
    let peak = max_in_window(&out.admissions, secs(1.0));
    assert!(peak <= (RATE * 1.01) as usize + 50, "peak {peak}/s");
    let done = (out.admissions[N - 1] - T0) as f64 / 1e9;
    let ideal = N as f64 / RATE;
    assert!(
        done < ideal * 1.01,
        "last admitted at {done} s, ideal {ideal} s"
    );
    // Every request after the burst was useful: nothing was charged twice or lost.
    let s = node.stats();
    assert_eq!(s.unclaimed_promises, 0);
    assert_eq!(s.admitted_bucket + s.admitted_promise, N as u64, "{s:?}");
}

#[test]
fn mixed_herd_nobody_starves() {
    const N: usize = 20_000;
    let clock = ManualClock::new(T0);
    let node = node(storm_params(RATE, 50, Duration::from_secs(120)));
    // Arrivals over 5 s, so fresh arrivals keep competing with returning ones.
    let clients = herd(N, T0, secs(5.0), 2);
    let out = run(
        &node,
        &clock,
        &clients,
        Behaviour::default(),
        T0 + secs(200.0),
    );
    assert_eq!(out.unadmitted(), 0, "starvation");
    let ticketless = out.mean_retries(&clients, Kind::Ticketless);
    let ticketed = out.mean_retries(&clients, Kind::Ticketed);
    assert!(ticketless <= 1.5, "ticketless retries {ticketless}");
    assert!(ticketed <= 1.1, "ticketed retries {ticketed}");
    let peak = max_in_window(&out.admissions, secs(1.0));
    assert!(peak <= (RATE * 1.01) as usize + 50, "peak {peak}/s");
    let s = node.stats();
    assert_eq!(s.overflow, 0);
    assert_eq!(s.unclaimed_reservations, 0, "{s:?}");
    assert_eq!(s.admitted_ticket, s.reserved);
    eprintln!("mixed herd: ticketless {ticketless:.3}, ticketed {ticketed:.3}, {s:?}");
}

#[test]
fn whole_second_retry_after_clients_still_get_in() {
    // Clients that only read Retry-After (whole seconds, rounded up) come back up to 1 s
    // late, in clumps; the 2 s claim window keeps their promises for them.
    const N: usize = 5_000;
    let clock = ManualClock::new(T0);
    let node = node(storm_params(RATE, 50, Duration::from_secs(60)));
    let clients = herd(N, T0, secs(0.01), 0);
    let behaviour = Behaviour {
        granularity: Duration::from_secs(1),
        ..Behaviour::default()
    };
    let out = run(&node, &clock, &clients, behaviour, T0 + secs(60.0));
    assert_eq!(out.unadmitted(), 0);
    let retries = out.mean_retries(&clients, Kind::Ticketless);
    assert!(retries <= 1.1, "mean retries {retries}");
    assert_eq!(node.stats().unclaimed_promises, 0);
}

#[test]
fn queue_mode_forwards_in_slot_order_and_refunds_abandoned_tokens() {
    const N: usize = 3_000;
    let clock = ManualClock::new(T0);
    let node = node(storm_params(RATE, 50, Duration::from_secs(60)));
    let clients = herd(N, T0, secs(0.01), 0);
    let behaviour = Behaviour {
        may_queue: Some(Duration::from_secs(2)),
        abandon_every: 10,
        ..Behaviour::default()
    };
    let out = run(&node, &clock, &clients, behaviour, T0 + secs(60.0));
    assert_eq!(out.unadmitted(), 0);
    let s = node.stats();
    assert!(s.queued > 900 && s.refunded > 90, "{s:?}");
    // Refunded tokens went to later arrivals instead of being lost.
    assert!(s.unclaimed_promises <= s.refunded / 10, "{s:?}");
    let peak = max_in_window(&out.admissions, secs(1.0));
    assert!(peak <= (RATE * 1.01) as usize + 50, "peak {peak}/s");
}

#[test]
fn slow_start_admits_the_ramp_integral() {
    const N: usize = 20_000;
    let p = AdmissionParams {
        rate: 1000.0,
        burst: 10,
        max_retry_after: Duration::from_secs(60),
        slow_start: Duration::from_secs(10),
        slow_start_floor: 0.1,
        ..AdmissionParams::default()
    };
    let node = NodeAdmission::builder(7, p, signer(1))
        .seed(1)
        .slow_start(true)
        .build(T0)
        .unwrap();
    assert!((node.effective_rate(T0) - 100.0).abs() < 1e-9);
    assert!((node.effective_rate(T0 + secs(5.0)) - 550.0).abs() < 1e-6);
    let clock = ManualClock::new(T0);
    let clients = herd(N, T0, secs(0.01), 0);
    let out = run(
        &node,
        &clock,
        &clients,
        Behaviour::default(),
        T0 + secs(60.0),
    );
    assert_eq!(out.unadmitted(), 0);
    let in_ramp = out
        .admissions
        .iter()
        .filter(|&&t| t < T0 + secs(10.0))
        .count();
    // ∫ r (f + (1 - f) t / S) dt over [0, S] = r S (1 + f) / 2 = 5,500.
    let integral = 1000.0 * 10.0 * (1.0 + 0.1) / 2.0;
    let err = (in_ramp as f64 - integral).abs() / integral;
    assert!(
        err < 0.02,
        "{in_ramp} admitted in the ramp, integral {integral}"
    );
    let after = out
        .admissions
        .iter()
        .filter(|&&t| t >= T0 + secs(10.0) && t < T0 + secs(14.0))
        .count();
    assert!(
        (3_990..=4_010).contains(&after),
        "{after} in 4 s at full rate"
    );
    assert_eq!(node.effective_rate(T0 + secs(10.0)), 1000.0);
}

#[test]
fn memory_stays_bounded_under_a_million_rejections() {
    let p = AdmissionParams {
        claim_window: Duration::from_secs(2),
        ..storm_params(RATE, 50, Duration::from_secs(60))
    };
    let node = node(p);
    let other = signer(2);
    // Bound: every live promise or reservation is a charged slot in
    // [now - claim_window, now + max_retry_after], spaced T apart.
    let bound = (RATE * 62.0) as usize + 2;
    // (promises + reservations, reservations, foreign claims)
    let mut peak = (0, 0, 0);
    let mut rejections = 0u64;
    let mut t = T0;
    let mut seq = 0u32;
    // 10,000 requests/s (20x the rate) for as long as it takes: a third ticketless, a third
    // ticket-capable no-shows, the rest fresh foreign-instance tickets, some replayed.
    while rejections < 1_000_000 {
        t += 100_000;
        let i = t / 100_000;
        let foreign;
        let input = match i % 3 {
            0 => AdmitInput::TICKETLESS,
            1 => AdmitInput::ticketed(None),
            _ if i % 60 == 2 => {
                seq += u32::from(i % 120 == 2);
                foreign = other.sign(node.node_id(), t, seq);
                AdmitInput::ticketed(Some(&foreign))
            }
            _ => AdmitInput::ticketed(None),
        };
        if let Decision::Reject { .. } = node.check(t, &input) {
            rejections += 1;
        }
        if i % 1000 == 0 {
            let s = node.state_sizes(t);
            peak = (
                peak.0.max(s.promises + s.reservations),
                peak.1.max(s.reservations),
                peak.2.max(s.foreign_claims),
            );
        }
    }
    let s = node.stats();
    assert!(peak.0 <= bound, "peak {peak:?} > {bound}, {s:?}");
    assert!(peak.1 <= RESERVATION_WINDOW);
    // ~83 fresh foreign tickets/s live ~2 s each.
    assert!(peak.2 <= 400, "foreign {peak:?}");
    assert!(s.overflow > 500_000, "{s:?}");
    // No-show reservations were released to later arrivals after their grace (and
    // counted); promises went to later ticketless arrivals.
    assert!(s.released > 10_000, "{s:?}");
    assert!(s.admitted_promise > 10_000, "{s:?}");
    assert!(s.foreign_tickets > 1_000, "{s:?}");
    // After the storm everything expires.
    let later = t + secs(70.0);
    let s = node.state_sizes(later);
    assert_eq!((s.promises, s.reservations, s.foreign_claims), (0, 0, 0));
}

#[test]
fn a_full_reservation_window_overflows_instead_of_promising() {
    // 100k slots fit in 1 s at this rate: more than the reservation window holds.
    let node = node(storm_params(100_000.0, 1, Duration::from_secs(1)));
    let mut tickets = 0;
    let mut overflow = 0;
    for _ in 0..RESERVATION_WINDOW + 10 {
        match node.check(T0, &AdmitInput::ticketed(None)) {
            Decision::Reject {
                ticket: Some(_), ..
            } => tickets += 1,
            Decision::Reject {
                ticket: None,
                overflow: true,
                ..
            } => overflow += 1,
            _ => {}
        }
    }
    assert_eq!(tickets, RESERVATION_WINDOW);
    assert_eq!(overflow, 9);
    // A ticketless client still gets a promise: the bucket was not charged by the overflow.
    assert!(matches!(
        node.check(T0, &AdmitInput::TICKETLESS),
        Decision::Reject {
            overflow: false,
            ..
        }
    ));
}
