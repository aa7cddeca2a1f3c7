//! The storm simulator: reconnect storms past what one machine can open as sockets
//! (a million clients over 500 nodes), on a virtual clock, driving the real code.
//!
//! What is real: every node is a [`NodeAdmission`] (GCRA bucket, retry schedule, promises,
//! signed tickets) asked at the instant the attempt arrives; routing is the pool's
//! [`HashRing`] (rendezvous over node names, the dead node ineligible); each rejection is
//! turned into the 1013 close reason the proxy sends ([`herdgate_wire::reason_json`], the proxy's one encoder)
//! and read back by the reference client's [`Hint::from_close`](herdgate_client::Hint::from_close); each client is a
//! [`ReconnectPolicy`] deciding its next delay. What is modelled: the network (a client
//! notices the drop within `detect_spread`, an attempt reaches the node one `rtt` after it
//! is launched and its answer is back half an `rtt` later) and, for contenders without
//! admission, a node that accepts everything (the proxy passes the herd through).
//!
//! A discrete-event loop: a heap of (arrival time, client), popped in time order; the
//! [`ManualClock`] is set to each event's time, and that is the `now` admission sees.

#![warn(missing_docs)]

mod attempt;
pub mod fleet;
pub mod report;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use attempt::{attempt, Tally};
use herdgate_client::{Backoff, ReconnectPolicy, Strategy};
use herdgate_core::admission::{
    duration_to_nanos, node_id, AdmissionError, AdmissionParams, Clock, ManualClock, Nanos,
    NodeAdmission, TicketKey, TicketSigner, NANOS_PER_SEC,
};
use herdgate_core::routing::{key_hash, HashAlgo, HashRing, NodeRef, RoutingError};
use report::{StormRun, Summary};

/// 2024-01-01T00:00:00Z: a realistic epoch, so tickets' millisecond truncation is exercised.
pub(crate) const T0: Nanos = 1_704_067_200 * NANOS_PER_SEC;
/// The WebSocket close code a rejected upgrade is closed with (RFC 6455 §7.4.1).
pub(crate) const TRY_AGAIN_LATER: u16 = herdgate_wire::CLOSE_TRY_AGAIN_LATER;

/// Errors of a simulation setup.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The admission parameters are out of range.
    #[error("simulation: {0}")]
    Admission(#[from] AdmissionError),
    /// The node names do not make a hash ring.
    #[error("simulation: {0}")]
    Routing(#[from] RoutingError),
    /// A size is below what the scenario needs.
    #[error("simulation: {what} must be at least {min}, got {got}")]
    TooSmall {
        /// Which size.
        what: &'static str,
        /// The least it may be.
        min: usize,
        /// What was asked for.
        got: usize,
    },
}

/// Which storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One node dies; its clients are re-hashed onto the survivors (the seed articles'
    /// scenario: a connection server dies behind a load balancer).
    NodeDeath,
    /// Every node restarts at once and every client reconnects to the node it hashes to.
    FleetRestart,
}

impl Scenario {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NodeDeath => "node death",
            Scenario::FleetRestart => "whole-fleet restart",
        }
    }
}

/// The fleet, the nodes' admission settings and the network model.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Which storm.
    pub scenario: Scenario,
    /// Clients connected before the storm (spread over the nodes by the hash).
    pub clients: usize,
    /// Backend nodes in the pool.
    pub nodes: usize,
    /// `admit_rate` and `admit_burst` of every node.
    pub admit_rate: f64,
    /// `admit_burst` of every node.
    pub admit_burst: u32,
    /// `max_retry_after` of every node: rejections beyond it count as overflow.
    pub max_retry_after: Duration,
    /// `tickets.claim_window`: how long after its slot a reservation stays claimable.
    pub claim_window: Duration,
    /// Slow start of restarted nodes (fleet restart only; zero: off).
    pub slow_start: Duration,
    /// A client notices the drop at a uniform instant in `[0, detect_spread]`.
    pub detect_spread: Duration,
    /// Round trip: an attempt reaches admission one rtt after it is launched (TCP, request);
    /// its answer reaches the client half an rtt later.
    pub rtt: Duration,
    /// Seed of every random choice (the same seed gives the same run).
    pub seed: u64,
    /// Give up simulating this long after the storm began.
    pub horizon: Duration,
}

