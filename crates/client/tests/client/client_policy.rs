//! The reconnect policy, pure: bounds of the backoff and what each strategy does with
//! hints and tickets.

use std::time::Duration;

use herdgate_client::policy::{BASE_MAX, BASE_MIN, DEFAULT_CAP};
use herdgate_client::{
    Backoff, ClientError, Hint, HintSource, Outcome, ReconnectPolicy, RejectedBy, Rejection,
    Strategy,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn rejected(hint: Option<Hint>) -> Outcome<()> {
    Outcome::Rejected(Rejection {
        by: RejectedBy::Status(503),
        hint,
    })
}

fn failed() -> Outcome<()> {
    Outcome::Failed(ClientError::Timeout {
        after: Duration::from_secs(1),
    })
}

fn hint(ms: u64, ticket: Option<&str>) -> Hint {
    Hint {
        retry_after: Duration::from_millis(ms),
        ticket: ticket.map(str::to_owned),
        source: if ticket.is_some() {
            HintSource::TicketMs
        } else {
            HintSource::RetryAfterMs
        },
        header: Some(Duration::from_secs(ms.div_ceil(1000))),
    }
}

fn ceiling(base: Duration, attempt: u32) -> Duration {
    let factor = 2u128.saturating_pow(attempt);
    Duration::from_nanos(
        u64::try_from((base.as_nanos() * factor).min(DEFAULT_CAP.as_nanos())).unwrap_or(u64::MAX),
    )
}

proptest! {
    #[test]
    fn base_is_drawn_in_range(seed in any::<u64>()) {
        let b = Backoff::new(&mut StdRng::seed_from_u64(seed));
        prop_assert!(b.base() >= BASE_MIN && b.base() <= BASE_MAX, "base {:?}", b.base());
        prop_assert_eq!(b.cap(), DEFAULT_CAP);
        prop_assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn jittered_delays_stay_within_half_and_one_and_a_half_of_the_capped_ceiling(
        seed in any::<u64>(),
        attempts in 1usize..80,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut b = Backoff::new(&mut rng);
        for n in 0..attempts {
            let n = u32::try_from(n).unwrap();
            let c = ceiling(b.base(), n);
            prop_assert_eq!(b.ceiling(), c);
            let d = b.next_jittered(&mut rng).unwrap();
            prop_assert!(d >= c / 2 && d <= c + c / 2, "attempt {} delay {:?} ceiling {:?}", n, d, c);
            // The cap bounds the ceiling, so no delay exceeds 1.5 x cap.
            prop_assert!(d <= DEFAULT_CAP + DEFAULT_CAP / 2);
        }
        prop_assert_eq!(b.attempt(), u32::try_from(attempts).unwrap());
    }

    #[test]
    fn full_jitter_is_between_zero_and_the_ceiling(seed in any::<u64>(), attempts in 1usize..80) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut b = Backoff::with_base(Duration::from_secs(1), DEFAULT_CAP);
        for n in 0..attempts {
            let c = ceiling(Duration::from_secs(1), u32::try_from(n).unwrap());
            let d = b.next_full_jitter(&mut rng).unwrap();
            prop_assert!(d <= c, "delay {:?} ceiling {:?}", d, c);
        }
    }

    #[test]
    fn max_retries_is_honoured(seed in any::<u64>(), max in 0u32..20) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut b = Backoff::new(&mut rng).with_max_retries(max);
        for _ in 0..max {
            prop_assert!(b.next_jittered(&mut rng).is_some());
        }
        prop_assert_eq!(b.next_jittered(&mut rng), None);
        prop_assert_eq!(b.next_full_jitter(&mut rng), None);
    }

    #[test]
    fn herdgate_obeys_any_hint_exactly(seed in any::<u64>(), ms in 0u64..3_600_000, blind in 0u32..10) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = ReconnectPolicy::new(Strategy::Herdgate { tickets: true }, &mut rng);
        for _ in 0..blind {
            p.next_delay(&failed(), &mut rng);
        }
        let d = p.next_delay(&rejected(Some(hint(ms, Some("tkt")))), &mut rng);
        prop_assert_eq!(d, Some(Duration::from_millis(ms)));
        prop_assert_eq!(p.backoff().attempt(), 0);
        prop_assert_eq!(p.ticket(), Some("tkt"));
    }
}

