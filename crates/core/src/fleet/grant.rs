//! The grant of `src/fleet/grant.lua`, in Rust: the same arithmetic on the same integers
//! (parts per million of a node's rate), so that the storm simulator runs the fleet's
//! leases without Redis. `tests/logic/fleet_grant.rs` runs the real script on a real
//! redis-server for a table of cases and asserts this model gives the same grants.
//!
//! Per node, the store holds one lease per instance: `share_ppm:demand_ppm:expiry_ms`.
//! One renewal by instance `me` ([`NodeLeases::renew`]):
//! - drops the other instances' leases that have expired (`expiry <= now`);
//! - keeps `1/expected` aside for each expected member not yet holding a lease;
//! - with no demand anywhere, wants an equal split `FULL / n`;
//! - else idle instances keep a standby quarter of an equal share and the rest is split
//!   by max-min fairness (water filling) over the demands;
//! - grants `min(want, FULL - held by the others)`, never below 0, and records it.

use std::collections::BTreeMap;

/// A node's whole rate, in parts per million.
pub const FULL_PPM: u64 = 1_000_000;

/// One instance's lease on one node, as the script stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Share granted, ppm of the node's rate.
    pub share: u64,
    /// Demand reported with it, ppm of the node's rate.
    pub demand: u64,
    /// When it lapses (store clock, ms).
    pub expiry_ms: u64,
}

/// The share `me` wants and gets, from the other instances' LIVE leases (`(share, demand)`
/// each, already filtered on expiry), its own demand and the members it expects: the
/// script's arithmetic, line for line.
pub fn grant(mine: u64, others: &[(u64, u64)], expected: u64) -> u64 {
    let full = FULL_PPM as i128;
    let expected = i128::from(expected.max(1));
    let mine = i128::from(mine);
    let mut held: i128 = 0;
    let mut demands: Vec<i128> = Vec::with_capacity(others.len() + 1);
    let mut idle: i128 = 0;
    if mine > 0 {
        demands.push(mine);
    } else {
        idle += 1;
    }
    for &(s, d) in others {
        held += i128::from(s);
        if d > 0 {
            demands.push(i128::from(d));
        } else {
            idle += 1;
        }
    }
    let n = demands.len() as i128 + idle;
    if n < expected {
        held += (expected - n) * (full / expected);
    }
    let want = if demands.is_empty() {
        full / n
    } else {
        let standby = full / (4 * n);
        let cap = full - standby * idle;
        if mine == 0 {
            standby
        } else {
            demands.sort_unstable();
            let (mut left, mut k) = (cap, demands.len() as i128);
            for &d in &demands {
                // Lua's math.floor of a float division; `div_euclid` floors for a
                // positive divisor, also when `left` went negative.
                let level = left.div_euclid(k);
                if d > level {
                    break;
                }
                left -= d;
                k -= 1;
            }
            if k == 0 {
                mine + left.div_euclid(demands.len() as i128)
            } else {
                mine.min(left.div_euclid(k))
            }
        }
    };
    let g = want.min(full - held).max(0);
    u64::try_from(g).unwrap_or(0)
}

/// One node's lease hash: instance id to lease.
#[derive(Debug, Clone, Default)]
pub struct NodeLeases {
    leases: BTreeMap<u32, Lease>,
}

impl NodeLeases {
    /// No leases.
    pub fn new() -> NodeLeases {
        NodeLeases::default()
    }

    /// Renew `me`'s lease at `now_ms` (the script's body for one node): drop the others'
    /// expired leases, grant, store `grant:demand:now+lease_ttl`, return the grant (ppm).
    pub fn renew(
        &mut self,
        me: u32,
        now_ms: u64,
        lease_ttl_ms: u64,
        demand: u64,
        expected: u64,
    ) -> u64 {
        self.leases
            .retain(|&who, l| who == me || l.expiry_ms > now_ms);
        let others: Vec<(u64, u64)> = self
            .leases
            .iter()
            .filter(|(&who, _)| who != me)
            .map(|(_, l)| (l.share, l.demand))
            .collect();
        let g = grant(demand, &others, expected);
        self.leases.insert(
            me,
            Lease {
                share: g,
                demand,
                expiry_ms: now_ms.saturating_add(lease_ttl_ms),
            },
        );
        g
    }