impl SimConfig {
    /// The defaults of the bench: 1,000,000 clients over 500 nodes at 500/s each.
    pub fn new(scenario: Scenario) -> SimConfig {
        SimConfig {
            scenario,
            clients: 1_000_000,
            nodes: 500,
            admit_rate: 500.0,
            admit_burst: 10,
            max_retry_after: Duration::from_secs(120),
            claim_window: Duration::from_secs(2),
            slow_start: Duration::ZERO,
            detect_spread: Duration::from_millis(5),
            rtt: Duration::from_millis(10),
            seed: 1,
            horizon: Duration::from_secs(600),
        }
    }

    pub(crate) fn params(&self) -> AdmissionParams {
        AdmissionParams {
            rate: self.admit_rate,
            burst: self.admit_burst,
            max_retry_after: self.max_retry_after,
            claim_window: self.claim_window,
            slow_start: if self.scenario == Scenario::FleetRestart {
                self.slow_start
            } else {
                Duration::ZERO
            },
            slow_start_floor: 0.1,
            ..AdmissionParams::default()
        }
    }
}

/// One reconnect strategy, with or without herdgate's admission in front of the nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Contender {
    /// Its name in the tables and charts.
    pub label: String,
    /// How its clients wait between attempts.
    pub strategy: Strategy,
    /// false: the proxy passes every attempt through and nodes accept all of them.
    pub admission: bool,
}

impl Contender {
    /// A contender; `admission` false means a node that accepts everything.
    pub fn new(label: impl Into<String>, strategy: Strategy, admission: bool) -> Contender {
        Contender {
            label: label.into(),
            strategy,
            admission,
        }
    }

    /// The comparison of the issue: the seeds' strategies with no admission, and herdgate
    /// admission with the reference client, with and without tickets.
    pub fn standard() -> Vec<Contender> {
        vec![
            Contender::new("immediate, no admission", Strategy::Immediate, false),
            Contender::new(
                "fixed 1 s, no admission",
                Strategy::Fixed(Duration::from_secs(1)),
                false,
            ),
            Contender::new("full jitter, no admission", Strategy::FullJitter, false),
            Contender::new(
                "herdgate + tickets",
                Strategy::Herdgate { tickets: true },
                true,
            ),
            Contender::new(
                "herdgate, no tickets",
                Strategy::Herdgate { tickets: false },
                true,
            ),
        ]
    }

    /// Clients that ignore hints behind herdgate admission: the nodes are protected, the
    /// clients waste attempts.
    pub fn hint_ignorers() -> Vec<Contender> {
        vec![
            Contender::new("immediate, admission", Strategy::Immediate, true),
            Contender::new(
                "fixed 1 s, admission",
                Strategy::Fixed(Duration::from_secs(1)),
                true,
            ),
        ]
    }

    /// Whether its clients carry tickets (what the admission must reserve for).
    pub fn tickets(&self) -> bool {
        self.strategy == Strategy::Herdgate { tickets: true }
    }
}

/// A fresh client policy for `strategy`. Full jitter uses the seed articles' numbers
/// (`random(0, min(30 s, 1 s × 2^n))`); every other strategy the reference client's
/// (base drawn in 100–500 ms).
pub fn policy_for<R: Rng + ?Sized>(strategy: Strategy, rng: &mut R) -> ReconnectPolicy {
    match strategy {
        Strategy::FullJitter => ReconnectPolicy::with_backoff(
            strategy,
            Backoff::with_base(Duration::from_secs(1), Duration::from_secs(30)),
        ),
        _ => ReconnectPolicy::new(strategy, rng),
    }
}

