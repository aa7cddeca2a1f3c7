//! One node's decisions, step by step: tickets, promises, overflow, queue, hints, reload.

use std::time::Duration;

use super::admission_sim::*;
use herdgate_core::admission::{
    duration_to_nanos, node_id, AdmissionParams, AdmitInput, AdmitVia, Decision, NodeAdmission,
    TicketCheck, FRESH_IDLE, NANOS_PER_MILLI, TICKET_MAX_LEN,
};

/// rate 10/s (T = 100 ms), burst 1, so each step is easy to follow.
fn slow() -> AdmissionParams {
    AdmissionParams {
        max_retry_after: Duration::from_secs(10),
        claim_window: Duration::from_secs(2),
        ..params(10.0, 1)
    }
}

const T: u64 = 100 * NANOS_PER_MILLI;

/// Exhausts the burst, then returns a ticket and its slot (T0 + T) from a rejection at T0.
fn ticket_for(node: &NodeAdmission) -> (String, u64) {
    assert!(node.check(T0, &AdmitInput::TICKETLESS).is_admit());
    match node.check(T0, &AdmitInput::ticketed(None)) {
        Decision::Reject {
            retry_after,
            ticket: Some(t),
            overflow: false,
            capped: false,
            early_hold: false,
            ticket_check: TicketCheck::None,
        } => {
            assert!(
                retry_after >= Duration::from_nanos(T) && retry_after < Duration::from_nanos(2 * T)
            );
            assert!(t.len() <= TICKET_MAX_LEN, "{} chars", t.len());
            (t, T0 + T)
        }
        d => panic!("{d:?}"),
    }
}

fn reject_check(d: &Decision) -> TicketCheck {
    match d {
        Decision::Reject { ticket_check, .. } => *ticket_check,
        d => panic!("expected a rejection, got {d:?}"),
    }
}

#[test]
fn valid_ticket_claims_its_reserved_token() {
    let node = node(slow());
    let (t, slot) = ticket_for(&node);
    // A fresh ticketless arrival at the slot cannot take the reserved token...
    assert_eq!(
        reject_check(&node.check(slot, &AdmitInput::TICKETLESS)),
        TicketCheck::None
    );
    // ...the ticket holder can, even with the bucket booked further ahead.
    assert_eq!(
        node.check(slot + 1, &AdmitInput::ticketed(Some(&t))),
        Decision::Admit {
            via: AdmitVia::Ticket,
            ticket: TicketCheck::Valid
        }
    );
    assert_eq!(node.stats().admitted_ticket, 1);
}

#[test]
fn ticket_window_early_and_late() {
    let node = node(slow());
    let (t, slot) = ticket_for(&node);
    let early = T.max(50 * NANOS_PER_MILLI); // max(T, 50 ms) = 100 ms
    let d = node.check(slot - early - 1, &AdmitInput::ticketed(Some(&t)));
    assert_eq!(d.ticket_check(), TicketCheck::Early);
    // An invalid ticket falls through to an ordinary decision (here: a new ticket).
    assert!(matches!(
        d,
        Decision::Reject {
            ticket: Some(_),
            ..
        }
    ));
    let late = slot + 2_000 * NANOS_PER_MILLI + NANOS_PER_MILLI + 1;
    assert_eq!(
        node.check(late, &AdmitInput::ticketed(Some(&t)))
            .ticket_check(),
        TicketCheck::Late
    );
    // Inside the window, from its early edge to its late edge, it is good. At the early
    // edge the node has just forwarded someone (the burst is 1): the holder is held until
    // its slot rather than forwarded within T of the previous one.
    let node = super::admission_sim::node(slow());
    let (t, slot) = ticket_for(&node);
    assert_eq!(
        node.check(slot - early, &AdmitInput::ticketed(Some(&t))),
        Decision::Queue {
            until: slot,
            slot,
            via: AdmitVia::Ticket,
            paced: true,
            turn: false,
            ticket_check: TicketCheck::Valid
        }
    );
    let node = super::admission_sim::node(slow());
    let (t, slot) = ticket_for(&node);
    assert!(node
        .check(
            slot + 2_000 * NANOS_PER_MILLI,
            &AdmitInput::ticketed(Some(&t))
        )
        .is_admit());
}

