//! What routing reads of a node without its lock (the outlook, published whenever the
//! lock is released), and the release of held requests through the pacer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::MutexGuard;

use super::super::clock::{duration_to_nanos, Nanos};
use super::super::lanes::{Gate, State};
use super::{NodeAdmission, EARLY_HOLD, EARLY_HOLD_AFTER, TICKET_EARLY_TOLERANCE};

/// What routing reads of a node without taking its lock, refreshed on every unlock.
#[derive(Debug, Default)]
pub(super) struct Outlook {
    /// The earliest instant a client holding no slot could be admitted.
    free_at: AtomicU64,
    /// Clients holding slots (0: no need to ask who holds what).
    owners: AtomicUsize,
    /// The rate in force (f64 bits), for routing's load per unit of rate.
    rate: AtomicU64,
}

/// The state under its lock; publishes the [`Outlook`] when released.
pub(super) struct Locked<'a> {
    pub(super) guard: MutexGuard<'a, State>,
    pub(super) outlook: &'a Outlook,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let st = &*self.guard;
        let bucket = st.tat.saturating_sub(st.base.tau_main);
        let free = st.promises.first_public().map_or(bucket, |p| p.min(bucket));
        self.outlook.free_at.store(free, Ordering::Relaxed);
        self.outlook
            .owners
            .store(st.owners.len(), Ordering::Relaxed);
        self.outlook
            .rate
            .store(st.params.rate.to_bits(), Ordering::Relaxed);
    }
}

impl NodeAdmission {
    /// The earliest instant (on the admission clock) this node could admit a client that
    /// holds no slot: now or earlier when a token or a public credit is free, else when the
    /// schedule's next token comes. Lock-free (as of the last decision); routing compares
    /// nodes by it.
    pub fn free_at(&self) -> Nanos {
        self.outlook.free_at.load(Ordering::Relaxed)
    }

    /// The configured rate (admissions per second), lock-free.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.outlook.rate.load(Ordering::Relaxed))
    }

    /// The slot of the earliest promise `owner` could take here at `now` (due, or held
    /// for it: see [`NodeAdmission::check`], step b), if any. Lock-free `None` when nobody
    /// holds anything here. Only a claimable promise steers routing: many clients behind
    /// one address would otherwise all follow that address's earliest promise to one node.
    pub fn owner_promise(&self, owner: u64, now: Nanos) -> Option<Nanos> {
        if self.outlook.owners.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut st = self.lock();
        let early = st
            .shape(now)
            .t
            .max(duration_to_nanos(TICKET_EARLY_TOLERANCE));
        if let Some(slot) = st.owners.due_promise(owner, now, early) {
            return Some(slot);
        }
        let after = duration_to_nanos(EARLY_HOLD_AFTER);
        st.owners
            .earliest_promise(owner, now, after, duration_to_nanos(EARLY_HOLD))
    }

    /// A held request ([`Decision::Queue`](super::super::decision::Decision::Queue)) woke at `now`: `Ok` to forward it, or
    /// `Err(turn)` to wait until then and ask again with that turn. `turn`: the turn it was
    /// given before (an earlier `Err`, or a `Queue` with `turn: true`); `None` the first
    /// time. Turns are served in order, and newcomers wait behind a turn still ahead.
    ///
    /// Every forward is counted on a GCRA over the instants requests actually go (same
    /// rate and burst as the node): a held request goes only if that bound allows it now.
    /// Held requests woken on time were spaced by their decisions and go at once; a bunch
    /// woken late together (a stalled runtime, a loaded machine) goes out at the rate,
    /// never as a burst, and no booked instant is wasted: forwards stay within
    /// `rate * W + burst` in any window `W`.
    pub fn release(&self, now: Nanos, turn: Option<Nanos>) -> Result<(), Nanos> {
        self.pass(now, turn, |st| (&mut st.released, &mut st.stats.repaced))
    }

    /// The head of an admitted request is about to be written to the node at `now`: `Ok`
    /// to write it, or `Err(turn)` to wait until then and ask again with that turn.
    ///
    /// The node's work begins when the request reaches it, and the request follows the
    /// admission by a connect: the connect is made at once, but the write waits for the
    /// runtime to see the connect complete, and a busy runtime sees a bunch of them in
    /// one turn (over 310 requests in a 1 s window at 300/s + 10 in the storm bench, by
    /// the node's kernel receive stamps, with every decision paced). So the writes are
    /// paced too, by a third GCRA with the same shape: a bunch goes out at the rate, each
    /// held-back write at a turn of its own, in order.
    pub fn pace_write(&self, now: Nanos, turn: Option<Nanos>) -> Result<(), Nanos> {
        self.pass(now, turn, |st| (&mut st.written, &mut st.stats.write_paced))
    }

    /// One event at the gate `which` picks (with the counter of its waits).
    fn pass(
        &self,
        now: Nanos,
        turn: Option<Nanos>,
        which: impl FnOnce(&mut State) -> (&mut Gate, &mut u64),
    ) -> Result<(), Nanos> {
        let mut st = self.lock();
        let shape = st.shape(now);
        let (gate, waits) = which(&mut st);
        let r = gate.pass(now, turn, shape);
        if r.is_err() {
            *waits += 1;
        }
        r
    }
}
