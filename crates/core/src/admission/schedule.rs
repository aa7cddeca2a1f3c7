//! The bounded bookkeeping behind a node's retry schedule: promise credits, the ledger of
//! reservations this node signed tickets for, and the replay guard for tickets reserved by
//! other instances. Everything here is owned by one node's mutex; nothing is shared.

use std::collections::{HashMap, VecDeque};

use super::clock::{Nanos, NANOS_PER_MILLI};

/// A storm that has passed should give its memory back; the hysteresis keeps this rare.
fn shrink_if_sparse<T>(q: &mut VecDeque<T>) {
    if q.capacity() > 1024 && q.len() < q.capacity() / 8 {
        q.shrink_to(q.len() * 2);
    }
}

/// Promise credits: tokens charged for ticketless clients, claimable from their slot on.
///
/// A promise made to a known client (its owner) is its owner's alone until `public_at`
/// (its slot plus a grace that covers the hint's jitter and the whole-second rounding of
/// `Retry-After`); after that, or at once for an anonymous promise, a refund or a
/// reservation nobody came for, it is a public credit that any arrival at or after its
/// slot may take. Both queues are kept sorted by slot. Slots come from the GCRA schedule,
/// which only moves forward, so pushes append; refunds and releases may insert.
#[derive(Debug, Default)]
pub(crate) struct PromiseQueue {
    /// Owned promises: (slot, owner, public_at, taken), sorted by slot; `public_at` is
    /// non-decreasing too (one grace per queue, applied at push).
    owned: VecDeque<(Nanos, u64, Nanos, bool)>,
    /// Public credits, by slot.
    public: VecDeque<Nanos>,
}

impl PromiseQueue {
    /// A promise anyone may claim from `slot` on.
    pub(crate) fn push(&mut self, slot: Nanos) {
        insert_sorted(&mut self.public, slot);
    }

    /// A promise only `owner` may claim until `public_at`.
    pub(crate) fn push_owned(&mut self, slot: Nanos, owner: u64, public_at: Nanos) {
        match self.owned.back() {
            Some(&(last, ..)) if last > slot => {
                let at = self.owned.partition_point(|e| e.0 <= slot);
                self.owned.insert(at, (slot, owner, public_at, false));
            }
            _ => self.owned.push_back((slot, owner, public_at, false)),
        }
    }

    /// `owner` takes its own promise at `slot` (which it holds: the caller checked the time).
    pub(crate) fn claim_owned(&mut self, slot: Nanos, owner: u64) -> bool {
        let from = self.owned.partition_point(|e| e.0 < slot);
        for e in self.owned.range_mut(from..) {
            if e.0 != slot {
                break;
            }
            if e.1 == owner && !e.3 {
                e.3 = true;
                return true;
            }
        }
        false
    }

    /// The slot of the oldest public credit, due or not.
    pub(crate) fn first_public(&self) -> Option<Nanos> {
        self.public.front().copied()
    }

    /// Takes the oldest public credit whose slot has come.
    pub(crate) fn claim(&mut self, now: Nanos) -> bool {
        match self.public.front() {
            Some(&slot) if slot <= now => {
                self.public.pop_front();
                true
            }
            _ => false,
        }
    }

    /// Owned promises whose grace has passed become public; credits whose claim window has
    /// passed are dropped. Returns how many were dropped unclaimed (lost capacity).
    pub(crate) fn expire(&mut self, now: Nanos, claim_window: Nanos) -> u64 {
        while let Some(&(slot, _, public_at, taken)) = self.owned.front() {
            if !taken && public_at > now {
                break;
            }
            self.owned.pop_front();
            if !taken {
                insert_sorted(&mut self.public, slot);
            }
        }
        let mut n = 0;
        while let Some(&slot) = self.public.front() {
            if slot.saturating_add(claim_window) >= now {
                break;
            }
            self.public.pop_front();
            n += 1;
        }
        shrink_if_sparse(&mut self.public);
        shrink_if_sparse(&mut self.owned);
        n
    }

    /// Live promises, owned (not yet taken) and public.
    pub(crate) fn len(&self) -> usize {
        self.public.len() + self.owned.iter().filter(|e| !e.3).count()
    }
}