    /// The lease `who` holds (expired or not).
    pub fn lease(&self, who: u32) -> Option<Lease> {
        self.leases.get(&who).copied()
    }

    /// Shares of the leases live at `now_ms`, summed (ppm).
    pub fn live_sum(&self, now_ms: u64) -> u64 {
        self.leases
            .values()
            .filter(|l| l.expiry_ms > now_ms)
            .map(|l| l.share)
            .sum()
    }
}

/// Demand of one node on one instance as the runtime reports it (ppm of the node's
/// configured `rate`): decisions per second ([`super::DemandMeter`]) or the booked slots
/// (`effective_rate × backlog`), whichever is higher, clipped to `[0, 1e12]`.
pub fn demand_ppm(decisions_per_sec: f64, booked: f64, rate: f64) -> u64 {
    /// Demand above this (a million times the rate) is clipped.
    const MAX_DEMAND_PPM: f64 = 1e12;
    let ppm = (decisions_per_sec.max(booked) / rate * FULL_PPM as f64).clamp(0.0, MAX_DEMAND_PPM);
    // `as` saturates and maps NaN to 0.
    ppm as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = FULL_PPM;

    #[test]
    fn nobody_busy_splits_equally() {
        assert_eq!(grant(0, &[], 1), F);
        assert_eq!(grant(0, &[(F / 2, 0)], 2), F / 2);
        assert_eq!(grant(0, &[(333_333, 0), (333_333, 0)], 3), 333_333);
    }

    #[test]
    fn never_more_than_what_the_others_leave() {
        // The others hold everything: nothing for me, whatever I need.
        assert_eq!(grant(5 * F, &[(F, 0)], 2), 0);
        // Over-held (a rejoin after the store lost its state): clipped at 0.
        assert_eq!(grant(F, &[(F, F), (F / 2, 0)], 3), 0);
    }

    #[test]
    fn max_min_fairness_over_demand() {
        // Two busy instances, one idle. n = 3, standby F/12 for the idle one.
        let standby = F / 12;
        let cap = F - standby;
        // Both want more than half of the cap: each gets half of it (capped by held).
        assert_eq!(grant(2 * F, &[(0, 2 * F), (0, 0)], 3), cap / 2);
        // The other needs little: it gets its need, I get the rest.
        assert_eq!(grant(2 * F, &[(0, 100_000), (0, 0)], 3), cap - 100_000);
        // Everybody fits: demand plus an equal part of what is left.
        let left = cap - 100_000 - 200_000;
        assert_eq!(
            grant(200_000, &[(0, 100_000), (0, 0)], 3),
            200_000 + left / 2
        );
        // Idle me: the standby quarter.
        assert_eq!(grant(0, &[(0, F), (0, F)], 3), standby);
    }

    #[test]
    fn expected_members_keep_their_part_aside() {
        // Alone after the store restarted, expecting 4: 3/4 kept aside.
        assert_eq!(grant(F, &[], 4), F - 3 * (F / 4));
        assert_eq!(grant(0, &[], 4), F - 3 * (F / 4));
    }

    #[test]
    fn node_leases_expire_and_sum_to_at_most_full() {
        let mut n = NodeLeases::new();
        for round in 0..5u64 {
            for me in 0..4 {
                let d = if me == 0 { 4 * F } else { 10_000 };
                n.renew(me, round * 50 + u64::from(me), 150, d, 4);
                assert!(n.live_sum(round * 50 + u64::from(me)) <= F);
            }
        }
        // Instance 0 takes what the others do not need.
        assert!(n.lease(0).unwrap().share > F / 2, "{:?}", n.lease(0));
        // The others stop renewing: their leases lapse and 0 gets everything.
        let g = n.renew(0, 10_000, 150, 4 * F, 1);
        assert_eq!(g, F);
        assert_eq!(n.lease(1), None);
    }

    #[test]
    fn demand_is_the_higher_of_decisions_and_booked_slots() {
        assert_eq!(demand_ppm(50.0, 10.0, 100.0), 500_000);
        assert_eq!(demand_ppm(0.0, 200.0, 100.0), 2_000_000);
        assert_eq!(demand_ppm(f64::NAN, f64::NAN, 100.0), 0);
        assert_eq!(demand_ppm(1e30, 0.0, 1.0), 1_000_000_000_000);
        assert_eq!(demand_ppm(-5.0, -1.0, 100.0), 0);
    }
}
