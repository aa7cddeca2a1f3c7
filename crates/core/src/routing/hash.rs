//! Stable key hashing and weighted rendezvous (highest random weight) hashing.
//!
//! Every herdgate instance must map a key to the same node with no shared state, so all
//! hashing here is fixed: XXH64 with seed 0 (a published, platform-independent algorithm)
//! for keys and node names, a fixed 64×64→128 multiply mixer to combine them, and a
//! logarithm written with IEEE-754 basic operations only (correctly rounded everywhere),
//! because the platform `ln` may differ in the last bit between libms.
//!
//! Nodes are identified by name, never by position: the score of (key, node) depends on
//! the key hash and the node's name hash only, and ties are broken by name, so reordering
//! the node list changes no answer. Weighted scores use the logarithmic method
//! (Schindelhauer & Schomaker, "Weighted distributed hash tables", 2005):
//! `score = weight / -ln(u)`, `u = hash(key, node)` mapped into (0, 1), which gives each
//! node a share proportional to its weight and keeps rendezvous' minimal disruption.

use super::RoutingError;

/// A pool member as the config lists it: the name is its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef<'a> {
    /// The node's config name: hashed with the key, so a node keeps its keys across
    /// reorders and pool changes.
    pub name: &'a str,
    /// Relative share of keys. A node with weight 0 is never picked.
    pub weight: u32,
}

/// The stable 64-bit hash of a sticky key (XXH64, seed 0). Same value on every instance,
/// platform and run: suitable for routing, not for hash tables exposed to attackers.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Weighted rendezvous pick without a prebuilt table: hashes every name on each call.
/// Prefer [`RendezvousTable::pick`] on the hot path. Returns an index into `nodes`.
pub fn rendezvous_pick<'a, I>(
    key_hash: u64,
    nodes: I,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize>
where
    I: IntoIterator<Item = NodeRef<'a>>,
    I::IntoIter: Clone,
{
    let iter = nodes.into_iter();
    let uniform = uniform_weights(iter.clone().map(|n| n.weight));
    let mut best: Option<(u64, u64, &str, usize)> = None;
    for (i, node) in iter.enumerate() {
        if node.weight == 0 || !eligible(i) {
            continue;
        }
        let nh = key_hash_str(node.name);
        let s = score(key_hash, nh, node.weight, uniform);
        let better = match best {
            None => true,
            Some((bs, bh, bn, _)) => (s, nh, node.name) > (bs, bh, bn),
        };
        if better {
            best = Some((s, nh, node.name, i));
        }
    }
    best.map(|b| b.3)
}

#[derive(Debug, Clone)]
struct Slot {
    name: Box<str>,
    name_hash: u64,
    weight: u32,
}

/// Rendezvous table for one pool, built once per config snapshot: node name hashes are
/// precomputed, so a lookup hashes no strings and allocates nothing. Lookup cost is
/// O(nodes); prefer [`super::MaglevTable`] for pools of hundreds of nodes.
#[derive(Debug, Clone)]
pub struct RendezvousTable {
    slots: Box<[Slot]>,
    // All positive weights equal: scores compare by raw hash, no logarithm. Equivalent to
    // the weighted score because weight / -ln(u) is increasing in u.
    uniform: bool,
}

impl RendezvousTable {
    /// Builds the table from the pool's nodes in config order. Fails on duplicate names.
    pub fn new<'a>(nodes: impl IntoIterator<Item = NodeRef<'a>>) -> Result<Self, RoutingError> {
        let slots: Box<[Slot]> = nodes
            .into_iter()
            .map(|n| Slot {
                name: n.name.into(),
                name_hash: key_hash_str(n.name),
                weight: n.weight,
            })
            .collect();
        let mut names: Vec<&str> = slots.iter().map(|s| &*s.name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(RoutingError::DuplicateNode {
                name: w[0].to_owned(),
            });
        }
        let uniform = uniform_weights(slots.iter().map(|s| s.weight));
        Ok(RendezvousTable { slots, uniform })
    }

    /// Node count, so callers can size per-node state to match the table.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True for an empty pool, where no pick can succeed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The config name at `index`, to map a picked index back to a node (logs, tests).
    pub fn name(&self, index: usize) -> Option<&str> {
        self.slots.get(index).map(|s| &*s.name)
    }

    /// The weight at `index`, to check a pick against the configured shares.
    pub fn weight(&self, index: usize) -> Option<u32> {
        self.slots.get(index).map(|s| s.weight)
    }

    /// The eligible node with the highest score for `key_hash`.
    pub fn pick(&self, key_hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.weight == 0 || !eligible(i) {
                continue;
            }
            let s = score(key_hash, slot.name_hash, slot.weight, self.uniform);
            if best.is_none_or(|b| self.ranks_above((s, i), b)) {
                best = Some((s, i));
            }
        }
        best.map(|b| b.1)
    }

    /// Eligible nodes in descending score order: the failover sequence for `key_hash`.
    pub fn order<F: Fn(usize) -> bool>(&self, key_hash: u64, eligible: F) -> Preference<'_, F> {
        Preference::new(self, key_hash, eligible, None)
    }

    fn score_of(&self, key_hash: u64, index: usize) -> u64 {
        let s = &self.slots[index];
        score(key_hash, s.name_hash, s.weight, self.uniform)
    }

    // Total order over (score, node) that depends on names, never on positions.
    fn ranks_above(&self, a: (u64, usize), b: (u64, usize)) -> bool {
        let (sa, sb) = (&self.slots[a.1], &self.slots[b.1]);
        (a.0, sa.name_hash, &*sa.name) > (b.0, sb.name_hash, &*sb.name)
    }
}