fn insert_sorted(q: &mut VecDeque<Nanos>, slot: Nanos) {
    match q.back() {
        Some(&last) if last > slot => {
            let at = q.partition_point(|&s| s <= slot);
            q.insert(at, slot);
        }
        _ => q.push_back(slot),
    }
}

/// Outcome of presenting one of this node's own tickets to its ledger.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LedgerClaim {
    /// First claim of a live reservation.
    Claimed,
    /// Already claimed.
    Reused,
    /// Below the window, or the slot does not match what we recorded: not ours any more.
    Gone,
    /// Not claimed within its grace: the token was released as a public credit.
    Released,
    /// A sequence number this ledger never issued (an earlier process with the same instance
    /// id, or a rebuilt node state): nobody here paid for it.
    Unknown,
}

/// Reservations this node signed tickets for, by sequence number: a sliding anti-replay
/// window in the spirit of IPsec's (RFC 4303 §3.4.3), except that the window holds the issued
/// sequence numbers themselves, so it also tells which reservations went unclaimed.
///
/// Seqs are issued consecutively and their slots are non-decreasing, so the live reservations
/// are exactly the range `[front_seq, front_seq + len)` and expire from the front. The ticket
/// carries the low 32 bits; the full 64-bit seq is recovered relative to the next seq, which
/// is unambiguous while the window stays far below 2^31.
#[derive(Debug)]
pub(crate) struct ReservationLedger {
    front_seq: u64,
    /// (slot, state) per live reservation, indexed by seq - front_seq.
    entries: VecDeque<(Nanos, Held)>,
    /// Entries before this index are claimed or released (slots are non-decreasing).
    released_to: usize,
    cap: usize,
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Waiting for its ticket.
    Live,
    /// Its ticket claimed it.
    Claimed,
    /// Given up as a public credit after its grace.
    Released,
}

impl ReservationLedger {
    pub(crate) fn new(first_seq: u64, cap: usize) -> Self {
        Self {
            front_seq: first_seq,
            entries: VecDeque::new(),
            released_to: 0,
            cap,
        }
    }

    fn next_seq(&self) -> u64 {
        self.front_seq + self.entries.len() as u64
    }

    /// Records a reservation; `None` when the window is full (the caller falls back to a
    /// promise rather than issue a ticket it could not check).
    pub(crate) fn reserve(&mut self, slot: Nanos) -> Option<u64> {
        if self.entries.len() >= self.cap {
            return None;
        }
        let seq = self.next_seq();
        self.entries.push_back((slot, Held::Live));
        Some(seq)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.cap
    }

    pub(crate) fn claim(&mut self, seq32: u32, slot_ms: u64) -> LedgerClaim {
        let next = self.next_seq();
        // Distance back from `next`, modulo 2^32: 1..=len means live or recent.
        let back = (next as u32).wrapping_sub(seq32);
        if back == 0 || back > 1 << 31 {
            return LedgerClaim::Unknown;
        }
        let Some(seq) = next.checked_sub(u64::from(back)) else {
            return LedgerClaim::Unknown;
        };
        let Some(idx) = seq.checked_sub(self.front_seq) else {
            return LedgerClaim::Gone;
        };
        match usize::try_from(idx)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        {
            Some((slot, held)) if *slot / NANOS_PER_MILLI == slot_ms => match *held {
                Held::Claimed => LedgerClaim::Reused,
                Held::Released => LedgerClaim::Released,
                Held::Live => {
                    *held = Held::Claimed;
                    LedgerClaim::Claimed
                }
            },
            _ => LedgerClaim::Gone,
        }
    }

    /// Releases the reservations still unclaimed `grace` after their slot: each one's slot
    /// is handed to `release` (to become a public credit).
    pub(crate) fn release(&mut self, now: Nanos, grace: Nanos, mut release: impl FnMut(Nanos)) {
        while let Some((slot, held)) = self.entries.get_mut(self.released_to) {
            if slot.saturating_add(grace) >= now {
                break;
            }
            if *held == Held::Live {
                *held = Held::Released;
                release(*slot);
            }
            self.released_to += 1;
        }
    }