#[test]
fn same_seed_same_delays() {
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = ReconnectPolicy::new(Strategy::Herdgate { tickets: false }, &mut rng);
        (0..10)
            .map(|_| p.next_delay(&failed(), &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn jitter_spreads_over_the_whole_window() {
    // With a fixed ceiling, 10,000 draws should land in every tenth of [c/2, 3c/2]
    // and average close to c: the jitter is uniform, not clustered.
    let mut rng = StdRng::seed_from_u64(42);
    let c = Duration::from_millis(1000);
    let mut buckets = [0u32; 10];
    let mut sum = Duration::ZERO;
    for _ in 0..10_000 {
        let mut b = Backoff::with_base(c, DEFAULT_CAP);
        let d = b.next_jittered(&mut rng).unwrap();
        sum += d;
        let tenth = ((d - c / 2).as_nanos() * 10 / c.as_nanos()).min(9);
        buckets[usize::try_from(tenth).unwrap()] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (800..1200).contains(&n)),
        "{buckets:?}"
    );
    let mean = sum / 10_000;
    assert!(
        mean > Duration::from_millis(990) && mean < Duration::from_millis(1010),
        "{mean:?}"
    );
}

#[test]
fn backoff_doubles_then_caps_and_never_overflows() {
    let mut b = Backoff::with_base(Duration::from_millis(250), DEFAULT_CAP);
    let mut ceilings = Vec::new();
    for _ in 0..200 {
        ceilings.push(b.ceiling());
        b.next_attempt();
    }
    assert_eq!(ceilings[0], Duration::from_millis(250));
    assert_eq!(ceilings[1], Duration::from_millis(500));
    assert_eq!(ceilings[6], Duration::from_millis(16_000));
    assert_eq!(ceilings[7], DEFAULT_CAP);
    assert_eq!(ceilings[199], DEFAULT_CAP);
}

#[test]
fn hint_resets_backoff_and_blind_failures_grow_it_again() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut p = ReconnectPolicy::new(Strategy::Herdgate { tickets: false }, &mut rng);
    for _ in 0..5 {
        p.next_delay(&failed(), &mut rng);
    }
    assert_eq!(p.backoff().attempt(), 5);
    assert_eq!(
        p.next_delay(&rejected(Some(hint(1500, None))), &mut rng),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(p.backoff().attempt(), 0);
    // Next blind failure starts from the base again.
    let d = p.next_delay(&failed(), &mut rng).unwrap();
    let base = p.backoff().base();
    assert!(
        d >= base / 2 && d <= base + base / 2,
        "{d:?} vs base {base:?}"
    );
}

#[test]
fn hints_do_not_count_against_max_retries() {
    let mut rng = StdRng::seed_from_u64(3);
    let backoff = Backoff::new(&mut rng).with_max_retries(2);
    let mut p = ReconnectPolicy::with_backoff(Strategy::Herdgate { tickets: true }, backoff);
    for _ in 0..10 {
        assert!(p.next_delay(&failed(), &mut rng).is_some());
        assert!(p
            .next_delay(&rejected(Some(hint(10, None))), &mut rng)
            .is_some());
    }
    assert!(p.next_delay(&failed(), &mut rng).is_some());
    assert!(p.next_delay(&failed(), &mut rng).is_some());
    assert_eq!(p.next_delay(&failed(), &mut rng), None);
}

#[test]
fn rejection_without_hint_falls_back_to_backoff() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut p = ReconnectPolicy::new(Strategy::Herdgate { tickets: true }, &mut rng);
    let base = p.backoff().base();
    let d = p.next_delay(&rejected(None), &mut rng).unwrap();
    assert!(d >= base / 2 && d <= base + base / 2);
    assert_eq!(p.backoff().attempt(), 1);
    assert_eq!(p.ticket(), None);
}

#[test]
fn tickets_are_kept_only_when_announced_and_only_for_one_attempt() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut with = ReconnectPolicy::new(Strategy::Herdgate { tickets: true }, &mut rng);
    let mut without = ReconnectPolicy::new(Strategy::Herdgate { tickets: false }, &mut rng);
    assert!(with.accept_tickets());
    assert!(!without.accept_tickets());
    let h = Some(hint(200, Some("abc_-123")));
    with.next_delay(&rejected(h.clone()), &mut rng);
    without.next_delay(&rejected(h), &mut rng);
    assert_eq!(with.ticket(), Some("abc_-123"));
    assert_eq!(without.ticket(), None);
    // The slot is spent by the next attempt, whatever it brings.
    with.next_delay(&failed(), &mut rng);
    assert_eq!(with.ticket(), None);
    with.next_delay(&rejected(Some(hint(200, Some("t2")))), &mut rng);
    assert_eq!(with.next_delay(&Outcome::Connected(()), &mut rng), None);
    assert_eq!(with.ticket(), None);
}