/// Lazy preference order over a pool's eligible nodes for one key (see
/// [`RendezvousTable::order`]). Each step is one pass over the nodes and allocates nothing;
/// failover rarely needs more than two or three steps.
pub struct Preference<'t, F> {
    table: &'t RendezvousTable,
    key_hash: u64,
    eligible: F,
    // Yielded before the rendezvous order and skipped inside it (Maglev's primary).
    first: Option<usize>,
    first_done: bool,
    last: Option<(u64, usize)>,
    done: bool,
}

impl<'t, F: Fn(usize) -> bool> Preference<'t, F> {
    pub(crate) fn new(
        table: &'t RendezvousTable,
        key_hash: u64,
        eligible: F,
        first: Option<usize>,
    ) -> Self {
        Preference {
            table,
            key_hash,
            eligible,
            first,
            first_done: false,
            last: None,
            done: false,
        }
    }
}

impl<F: Fn(usize) -> bool> Iterator for Preference<'_, F> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if !self.first_done {
            self.first_done = true;
            if self.first.is_some() {
                return self.first;
            }
        }
        if self.done {
            return None;
        }
        let t = self.table;
        let mut best: Option<(u64, usize)> = None;
        for (i, slot) in t.slots.iter().enumerate() {
            if slot.weight == 0 || Some(i) == self.first || !(self.eligible)(i) {
                continue;
            }
            let cand = (t.score_of(self.key_hash, i), i);
            if self.last.is_some_and(|last| !t.ranks_above(last, cand)) {
                continue;
            }
            if best.is_none_or(|b| t.ranks_above(cand, b)) {
                best = Some(cand);
            }
        }
        self.last = best;
        self.done = best.is_none();
        best.map(|b| b.1)
    }
}

fn uniform_weights(mut weights: impl Iterator<Item = u32>) -> bool {
    let mut positive = weights.by_ref().filter(|&w| w > 0);
    match positive.next() {
        None => true,
        Some(first) => positive.all(|w| w == first),
    }
}

pub(crate) fn key_hash_str(s: &str) -> u64 {
    key_hash(s.as_bytes())
}

/// Comparable score of a (key, node) pair: larger wins.
fn score(key_hash: u64, name_hash: u64, weight: u32, uniform: bool) -> u64 {
    // 52 bits so that h + 0.5 is exact in an f64 and u stays strictly inside (0, 1).
    let h = mix(key_hash, name_hash) >> 12;
    if uniform {
        return h;
    }
    let u = (h as f64 + 0.5) * (1.0 / 4_503_599_627_370_496.0); // 2^-52
    let s = f64::from(weight) / -ln(u);
    // Positive finite doubles order like their bit patterns.
    s.to_bits()
}

/// Combines two 64-bit hashes (wyhash-style folded multiply, then the MurmurHash3 64-bit
/// finalizer) so that scores of different nodes for one key look independent.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let m = u128::from(a ^ 0xa076_1d64_78bd_642f) * u128::from(b ^ 0xe703_7ed1_a0b4_28db);
    fmix64((m as u64) ^ ((m >> 64) as u64))
}

pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh_round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), little-endian
/// reads regardless of platform.
pub(crate) fn xxh64(input: &[u8], seed: u64) -> u64 {
    let len = input.len() as u64;
    let mut rest = input;
    let mut h = if rest.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = xxh_round(*acc, read_u64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for acc in v {
            h = xxh_merge(h, acc);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(len);
    while rest.len() >= 8 {
        h ^= xxh_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

// fdlibm's __ieee754_log (as in musl and the `libm` crate), restricted to the finite
// positive normal inputs that `score` produces. Only +, -, *, / on f64, which IEEE 754
// rounds identically on every platform, so every instance computes the same bits.
// Constants are the shortest decimals of fdlibm's bit patterns (pinned by a test).
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LG1: f64 = 6.666_666_666_666_735e-1;
const LG2: f64 = 3.999_999_999_940_942e-1;
const LG3: f64 = 2.857_142_874_366_239e-1;
const LG4: f64 = 2.222_219_843_214_978_4e-1;
const LG5: f64 = 1.818_357_216_161_805e-1;
const LG6: f64 = 1.531_383_769_920_937_3e-1;
const LG7: f64 = 1.479_819_860_511_658_6e-1;

fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut hx = (bits >> 32) as u32;
    // Reduce x into [sqrt(2)/2, sqrt(2)): x = 2^k * (1 + f).
    hx = hx.wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    let k = (hx >> 20) as i32 - 0x3ff;
    hx = (hx & 0x000f_ffff) + 0x3fe6_a09e;
    let x = f64::from_bits((u64::from(hx) << 32) | (bits & 0xffff_ffff));
    let f = x - 1.0;
    let hfsq = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let dk = f64::from(k);
    s * (hfsq + r) + dk * LN2_LO - hfsq + f + dk * LN2_HI
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn log_constants_are_the_fdlibm_bits() {
        assert_eq!(LN2_HI.to_bits(), 0x3fe6_2e42_fee0_0000);
        assert_eq!(LN2_LO.to_bits(), 0x3dea_39ef_3579_3c76);
        assert_eq!(LG1.to_bits(), 0x3FE5_5555_5555_5593);
        assert_eq!(LG2.to_bits(), 0x3FD9_9999_9997_FA04);
        assert_eq!(LG3.to_bits(), 0x3FD2_4924_9422_9359);
        assert_eq!(LG4.to_bits(), 0x3FCC_71C5_1D8E_78AF);
        assert_eq!(LG5.to_bits(), 0x3FC7_4664_96CB_03DE);
        assert_eq!(LG6.to_bits(), 0x3FC3_9A09_D078_C69F);
        assert_eq!(LG7.to_bits(), 0x3FC2_F112_DF3E_5244);
    }

    #[test]
    fn log_agrees_with_std_within_an_ulp() {
        let mut h = 1u64;
        for _ in 0..100_000 {
            h = fmix64(h.wrapping_add(1));
            let u = ((h >> 12) as f64 + 0.5) * (1.0 / 4_503_599_627_370_496.0);
            let (ours, std) = (ln(u), u.ln());
            let ulp = f64::from_bits(std.abs().to_bits() + 1) - std.abs();
            assert!((ours - std).abs() <= ulp, "ln({u}) = {ours}, std {std}");
        }
        assert_eq!(ln(1.0), 0.0);
        assert!((ln(0.5) + std::f64::consts::LN_2).abs() < 1e-16);
        let tiny = 0.5 / 4_503_599_627_370_496.0;
        assert!((ln(tiny) - tiny.ln()).abs() < 1e-14);
    }

    #[test]
    fn scores_are_stable_across_runs() {
        // Pinned values: a change here changes every herdgate routing decision.
        assert_eq!(key_hash(b"session-42"), xxh64(b"session-42", 0));
        let nodes = ["chat-1", "chat-2", "chat-3"].map(|n| NodeRef { name: n, weight: 1 });
        let picks: Vec<usize> = (0..8u64)
            .map(|k| rendezvous_pick(key_hash(&k.to_le_bytes()), nodes, |_| true).unwrap())
            .collect();
        let table = RendezvousTable::new(nodes).unwrap();
        for k in 0..8u64 {
            let kh = key_hash(&k.to_le_bytes());
            assert_eq!(table.pick(kh, |_| true), Some(picks[k as usize]));
        }
    }

    #[test]
    fn free_function_matches_table_weighted() {
        let names: Vec<String> = (0..12).map(|i| format!("node-{i}")).collect();
        let nodes: Vec<NodeRef> = names
            .iter()
            .enumerate()
            .map(|(i, n)| NodeRef {
                name: n,
                weight: (i % 4) as u32,
            })
            .collect();
        let table = RendezvousTable::new(nodes.iter().copied()).unwrap();
        for k in 0..2000u64 {
            let kh = key_hash(&k.to_be_bytes());
            let elig = |i: usize| i != 5;
            let p = table.pick(kh, elig);
            assert_eq!(p, rendezvous_pick(kh, nodes.iter().copied(), elig));
            // weight 0 nodes are never chosen
            assert!(p.is_some_and(|i| i % 4 != 0));
        }
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let nodes = ["a", "b", "a"].map(|n| NodeRef { name: n, weight: 1 });
        assert_eq!(
            RendezvousTable::new(nodes).unwrap_err(),
            RoutingError::DuplicateNode { name: "a".into() }
        );
    }

    #[test]
    fn order_is_a_full_permutation_starting_with_pick() {
        let names: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
        let table = RendezvousTable::new(names.iter().map(|n| NodeRef {
            name: n,
            weight: 1 + (n.len() as u32 % 2),
        }))
        .unwrap();
        for k in 0..500u64 {
            let kh = key_hash(&k.to_le_bytes());
            let order: Vec<usize> = table.order(kh, |i| i != 2).collect();
            assert_eq!(order.len(), 8);
            assert_eq!(Some(order[0]), table.pick(kh, |i| i != 2));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 3, 4, 5, 6, 7, 8]);
            // The second choice is what pick gives once the first is down.
            let first = order[0];
            assert_eq!(Some(order[1]), table.pick(kh, |i| i != 2 && i != first));
        }
        assert_eq!(table.order(1, |_| false).next(), None);
    }

    #[test]
    fn empty_and_all_ineligible() {
        let t = RendezvousTable::new(std::iter::empty()).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.pick(1, |_| true), None);
        let t = RendezvousTable::new([NodeRef {
            name: "x",
            weight: 0,
        }])
        .unwrap();
        assert_eq!(t.pick(1, |_| true), None);
        assert_eq!(t.weight(0), Some(0));
    }
}