    /// Drops reservations past their claim window; returns how many were never claimed
    /// (released ones are counted as promises, where their token went).
    pub(crate) fn expire(&mut self, now: Nanos, claim_window: Nanos) -> u64 {
        let mut unclaimed = 0;
        while let Some(&(slot, held)) = self.entries.front() {
            if slot.saturating_add(claim_window) >= now {
                break;
            }
            self.entries.pop_front();
            self.front_seq += 1;
            self.released_to = self.released_to.saturating_sub(1);
            unclaimed += u64::from(held == Held::Live);
        }
        shrink_if_sparse(&mut self.entries);
        unclaimed
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Tickets reserved by other instances (same key) and already honoured here, kept until their
/// claim window closes. Bounded: when full the oldest entry is forgotten. That opens at most a
/// replay of an old foreign ticket, and a foreign ticket is charged to the bucket when claimed,
/// so a replay can jump the schedule but cannot mint capacity.
#[derive(Debug)]
pub(crate) struct ForeignClaims {
    expiry: HashMap<(u32, u32), Nanos>,
    order: VecDeque<(u32, u32)>,
    cap: usize,
}

impl ForeignClaims {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            expiry: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Records the first claim of (instance, seq); false if it was claimed before.
    pub(crate) fn insert(&mut self, instance: u32, seq: u32, expires: Nanos) -> bool {
        if self.expiry.contains_key(&(instance, seq)) {
            return false;
        }
        while self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.expiry.remove(&old);
            }
        }
        self.expiry.insert((instance, seq), expires);
        self.order.push_back((instance, seq));
        true
    }

    /// Forgets entries whose window has closed, oldest first (insertion order is close to
    /// expiry order; a straggler only lingers until the ones before it expire).
    pub(crate) fn prune(&mut self, now: Nanos) {
        while let Some(key) = self.order.front() {
            match self.expiry.get(key) {
                Some(&exp) if exp >= now => break,
                _ => {
                    if let Some(key) = self.order.pop_front() {
                        self.expiry.remove(&key);
                    }
                }
            }
        }
        // A storm that has passed should give its memory back.
        if self.expiry.capacity() > 64 && self.expiry.len() < self.expiry.capacity() / 4 {
            self.expiry.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_stay_sorted_claim_when_due_and_expire() {
        let mut q = PromiseQueue::default();
        for s in [10, 20, 30] {
            q.push(s);
        }
        q.push(15);
        assert!(!q.claim(9));
        assert!(q.claim(10));
        assert!(q.claim(100));
        assert_eq!(q.public, [20, 30]);
        assert_eq!(q.expire(26, 5), 1);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn ledger_claims_once_and_counts_no_shows() {
        let first = u64::from(u32::MAX) - 1; // straddles the 32-bit wrap
        let mut l = ReservationLedger::new(first, 4);
        let ms = NANOS_PER_MILLI;
        let seqs: Vec<u64> = (1..=4).map(|i| l.reserve(i * ms).unwrap()).collect();
        assert_eq!(l.reserve(5 * ms), None, "full");
        assert_eq!(l.claim(seqs[1] as u32, 2), LedgerClaim::Claimed);
        assert_eq!(l.claim(seqs[1] as u32, 2), LedgerClaim::Reused);
        assert_eq!(
            l.claim(seqs[2] as u32, 99),
            LedgerClaim::Gone,
            "slot mismatch"
        );
        assert_eq!(l.claim((seqs[3] + 1) as u32, 5), LedgerClaim::Unknown);
        // Expire seqs 0 and 1 (slot 1 ms, 2 ms): one was never claimed.
        assert_eq!(l.expire(2 * ms + 1, 0), 1);
        assert_eq!(l.claim(seqs[0] as u32, 1), LedgerClaim::Gone);
        assert_eq!(l.claim(seqs[3] as u32, 4), LedgerClaim::Claimed);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn foreign_claims_are_bounded() {
        let mut f = ForeignClaims::new(3);
        assert!(f.insert(1, 1, 10));
        assert!(!f.insert(1, 1, 10));
        for s in 2..10 {
            assert!(f.insert(1, s, 10 + u64::from(s)));
        }
        assert_eq!(f.len(), 3);
        // Left: seqs 7, 8, 9 expiring at 17, 18, 19.
        f.prune(18);
        assert_eq!(f.len(), 2);
        assert!(f.insert(1, 7, 30), "forgotten once expired");
    }
}
