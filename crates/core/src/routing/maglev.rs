//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4): O(1) lookups for large pools.
//!
//! The lookup table is built once per config snapshot from node names and weights only:
//! - size: the smallest prime >= max(65,537, 100 × nodes), so each node owns >= 100 slots
//!   and the permutations below cover the whole table;
//! - each node's permutation (offset, skip) comes from its name hash, and nodes take
//!   turns in (name hash, name) order, so reordering the config moves nothing;
//! - weights by proportional turns: each round a node earns `weight` credits and takes one
//!   turn per `max_weight` credits, so its slot share is proportional to its weight.
//!
//! Eligibility (health, drain) changes far more often than config and must not move the
//! keys of healthy nodes, so the table is NOT rebuilt for it. When a key's slot names an
//! ineligible node, the key falls back to weighted rendezvous over the eligible nodes:
//! keys of eligible nodes never move, the failed node's keys spread over the others in
//! proportion to their weights, and every instance agrees without coordination. That
//! fallback is O(nodes), paid only by the keys of ineligible nodes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::{fmix64, xxh64, NodeRef, Preference, RendezvousTable};
use super::RoutingError;

const MIN_TABLE_SIZE: usize = 65_537;
const SLOTS_PER_NODE: usize = 100;
const EMPTY: u16 = u16::MAX;
/// Largest pool a Maglev table accepts (slot entries are u16, one value is the sentinel).
pub const MAX_NODES: usize = EMPTY as usize;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// Maglev lookup table for one pool, plus the rendezvous table used for failover.
#[derive(Debug, Clone)]
pub struct MaglevTable {
    rendezvous: RendezvousTable,
    lookup: Box<[u16]>,
}

impl MaglevTable {
    /// Builds the table from the pool's nodes in config order. Fails on duplicate names or
    /// more than [`MAX_NODES`] nodes.
    pub fn new<'a>(nodes: impl IntoIterator<Item = NodeRef<'a>>) -> Result<Self, RoutingError> {
        let rendezvous = RendezvousTable::new(nodes)?;
        if rendezvous.len() > MAX_NODES {
            return Err(RoutingError::TooManyNodes {
                count: rendezvous.len(),
                max: MAX_NODES,
            });
        }
        let lookup = populate(&rendezvous);
        Ok(MaglevTable { rendezvous, lookup })
    }

    /// Number of slots in the lookup table (0 when no node has a positive weight).
    pub fn table_size(&self) -> usize {
        self.lookup.len()
    }

    pub(crate) fn rendezvous(&self) -> &RendezvousTable {
        &self.rendezvous
    }

    /// Node count, so callers can size per-node state to match the table.
    pub fn len(&self) -> usize {
        self.rendezvous.len()
    }

    /// True for an empty pool, where no pick can succeed.
    pub fn is_empty(&self) -> bool {
        self.rendezvous.is_empty()
    }

    /// The node owning the key's slot if it is eligible, else weighted rendezvous over the
    /// eligible nodes.
    pub fn pick(&self, key_hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self.primary(key_hash) {
            Some(i) if eligible(i) => Some(i),
            _ => self.rendezvous.pick(key_hash, eligible),
        }
    }

    /// Failover order: the slot owner (if eligible), then the rendezvous order of the other
    /// eligible nodes. Consistent with [`MaglevTable::pick`]: marking the first node
    /// ineligible makes `pick` return the second.
    pub fn order<F: Fn(usize) -> bool>(&self, key_hash: u64, eligible: F) -> Preference<'_, F> {
        let first = self.primary(key_hash).filter(|&i| eligible(i));
        Preference::new(&self.rendezvous, key_hash, eligible, first)
    }

    /// The node that owns the key's slot, eligible or not.
    pub fn primary(&self, key_hash: u64) -> Option<usize> {
        if self.lookup.is_empty() {
            return None;
        }
        // Multiply-shift range reduction: no division on the hot path. The extra mix keeps
        // the slot independent of the rendezvous scores computed from the same key hash.
        let h = fmix64(key_hash ^ 0x5851_f42d_4c95_7f2d);
        let slot = ((u128::from(h) * self.lookup.len() as u128) >> 64) as usize;
        match self.lookup[slot] {
            EMPTY => None,
            i => Some(usize::from(i)),
        }
    }
}

