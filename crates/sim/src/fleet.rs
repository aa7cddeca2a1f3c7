//! Fleet mode: K herdgate instances in front of the same nodes (issue 11), on the virtual
//! clock.
//!
//! - Every instance has its own [`NodeAdmission`] per node, at `params.scaled(share)`.
//! - An L4 balancer spreads the clients over the instances at random, each client staying
//!   on its instance (a source-address hash); optionally a share `hot` of them lands on
//!   instance 0, the rest spread over the others.
//! - [`Sharing::Static`]: every instance keeps the static share `1 / K`.
//! - [`Sharing::Leases`]: every `lease` of virtual time (instances staggered over the
//!   period) each instance reports its demand per node, defined as the runtime does
//!   ([`DemandMeter`] over the node's decisions, or its booked slots, whichever is
//!   higher: [`demand_ppm`]), and gets its share from [`NodeLeases::renew`], the Rust
//!   model of `grant.lua` (pinned to the script by `tests/logic/fleet_grant.rs`). Leases
//!   live 3 × `lease`, as in the runtime.
//! - The instances have been up long before the storm: their leases start from the idle
//!   equal split, so the runtime's joining grace (3 renewals at no less than `1 / K`) does
//!   not apply.
//!
//! Accepts are recorded per node summed over the instances, so the summary's peak is the
//! node's own peak in any 1 s window.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use herdgate_core::admission::{
    duration_to_nanos, node_id, Nanos, NodeAdmission, TicketKey, TicketSigner, NANOS_PER_SEC,
};
use herdgate_core::fleet::grant::{demand_ppm, NodeLeases, FULL_PPM};
use herdgate_core::fleet::{decisions, static_share, DemandMeter};

use crate::attempt::{attempt, Tally};
use crate::report::{self, StormRun, Summary};
use crate::{ideal, label_seed, policy_for, Contender, Fleet, Scenario, SimConfig, SimError, T0};

/// How the instances divide each node's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `[fleet] instances = K`: each instance admits `rate / K`, always.
    Static,
    /// `[fleet] redis`: shares leased every `lease` by max-min fairness over demand.
    Leases {
        /// The renewal period (`[fleet] lease`, 50 ms by default).
        lease: Duration,
    },
}

impl Sharing {
    /// Its name in reports.
    pub fn name(self) -> String {
        match self {
            Sharing::Static => "static 1/K".to_string(),
            Sharing::Leases { lease } => format!("leases {} ms", lease.as_millis()),
        }
    }
}

/// The fleet of instances in front of the nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetSpec {
    /// Instances (K).
    pub instances: usize,
    /// Static share or leases.
    pub sharing: Sharing,
    /// Share of the clients the balancer sends to instance 0 (the rest spread evenly
    /// over the others); `None`: every client on an instance drawn uniformly.
    pub hot: Option<f64>,
}

/// One fleet run: the usual summary plus the store's load.
#[derive(Debug, Clone)]
pub struct FleetSummary {
    /// The storm's figures; the peak is per node summed over the instances.
    pub summary: Summary,
    /// Script calls made to the store (one per instance per lease, every node in it).
    pub store_calls: u64,
    /// Store calls per second of virtual time: K / lease.
    pub store_calls_per_sec: f64,
    /// Largest sum of a node's live shares right after any renewal (ppm; at most 1e6).
    pub max_share_sum: u64,
    /// Clients the balancer put on each instance.
    pub per_instance: Vec<usize>,
    /// Largest share instance 0 was granted on any node (ppm; `1e6 / K` with the static
    /// share): how far the leases followed a skewed balancer.
    pub max_share_first: u64,
}

/// Instance of each client: uniform, or `hot` on instance 0 and the rest uniform over
/// the others. Seeded apart from the contender, so every mode sees the same spread.
fn balance(n: usize, spec: &FleetSpec, seed: u64) -> Vec<u16> {
    let mut rng = StdRng::seed_from_u64(seed ^ label_seed("l4 balancer"));
    let k = spec.instances;
    (0..n)
        .map(|_| {
            let i = match spec.hot {
                Some(p) if k > 1 => {
                    if rng.gen_bool(p.clamp(0.0, 1.0)) {
                        0
                    } else {
                        rng.gen_range(1..k)
                    }
                }
                _ => rng.gen_range(0..k),
            };
            i as u16
        })
        .collect()
}