#[test]
fn forged_reused_other_node_and_malformed_tickets() {
    let node = node(slow());
    let (t, slot) = ticket_for(&node);
    // Flip one byte of the MAC.
    let mut forged = t.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let d = node.check(slot, &AdmitInput::ticketed(Some(&forged)));
    assert_eq!(d.ticket_check(), TicketCheck::Forged);
    assert!(!d.is_admit());
    let d = node.check(slot, &AdmitInput::ticketed(Some("not-a-ticket")));
    assert_eq!(d.ticket_check(), TicketCheck::Malformed);

    assert!(node.check(slot, &AdmitInput::ticketed(Some(&t))).is_admit());
    let d = node.check(slot + 1, &AdmitInput::ticketed(Some(&t)));
    assert_eq!(d.ticket_check(), TicketCheck::Reused);
    assert!(!d.is_admit());

    // Same key and instance, another node.
    let other = NodeAdmission::builder(node_id("pool", "b"), slow(), signer(1))
        .build(T0)
        .unwrap();
    let d = other.check(slot, &AdmitInput::ticketed(Some(&t)));
    assert_eq!(d.ticket_check(), TicketCheck::OtherNode);
    // Falls through to the bucket, which is idle there.
    assert!(matches!(
        d,
        Decision::Admit {
            via: AdmitVia::Bucket,
            ticket: TicketCheck::OtherNode
        }
    ));
}

#[test]
fn ticket_from_another_instance_is_honoured_and_charged() {
    // Two herdgate instances sharing the key, same node.
    let a = node(slow());
    let b = NodeAdmission::builder(a.node_id(), slow(), signer(2))
        .seed(9)
        .build(T0)
        .unwrap();
    let (t, slot) = ticket_for(&a);
    assert_eq!(b.backlog(slot), Duration::ZERO);
    assert_eq!(
        b.check(slot, &AdmitInput::ticketed(Some(&t))),
        Decision::Admit {
            via: AdmitVia::Ticket,
            ticket: TicketCheck::Valid
        }
    );
    // b did not reserve it, so b pays now: its bucket is no longer idle.
    assert_eq!(b.backlog(slot), Duration::from_nanos(T));
    assert_eq!(b.stats().foreign_tickets, 1);
    assert!(!b.check(slot, &AdmitInput::TICKETLESS).is_admit());
    // A replay at b is caught by its bounded foreign-claim table.
    assert_eq!(
        b.check(slot + 1, &AdmitInput::ticketed(Some(&t)))
            .ticket_check(),
        TicketCheck::Reused
    );
    // And a is not fooled either: the token it reserved is still claimable once.
    assert!(a.check(slot, &AdmitInput::ticketed(Some(&t))).is_admit());
}

#[test]
fn ticket_from_a_rebuilt_node_state_is_not_free() {
    // Same instance id, but the node state was rebuilt (removed and re-added): its ledger
    // never issued the ticket, so the token is charged as if foreign.
    let old = node(slow());
    let (t, slot) = ticket_for(&old);
    let rebuilt = NodeAdmission::builder(old.node_id(), slow(), signer(1))
        .seed(43)
        .build(slot)
        .unwrap();
    assert!(rebuilt
        .check(slot, &AdmitInput::ticketed(Some(&t)))
        .is_admit());
    assert_eq!(rebuilt.backlog(slot), Duration::from_nanos(T));
    assert_eq!(rebuilt.stats().foreign_tickets, 1);
}

#[test]
fn unclaimed_reservations_are_released_then_counted() {
    let node = node(slow());
    let (_t, slot) = ticket_for(&node);
    // Nobody came for it: released after its grace, then never claimed.
    node.check(
        slot + 2_000 * NANOS_PER_MILLI + T + 1,
        &AdmitInput::ticketed(None),
    );
    let s = node.stats();
    assert_eq!((s.released, s.unclaimed_promises), (1, 1), "{s:?}");
    assert_eq!(
        node.state_sizes(slot + 3_000 * NANOS_PER_MILLI)
            .reservations,
        0
    );
}

#[test]
fn promises_go_to_ticketless_arrivals_and_expire_unclaimed() {
    let node = node(slow());
    assert!(node.check(T0, &AdmitInput::TICKETLESS).is_admit());
    let hint = match node.check(T0, &AdmitInput::TICKETLESS) {
        Decision::Reject {
            retry_after,
            ticket: None,
            overflow: false,
            ..
        } => retry_after,
        d => panic!("{d:?}"),
    };
    let slot = T0 + T;
    assert!(hint >= Duration::from_nanos(T) && hint < Duration::from_nanos(2 * T));
    // Not yet due.
    assert!(!node.check(slot - 1, &AdmitInput::TICKETLESS).is_admit());
    // Due: a ticket-capable client without a ticket does not take it...
    assert!(!node.check(slot, &AdmitInput::ticketed(None)).is_admit());
    // ...a ticketless one does.
    assert_eq!(
        node.check(slot, &AdmitInput::TICKETLESS),
        Decision::Admit {
            via: AdmitVia::Promise,
            ticket: TicketCheck::None
        }
    );
    // The second ticketless rejection's promise (slot + T) and the ticketed one's
    // reservation (slot + 2T) are never claimed. The reservation was released as a public
    // credit after its grace, so it expires as a promise.
    let far = slot + 10 * T + 2_000 * NANOS_PER_MILLI;
    assert!(node.check(far, &AdmitInput::TICKETLESS).is_admit());
    let s = node.stats();
    assert_eq!(
        (s.unclaimed_promises, s.unclaimed_reservations, s.released),
        (2, 0, 1),
        "{s:?}"
    );
}

