//! Learned sticky table: sticky key hash → node, with a TTL and a hard bound on entries.
//!
//! Keys are the 64-bit [`super::key_hash`] of the sticky key, so an entry has a fixed size
//! and inserting allocates no string. Two keys colliding in 64 bits share a node: harmless.
//! The map itself is a `DashMap` with the default (randomly keyed SipHash) hasher, because
//! the key hashes are unkeyed and a client can choose them.
//!
//! Bounding without scans on the request path: keys are split over `SHARDS` eviction
//! shards (by a per-table random salt, so a client cannot aim at one shard). Each shard
//! owns a capacity, a live count, and a FIFO of its keys in insertion order behind a mutex
//! taken only when a key is added (a hit takes no mutex). When a shard is full, the FIFO
//! front is examined: expired or stale items go first; an entry seen since it was queued
//! gets a second chance (re-queued at the back), so eviction approximates
//! least-recently-seen. Each insert does O(1) amortised work and at most `SECOND_CHANCES`
//! re-queues before it evicts unconditionally. Removals (sweep, reload, explicit) only
//! decrement the live count; the stale FIFO items they leave are dropped lazily.
//!
//! Time is passed in as an `Instant` (no clock inside) so tests drive it by hand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::RoutingError;

const SHARDS: usize = 32;
const SECOND_CHANCES: usize = 8;

#[derive(Debug, Clone)]
struct Entry<N> {
    node: N,
    last_seen: Instant,
    // Identity of this entry's live FIFO item; older items for the key are stale.
    seq: u64,
    queued_at: Instant,
}

#[derive(Debug, Default)]
struct Fifo {
    items: VecDeque<(u64, u64)>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct Shard {
    fifo: Mutex<Fifo>,
    // Incremented only under `fifo` (so a full shard stays full while it evicts);
    // decremented by whoever removes an entry, lock or not.
    live: AtomicUsize,
    cap: usize,
}

/// Bounded, TTL-expiring map from sticky key hash to node identity `N` (e.g. `Arc<str>` or
/// a numeric node id). Safe to share between connections (`&self` everywhere).
#[derive(Debug)]
pub struct StickyTable<N> {
    map: DashMap<u64, Entry<N>>,
    shards: Box<[Shard]>,
    salt: u64,
    ttl: Duration,
    max_entries: usize,
    len: AtomicUsize,
}

impl<N: Clone + PartialEq> StickyTable<N> {
    /// A table whose entries expire `ttl` after they were last seen and which never holds
    /// more than `max_entries` entries.
    pub fn new(ttl: Duration, max_entries: usize) -> Result<Self, RoutingError> {
        Self::with_salt(ttl, max_entries, rand::random())
    }

    fn with_salt(ttl: Duration, max_entries: usize, salt: u64) -> Result<Self, RoutingError> {
        if max_entries == 0 {
            return Err(RoutingError::ZeroCapacity { got: max_entries });
        }
        // At least two entries per shard, so that small tables still evict sensibly.
        let count = SHARDS.min(max_entries / 2).max(1);
        let shards = (0..count)
            .map(|i| Shard {
                cap: max_entries / count + usize::from(i < max_entries % count),
                ..Shard::default()
            })
            .collect();
        Ok(StickyTable {
            map: DashMap::new(),
            shards,
            salt,
            ttl,
            max_entries,
            len: AtomicUsize::new(0),
        })
    }

    /// The entry lifetime it was built with, so a reload can keep the table when unchanged.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The capacity it was built with, so a reload can keep the table when unchanged.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Number of entries, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when nothing has been learned (or everything was swept).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node learned for `key` if the entry has not expired; a hit counts as seeing the
    /// key, so an active session stays sticky.
    pub fn get(&self, key: u64, now: Instant) -> Option<N> {
        let mut e = self.map.get_mut(&key)?;
        if self.expired(&e, now) {
            return None;
        }
        if now > e.last_seen {
            e.last_seen = now;
        }
        Some(e.node.clone())
    }