/// One instance's view of one node.
struct Seat {
    admission: NodeAdmission,
    meter: DemandMeter,
}

/// Runs one contender through the storm behind `spec.instances` instances.
pub fn run_fleet(
    cfg: &SimConfig,
    fleet: &Fleet,
    contender: &Contender,
    spec: &FleetSpec,
) -> Result<FleetSummary, SimError> {
    if spec.instances == 0 || spec.instances > usize::from(u16::MAX) {
        return Err(SimError::TooSmall {
            what: "instances",
            min: 1,
            got: spec.instances,
        });
    }
    let params = cfg.params();
    params.validate()?;
    let k = spec.instances;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ label_seed(&contender.label));
    let mut key = [0u8; 32];
    rng.fill(&mut key[..]);
    // One ticket key file for the whole fleet.
    let signer = Arc::new(TicketSigner::new(TicketKey::from_bytes(&key)?, 1));
    let restart = cfg.scenario == Scenario::FleetRestart && !params.slow_start.is_zero();
    let nodes_n = fleet.names.len();
    let lease = match spec.sharing {
        Sharing::Leases { lease } => Some(duration_to_nanos(lease).max(1)),
        Sharing::Static => None,
    };
    let ttl_ms = lease.map_or(0, |l| (3 * l / 1_000_000).max(1));
    let expected = k as u64;

    // The store, idle before the storm: two rounds of renewals with no demand give the
    // steady state (an equal split).
    let mut store: Vec<NodeLeases> = (0..nodes_n).map(|_| NodeLeases::new()).collect();
    let mut share = vec![vec![static_share(k as u32); nodes_n]; k];
    if let Some(l) = lease {
        for round in [2, 1] {
            let at_ms = (T0 - round * l) / 1_000_000;
            for (i, row) in share.iter_mut().enumerate() {
                for (n, s) in row.iter_mut().enumerate() {
                    let g = store[n].renew(i as u32, at_ms, ttl_ms, 0, expected);
                    *s = g as f64 / FULL_PPM as f64;
                }
            }
        }
    }
    let mut seats: Vec<Vec<Option<Seat>>> = Vec::with_capacity(k);
    for (i, row) in share.iter().enumerate() {
        let mut line = Vec::with_capacity(nodes_n);
        for (n, name) in fleet.names.iter().enumerate() {
            if Some(n) == fleet.dead || !contender.admission {
                line.push(None);
                continue;
            }
            let mut meter = DemandMeter::default();
            meter.sample(0, T0);
            let admission =
                NodeAdmission::builder(node_id("sim", name), params.scaled(row[n]), signer.clone())
                    .seed(
                        cfg.seed
                            .wrapping_mul(0x9E37_79B9)
                            .wrapping_add((i * nodes_n + n) as u64),
                    )
                    .slow_start(restart)
                    .build(T0)?;
            line.push(Some(Seat { admission, meter }));
        }
        seats.push(line);
    }

    let rtt = duration_to_nanos(cfg.rtt);
    let spread = duration_to_nanos(cfg.detect_spread);
    let horizon = T0.saturating_add(duration_to_nanos(cfg.horizon));
    let n = fleet.landing.len();
    let instance_of = balance(n, spec, cfg.seed);
    let mut per_instance = vec![0usize; k];
    for &i in &instance_of {
        per_instance[usize::from(i)] += 1;
    }
    let mut policies = Vec::with_capacity(n);
    let mut attempts = vec![0u32; n];
    let mut heap: BinaryHeap<Reverse<(Nanos, u32)>> = BinaryHeap::with_capacity(n);
    for c in 0..n {
        let mut policy = policy_for(contender.strategy, &mut rng);
        let noticed = T0 + rng.gen_range(0..=spread);
        if let Some(delay) = policy.after_close(None, &mut rng) {
            heap.push(Reverse((
                noticed + duration_to_nanos(delay) + rtt,
                c as u32,
            )));
        }
        policies.push(policy);
    }
    // Renewals, instances staggered over one lease period.
    let mut renewals: BinaryHeap<Reverse<(Nanos, usize)>> = BinaryHeap::new();
    if let Some(l) = lease {
        for i in 0..k {
            renewals.push(Reverse((T0 + l * i as u64 / k as u64, i)));
        }
    }

    let (slot_of, mut accepts) = fleet.accept_lists();
    let mut reconnected: Vec<Option<Nanos>> = vec![None; n];
    let mut tally = Tally::default();
    let mut store_calls = 0u64;
    let mut max_share_sum = 0u64;
    let mut max_share_first = (static_share(k as u32) * FULL_PPM as f64) as u64;
    let base_rate = params.rate;
    let mut last = T0;

    while let Some(Reverse((t, c))) = heap.pop() {
        if t > horizon {
            break;
        }
        // Every renewal due before this attempt, in time order.
        while let Some(&Reverse((r, i))) = renewals.peek() {
            if r > t {
                break;
            }
            renewals.pop();
            store_calls += 1;
            let now_ms = r / 1_000_000;
            for (ni, seat) in seats[i].iter_mut().enumerate() {
                let Some(seat) = seat else { continue };
                let a = &seat.admission;
                let per_sec = seat.meter.sample(decisions(&a.stats()), r);
                let booked = a.effective_rate(r) * a.backlog(r).as_secs_f64();
                let ppm = demand_ppm(per_sec, booked, base_rate);
                let g = store[ni].renew(i as u32, now_ms, ttl_ms, ppm, expected);
                max_share_sum = max_share_sum.max(store[ni].live_sum(now_ms));
                if i == 0 {
                    max_share_first = max_share_first.max(g);
                }
                let p = params.scaled(g as f64 / FULL_PPM as f64);
                if a.params() != p {
                    a.update_params(p, r)?;
                }
            }
            if let Some(l) = lease {
                renewals.push(Reverse((r + l, i)));
            }
        }
        last = t;
        let c = c as usize;
        attempts[c] += 1;
        let node_ix = fleet.landing[c] as usize;
        let inst = usize::from(instance_of[c]);
        let admitted_at = match &seats[inst][node_ix] {
            None => Some(t),
            Some(seat) => {
                attempt(
                    &seat.admission,
                    c,
                    &mut policies[c],
                    t,
                    rtt,
                    &mut tally,
                    &mut rng,
                )
                // Rejected: its next attempt (if it makes one) goes on the heap.
                .map_err(|back| back.map(|b| heap.push(Reverse((b, c as u32)))))
                .ok()
            }
        };
        if let Some(at) = admitted_at {
            accepts[slot_of[node_ix]].push(at - T0);
            reconnected[c] = Some(at - T0);
        }
    }

    let elapsed = (last.saturating_sub(T0)) as f64 / NANOS_PER_SEC as f64;
    let store_calls_per_sec = match lease {
        Some(l) => k as f64 * NANOS_PER_SEC as f64 / l as f64,
        None => 0.0,
    };
    let mut notes = vec![format!(
        "{} rejections with a hint ({} past max_retry_after), {} admissions held by the pacer",
        tally.rejected, tally.overflow, tally.held
    )];
    if lease.is_some() {
        notes.push(format!(
            "store: {store_calls} script calls in {elapsed:.1} s until the last attempt ({store_calls_per_sec:.0}/s = K / lease), each carrying all {nodes_n} nodes; largest sum of a node's live shares {:.4}",
            max_share_sum as f64 / FULL_PPM as f64
        ));
    }
    let run = StormRun {
        label: format!("{}, {k} inst., {}", contender.label, spec.sharing.name()),
        admit_rate: cfg.admit_rate,
        surviving_rate: cfg.admit_rate * fleet.receiving() as f64,
        ideal: ideal(cfg, fleet),
        floor: cfg.detect_spread + cfg.rtt,
        tickets: contender.tickets(),
        accepts,
        reconnected,
        attempts,
        notes,
    };
    Ok(FleetSummary {
        summary: report::summarize(run),
        store_calls,
        store_calls_per_sec,
        max_share_sum,
        per_instance,
        max_share_first,
    })
}
