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
/// Kept sorted by slot. Slots come from the GCRA schedule, which only moves forward, so pushes
/// append; only refunds of queued requests may insert in the middle.
#[derive(Debug, Default)]
pub(crate) struct PromiseQueue {
    slots: VecDeque<Nanos>,
}

impl PromiseQueue {
    pub(crate) fn push(&mut self, slot: Nanos) {
        match self.slots.back() {
            Some(&last) if last > slot => {
                let at = self.slots.partition_point(|&s| s <= slot);
                self.slots.insert(at, slot);
            }
            _ => self.slots.push_back(slot),
        }
    }

    /// Takes the oldest credit whose slot has come.
    pub(crate) fn claim(&mut self, now: Nanos) -> bool {
        match self.slots.front() {
            Some(&slot) if slot <= now => {
                self.slots.pop_front();
                true
            }
            _ => false,
        }
    }

    /// Drops credits whose claim window has passed; returns how many (lost capacity).
    pub(crate) fn expire(&mut self, now: Nanos, claim_window: Nanos) -> u64 {
        let mut n = 0;
        while let Some(&slot) = self.slots.front() {
            if slot.saturating_add(claim_window) >= now {
                break;
            }
            self.slots.pop_front();
            n += 1;
        }
        shrink_if_sparse(&mut self.slots);
        n
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
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
    /// (slot, claimed) per live reservation, indexed by seq - front_seq.
    entries: VecDeque<(Nanos, bool)>,
    cap: usize,
}

impl ReservationLedger {
    pub(crate) fn new(first_seq: u64, cap: usize) -> Self {
        Self {
            front_seq: first_seq,
            entries: VecDeque::new(),
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
        self.entries.push_back((slot, false));
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
            Some((slot, claimed)) if *slot / NANOS_PER_MILLI == slot_ms => {
                if *claimed {
                    LedgerClaim::Reused
                } else {
                    *claimed = true;
                    LedgerClaim::Claimed
                }
            }
            _ => LedgerClaim::Gone,
        }
    }

    /// Drops reservations past their claim window; returns how many were never claimed.
    pub(crate) fn expire(&mut self, now: Nanos, claim_window: Nanos) -> u64 {
        let mut unclaimed = 0;
        while let Some(&(slot, claimed)) = self.entries.front() {
            if slot.saturating_add(claim_window) >= now {
                break;
            }
            self.entries.pop_front();
            self.front_seq += 1;
            unclaimed += u64::from(!claimed);
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
        assert_eq!(q.slots, [20, 30]);
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
