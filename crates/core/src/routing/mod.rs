//! Routing primitives: which backend node of a pool serves a request.
//!
//! A route turns (host, path, sticky key) into one node: a learned sticky entry if its node
//! is still eligible, else consistent hashing over the eligible (healthy, non-draining)
//! nodes. Every answer here depends only on the config (node names and weights) and the
//! key, so every herdgate instance gives the same answer without shared state.
//!
//! - [`key`]: sticky key extraction from a request head (cookie, header, query, client IP),
//!   and the `Set-Cookie` for HAProxy-like `cookie insert`.
//! - [`hash`]: the stable key hash and weighted rendezvous (HRW) hashing.
//! - [`maglev`]: Maglev lookup tables for large pools.
//! - [`sticky`]: the bounded learned sticky table (key hash → node, with TTL).
//!
//! [`HashRing`] puts the two algorithms behind one type that the pool snapshot holds.

pub mod hash;
pub mod key;
pub mod maglev;
pub mod sticky;

pub use hash::{key_hash, rendezvous_pick, NodeRef, Preference, RendezvousTable};
pub use key::{extract, extract_hash, new_sticky_cookie, random_cookie_value, StickySource};
pub use maglev::MaglevTable;
pub use sticky::{Learned, StickyTable};

use serde::Deserialize;

/// Errors of the routing module. Each names the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    /// Two nodes share a name; names are identities, so the hash could not tell them apart.
    #[error("node name {name:?} appears twice in the pool: node names are their identity")]
    DuplicateNode {
        /// The repeated name.
        name: String,
    },
    /// The pool is larger than the Maglev table can spread evenly.
    #[error("pool has {count} nodes: Maglev supports at most {max}")]
    TooManyNodes {
        /// Nodes in the pool.
        count: usize,
        /// The Maglev limit.
        max: usize,
    },
    /// The sticky cookie name could never be sent back by a browser.
    #[error("sticky cookie name {name:?} is not an RFC 6265 token")]
    BadCookieName {
        /// The rejected name.
        name: String,
    },
    /// A sticky cookie value the proxy would set could not be sent back verbatim.
    #[error("sticky cookie value {value:?} contains a byte outside RFC 6265 cookie-octet")]
    BadCookieValue {
        /// The rejected value.
        value: String,
    },
    /// The sticky header name could never appear in a request.
    #[error("sticky header name {name:?} is not a valid HTTP field name")]
    BadHeaderName {
        /// The rejected name.
        name: String,
    },
    /// An empty query parameter name would match nothing.
    #[error("sticky query parameter name must not be empty")]
    EmptyQueryName,
    /// A sticky table that holds nothing would silently disable stickiness.
    #[error("sticky table max_entries must be > 0, got {got}")]
    ZeroCapacity {
        /// The configured max_entries.
        got: usize,
    },
    /// A per-client quota of 0 would let no client learn anything.
    #[error("sticky table max_entries_per_client must be > 0, got 0")]
    ZeroClientQuota,
}

/// Which consistent hash a pool uses. Config: `hash = "rendezvous"` (default) or
/// `hash = "maglev"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    /// Weighted rendezvous (HRW): exact minimal disruption, O(nodes) per lookup.
    #[default]
    Rendezvous,
    /// Maglev lookup table: O(1) per lookup, small bounded extra disruption on change.
    Maglev,
}

/// A pool's consistent hash, built once per config snapshot.
///
/// Indices given to the `eligible` closures and returned by lookups are positions in the
/// node list the table was built from.
#[derive(Debug, Clone)]
pub enum HashRing {
    /// Built for [`HashAlgo::Rendezvous`].
    Rendezvous(RendezvousTable),
    /// Built for [`HashAlgo::Maglev`].
    Maglev(MaglevTable),
}

impl HashRing {
    /// Builds the table for `algo` over the pool's nodes (in config order).
    pub fn build<'a>(
        algo: HashAlgo,
        nodes: impl IntoIterator<Item = NodeRef<'a>>,
    ) -> Result<Self, RoutingError> {
        Ok(match algo {
            HashAlgo::Rendezvous => HashRing::Rendezvous(RendezvousTable::new(nodes)?),
            HashAlgo::Maglev => HashRing::Maglev(MaglevTable::new(nodes)?),
        })
    }

    /// Which algorithm built it, so a holder of the ring can report or compare it with config.
    pub fn algo(&self) -> HashAlgo {
        match self {
            HashRing::Rendezvous(_) => HashAlgo::Rendezvous,
            HashRing::Maglev(_) => HashAlgo::Maglev,
        }
    }

    /// Number of nodes the table was built from.
    pub fn len(&self) -> usize {
        self.rendezvous().len()
    }

    /// True for an empty pool, where no pick can succeed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The preferred eligible node for `key_hash`, or `None` when no node is eligible.
    /// Allocation-free.
    pub fn pick(&self, key_hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashRing::Rendezvous(t) => t.pick(key_hash, eligible),
            HashRing::Maglev(t) => t.pick(key_hash, eligible),
        }
    }

    /// Eligible nodes in preference order for `key_hash` (failover: the next one when a
    /// connection attempt fails). The first item equals [`HashRing::pick`]. Lazy and
    /// allocation-free: each step costs one pass over the nodes.
    pub fn order<F: Fn(usize) -> bool>(&self, key_hash: u64, eligible: F) -> Preference<'_, F> {
        match self {
            HashRing::Rendezvous(t) => t.order(key_hash, eligible),
            HashRing::Maglev(t) => t.order(key_hash, eligible),
        }
    }

    /// Name of the node at `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.rendezvous().name(index)
    }

    fn rendezvous(&self) -> &RendezvousTable {
        match self {
            HashRing::Rendezvous(t) => t,
            HashRing::Maglev(t) => t.rendezvous(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Pool {
        #[serde(default)]
        hash: HashAlgo,
    }

    #[test]
    fn hash_algo_from_toml() {
        let p: Pool = toml::from_str("hash = \"maglev\"").unwrap();
        assert_eq!(p.hash, HashAlgo::Maglev);
        let p: Pool = toml::from_str("hash = \"rendezvous\"").unwrap();
        assert_eq!(p.hash, HashAlgo::Rendezvous);
        let p: Pool = toml::from_str("").unwrap();
        assert_eq!(p.hash, HashAlgo::Rendezvous);
        assert!(toml::from_str::<Pool>("hash = \"Maglev\"").is_err());
        assert!(toml::from_str::<Pool>("hash = \"ring\"").is_err());
    }

    #[test]
    fn ring_dispatches_and_agrees_on_first_choice() {
        let names: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let nodes = || names.iter().map(|n| NodeRef { name: n, weight: 1 });
        for algo in [HashAlgo::Rendezvous, HashAlgo::Maglev] {
            let ring = HashRing::build(algo, nodes()).unwrap();
            assert_eq!(ring.algo(), algo);
            assert_eq!(ring.len(), 30);
            assert_eq!(ring.name(3), Some("n3"));
            for k in 0..1000u64 {
                let kh = key_hash(&k.to_le_bytes());
                let down = |i: usize| i % 3 != 0;
                let p = ring.pick(kh, down);
                assert_eq!(p, ring.order(kh, down).next());
                assert!(p.is_some_and(down));
            }
        }
        let empty = HashRing::build(HashAlgo::Maglev, std::iter::empty()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.pick(7, |_| true), None);
    }
}