fn populate(table: &RendezvousTable) -> Box<[u16]> {
    let mut members: Vec<usize> = (0..table.len())
        .filter(|&i| table.weight(i).is_some_and(|w| w > 0))
        .collect();
    if members.is_empty() {
        return Box::new([]);
    }
    let size = next_prime((SLOTS_PER_NODE * members.len()).max(MIN_TABLE_SIZE));
    let name = |i: usize| table.name(i).unwrap_or_default();
    members.sort_by_cached_key(|&i| (super::hash::key_hash_str(name(i)), name(i)));

    struct Turn {
        index: u16,
        weight: u64,
        taken: u64,
        pos: u64,
        skip: u64,
    }
    let m = size as u64;
    let mut turns: Vec<Turn> = members
        .iter()
        .map(|&i| {
            let n = name(i).as_bytes();
            Turn {
                index: i as u16,
                weight: u64::from(table.weight(i).unwrap_or(0)),
                taken: 0,
                pos: xxh64(n, OFFSET_SEED) % m,
                skip: xxh64(n, SKIP_SEED) % (m - 1) + 1,
            }
        })
        .collect();
    let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1);
    // Round in which a node takes its next turn: it earns `weight` credits per round and a
    // turn costs `max_weight`, so its t-th turn falls in round ceil(t * max / weight).
    // A heap ordered by (round, position) replays those rounds without visiting nodes that
    // have no turn, so skewed weights cost O(size log nodes), not O(size * nodes).
    let next_round = |t: &Turn| ((t.taken + 1) * max_weight).div_ceil(t.weight);
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = turns
        .iter()
        .enumerate()
        .map(|(p, t)| Reverse((next_round(t), p)))
        .collect();

    let mut lookup = vec![EMPTY; size].into_boxed_slice();
    // Every pop fills one slot; `size` is prime and 0 < skip < size, so each permutation
    // visits every slot and the probe loop ends.
    for _ in 0..size {
        let Some(Reverse((_, p))) = heap.pop() else {
            break;
        };
        let t = &mut turns[p];
        while lookup[t.pos as usize] != EMPTY {
            t.pos = (t.pos + t.skip) % m;
        }
        lookup[t.pos as usize] = t.index;
        t.taken += 1;
        heap.push(Reverse((next_round(t), p)));
    }
    lookup
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::key_hash;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(65_538), 65_539);
        assert_eq!(next_prime(100_000), 100_003);
        assert!(!is_prime(1) && is_prime(2) && is_prime(3) && !is_prime(9));
    }

    #[test]
    fn table_size_grows_with_pool() {
        let n = names(10);
        let t = MaglevTable::new(n.iter().map(|n| NodeRef { name: n, weight: 1 })).unwrap();
        assert_eq!(t.table_size(), 65_537);
        let n = names(700);
        let t = MaglevTable::new(n.iter().map(|n| NodeRef { name: n, weight: 1 })).unwrap();
        assert_eq!(t.table_size(), 70_001);
    }

    #[test]
    fn every_slot_is_owned_and_shares_are_even() {
        let n = names(10);
        let t = MaglevTable::new(n.iter().map(|n| NodeRef { name: n, weight: 1 })).unwrap();
        let mut counts = [0usize; 10];
        for &s in t.lookup.iter() {
            assert_ne!(s, EMPTY);
            counts[usize::from(s)] += 1;
        }
        // Round-robin turns: shares differ by at most one slot.
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{counts:?}");
    }

    #[test]
    fn weights_give_proportional_slots() {
        let n = names(6);
        let weights = [1u32, 2, 3, 1, 0, 5];
        let t = MaglevTable::new(
            n.iter()
                .zip(weights)
                .map(|(n, w)| NodeRef { name: n, weight: w }),
        )
        .unwrap();
        let mut counts = [0f64; 6];
        for &s in t.lookup.iter() {
            counts[usize::from(s)] += 1.0;
        }
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let expect = t.table_size() as f64 * f64::from(w) / f64::from(total);
            assert!((c - expect).abs() <= 1.0 + expect * 0.001, "{counts:?}");
        }
    }

    #[test]
    fn ineligible_primary_falls_back_to_rendezvous() {
        let n = names(20);
        let t = MaglevTable::new(n.iter().map(|n| NodeRef { name: n, weight: 1 })).unwrap();
        for k in 0..2000u64 {
            let kh = key_hash(&k.to_le_bytes());
            let p = t.primary(kh).unwrap();
            assert_eq!(t.pick(kh, |_| true), Some(p));
            let others = |i: usize| i != p;
            assert_eq!(t.pick(kh, others), t.rendezvous.pick(kh, others));
            let order: Vec<usize> = t.order(kh, |_| true).take(2).collect();
            assert_eq!(order[0], p);
            assert_eq!(Some(order[1]), t.pick(kh, others));
        }
    }

    #[test]
    fn no_positive_weight_means_no_pick() {
        let t = MaglevTable::new([NodeRef {
            name: "a",
            weight: 0,
        }])
        .unwrap();
        assert_eq!(t.table_size(), 0);
        assert_eq!(t.pick(3, |_| true), None);
        assert_eq!(t.order(3, |_| true).next(), None);
    }

    #[test]
    fn skewed_weights_build_quickly_and_proportionally() {
        let n = names(400);
        let t = MaglevTable::new(n.iter().enumerate().map(|(i, n)| NodeRef {
            name: n,
            weight: if i == 0 { u32::MAX } else { 1 },
        }))
        .unwrap();
        let heavy = t.lookup.iter().filter(|&&s| s == 0).count();
        // 399 light nodes share 399 / (2^32 + 398) of the table: none gets a slot.
        assert_eq!(heavy, t.table_size());
        let t = MaglevTable::new(n.iter().enumerate().map(|(i, n)| NodeRef {
            name: n,
            weight: if i < 200 { 1000 } else { 1 },
        }))
        .unwrap();
        let heavy = t.lookup.iter().filter(|&&s| s < 200).count() as f64;
        let ideal = t.table_size() as f64 * 200_000.0 / 200_200.0;
        assert!((heavy - ideal).abs() <= 200.0, "{heavy} vs {ideal}");
    }

    #[test]
    fn too_many_nodes() {
        let n = names(MAX_NODES + 1);
        let err = MaglevTable::new(n.iter().map(|n| NodeRef { name: n, weight: 0 })).unwrap_err();
        assert_eq!(
            err,
            RoutingError::TooManyNodes {
                count: MAX_NODES + 1,
                max: MAX_NODES
            }
        );
    }
}