#[test]
fn connecting_resets_the_backoff() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut p = ReconnectPolicy::new(Strategy::FullJitter, &mut rng);
    for _ in 0..4 {
        p.next_delay(&failed(), &mut rng);
    }
    assert_eq!(p.next_delay(&Outcome::Connected(()), &mut rng), None);
    assert_eq!(p.backoff().attempt(), 0);
}

#[test]
fn comparison_strategies_ignore_hints() {
    let mut rng = StdRng::seed_from_u64(7);
    let h = Some(hint(5000, Some("t")));
    let mut immediate = ReconnectPolicy::new(Strategy::Immediate, &mut rng);
    assert_eq!(
        immediate.next_delay(&rejected(h.clone()), &mut rng),
        Some(Duration::ZERO)
    );
    assert!(!immediate.honours_hints() && !immediate.accept_tickets());
    let mut fixed = ReconnectPolicy::new(Strategy::Fixed(Duration::from_secs(1)), &mut rng);
    assert_eq!(
        fixed.next_delay(&rejected(h.clone()), &mut rng),
        Some(Duration::from_secs(1))
    );
    let mut full = ReconnectPolicy::with_backoff(
        Strategy::FullJitter,
        Backoff::with_base(Duration::from_secs(1), DEFAULT_CAP),
    );
    for n in 0..3u32 {
        let d = full.next_delay(&rejected(h.clone()), &mut rng).unwrap();
        assert!(d <= Duration::from_secs(1 << n), "{d:?}");
    }
    assert_eq!(full.ticket(), None);
    assert_eq!(full.backoff().attempt(), 3);
}

#[test]
fn drain_close_hint_schedules_the_reconnect() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut p = ReconnectPolicy::new(Strategy::Herdgate { tickets: true }, &mut rng);
    let drain = Hint::from_close(1012, r#"{"retry_after_ms":2500}"#);
    assert_eq!(
        p.after_close(drain.as_ref(), &mut rng),
        Some(Duration::from_millis(2500))
    );
    // 1001 (shutdown) has no hint: jittered backoff from the base.
    let base = p.backoff().base();
    let d = p.after_close(None, &mut rng).unwrap();
    assert!(d >= base / 2 && d <= base + base / 2);
}

#[test]
fn a_retry_after_only_client_reads_the_whole_seconds_and_nothing_else() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut p = ReconnectPolicy::new(Strategy::RetryAfterHeader, &mut rng);
    assert!(!p.accept_tickets());
    // The exact ms and the ticket are ignored: the header's 2 s is what it waits.
    let mut h = hint(1_234, Some("T1"));
    h.header = Some(Duration::from_secs(2));
    assert_eq!(
        p.next_delay(&rejected(Some(h)), &mut rng),
        Some(Duration::from_secs(2))
    );
    assert_eq!(p.ticket(), None);
    // A close reason (no header) or no hint: the jittered backoff, never the close's 40 ms.
    let mut close = hint(40, None);
    close.header = None;
    for outcome in [rejected(Some(close)), rejected(None)] {
        let d = p.next_delay(&outcome, &mut rng).unwrap();
        assert!(
            d != Duration::from_millis(40) && d <= ceiling(BASE_MAX, 1) * 2,
            "{d:?}"
        );
    }
}
