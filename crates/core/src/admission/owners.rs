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

use std::collections::{HashMap, VecDeque};

use super::clock::{Nanos, NANOS_PER_SEC};

/// One slot an owner holds.
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: Nanos,
    /// Held until then (its grace), then forgotten.
    until: Nanos,
    /// A promise it may claim (else a reservation, claimed by ticket, or a slot it is
    /// being held for).
    promise: bool,
    /// When it was booked.
    booked: Nanos,
}

/// What one owner holds.
#[derive(Debug, Default)]
struct Held {
    /// Its slots, sorted by slot: at most the cap. Every lookup starts at the front and
    /// stops at the first match or past its horizon, so many clients behind one address
    /// holding thousands of slots (a cap raised for a load generator) cost O(1) per
    /// decision, not a scan.
    slots: VecDeque<Entry>,
    /// The last place handed out in its own queue (0: none).
    queue_end: Nanos,
}

impl Held {
    /// Drops the slots at the front whose grace has passed. (One behind a later slot
    /// that outlives it waits for [`Owners::sweep`], at most a second.)
    fn prune(&mut self, now: Nanos) {
        while self.slots.front().is_some_and(|e| e.until < now) {
            self.slots.pop_front();
        }
    }

    fn position(&self, slot: Nanos) -> Option<usize> {
        let i = self.slots.partition_point(|e| e.slot < slot);
        (i < self.slots.len() && self.slots[i].slot == slot).then_some(i)
    }
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
        held.prune(now);
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
        held.prune(now);
        let latest = held.slots.back().map_or(now, |e| e.slot);
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
            .take_while(|e| e.slot.saturating_sub(early) <= now)
            .find(|e| e.promise && e.until >= now)
            .map(|e| e.slot)
    }

    /// The earliest promise `owner` holds with its slot at most `horizon` ahead of `now`,
    /// booked at least `after` ago (a client sent away with a whole-second hint is not
    /// back before a second has passed: an arrival sooner is another client behind the
    /// same address, which must not take this one's slot).
    pub(crate) fn earliest_promise(
        &mut self,
        owner: u64,
        now: Nanos,
        after: Nanos,
        horizon: Nanos,
    ) -> Option<Nanos> {
        self.live(owner, now)?
            .slots
            .iter()
            .take_while(|e| e.slot <= now.saturating_add(horizon))
            .find(|e| e.promise && e.until >= now && e.booked.saturating_add(after) <= now)
            .map(|e| e.slot)
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
        let slots = &mut self.held.entry(owner).or_default().slots;
        let e = Entry {
            slot,
            until,
            promise,
            booked,
        };
        // Slots come from a schedule that moves forward: almost always an append.
        match slots.back() {
            Some(last) if last.slot > slot => {
                let i = slots.partition_point(|x| x.slot <= slot);
                slots.insert(i, e);
            }
            _ => slots.push_back(e),
        }
    }

    /// `owner` is being held until `slot` (it came back early for its promise): the slot
    /// is no longer a promise it can claim, but it counts against its cap until then.
    pub(crate) fn hold(&mut self, owner: u64, slot: Nanos) {
        if let Some(h) = self.held.get_mut(&owner) {
            if let Some(i) = h.position(slot) {
                let e = &mut h.slots[i];
                if e.promise {
                    e.promise = false;
                    e.until = slot;
                }
            }
        }
    }

    /// `owner` gave `slot` up (claimed it).
    pub(crate) fn remove(&mut self, owner: u64, slot: Nanos) {
        if let Some(h) = self.held.get_mut(&owner) {
            if let Some(i) = h.position(slot) {
                h.slots.remove(i);
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
            h.slots.retain(|e| e.until >= now);
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

    #[test]
    fn many_slots_behind_one_address_are_found_from_the_front() {
        let mut o = Owners::default();
        // 10,000 promises one unit apart, booked at 0; a reservation at 5.
        for k in 0..10_000u64 {
            o.add(7, 10 + k, 10 + k + 1_000_000, true, 0);
        }
        o.add(7, 5, 1_000_000, false, 0);
        assert_eq!(o.count(7, 0), 10_001);
        assert_eq!(
            o.due_promise(7, 9, 1),
            Some(10),
            "the reservation is skipped"
        );
        assert_eq!(o.due_promise(7, 8, 1), None);
        // Booked long enough ago, within the horizon: the earliest.
        assert_eq!(o.earliest_promise(7, 2, 1, 100), Some(10));
        assert_eq!(
            o.earliest_promise(7, 2, 5, 100),
            None,
            "booked too recently"
        );
        assert_eq!(o.earliest_promise(7, 2, 1, 5), None, "beyond the horizon");
        // Held, removed: the next one.
        o.hold(7, 10);
        o.remove(7, 11);
        assert_eq!(o.due_promise(7, 20, 0), Some(12));
        assert_eq!(o.count(7, 0), 10_000);
        // The held slot is forgotten once its slot has passed (at the front; behind a
        // slot that outlives it, at the next sweep).
        o.remove(7, 5);
        assert_eq!(o.count(7, 11), 9_998);
    }
}
