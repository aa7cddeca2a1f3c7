//! Who holds which slots on one node's schedule, so that no client can book it for others.
//!
//! A client (an owner: a hash of its address, /64 for IPv6) holds a slot from the moment it
//! is rejected with one until it claims it, or until the slot's grace has passed (then the
//! token is a public credit and belongs to nobody). The node caps how many slots one owner
//! may hold at once. Past the cap, an owner's requests are given places in a queue of its
//! own, after its slots and one emission interval apart, that book nothing: asking again
//! pushes back only the asker, and many honest clients behind one address (a NAT, a load
//! generator) come back one interval apart, as if each had a slot, and book one then.
//! Owned by one node's mutex; bounded by the schedule itself (every slot entry is a booked
//! slot, and an owner's own queue ends at most `max_retry_after` ahead).

use std::collections::HashMap;

use super::clock::{Nanos, NANOS_PER_SEC};

/// What one owner holds.
#[derive(Debug, Default)]
struct Held {
    /// (slot, held until, is a promise, booked at): at most the cap.
    slots: Vec<(Nanos, Nanos, bool, Nanos)>,
    /// The last place handed out in its own queue (0: none).
    queue_end: Nanos,
}

#[derive(Debug, Default)]
pub(crate) struct Owners {
    held: HashMap<u64, Held>,
    next_sweep: Nanos,
}

impl Owners {
    /// The owner's slots still held at `now` (dropping those past their grace).
    fn live(&mut self, owner: u64, now: Nanos) -> Option<&mut Held> {
        let held = self.held.get_mut(&owner)?;
        held.slots.retain(|&(_, until, ..)| until >= now);
        Some(held)
    }

    /// How many slots `owner` holds at `now`.
    pub(crate) fn count(&mut self, owner: u64, now: Nanos) -> usize {
        self.live(owner, now).map_or(0, |h| h.slots.len())
    }

    /// The next place in `owner`'s own queue, one `t` after the later of its last place
    /// and its latest slot (never before `now + t`), or `None` if that lies beyond
    /// `horizon`. Books nothing on the schedule.
    pub(crate) fn queue_place(
        &mut self,
        owner: u64,
        now: Nanos,
        t: Nanos,
        horizon: Nanos,
    ) -> Option<Nanos> {
        let held = self.held.entry(owner).or_default();
        held.slots.retain(|&(_, until, ..)| until >= now);
        let latest = held.slots.iter().map(|&(s, ..)| s).max().unwrap_or(now);
        let place = held.queue_end.max(latest).max(now).saturating_add(t);
        if place.saturating_sub(now) > horizon {
            return None;
        }
        held.queue_end = place;
        Some(place)
    }

    /// The earliest promise `owner` holds that is due at `now` (its slot minus `early`
    /// has come), if any. Reservations are claimed by their ticket instead.
    pub(crate) fn due_promise(&mut self, owner: u64, now: Nanos, early: Nanos) -> Option<Nanos> {
        self.live(owner, now)?
            .slots
            .iter()
            .filter(|&&(s, _, promise, _)| promise && s.saturating_sub(early) <= now)
            .map(|&(s, ..)| s)
            .min()
    }

    /// The earliest promise `owner` holds at `now`, due or not, booked at least `after`
    /// ago (a client sent away with a whole-second hint is not back before a second has
    /// passed: an arrival sooner is another client behind the same address, which must
    /// not take this one's slot).
    pub(crate) fn earliest_promise(
        &mut self,
        owner: u64,
        now: Nanos,
        after: Nanos,
    ) -> Option<Nanos> {
        self.live(owner, now)?
            .slots
            .iter()
            .filter(|&&(_, _, promise, booked)| promise && booked.saturating_add(after) <= now)
            .map(|&(s, ..)| s)
            .min()
    }

    /// `owner` now holds `slot` until `until`, booked at `booked`; `promise`: a promise,
    /// else a reservation.
    pub(crate) fn add(
        &mut self,
        owner: u64,
        slot: Nanos,
        until: Nanos,
        promise: bool,
        booked: Nanos,
    ) {
        self.held
            .entry(owner)
            .or_default()
            .slots
            .push((slot, until, promise, booked));
    }

    /// `owner` is being held until `slot` (it came back early for its promise): the slot
    /// is no longer a promise it can claim, but it counts against its cap until then.
    pub(crate) fn hold(&mut self, owner: u64, slot: Nanos) {
        if let Some(h) = self.held.get_mut(&owner) {
            if let Some(e) = h.slots.iter_mut().find(|e| e.0 == slot && e.2) {
                *e = (slot, slot, false, e.3);
            }
        }
    }

    /// `owner` gave `slot` up (claimed it).
    pub(crate) fn remove(&mut self, owner: u64, slot: Nanos) {
        if let Some(h) = self.held.get_mut(&owner) {
            if let Some(i) = h.slots.iter().position(|&(s, ..)| s == slot) {
                h.slots.swap_remove(i);
            }
        }
    }

    /// Forgets owners whose slots have all passed their grace and whose own queue is
    /// behind them; at most once a second, so the admit path stays O(1) amortised.
    pub(crate) fn sweep(&mut self, now: Nanos) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(NANOS_PER_SEC);
        self.held.retain(|_, h| {
            h.slots.retain(|&(_, until, ..)| until >= now);
            !h.slots.is_empty() || h.queue_end >= now
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
        o.add(7, 100, 150, true, 0);
        o.add(7, 200, 250, true, 0);
        o.add(7, 95, 140, false, 0);
        o.add(8, 120, 170, true, 0);
        assert_eq!(o.count(7, 0), 3);
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

    #[test]
    fn the_own_queue_follows_the_slots_one_interval_apart_up_to_the_horizon() {
        let mut o = Owners::default();
        o.add(7, 500, 10_000, true, 0);
        assert_eq!(o.queue_place(7, 0, 10, 1_000), Some(510));
        assert_eq!(o.queue_place(7, 0, 10, 1_000), Some(520));
        assert_eq!(o.queue_place(7, 990, 10, 1_000), Some(1_000));
        assert_eq!(o.queue_place(7, 0, 10, 1_000), None, "beyond the horizon");
        // Another owner's queue starts from its own slots.
        assert_eq!(o.queue_place(8, 0, 10, 1_000), Some(10));
    }
}