#[test]
fn overflow_reserves_nothing() {
    let p = AdmissionParams {
        max_retry_after: Duration::from_secs(1),
        ..slow()
    };
    let node = node(p);
    assert!(node.check(T0, &AdmitInput::TICKETLESS).is_admit());
    // Slots T0 + 100 ms ..= T0 + 1 s: ten of them.
    for _ in 0..10 {
        assert!(matches!(
            node.check(T0, &AdmitInput::TICKETLESS),
            Decision::Reject {
                overflow: false,
                ..
            }
        ));
    }
    let backlog = node.backlog(T0);
    for input in [AdmitInput::TICKETLESS, AdmitInput::ticketed(None)] {
        match node.check(T0, &input) {
            Decision::Reject {
                retry_after,
                ticket: None,
                overflow: true,
                ..
            } => {
                // max_retry_after, jittered within its last second.
                assert!(retry_after <= Duration::from_secs(1) && retry_after > Duration::ZERO);
            }
            d => panic!("{d:?}"),
        }
    }
    assert_eq!(node.backlog(T0), backlog, "overflow charged nothing");
    let s = node.stats();
    assert_eq!((s.overflow, s.rejected, s.promised), (2, 12, 10));
}

#[test]
fn queue_within_the_wait_limit_and_refund() {
    let node = node(slow());
    let q = AdmitInput {
        may_queue: Some(Duration::from_millis(250)),
        ..AdmitInput::TICKETLESS
    };
    assert!(node.check(T0, &q).is_admit());
    let slots: Vec<u64> = (0..2)
        .map(|_| match node.check(T0, &q) {
            Decision::Queue { until, slot, .. } => {
                // Goes when due: one interval (T = 100 ms) before its slot, or now.
                assert_eq!(until, slot.saturating_sub(T).max(T0));
                slot
            }
            d => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(slots, [T0 + T, T0 + 2 * T]);
    // The next slot (T0 + 300 ms) is beyond the wait limit: rejected with a hint instead.
    assert!(matches!(
        node.check(T0, &q),
        Decision::Reject {
            overflow: false,
            ..
        }
    ));
    // The first queued client goes away: its token becomes a promise at its slot.
    node.refund(slots[0]);
    assert_eq!(
        node.check(T0 + T, &AdmitInput::TICKETLESS),
        Decision::Admit {
            via: AdmitVia::Promise,
            ticket: TicketCheck::None
        }
    );
    let s = node.stats();
    assert_eq!((s.queued, s.refunded, s.admitted_promise), (2, 1, 1));
}

#[test]
fn drain_hints_take_promise_slots() {
    let node = node(slow());
    let hints: Vec<Duration> = (0..5).map(|_| node.hint(T0)).collect();
    for (i, h) in hints.iter().enumerate() {
        let slot = Duration::from_nanos(i as u64 * T);
        assert!(
            *h >= slot && *h < slot + Duration::from_nanos(T),
            "{i}: {h:?}"
        );
    }
    // The first closed client returns and claims its promise.
    assert_eq!(
        node.check(T0 + hints[0].as_nanos() as u64, &AdmitInput::TICKETLESS),
        Decision::Admit {
            via: AdmitVia::Promise,
            ticket: TicketCheck::None
        }
    );
    let (h, t) = node.hint_with_ticket(T0);
    let t = t.expect("a ticket");
    assert!(node
        .check(T0 + h.as_nanos() as u64, &AdmitInput::ticketed(Some(&t)))
        .is_admit());
    assert_eq!(node.stats().hinted, 6);
}

#[test]
fn update_params_keeps_schedule_tickets_and_counters() {
    let node = node(slow());
    let (t, slot) = ticket_for(&node);
    assert!(!node.check(T0, &AdmitInput::TICKETLESS).is_admit()); // promise at T0 + 2T
    let backlog = node.backlog(T0);
    let before = node.stats();
    node.update_params(
        AdmissionParams {
            rate: 20.0,
            ..slow()
        },
        T0,
    )
    .unwrap();
    assert_eq!(node.backlog(T0), backlog, "TAT kept");
    assert_eq!(node.stats(), before, "counters kept");
    assert_eq!(node.params().rate, 20.0);
    assert!(node.check(slot, &AdmitInput::ticketed(Some(&t))).is_admit());
    assert_eq!(
        node.check(T0 + 2 * T, &AdmitInput::TICKETLESS),
        Decision::Admit {
            via: AdmitVia::Promise,
            ticket: TicketCheck::None
        }
    );
    // New slots use the new interval (50 ms) after the booked ones.
    let now = T0 + 2 * T;
    let before = node.backlog(now);
    node.hint(now);
    assert_eq!(node.backlog(now) - before, Duration::from_millis(50));
    // Bad params are refused and change nothing.
    assert!(node
        .update_params(
            AdmissionParams {
                rate: 0.0,
                ..slow()
            },
            T0
        )
        .is_err());
    assert_eq!(node.params().rate, 20.0);
}

#[test]
fn begin_slow_start_ramps_and_reload_keeps_it() {
    let p = AdmissionParams {
        slow_start: Duration::from_secs(10),
        slow_start_floor: 0.2,
        ..params(100.0, 10)
    };
    let node = node(p.clone());
    assert_eq!(node.effective_rate(T0), 100.0);
    node.begin_slow_start(T0);
    assert!((node.effective_rate(T0) - 20.0).abs() < 1e-9);
    node.update_params(AdmissionParams { rate: 200.0, ..p }, T0 + secs(5.0))
        .unwrap();
    assert!((node.effective_rate(T0 + secs(5.0)) - 120.0).abs() < 1e-9);
    assert_eq!(node.effective_rate(T0 + secs(10.0)), 200.0);
    // The burst ramps too: at the floor (0.2) a burst of 10 is 2, of which one goes at
    // once and the other RELEASE_MARGIN later (room for a connect that takes longer than
    // the one before).
    node.begin_slow_start(T0 + secs(20.0));
    let d: Vec<Decision> = (0..10)
        .map(|_| node.check(T0 + secs(20.0), &AdmitInput::TICKETLESS))
        .collect();
    assert_eq!(d.iter().filter(|d| d.is_admit()).count(), 1);
    assert_eq!(
        d.iter()
            .filter(|d| matches!(d, Decision::Queue { paced: true, .. }))
            .count(),
        1
    );
}

#[test]
fn same_seed_same_decisions() {
    let run = || {
        let n = node(slow());
        (0..50)
            .map(|i| n.check(T0 + i * 7 * NANOS_PER_MILLI, &AdmitInput::TICKETLESS))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn node_admission_is_send_and_sync_and_shares_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NodeAdmission>();
    let node = std::sync::Arc::new(node(params(1000.0, 100)));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || {
                (0..1000)
                    .filter(|_| {
                        !matches!(
                            node.check(T0, &AdmitInput::TICKETLESS),
                            Decision::Reject { .. }
                        )
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // At one instant only the burst conforms, whatever the interleaving (its last one
    // held RELEASE_MARGIN).
    assert_eq!(admitted, 100);
    assert_eq!(node.stats().rejected, 3900);
}

/// A fresh lane nobody used for FRESH_IDLE lends its share to the schedule (slots one full
/// interval apart); the first fresh arrival takes it back (slots at the rate less the
/// share again).
#[test]
fn an_idle_fresh_lane_lends_its_share_until_a_fresh_arrival_comes() {
    // 10/s with half kept for fresh arrivals: T = 100 ms, the schedule's interval 200 ms.
    let node = node(AdmissionParams {
        fresh_share: 0.5,
        ..params(10.0, 1)
    });
    let held = |owner: u64| AdmitInput {
        may_queue: Some(Duration::from_secs(1)),
        ..AdmitInput::TICKETLESS.owned_by(owner)
    };
    let slot = |d: Decision| match d {
        Decision::Queue { slot, .. } => slot,
        d => panic!("expected a hold, got {d:?}"),
    };
    // The burst (the bucket's interval is the schedule's, 2T).
    assert!(node.check(T0, &held(1)).is_admit());
    // Nobody ever came by the fresh lane: the schedule books at the full rate.
    assert_eq!(slot(node.check(T0, &held(2))), T0 + 2 * T);
    assert_eq!(slot(node.check(T0, &held(3))), T0 + 3 * T);
    // A fresh arrival (holding no slot) takes the lane...
    let fresh_at = T0 + 5 * T / 2;
    assert_eq!(
        node.check(fresh_at, &AdmitInput::TICKETLESS.owned_by(4)),
        Decision::Admit {
            via: AdmitVia::Fresh,
            ticket: TicketCheck::None
        }
    );
    // ...and the schedule keeps its share for fresh arrivals again.
    assert_eq!(slot(node.check(fresh_at, &held(5))), T0 + 4 * T);
    assert_eq!(slot(node.check(fresh_at, &held(6))), T0 + 6 * T);
    // FRESH_IDLE later with no fresh arrival, the share is lent again.
    let later = fresh_at + duration_to_nanos(FRESH_IDLE) + T;
    assert!(
        node.check(later, &held(7)).is_admit(),
        "the schedule ran dry: the bucket"
    );
    let s = slot(node.check(later, &held(7)));
    assert_eq!(s, later + 2 * T);
    assert_eq!(slot(node.check(later, &held(8))), s + T);
}