    /// Learns (or refreshes) `key → node`. When the key's shard is full, evicts an
    /// expired entry if the FIFO front has one, else the least recently seen it finds.
    pub fn insert(&self, key: u64, node: N, now: Instant) {
        let shard = &self.shards[self.shard_of(key)];
        let mut fifo = lock(&shard.fifo);
        if let Some(mut e) = self.map.get_mut(&key) {
            e.node = node;
            e.last_seen = e.last_seen.max(now);
            return;
        }
        while shard.live.load(Ordering::Relaxed) >= shard.cap {
            if !self.evict_one(&mut fifo, now) {
                break;
            }
        }
        let seq = fifo.next_seq;
        fifo.next_seq += 1;
        // Keys are only added under this shard's lock, so the key is still absent.
        self.map.insert(
            key,
            Entry {
                node,
                last_seen: now,
                seq,
                queued_at: now,
            },
        );
        fifo.items.push_back((key, seq));
        shard.live.fetch_add(1, Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Relaxed);
        // Removals leave stale items behind: drop them before the FIFO outgrows the shard.
        if fifo.items.len() > 2 * shard.cap + 16 {
            fifo.items
                .retain(|&(k, s)| self.map.get(&k).is_some_and(|e| e.seq == s));
        }
    }

    /// Forgets `key` (e.g. its node refused the session).
    pub fn remove(&self, key: u64) -> Option<N> {
        let (_, e) = self.map.remove(&key)?;
        self.forget(key);
        Some(e.node)
    }

    /// Drops every entry pointing at `node` (a node removed by a reload). O(entries): a
    /// control-plane operation, never on the request path.
    pub fn remove_node(&self, node: &N) -> usize {
        self.retain_nodes(|n| n != node)
    }

    /// Keeps only entries whose node satisfies `keep`: one pass for a whole reload diff.
    /// Returns how many entries were dropped.
    pub fn retain_nodes(&self, keep: impl Fn(&N) -> bool) -> usize {
        self.retain(|e| keep(&e.node))
    }

    /// Removes expired entries; returns how many. One pass over the table, holding one
    /// DashMap shard lock at a time: call it from a periodic task, not per request (the
    /// request path never needs it: `get` ignores expired entries and `insert` evicts).
    pub fn sweep(&self, now: Instant) -> usize {
        self.retain(|e| !self.expired(e, now))
    }

    fn retain(&self, keep: impl Fn(&Entry<N>) -> bool) -> usize {
        let mut dropped = 0;
        self.map.retain(|&key, e| {
            let keep = keep(e);
            if !keep {
                self.forget(key);
                dropped += 1;
            }
            keep
        });
        dropped
    }

    fn forget(&self, key: u64) {
        self.shards[self.shard_of(key)]
            .live
            .fetch_sub(1, Ordering::Relaxed);
        self.len.fetch_sub(1, Ordering::Relaxed);
    }

    fn expired(&self, e: &Entry<N>, now: Instant) -> bool {
        now.saturating_duration_since(e.last_seen) >= self.ttl
    }

    fn shard_of(&self, key: u64) -> usize {
        // Multiply-shift on a salted mix: independent of the DashMap's own hashing.
        let h = super::hash::fmix64(key ^ self.salt);
        ((u128::from(h) * self.shards.len() as u128) >> 64) as usize
    }