/// Who reconnects where: computed once per config, shared by every contender.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Node names, as the hash ring sees them.
    pub names: Vec<String>,
    /// The node that died (node death only).
    pub dead: Option<usize>,
    /// Node each reconnecting client lands on.
    pub landing: Vec<u32>,
    /// Reconnecting clients per node.
    pub load: Vec<u32>,
}

impl Fleet {
    /// Accept lists only for the receiving nodes: each node's index into them
    /// (`usize::MAX` for the dead one) and the empty lists, sized by expected load.
    pub(crate) fn accept_lists(&self) -> (Vec<usize>, Vec<Vec<Nanos>>) {
        let mut next = 0;
        let slot_of = (0..self.names.len())
            .map(|i| {
                if Some(i) == self.dead {
                    usize::MAX
                } else {
                    next += 1;
                    next - 1
                }
            })
            .collect();
        let accepts = self
            .load
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.dead)
            .map(|(_, &l)| Vec::with_capacity(l as usize))
            .collect();
        (slot_of, accepts)
    }

    /// Hashes every client onto the ring (the dead node ineligible for the reconnect).
    pub fn build(cfg: &SimConfig) -> Result<Fleet, SimError> {
        let min_nodes = match cfg.scenario {
            Scenario::NodeDeath => 2,
            Scenario::FleetRestart => 1,
        };
        if cfg.nodes < min_nodes {
            return Err(SimError::TooSmall {
                what: "nodes",
                min: min_nodes,
                got: cfg.nodes,
            });
        }
        if cfg.clients == 0 {
            return Err(SimError::TooSmall {
                what: "clients",
                min: 1,
                got: 0,
            });
        }
        let names: Vec<String> = (0..cfg.nodes).map(|i| format!("node-{i:03}")).collect();
        let ring = HashRing::build(
            HashAlgo::Rendezvous,
            names.iter().map(|n| NodeRef { name: n, weight: 1 }),
        )?;
        let dead = (cfg.scenario == Scenario::NodeDeath).then(|| (cfg.seed as usize) % cfg.nodes);
        // A million rendezvous picks over 500 nodes is the one costly setup step: split it
        // over the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = cfg.clients.div_ceil(threads);
        let parts: Vec<Vec<u32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let ring = &ring;
                    s.spawn(move || {
                        let lo = t * chunk;
                        let hi = ((t + 1) * chunk).min(cfg.clients);
                        let mut out = Vec::new();
                        for c in lo..hi {
                            let kh = client_key(c);
                            match dead {
                                None => {
                                    if let Some(n) = ring.pick(kh, |_| true) {
                                        out.push(n as u32);
                                    }
                                }
                                Some(d) => {
                                    if ring.pick(kh, |_| true) == Some(d) {
                                        if let Some(n) = ring.pick(kh, |i| i != d) {
                                            out.push(n as u32);
                                        }
                                    }
                                }
                            }
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let landing: Vec<u32> = parts.into_iter().flatten().collect();
        let mut load = vec![0u32; cfg.nodes];
        for &n in &landing {
            load[n as usize] += 1;
        }
        Ok(Fleet {
            names,
            dead,
            landing,
            load,
        })
    }

    /// Nodes that take the herd.
    pub fn receiving(&self) -> usize {
        self.names.len() - usize::from(self.dead.is_some())
    }

    /// Most clients any one node must take.
    pub fn max_load(&self) -> u32 {
        self.load.iter().copied().max().unwrap_or(0)
    }
}

/// The sticky key hash of client `c` (what herdgate would hash from its session key).
fn client_key(c: usize) -> u64 {
    key_hash(format!("client-{c}").as_bytes())
}

/// Time for `n` admissions at a node's rate with slow start: the capacity integral
/// `rate × ∫ ramp(t) dt` solved for t (the ramp goes linearly from `floor` to 1 over `s`).
fn time_for(n: f64, rate: f64, s: Duration, floor: f64) -> Duration {
    let s = s.as_secs_f64();
    if s <= 0.0 {
        return Duration::from_secs_f64(n / rate);
    }
    let during = rate * s * (1.0 + floor) / 2.0;
    if n >= during {
        return Duration::from_secs_f64(s + (n - during) / rate);
    }
    // rate·(floor·t + (1 − floor)·t²/(2s)) = n
    let a = rate * (1.0 - floor) / (2.0 * s);
    let b = rate * floor;
    Duration::from_secs_f64((-b + (b * b + 4.0 * a * n).sqrt()) / (2.0 * a))
}

/// Per-client state while the storm runs.
struct SimClient {
    node: u32,
    attempts: u32,
    policy: ReconnectPolicy,
}

/// The ideal time for this fleet: N / Σ rate (with slow start, when the ramped capacity
/// has admitted N).
pub fn ideal(cfg: &SimConfig, fleet: &Fleet) -> Duration {
    let per_node = fleet.landing.len() as f64 / fleet.receiving() as f64;
    time_for(
        per_node,
        cfg.admit_rate,
        cfg.params().slow_start,
        cfg.params().slow_start_floor,
    )
}

/// Runs one contender through the storm and returns what happened.
pub fn run(cfg: &SimConfig, fleet: &Fleet, contender: &Contender) -> Result<StormRun, SimError> {
    let params = cfg.params();
    params.validate()?;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ label_seed(&contender.label));
    let clock = ManualClock::new(T0);
    let mut key = [0u8; 32];
    rng.fill(&mut key[..]);
    let signer = Arc::new(TicketSigner::new(TicketKey::from_bytes(&key)?, 1));
    // Survivors keep their idle buckets; a restarted fleet starts fresh (and ramps).
    let restart = cfg.scenario == Scenario::FleetRestart && !params.slow_start.is_zero();
    let nodes: Vec<Option<NodeAdmission>> = fleet
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if Some(i) == fleet.dead || !contender.admission {
                return Ok(None);
            }
            NodeAdmission::builder(node_id("sim", name), params.clone(), signer.clone())
                .seed(cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64))
                .slow_start(restart)
                .build(T0)
                .map(Some)
        })
        .collect::<Result<_, _>>()?;

    let rtt = duration_to_nanos(cfg.rtt);
    let spread = duration_to_nanos(cfg.detect_spread);
    let horizon = T0.saturating_add(duration_to_nanos(cfg.horizon));
    let n = fleet.landing.len();
    let mut clients: Vec<SimClient> = Vec::with_capacity(n);
    let mut heap: BinaryHeap<Reverse<(Nanos, u32)>> = BinaryHeap::with_capacity(n);
    for (c, &node) in fleet.landing.iter().enumerate() {
        let mut policy = policy_for(contender.strategy, &mut rng);
        // The drop: no close frame (the node is gone), so no hint.
        let noticed = T0 + rng.gen_range(0..=spread);
        if let Some(delay) = policy.after_close(None, &mut rng) {
            heap.push(Reverse((
                noticed + duration_to_nanos(delay) + rtt,
                c as u32,
            )));
        }
        clients.push(SimClient {
            node,
            attempts: 0,
            policy,
        });
    }

    let (slot_of, mut accepts) = fleet.accept_lists();
    let mut reconnected: Vec<Option<Nanos>> = vec![None; n];
    let mut tally = Tally::default();

    while let Some(Reverse((t, c))) = heap.pop() {
        if t > horizon {
            break;
        }
        clock.set(t);
        let now = clock.now();
        let c = c as usize;
        let client = &mut clients[c];
        client.attempts += 1;
        let node_ix = client.node as usize;
        let admitted_at = match &nodes[node_ix] {
            None => Some(now),
            Some(node) => {
                attempt(node, c, &mut client.policy, now, rtt, &mut tally, &mut rng)
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

    let mut notes = Vec::new();
    if contender.admission {
        let unclaimed: u64 = nodes
            .iter()
            .flatten()
            .map(|n| {
                let s = n.stats();
                s.unclaimed_promises + s.unclaimed_reservations
            })
            .sum();
        notes.push(format!(
            "{} rejections with a hint ({} past max_retry_after), {unclaimed} promised or reserved tokens unclaimed",
            tally.rejected, tally.overflow
        ));
    }
    Ok(StormRun {
        label: contender.label.clone(),
        admit_rate: cfg.admit_rate,
        surviving_rate: cfg.admit_rate * fleet.receiving() as f64,
        ideal: ideal(cfg, fleet),
        floor: cfg.detect_spread + cfg.rtt,
        tickets: contender.tickets(),
        accepts,
        reconnected,
        attempts: clients.iter().map(|c| c.attempts).collect(),
        notes,
    })
}

pub(crate) fn label_seed(label: &str) -> u64 {
    key_hash(label.as_bytes())
}

/// Everything one scenario printed by the bench needs.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The scenario, for the report heading.
    pub title: String,
    /// One line on the fleet: who died, how the herd spread.
    pub fleet: String,
    /// One summary per contender, in the order given.
    pub summaries: Vec<Summary>,
}

/// Builds the fleet once and runs every contender (each on its own fresh nodes).
pub fn run_scenario(cfg: &SimConfig, contenders: &[Contender]) -> Result<ScenarioReport, SimError> {
    let fleet = Fleet::build(cfg)?;
    let mut summaries = Vec::with_capacity(contenders.len());
    for c in contenders {
        summaries.push(report::summarize(run(cfg, &fleet, c)?));
    }
    let mean = fleet.landing.len() as f64 / fleet.receiving() as f64;
    let fleet_line = match fleet.dead {
        Some(d) => format!(
            "{} clients over {} nodes; {} dies: its {} clients re-hash onto {} survivors ({:.1} each on average, at most {})",
            cfg.clients,
            cfg.nodes,
            fleet.names[d],
            fleet.landing.len(),
            fleet.receiving(),
            mean,
            fleet.max_load(),
        ),
        None => format!(
            "{} clients reconnect at once to {} restarted nodes ({:.0} each on average, at most {}){}",
            cfg.clients,
            cfg.nodes,
            mean,
            fleet.max_load(),
            if cfg.slow_start.is_zero() {
                String::new()
            } else {
                format!(", slow start {:?}", cfg.slow_start)
            }
        ),
    };
    Ok(ScenarioReport {
        title: format!(
            "simulation: {} ({} clients, {} nodes, virtual clock)",
            cfg.scenario.name(),
            cfg.clients,
            cfg.nodes
        ),
        fleet: fleet_line,
        summaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ideal_matches_the_capacity_integral() {
        let r = 100.0;
        assert_eq!(
            time_for(250.0, r, Duration::ZERO, 0.1),
            Duration::from_secs_f64(2.5)
        );
        // Ramp 0.1 → 1 over 10 s admits 100·10·0.55 = 550.
        let t = time_for(550.0, r, Duration::from_secs(10), 0.1).as_secs_f64();
        assert!((t - 10.0).abs() < 1e-9, "{t}");
        let t = time_for(650.0, r, Duration::from_secs(10), 0.1).as_secs_f64();
        assert!((t - 11.0).abs() < 1e-9, "{t}");
        // Inside the ramp: 100·(0.1·5 + 0.9·25/20) = 162.5 by t = 5 s.
        let t = time_for(162.5, r, Duration::from_secs(10), 0.1).as_secs_f64();
        assert!((t - 5.0).abs() < 1e-9, "{t}");
    }

    #[test]
    fn node_death_moves_only_the_dead_nodes_clients() {
        let cfg = SimConfig {
            clients: 5000,
            nodes: 10,
            ..SimConfig::new(Scenario::NodeDeath)
        };
        let f = Fleet::build(&cfg).unwrap();
        let d = f.dead.unwrap();
        assert_eq!(f.load[d], 0);
        // About a tenth of the clients were on it.
        assert!(
            (350..=650).contains(&f.landing.len()),
            "{}",
            f.landing.len()
        );
        assert!(f.landing.iter().all(|&n| n as usize != d));
    }
}
