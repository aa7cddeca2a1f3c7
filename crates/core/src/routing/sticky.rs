//! Learned sticky table: sticky key hash → node, with a TTL, a hard bound on entries and a
//! per-client quota.
//!
//! Keys are the 64-bit [`super::key_hash`] of the sticky key, so an entry has a fixed size
//! and inserting allocates no string. Two keys colliding in 64 bits share a node: harmless.
//! The map itself is a `DashMap` with the default (randomly keyed SipHash) hasher, because
//! the key hashes are unkeyed and a client can choose them.
//!
//! Who may fill it: the runtime learns an entry only once the node accepted the session
//! (its 101), and every entry is charged to the client that caused it (its address, IPv6 by
//! /64). A client holds at most `per_client` entries: past that, its new key replaces *its
//! own* oldest entry, in place, so that one client cycling keys never evicts anyone else's.
//! Only a client below its quota adds to the pressure on `max_entries`, and then eviction
//! takes the least recently seen entry of the shard.
//!
//! Bounding without scans on the request path: entries are spread over `SHARDS` eviction
//! shards (by a per-table random salt on the key, so a client cannot aim at one shard; an
//! entry replacing a client's own takes over that entry's shard). Each shard owns a
//! capacity, a live count, and a FIFO of its keys in insertion order behind a mutex taken
//! only when a key is added (a hit takes no mutex). When a shard is full, the FIFO front is
//! examined: expired or stale items go first; an entry seen since it was queued gets a
//! second chance (re-queued at the back), so eviction approximates least-recently-seen.
//! Each insert does O(1) amortised work and at most `SECOND_CHANCES` re-queues before it
//! evicts unconditionally. Removals (sweep, reload, explicit) only decrement the live
//! count; the stale FIFO and per-client items they leave are dropped lazily.
//!
//! Time is passed in as an `Instant` (no clock inside) so tests drive it by hand.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use super::RoutingError;

const SHARDS: usize = 32;
const SECOND_CHANCES: usize = 8;

#[derive(Debug, Clone)]
struct Entry<N> {
    node: N,
    last_seen: Instant,
    // Identity of this entry's live FIFO and client items (unique in the table); older
    // items for the key are stale.
    seq: u64,
    queued_at: Instant,
    // The eviction shard whose FIFO and live count hold it.
    shard: usize,
    // The client it is charged to.
    client: IpAddr,
}

#[derive(Debug, Default)]
struct Client {
    // Entries charged to it, exactly: incremented before its entry enters the map,
    // decremented after an entry leaves it.
    live: usize,
    // Inserts that found room under its quota and have not charged yet: they count
    // against the quota, so that concurrent inserts of one client never both find room.
    pending: usize,
    // Its entries as (key, seq), oldest first; items whose entry is gone are stale and
    // dropped lazily (from the front, or by compaction when they pile up).
    items: VecDeque<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Fifo {
    items: VecDeque<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Shard {
    fifo: Mutex<Fifo>,
    // Incremented only under `fifo` (so a full shard stays full while it evicts);
    // decremented by whoever removes an entry, lock or not.
    live: AtomicUsize,
    cap: usize,
}

/// What [`StickyTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The key was known: its node and last-seen time were updated.
    Refreshed,
    /// A new entry, in free room.
    Added,
    /// A new entry; the client was at its quota, so its own oldest entry made room.
    ReplacedOwn,
    /// A new entry; the shard was full, so the least recently seen entry was evicted.
    Evicted,
}

/// Bounded, TTL-expiring map from sticky key hash to node identity `N` (e.g. `Arc<str>` or
/// a numeric node id), with a per-client quota. Safe to share between connections (`&self`
/// everywhere).
#[derive(Debug)]
pub struct StickyTable<N> {
    map: DashMap<u64, Entry<N>>,
    shards: Box<[Shard]>,
    // Clients holding at least one entry.
    clients: DashMap<IpAddr, Client>,
    next_seq: AtomicU64,
    salt: u64,
    ttl: Duration,
    max_entries: usize,
    per_client: usize,
    len: AtomicUsize,
}

impl<N: Clone + PartialEq> StickyTable<N> {
    /// A table whose entries expire `ttl` after they were last seen, which never holds
    /// more than `max_entries` entries, nor more than `per_client` for one client.
    pub fn new(ttl: Duration, max_entries: usize, per_client: usize) -> Result<Self, RoutingError> {
        Self::with_salt(ttl, max_entries, per_client, rand::random())
    }