    /// Pops FIFO items until one entry is evicted. Returns false if the FIFO ran dry.
    fn evict_one(&self, fifo: &mut Fifo, now: Instant) -> bool {
        let mut chances = 0;
        while let Some((key, seq)) = fifo.items.pop_front() {
            let force = chances >= SECOND_CHANCES;
            let mut seen_since_queued = None;
            let evicted = self.map.remove_if(&key, |_, e| {
                if e.seq != seq {
                    return false; // stale item: the entry was removed and learned again
                }
                if force || self.expired(e, now) || e.last_seen <= e.queued_at {
                    return true;
                }
                seen_since_queued = Some(e.last_seen);
                false
            });
            if evicted.is_some() {
                self.forget(key);
                return true;
            }
            if let Some(seen) = seen_since_queued {
                chances += 1;
                if let Some(mut e) = self.map.get_mut(&key) {
                    if e.seq == seq {
                        e.queued_at = seen;
                        fifo.items.push_back((key, seq));
                    }
                }
            }
        }
        false
    }
}

fn lock(m: &Mutex<Fifo>) -> MutexGuard<'_, Fifo> {
    // A panic while holding the lock cannot leave the FIFO unsafe to use: at worst it
    // holds a stale item, which is skipped.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn table(ttl_s: u64, max: usize) -> StickyTable<u32> {
        StickyTable::with_salt(Duration::from_secs(ttl_s), max, 0x1234).unwrap()
    }

    #[test]
    fn zero_capacity_is_an_error() {
        let e = StickyTable::<u32>::new(Duration::from_secs(1), 0).unwrap_err();
        assert_eq!(e, RoutingError::ZeroCapacity { got: 0 });
        assert!(e.to_string().contains("got 0"));
    }

    #[test]
    fn get_returns_learned_node_and_refreshes() {
        let t0 = Instant::now();
        let t = table(10, 100);
        t.insert(1, 7, t0);
        assert_eq!(t.get(1, t0 + Duration::from_secs(9)), Some(7));
        // Each hit refreshes: seen at 9 s, alive at 18 s; seen at 18 s, gone at 28 s.
        assert_eq!(t.get(1, t0 + Duration::from_secs(18)), Some(7));
        assert_eq!(t.get(1, t0 + Duration::from_secs(28)), None);
        assert_eq!(t.get(2, t0), None);
        t.insert(1, 8, t0 + Duration::from_secs(30));
        assert_eq!(t.get(1, t0 + Duration::from_secs(30)), Some(8));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn ttl_expiry_and_sweep() {
        let t0 = Instant::now();
        let t = table(10, 10_000);
        for k in 0..1000u64 {
            t.insert(k, (k % 5) as u32, t0 + Duration::from_millis(k));
        }
        // Keep the odd keys alive.
        let t1 = t0 + Duration::from_secs(5);
        for k in (1..1000u64).step_by(2) {
            assert_eq!(t.get(k, t1), Some((k % 5) as u32));
        }
        let t2 = t0 + Duration::from_millis(10_500);
        // Keys inserted up to 0.5 s ago and never seen since have expired.
        assert_eq!(t.get(0, t2), None);
        assert_eq!(t.get(1, t2), Some(1));
        assert_eq!(t.get(600, t2), Some(0));
        assert_eq!(t.sweep(t2), 251);
        assert_eq!(t.len(), 749);
        // At 16 s only keys 1 and 600 (seen at 10.5 s) are alive.
        let t3 = t0 + Duration::from_secs(16);
        assert_eq!(t.sweep(t3), 747);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(600, t3), Some(0));
        assert_eq!(t.sweep(t0 + Duration::from_secs(100)), 2);
        assert!(t.is_empty());
        assert_eq!(t.sweep(t0 + Duration::from_secs(100)), 0);
        assert_eq!(t.map.len(), 0);
    }

    #[test]
    fn bound_holds_under_a_million_inserts() {
        let t0 = Instant::now();
        let t = table(3600, 10_000);
        for k in 0..1_000_000u64 {
            t.insert(super::super::key_hash(&k.to_le_bytes()), k as u32, t0);
            assert!(t.len() <= 10_000);
        }
        assert!(t.len() > 9_900, "shards fill evenly: {}", t.len());
        assert_eq!(t.map.len(), t.len());
        // The FIFOs stay proportional to capacity.
        let queued: usize = t.shards.iter().map(|s| lock(&s.fifo).items.len()).sum();
        assert!(queued <= 2 * 10_000 + 16 * t.shards.len(), "{queued}");
    }

    #[test]
    fn eviction_prefers_expired_then_least_recently_seen() {
        let t0 = Instant::now();
        // One shard so the FIFO order is global.
        let t = table(10, 1);
        assert_eq!(t.shards.len(), 1);
        t.insert(1, 1, t0);
        t.insert(2, 2, t0 + Duration::from_secs(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(1, t0), None);
        assert_eq!(t.get(2, t0 + Duration::from_secs(1)), Some(2));

        let t = table(10, 4);
        assert_eq!(t.shards.len(), 2);
        let t = StickyTable::<u32>::with_salt(Duration::from_secs(10), 3, 0).unwrap();
        assert_eq!(t.shards.len(), 1);
        t.insert(1, 1, t0);
        t.insert(2, 2, t0);
        t.insert(3, 3, t0);
        // Key 1 is seen again: key 2 is now the least recently seen.
        assert_eq!(t.get(1, t0 + Duration::from_secs(1)), Some(1));
        t.insert(4, 4, t0 + Duration::from_secs(2));
        assert_eq!(t.get(2, t0 + Duration::from_secs(2)), None);
        assert_eq!(t.get(1, t0 + Duration::from_secs(2)), Some(1));
        // Key 3, never seen again, has expired by 11 s: it goes, keys 1 and 4 stay.
        assert_eq!(t.get(1, t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(t.get(4, t0 + Duration::from_secs(9)), Some(4));
        t.insert(5, 5, t0 + Duration::from_secs(11));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(3, t0 + Duration::from_secs(11)), None);
        assert_eq!(t.get(1, t0 + Duration::from_secs(11)), Some(1));
        assert_eq!(t.get(4, t0 + Duration::from_secs(11)), Some(4));
        assert_eq!(t.get(5, t0 + Duration::from_secs(11)), Some(5));
    }

    #[test]
    fn remove_node_drops_only_its_entries() {
        let t0 = Instant::now();
        let t: StickyTable<Arc<str>> =
            StickyTable::with_salt(Duration::from_secs(60), 1000, 9).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("chat-a".into(), "chat-b".into());
        for k in 0..300u64 {
            t.insert(k, if k % 3 == 0 { a.clone() } else { b.clone() }, t0);
        }
        assert_eq!(t.remove_node(&a), 100);
        assert_eq!(t.len(), 200);
        assert_eq!(t.get(3, t0), None);
        assert_eq!(t.get(4, t0).as_deref(), Some("chat-b"));
        assert_eq!(t.remove_node(&a), 0);
        assert_eq!(t.remove(4).as_deref(), Some("chat-b"));
        assert_eq!(t.remove(4), None);
        assert_eq!(t.len(), 199);
        // Removed keys can be learned again and the bound still counts right.
        for k in 0..2000u64 {
            t.insert(k, a.clone(), t0);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.map.len(), 1000);
        assert_eq!(t.retain_nodes(|_| false), 1000);
        assert!(t.is_empty());
    }

    #[test]
    fn churn_with_removals_keeps_fifos_bounded() {
        let t0 = Instant::now();
        let t = table(1, 64);
        for round in 0..2000u64 {
            let now = t0 + Duration::from_millis(round * 10);
            for k in 0..8u64 {
                t.insert(k, round as u32, now);
                if round % 2 == 0 {
                    t.remove(k);
                }
            }
        }
        let queued: usize = t.shards.iter().map(|s| lock(&s.fifo).items.len()).sum();
        assert!(queued <= 2 * 64 + 16 * t.shards.len(), "{queued}");
        assert_eq!(t.map.len(), t.len());
    }

    #[test]
    fn concurrent_inserts_respect_bound() {
        let t0 = Instant::now();
        let t = Arc::new(table(60, 5000));
        let handles: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for k in 0..50_000u64 {
                        let key = super::super::key_hash(&(w * 1_000_000 + k).to_le_bytes());
                        t.insert(key, w as u32, t0);
                        let _ = t.get(key, t0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(t.len() <= 5000);
        assert_eq!(t.map.len(), t.len());
    }
}
