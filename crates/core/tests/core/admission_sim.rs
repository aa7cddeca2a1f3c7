//! A discrete-event storm against one `NodeAdmission` on a virtual clock: clients arrive,
//! get a decision, and (if they obey) come back exactly when told. No sockets, no wall time.
//! Shared by the admission_* test files; the full multi-node simulator can grow from it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use herdgate_core::admission::{
    duration_to_nanos, AdmissionParams, AdmitInput, Decision, ManualClock, Nanos, NodeAdmission,
    TicketKey, TicketSigner, NANOS_PER_SEC,
};

/// 2024-01-01T00:00:00Z: a realistic epoch offset, so ms truncation in tickets is exercised.
pub const T0: Nanos = 1_704_067_200 * NANOS_PER_SEC;

pub fn secs(s: f64) -> Nanos {
    (s * NANOS_PER_SEC as f64) as Nanos
}

pub fn signer(instance: u32) -> Arc<TicketSigner> {
    Arc::new(TicketSigner::new(
        TicketKey::from_bytes(&[0x5a; 32]).expect("static key"),
        instance,
    ))
}

pub fn params(rate: f64, burst: u32) -> AdmissionParams {
    AdmissionParams::new(rate, burst).expect("valid params")
}

pub fn node(params: AdmissionParams) -> NodeAdmission {
    NodeAdmission::builder(7, params, signer(1))
        .seed(42)
        .build(T0)
        .expect("valid params")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads only Retry-After / retry-after-ms.
    Ticketless,
    /// Asks for tickets and presents them.
    Ticketed,
}

#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub first: Nanos,
    pub kind: Kind,
}

/// How clients turn a hint into a return time.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Hints are rounded up to this (1 ms for retry-after-ms, 1 s for Retry-After).
    pub granularity: Duration,
    /// Queue mode offered by the proxy.
    pub may_queue: Option<Duration>,
    /// Clients that go away while queued, as a fraction (0 = none); they are refunded.
    pub abandon_every: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            granularity: Duration::from_millis(1),
            may_queue: None,
            abandon_every: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests per client until admitted (1 = admitted at first try).
    pub requests: Vec<u32>,
    /// Admission time per client (None: never admitted before the horizon).
    pub admitted_at: Vec<Option<Nanos>>,
    /// Every request's arrival time, in event order.
    pub arrivals: Vec<Nanos>,
    /// Every admission time (including forwarded queued requests), sorted.
    pub admissions: Vec<Nanos>,
    pub overflows: usize,
}

impl Outcome {
    /// Mean retries (requests - 1) over the clients of `kind` that were rejected at least once.
    pub fn mean_retries(&self, clients: &[Client], kind: Kind) -> f64 {
        let (sum, n) = self
            .requests
            .iter()
            .zip(clients)
            .filter(|(&r, c)| c.kind == kind && r > 1)
            .fold((0u64, 0u64), |(s, n), (&r, _)| {
                (s + u64::from(r - 1), n + 1)
            });
        if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64
        }
    }

    pub fn unadmitted(&self) -> usize {
        self.admitted_at.iter().filter(|a| a.is_none()).count()
    }
}

/// Largest number of `times` (sorted) inside any half-open window of length `w`.
pub fn max_in_window(times: &[Nanos], w: Nanos) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Runs the storm until every client is in or `horizon` passes. The clock is set to each
/// event's time before the node is asked (the clock is what a real caller would read).
pub fn run(
    node: &NodeAdmission,
    clock: &ManualClock,
    clients: &[Client],
    behaviour: Behaviour,
    horizon: Nanos,
) -> Outcome {
    let n = clients.len();
    let mut out = Outcome {
        requests: vec![0; n],
        admitted_at: vec![None; n],
        ..Outcome::default()
    };
    let mut tickets: Vec<Option<String>> = vec![None; n];
    // Reverse((time, seq, client)): seq keeps equal-time events in insertion order.
    let mut events = BinaryHeap::new();
    for (i, c) in clients.iter().enumerate() {
        events.push(Reverse((c.first, i as u64, i)));
    }
    let mut seq = n as u64;
    let gran = duration_to_nanos(behaviour.granularity).max(1);
    let mut queued = 0usize;
    while let Some(Reverse((t, _, i))) = events.pop() {
        if t > horizon {
            break;
        }
        clock.set(t);
        out.requests[i] += 1;
        out.arrivals.push(t);
        let input = AdmitInput {
            ticket: tickets[i].as_deref(),
            wants_ticket: clients[i].kind == Kind::Ticketed,
            may_queue: behaviour.may_queue,
            owner: Some(i as u64),
        };
        match node.check(t, &input) {
            Decision::Admit { .. } => {
                out.admitted_at[i] = Some(t);
                out.admissions.push(t);
            }
            Decision::Queue { until, slot, .. } => {
                queued += 1;
                if behaviour.abandon_every > 0 && queued % behaviour.abandon_every == 0 {
                    // Gone while waiting: give the token back, come back fresh later.
                    node.refund(slot);
                    seq += 1;
                    events.push(Reverse((until + secs(1.0), seq, i)));
                } else {
                    out.admitted_at[i] = Some(until);
                    out.admissions.push(until);
                }
            }
            Decision::Reject {
                retry_after,
                ticket,
                overflow,
                ..
            } => {
                out.overflows += usize::from(overflow);
                tickets[i] = ticket;
                let wait = duration_to_nanos(retry_after).div_ceil(gran) * gran;
                seq += 1;
                events.push(Reverse((t + wait, seq, i)));
            }
        }
    }
    out.admissions.sort_unstable();
    out
}

/// `n` clients arriving uniformly over `spread` from `start`, every `every_ticketed`-th one
/// ticketed (0 = none).
pub fn herd(n: usize, start: Nanos, spread: Nanos, every_ticketed: usize) -> Vec<Client> {
    (0..n)
        .map(|i| Client {
            first: start + spread * i as u64 / n.max(1) as u64,
            kind: if every_ticketed > 0 && i % every_ticketed == 0 {
                Kind::Ticketed
            } else {
                Kind::Ticketless
            },
        })
        .collect()
}
