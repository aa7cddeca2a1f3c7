//! Who holds which slots on one node's schedule, so that no client can book it for others.
//!
//! A client (an owner: a hash of its address, /64 for IPv6) holds a slot from the moment it
//! is rejected with one until it claims it, or until the slot's grace has passed (then the
//! token is a public credit and belongs to nobody). The node caps how many slots one owner
//! may hold at once; an owner at its cap is told one of its slots again (its latest)
//! instead of taking a new one. Owned by one node's mutex; bounded by the schedule itself (every entry is a
//! booked slot, and booked slots end at most `max_retry_after + claim_window` ahead).

use std::collections::HashMap;

use super::clock::{Nanos, NANOS_PER_SEC};

/// The slots one owner holds: (slot, held until, is a promise). A few at most (the cap).
type Held = Vec<(Nanos, Nanos, bool)>;

#[derive(Debug, Default)]
pub(crate) struct Owners {
    held: HashMap<u64, Held>,
    next_sweep: Nanos,
}

impl Owners {
    /// The owner's slots still held at `now` (dropping those past their grace).
    fn live(&mut self, owner: u64, now: Nanos) -> Option<&mut Held> {
        let held = self.held.get_mut(&owner)?;
        held.retain(|&(_, until, _)| until >= now);
        Some(held)
    }

    /// How many slots `owner` holds at `now`.
    pub(crate) fn count(&mut self, owner: u64, now: Nanos) -> usize {
        self.live(owner, now).map_or(0, |h| h.len())
    }

    /// The latest slot `owner` holds at `now`.
    pub(crate) fn latest(&mut self, owner: u64, now: Nanos) -> Option<Nanos> {
        self.live(owner, now)?.iter().map(|&(s, ..)| s).max()
    }

    /// The earliest promise `owner` holds that is due at `now` (its slot minus `early`
    /// has come), if any. Reservations are claimed by their ticket instead.
    pub(crate) fn due_promise(&mut self, owner: u64, now: Nanos, early: Nanos) -> Option<Nanos> {
        self.live(owner, now)?
            .iter()
            .filter(|&&(s, _, promise)| promise && s.saturating_sub(early) <= now)
            .map(|&(s, ..)| s)
            .min()
    }

    /// `owner` now holds `slot` until `until`; `promise`: a promise, else a reservation.
    pub(crate) fn add(&mut self, owner: u64, slot: Nanos, until: Nanos, promise: bool) {
        self.held
            .entry(owner)
            .or_default()
            .push((slot, until, promise));
    }

    /// `owner` gave `slot` up (claimed it).
    pub(crate) fn remove(&mut self, owner: u64, slot: Nanos) {
        if let Some(h) = self.held.get_mut(&owner) {
            if let Some(i) = h.iter().position(|&(s, ..)| s == slot) {
                h.swap_remove(i);
            }
            if h.is_empty() {
                self.held.remove(&owner);
            }
        }
    }

    /// Forgets owners whose slots have all passed their grace; at most once a second, so the
    /// admit path stays O(1) amortised.
    pub(crate) fn sweep(&mut self, now: Nanos) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(NANOS_PER_SEC);
        self.held.retain(|_, h| {
            h.retain(|&(_, until, _)| until >= now);
            !h.is_empty()
        });
        if self.held.capacity() > 64 && self.held.len() < self.held.capacity() / 4 {
            self.held.shrink_to_fit();
        }
    }

    /// Owners tracked.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_grace_then_forgets() {
        let mut o = Owners::default();
        o.add(7, 100, 150, true);
        o.add(7, 200, 250, true);
        o.add(7, 95, 140, false);
        o.add(8, 120, 170, true);
        assert_eq!(o.count(7, 0), 3);
        assert_eq!(o.latest(7, 0), Some(200));
        assert_eq!(
            o.due_promise(7, 90, 10),
            Some(100),
            "reservations are not promises"
        );
        assert_eq!(o.due_promise(7, 89, 10), None);
        o.remove(7, 95);
        o.remove(7, 100);
        assert_eq!(o.count(7, 0), 1);
        assert_eq!(o.count(7, 251), 0, "past its grace");
        o.sweep(2 * NANOS_PER_SEC);
        assert_eq!(o.len(), 0);
    }
}