    fn with_salt(
        ttl: Duration,
        max_entries: usize,
        per_client: usize,
        salt: u64,
    ) -> Result<Self, RoutingError> {
        // At least two entries per shard, so that small tables still evict sensibly.
        let count = SHARDS.min(max_entries / 2).max(1);
        Self::build(ttl, max_entries, per_client, salt, count)
    }

    fn build(
        ttl: Duration,
        max_entries: usize,
        per_client: usize,
        salt: u64,
        count: usize,
    ) -> Result<Self, RoutingError> {
        if max_entries == 0 {
            return Err(RoutingError::ZeroCapacity { got: max_entries });
        }
        if per_client == 0 {
            return Err(RoutingError::ZeroClientQuota);
        }
        let shards = (0..count)
            .map(|i| Shard {
                cap: max_entries / count + usize::from(i < max_entries % count),
                ..Shard::default()
            })
            .collect();
        Ok(StickyTable {
            map: DashMap::new(),
            shards,
            clients: DashMap::new(),
            next_seq: AtomicU64::new(0),
            salt,
            ttl,
            max_entries,
            per_client,
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

    /// The per-client quota it was built with, so a reload can keep the table when unchanged.
    pub fn per_client(&self) -> usize {
        self.per_client
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

    /// Learns (or refreshes) `key → node` on behalf of `client`. A client at its quota
    /// replaces its own oldest entry; otherwise, when the key's shard is full, an expired
    /// entry goes if the FIFO front has one, else the least recently seen it finds.
    pub fn insert(&self, key: u64, node: N, client: IpAddr, now: Instant) -> Learned {
        if let Some(mut e) = self.map.get_mut(&key) {
            e.node = node;
            e.last_seen = e.last_seen.max(now);
            return Learned::Refreshed;
        }
        // Lock order: a shard's FIFO, then a client, then the map; a client's lock is
        // never held while a FIFO is taken, and no map lock while a client's is taken.
        let mut outcome = Learned::Added;
        let mut replaced_shard = None;
        if let Some((k, s)) = self.own_oldest_if_full(client) {
            // Gone meanwhile (expired, evicted): its room is free all the same.
            if let Some((_, e)) = self.map.remove_if(&k, |_, e| e.seq == s) {
                self.forget(&e);
                replaced_shard = Some(e.shard);
                outcome = Learned::ReplacedOwn;
            }
        }
        let shard_idx = replaced_shard.unwrap_or_else(|| self.shard_of(key));
        let shard = &self.shards[shard_idx];
        let mut fifo = lock(&shard.fifo);
        while shard.live.load(Ordering::Relaxed) >= shard.cap {
            if !self.evict_one(&mut fifo, now) {
                break;
            }
            if outcome == Learned::Added {
                outcome = Learned::Evicted;
            }
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // Charged before it is visible, so that its removal always finds it counted.
        {
            let mut c = self.clients.entry(client).or_default();
            c.pending = c.pending.saturating_sub(1);
            c.live += 1;
            c.items.push_back((key, seq));
            if c.items.len() > 2 * self.per_client.min(self.max_entries) + 8 {
                c.items
                    .retain(|&(k, s)| (k == key && s == seq) || self.is_live(k, s));
            }
        }
        match self.map.entry(key) {
            // Learned by another client meanwhile: refresh it, and take the charge back.
            MapEntry::Occupied(mut o) => {
                let e = o.get_mut();
                e.node = node;
                e.last_seen = e.last_seen.max(now);
                drop(o);
                self.uncharge(client);
                return Learned::Refreshed;
            }
            MapEntry::Vacant(v) => {
                v.insert(Entry {
                    node,
                    last_seen: now,
                    seq,
                    queued_at: now,
                    shard: shard_idx,
                    client,
                });
            }
        }
        fifo.items.push_back((key, seq));
        shard.live.fetch_add(1, Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Relaxed);
        // Removals leave stale items behind: drop them before the FIFO outgrows the shard.
        if fifo.items.len() > 2 * shard.cap + 16 {
            fifo.items.retain(|&(k, s)| self.is_live(k, s));
        }
        outcome
    }

    /// The client's oldest live entry when it holds its whole quota (stale items met on
    /// the way are dropped).
    /// Reserves room for one insert of `client` (`pending`, charged by the caller), and
    /// returns its oldest live entry when that reservation puts it over its quota (the
    /// caller replaces it). Reserving under the client's lock is what keeps concurrent
    /// inserts of one client to one replacement each.
    fn own_oldest_if_full(&self, client: IpAddr) -> Option<(u64, u64)> {
        let mut c = self.clients.entry(client).or_default();
        c.pending += 1;
        if c.live + c.pending > self.per_client {
            while let Some((k, s)) = c.items.pop_front() {
                if self.is_live(k, s) {
                    return Some((k, s));
                }
            }
        }
        None
    }

    /// Forgets `key` (e.g. its node refused the session).
    pub fn remove(&self, key: u64) -> Option<N> {
        let (_, e) = self.map.remove(&key)?;
        self.forget(&e);
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

    /// Number of clients holding entries.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Entries charged to `client`.
    pub fn client_entries(&self, client: IpAddr) -> usize {
        self.clients.get(&client).map_or(0, |c| c.live)
    }

    fn retain(&self, keep: impl Fn(&Entry<N>) -> bool) -> usize {
        let mut dropped = Vec::new();
        self.map.retain(|_, e| {
            let keep = keep(e);
            if !keep {
                dropped.push((e.shard, e.client));
            }
            keep
        });
        // Outside the map's locks (see the lock order in `insert`).
        for &(shard, client) in &dropped {
            self.forget_parts(shard, client);
        }
        dropped.len()
    }

    fn is_live(&self, key: u64, seq: u64) -> bool {
        self.map.get(&key).is_some_and(|e| e.seq == seq)
    }

    /// Counts a removed entry out of its shard, the table and its client. Call it with no
    /// map lock held.
    fn forget(&self, e: &Entry<N>) {
        self.forget_parts(e.shard, e.client);
    }

    fn forget_parts(&self, shard: usize, client: IpAddr) {
        self.shards[shard].live.fetch_sub(1, Ordering::Relaxed);
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.uncharge(client);
    }

    fn uncharge(&self, client: IpAddr) {
        self.clients.remove_if_mut(&client, |_, c| {
            c.live = c.live.saturating_sub(1);
            c.live == 0 && c.pending == 0
        });
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
            if let Some((_, e)) = evicted {
                self.forget(&e);
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

    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn table(ttl_s: u64, max: usize) -> StickyTable<u32> {
        StickyTable::with_salt(Duration::from_secs(ttl_s), max, usize::MAX, 0x1234).unwrap()
    }

    #[test]
    fn zero_capacity_is_an_error() {
        let e = StickyTable::<u32>::new(Duration::from_secs(1), 0, 1).unwrap_err();
        assert_eq!(e, RoutingError::ZeroCapacity { got: 0 });
        assert!(e.to_string().contains("got 0"));
    }

    #[test]
    fn get_returns_learned_node_and_refreshes() {
        let t0 = Instant::now();
        let t = table(10, 100);
        t.insert(1, 7, C, t0);
        assert_eq!(t.get(1, t0 + Duration::from_secs(9)), Some(7));
        // Each hit refreshes: seen at 9 s, alive at 18 s; seen at 18 s, gone at 28 s.
        assert_eq!(t.get(1, t0 + Duration::from_secs(18)), Some(7));
        assert_eq!(t.get(1, t0 + Duration::from_secs(28)), None);
        assert_eq!(t.get(2, t0), None);
        t.insert(1, 8, C, t0 + Duration::from_secs(30));
        assert_eq!(t.get(1, t0 + Duration::from_secs(30)), Some(8));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn ttl_expiry_and_sweep() {
        let t0 = Instant::now();
        let t = table(10, 10_000);
        for k in 0..1000u64 {
            t.insert(k, (k % 5) as u32, C, t0 + Duration::from_millis(k));
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
            t.insert(super::super::key_hash(&k.to_le_bytes()), k as u32, C, t0);
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
        t.insert(1, 1, C, t0);
        t.insert(2, 2, C, t0 + Duration::from_secs(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(1, t0), None);
        assert_eq!(t.get(2, t0 + Duration::from_secs(1)), Some(2));

        let t = table(10, 4);
        assert_eq!(t.shards.len(), 2);
        let t = StickyTable::<u32>::with_salt(Duration::from_secs(10), 3, usize::MAX, 0).unwrap();
        assert_eq!(t.shards.len(), 1);
        t.insert(1, 1, C, t0);
        t.insert(2, 2, C, t0);
        t.insert(3, 3, C, t0);
        // Key 1 is seen again: key 2 is now the least recently seen.
        assert_eq!(t.get(1, t0 + Duration::from_secs(1)), Some(1));
        t.insert(4, 4, C, t0 + Duration::from_secs(2));
        assert_eq!(t.get(2, t0 + Duration::from_secs(2)), None);
        assert_eq!(t.get(1, t0 + Duration::from_secs(2)), Some(1));
        // Key 3, never seen again, has expired by 11 s: it goes, keys 1 and 4 stay.
        assert_eq!(t.get(1, t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(t.get(4, t0 + Duration::from_secs(9)), Some(4));
        t.insert(5, 5, C, t0 + Duration::from_secs(11));
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
            StickyTable::with_salt(Duration::from_secs(60), 1000, usize::MAX, 9).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = ("chat-a".into(), "chat-b".into());
        for k in 0..300u64 {
            t.insert(k, if k % 3 == 0 { a.clone() } else { b.clone() }, C, t0);
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
            t.insert(k, a.clone(), C, t0);
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
                t.insert(k, round as u32, C, now);
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
                        t.insert(key, w as u32, C, t0);
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

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// One eviction shard, so that its FIFO order is the whole table's.
    fn quota_table(ttl_s: u64, max: usize, per_client: usize) -> StickyTable<u32> {
        StickyTable::build(Duration::from_secs(ttl_s), max, per_client, 0x5eed, 1).unwrap()
    }

    #[test]
    fn zero_client_quota_is_an_error() {
        let e = StickyTable::<u32>::new(Duration::from_secs(1), 10, 0).unwrap_err();
        assert_eq!(e, RoutingError::ZeroClientQuota);
        assert!(e.to_string().contains("max_entries_per_client"));
    }

    #[test]
    fn a_client_at_its_quota_replaces_its_own_oldest_entry() {
        let t0 = Instant::now();
        let t = quota_table(60, 1000, 3);
        let hostile = ip(666);
        for h in 0..50u32 {
            assert_eq!(t.insert(u64::from(h), h, ip(h), t0), Learned::Added);
        }
        let mut outcomes = Vec::new();
        for k in 0..10_000u64 {
            let now = t0 + Duration::from_millis(k);
            outcomes.push(t.insert(1_000_000 + k, 7, hostile, now));
        }
        assert_eq!(&outcomes[..3], &[Learned::Added; 3]);
        assert!(outcomes[3..].iter().all(|o| *o == Learned::ReplacedOwn));
        assert_eq!(t.client_entries(hostile), 3);
        assert_eq!(t.len(), 53);
        let now = t0 + Duration::from_secs(11);
        // Its newest three stay, every honest entry stays.
        for k in 9_997..10_000u64 {
            assert_eq!(t.get(1_000_000 + k, now), Some(7));
        }
        assert_eq!(t.get(1_000_000, now), None);
        for h in 0..50u32 {
            assert_eq!(t.get(u64::from(h), now), Some(h), "honest client {h}");
            assert_eq!(t.client_entries(ip(h)), 1);
        }
        // A key the client already holds is refreshed, not charged twice.
        assert_eq!(t.insert(1_009_999, 8, hostile, now), Learned::Refreshed);
        assert_eq!(t.client_entries(hostile), 3);
    }

    #[test]
    fn in_a_full_table_one_client_evicts_at_most_its_quota() {
        let t0 = Instant::now();
        // One shard, full of honest entries, each of its own client.
        let t = quota_table(3600, 64, 4);
        for h in 0..64u32 {
            t.insert(u64::from(h), h, ip(h), t0);
        }
        assert_eq!(t.len(), 64);
        let hostile = ip(666);
        let mut evicted = 0;
        for k in 0..20_000u64 {
            let now = t0 + Duration::from_millis(1 + k);
            match t.insert(1_000_000 + k, 7, hostile, now) {
                Learned::Evicted => evicted += 1,
                Learned::ReplacedOwn => {}
                other => panic!("insert {k}: {other:?}"),
            }
        }
        assert_eq!(evicted, 4);
        assert_eq!(t.len(), 64);
        assert_eq!(t.client_entries(hostile), 4);
        let now = t0 + Duration::from_secs(30);
        let kept = (0..64u32)
            .filter(|&h| t.get(u64::from(h), now).is_some())
            .count();
        assert_eq!(kept, 60);
    }

    #[test]
    fn eviction_under_pressure_takes_the_least_recently_seen() {
        let t0 = Instant::now();
        let t = quota_table(3600, 8, 2);
        for h in 0..8u32 {
            t.insert(u64::from(h), h, ip(h), t0);
        }
        // Clients 0..4 are active; 4..8 went quiet.
        for h in 0..4u32 {
            assert!(t.get(u64::from(h), t0 + Duration::from_secs(1)).is_some());
        }
        // Four newcomers, two keys each: the quiet entries go, the active stay.
        for n in 0..4u32 {
            let now = t0 + Duration::from_secs(2);
            t.insert(100 + u64::from(n), 9, ip(100 + n / 2), now);
        }
        let now = t0 + Duration::from_secs(3);
        for h in 0..4u32 {
            assert_eq!(t.get(u64::from(h), now), Some(h), "active {h}");
        }
        for h in 4..8u32 {
            assert_eq!(t.get(u64::from(h), now), None, "quiet {h}");
            assert_eq!(t.client_entries(ip(h)), 0);
        }
        assert_eq!(t.client_entries(ip(100)), 2);
    }

    #[test]
    fn client_charges_follow_every_removal() {
        let t0 = Instant::now();
        let t: StickyTable<u32> = quota_table(10, 10_000, 5);
        for c in 0..100u32 {
            for k in 0..5u64 {
                t.insert(
                    u64::from(c) * 10 + k,
                    c % 2,
                    ip(c),
                    t0 + Duration::from_secs(k),
                );
            }
        }
        assert_eq!(t.len(), 500);
        assert_eq!(t.clients(), 100);
        assert_eq!(t.remove(0), Some(0));
        assert_eq!(t.client_entries(ip(0)), 4);
        // Node 1 served the odd clients.
        assert_eq!(t.remove_node(&1), 250);
        assert_eq!(t.client_entries(ip(1)), 0);
        assert_eq!(t.clients(), 50);
        // Keys learned at 0..2 s expire by 12.5 s.
        assert_eq!(t.sweep(t0 + Duration::from_millis(12_500)), 149);
        assert_eq!(t.client_entries(ip(2)), 2);
        assert_eq!(t.sweep(t0 + Duration::from_secs(60)), 100);
        assert!(t.is_empty());
        assert_eq!(t.clients(), 0, "no client lingers without entries");
        // A client whose entries were taken back has its whole quota again.
        for k in 0..5u64 {
            assert_eq!(t.insert(900 + k, 0, ip(0), t0), Learned::Added);
        }
        assert_eq!(t.insert(999, 0, ip(0), t0), Learned::ReplacedOwn);
    }

    #[test]
    fn concurrent_clients_keep_exact_counts() {
        let t0 = Instant::now();
        let t = Arc::new(quota_table(60, 2000, 16));
        let handles: Vec<_> = (0..4u32)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for k in 0..20_000u64 {
                        let client = ip(w * 100 + (k % 50) as u32);
                        let key = super::super::key_hash(&(k % 3000).to_le_bytes());
                        t.insert(key, w, client, t0);
                        if k % 7 == 0 {
                            t.remove(key);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(t.len() <= 2000);
        assert_eq!(t.map.len(), t.len());
        let charged: usize = t.clients.iter().map(|c| c.live).sum();
        assert_eq!(charged, t.len());
        assert!(t.clients.iter().all(|c| c.live <= 16 && c.pending == 0));
    }

    #[test]
    fn a_client_cycling_keys_cannot_evict_across_shards() {
        let t0 = Instant::now();
        let t = StickyTable::<u32>::with_salt(Duration::from_secs(3600), 1024, 4, 77).unwrap();
        assert_eq!(t.shards.len(), SHARDS);
        for h in 0..1024u32 {
            t.insert(super::super::key_hash(&h.to_le_bytes()), h, ip(h), t0);
        }
        let honest = |now| {
            (0..1024u32)
                .filter(|&h| {
                    t.get(super::super::key_hash(&h.to_le_bytes()), now)
                        .is_some()
                })
                .count()
        };
        let before = honest(t0);
        assert!(before > 900, "{before}");
        let hostile = ip(1_000_000);
        for k in 0..50_000u64 {
            t.insert(
                k << 32 | 0xdead,
                7,
                hostile,
                t0 + Duration::from_millis(1 + k),
            );
        }
        assert_eq!(t.client_entries(hostile), 4);
        let after = honest(t0 + Duration::from_secs(60));
        assert!(after + 4 >= before, "before {before}, after {after}");
    }

    #[test]
    fn one_client_inserting_from_many_threads_stays_at_its_quota_and_every_replacement_counts() {
        let t0 = Instant::now();
        let t = Arc::new(quota_table(60, 100_000, 8));
        let client = ip(42);
        let handles: Vec<_> = (0..4u64)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..2_000u64)
                        .filter(|k| {
                            let key = super::super::key_hash(&(w << 32 | k).to_le_bytes());
                            t.insert(key, 1, client, t0) == Learned::ReplacedOwn
                        })
                        .count()
                })
            })
            .collect();
        let replaced: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(t.client_entries(client), 8);
        assert_eq!(t.len(), 8);
        assert_eq!(
            replaced,
            4 * 2_000 - 8,
            "every insert past the quota replaced one"
        );
        assert!(t.clients.iter().all(|c| c.pending == 0));
    }
}
