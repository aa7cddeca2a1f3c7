//! The state behind one node's admission, under its mutex: the lanes (schedule, fresh
//! share, pacer) as GCRA shapes, the jitter, and the bookkeeping helpers the decisions in
//! bucket.rs are made of.

use std::time::Duration;

use super::clock::{duration_to_nanos, Nanos, NANOS_PER_SEC};
use super::decision::{AdmissionStats, AdmitVia, Decision};
use super::owners::Owners;
use super::params::AdmissionParams;
use super::schedule::{ForeignClaims, PromiseQueue, ReservationLedger};
use super::ticket::TicketCheck;
use super::{PROMISE_GRACE, RESERVATION_GRACE};

/// How much later than the GCRA would allow the last of a full burst goes (at most the
/// burst's tolerance): room for connects that reach the node that much later than the one
/// before (a node process, or herdgate, briefly off the CPU on a loaded machine), so that
/// the bound still holds where the node counts its accepts.
pub const RELEASE_MARGIN: Duration = Duration::from_millis(15);

/// The tolerance a pacing gate keeps at the least (or the burst's whole tolerance, if
/// shorter), whatever [`RELEASE_MARGIN`] takes: a held request or a held-back write wakes
/// on a timer, and timers fire up to a tick (1 ms in tokio) late, by a different amount
/// each time. A gate with no tolerance loses that lateness at every event: at 750/s (an
/// interval of 1.33 ms) wake-ups on 1 ms ticks let through about 550/s.
pub const WAKE_ROOM: Duration = Duration::from_millis(2);

/// A fresh lane unused this long lends its share back to the schedule (see
/// `State::take_slot`).
pub const FRESH_IDLE: Duration = Duration::from_secs(1);

/// Emission intervals and tolerances in force at some instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Emission interval and tolerance at the full rate: the pacer's.
    pub(super) t: Nanos,
    pub(super) tau: Nanos,
    /// The same for the schedule lane (the rate less the fresh share): bucket and slots.
    pub(super) t_main: Nanos,
    pub(super) tau_main: Nanos,
    /// The same for the fresh lane; `t_fresh == 0`: no fresh share.
    pub(super) t_fresh: Nanos,
    pub(super) tau_fresh: Nanos,
}

impl Shape {
    pub(super) fn of(params: &AdmissionParams, factor: f64) -> Self {
        // Float to int `as` casts saturate; validation keeps rate in (0, 1e9].
        let t = (NANOS_PER_SEC as f64 / (params.rate * factor))
            .round()
            .max(1.0) as u64;
        // Slow start scales the burst too, or a new node would take a full burst at once.
        let burst = (f64::from(params.burst) * factor).round().max(1.0) as u64;
        let f = params.fresh_share;
        let (t_main, t_fresh, fresh_burst) = if f > 0.0 {
            (
                (t as f64 / (1.0 - f)).round() as u64,
                (t as f64 / f).round().max(1.0) as u64,
                (burst as f64 * f).ceil().max(1.0) as u64,
            )
        } else {
            (t, 0, 1)
        };
        Self {
            t,
            tau: (burst - 1).saturating_mul(t),
            t_main,
            tau_main: (burst - 1).saturating_mul(t_main),
            t_fresh,
            tau_fresh: (fresh_burst - 1).saturating_mul(t_fresh),
        }
    }
}

/// A pacing GCRA over the instants events actually happen at (requests going to a node,
/// request heads written to it), which serves in turn those it holds back.
///
/// An event conforms with the tolerance [`RELEASE_MARGIN`] under the burst's (but at least
/// [`WAKE_ROOM`], or the burst's whole tolerance if shorter). One held back is given a
/// turn and comes back then with it: one interval after the last turn given while that
/// one still lies ahead, else the gate's own next instant. While a turn given lies ahead,
/// a newcomer (no turn) is given the next turn instead of passing: the first held back
/// goes first. A turn that comes when the gate does not conform (several woken late
/// together) is given a new turn the same way. Without turns, a request that lost once (a
/// late bunch) retried against every newcomer, and the newcomers, on time by their own
/// schedule, took every instant the gate had: a few requests with the earliest slots
/// waited until the schedule ran dry.
#[derive(Debug, Default)]
pub(super) struct Gate {
    tat: Nanos,
    /// The last turn given (0: none yet). While it lies ahead, someone holds a turn.
    last_turn: Nanos,
}

impl Gate {
    /// The event at `now`, which was given `turn` when held back before (`None`: a
    /// newcomer): `Ok` (counted) to go now, else its turn.
    pub(super) fn pass(
        &mut self,
        now: Nanos,
        turn: Option<Nanos>,
        shape: Shape,
    ) -> Result<(), Nanos> {
        let conform = self.tat.saturating_sub(gate_tolerance(shape.tau));
        let waiting = self.last_turn > now;
        if conform <= now && (turn.is_some() || !waiting) {
            self.tat = self.tat.max(now).saturating_add(shape.t);
            return Ok(());
        }
        // A newcomer behind others, or a turn that came when the gate did not conform
        // (turns woken late together, more of them than the tolerance lets through): a
        // turn of its own, one interval after the last one given while that one is
        // still ahead (told the gate's next instant instead, the ones held back together
        // would all wake together again, and again); with nobody waiting, the gate's
        // next instant. Spacing turns a full interval after a turn already served would
        // keep a client that asks again as soon as it is through (a closed loop) held one
        // interval each time, always on time for a token, and never turned away.
        let at = if waiting {
            conform.max(self.last_turn.saturating_add(shape.t))
        } else {
            conform.max(now)
        };
        self.last_turn = at;
        Err(at)
    }
}

/// The tolerance of a [`Gate`] under a burst's tolerance `tau`.
pub(super) fn gate_tolerance(tau: Nanos) -> Nanos {
    let room = tau.min(duration_to_nanos(WAKE_ROOM));
    tau.saturating_sub(duration_to_nanos(RELEASE_MARGIN))
        .max(room)
}

/// A tiny seedable PRNG (SplitMix64) for jitter: 8 bytes per node, no locking, reproducible.
#[derive(Debug)]
pub(super) struct Jitter(pub(super) u64);

impl Jitter {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (0 when n = 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) params: AdmissionParams,
    pub(super) base: Shape,
    pub(super) tat: Nanos,
    /// TAT of the pacing GCRA over forwarding decisions (see the module doc): spaces the
    /// instants held requests are told to wake at.
    pub(super) paced: Nanos,
    /// The same GCRA over the instants requests actually go (a decision's own instant, or
    /// a held request's release): the bound itself, whatever the wake-ups' lateness (see
    /// [`NodeAdmission::release`](super::NodeAdmission::release)).
    pub(super) released: Gate,
    /// The same GCRA over the instants request heads are written to the node (see
    /// [`NodeAdmission::pace_write`](super::NodeAdmission::pace_write)).
    pub(super) written: Gate,
    /// TAT of the fresh lane (the share kept for clients that hold no slot).
    pub(super) fresh_tat: Nanos,
    /// When the fresh lane last admitted someone (0: never).
    pub(super) fresh_used: Nanos,
    /// Who holds which slots.
    pub(super) owners: Owners,
    pub(super) slow_start_from: Option<Nanos>,
    pub(super) promises: PromiseQueue,
    pub(super) ledger: ReservationLedger,
    pub(super) foreign: ForeignClaims,
    pub(super) jitter: Jitter,
    pub(super) stats: AdmissionStats,
}

impl State {
    /// Books a forward at `at` or later on the pacing GCRA; returns the instant it conforms.
    pub(super) fn pace(&mut self, at: Nanos, shape: Shape) -> Nanos {
        let earliest = at.max(self.paced.saturating_sub(shape.tau));
        self.paced = self.paced.max(earliest).saturating_add(shape.t);
        earliest
    }

    /// An admission at `now`: forward now, or hold until forwards are back at the rate.
    pub(super) fn forward(
        &mut self,
        now: Nanos,
        shape: Shape,
        via: AdmitVia,
        check: TicketCheck,
    ) -> Decision {
        let mut at = self.pace(now, shape);
        let mut turn = false;
        if at <= now {
            match self.released.pass(now, None, shape) {
                Ok(()) => return Decision::Admit { via, ticket: check },
                // Held requests released late just went out as a bunch (or others wait
                // for their turns): wait for a turn of its own.
                Err(after) => (at, turn) = (after, true),
            }
        }
        self.stats.paced += 1;
        Decision::Queue {
            until: at,
            slot: at,
            via,
            paced: true,
            turn,
            ticket_check: check,
        }
    }

    /// Parks the charged `slot` as a promise, or records a reservation and returns its seq
    /// for the caller to sign. Either is held by `owner` (if known) for its grace.
    pub(super) fn promise_or_reserve(
        &mut self,
        now: Nanos,
        slot: Nanos,
        t_slot: Nanos,
        wants_ticket: bool,
        owner: Option<u64>,
    ) -> Option<u64> {
        let cw = duration_to_nanos(self.params.claim_window);
        if wants_ticket {
            if let Some(seq) = self.ledger.reserve(slot) {
                self.stats.reserved += 1;
                if let Some(o) = owner {
                    let grace = (t_slot + duration_to_nanos(RESERVATION_GRACE)).min(cw);
                    self.owners
                        .add(o, slot, slot.saturating_add(grace), false, now);
                }
                return Some(seq);
            }
        }
        match owner {
            Some(o) => {
                let grace = (t_slot + duration_to_nanos(PROMISE_GRACE)).min(cw);
                let until = slot.saturating_add(grace);
                self.promises.push_owned(slot, o, until);
                self.owners.add(o, slot, until, true, now);
            }
            None => self.promises.push(slot),
        }
        self.stats.promised += 1;
        None
    }

    /// Fraction of the rate in force at `at` (1 outside slow start).
    pub(super) fn ramp_factor(&self, at: Nanos) -> f64 {
        let Some(start) = self.slow_start_from else {
            return 1.0;
        };
        let ramp = duration_to_nanos(self.params.slow_start);
        let elapsed = at.saturating_sub(start);
        if ramp == 0 || elapsed >= ramp {
            return 1.0;
        }
        let floor = self.params.slow_start_floor;
        floor + (1.0 - floor) * (elapsed as f64 / ramp as f64)
    }

    /// Emission interval and tolerance in force at `at`.
    pub(super) fn shape(&self, at: Nanos) -> Shape {
        if self.slow_start_from.is_none() {
            return self.base;
        }
        Shape::of(&self.params, self.ramp_factor(at))
    }

    pub(super) fn expire(&mut self, now: Nanos, shape: Shape) {
        if let Some(start) = self.slow_start_from {
            let ramp = duration_to_nanos(self.params.slow_start);
            if now.saturating_sub(start) >= ramp {
                self.slow_start_from = None;
            }
        }
        let cw = duration_to_nanos(self.params.claim_window);
        let grace = (shape.t_main + duration_to_nanos(RESERVATION_GRACE)).min(cw);
        let (promises, mut released) = (&mut self.promises, 0);
        self.ledger.release(now, grace, |slot| {
            promises.push(slot);
            released += 1;
        });
        self.stats.released += released;
        self.owners.sweep(now);
        self.stats.unclaimed_promises += self.promises.expire(now, cw);
        self.stats.unclaimed_reservations += self.ledger.expire(now, cw);
        self.foreign.prune(now);
    }

    /// Charges the next free slot, or `None` (overflow) if it lies beyond max_retry_after.
    /// Returns the slot and the emission interval in force *at the slot*: during slow start a
    /// herd booked at once is spaced along the ramp, not at the rate of the booking instant
    /// (which would keep the node at its floor rate long after the ramp is over).
    pub(super) fn take_slot(&mut self, now: Nanos) -> Option<(Nanos, Nanos)> {
        let slot = self.tat.max(now);
        if slot - now > duration_to_nanos(self.params.max_retry_after) {
            return None;
        }
        let shape = self.shape(slot);
        // The fresh share is kept while arrivals holding no slot use it. Idle for
        // FRESH_IDLE (none came, or every arrival shares an address with slot holders), it
        // goes back to the schedule: slots are booked at the full rate, and a fresh arrival
        // that comes later still finds its lane (the pacer bounds the sum at the node).
        let fresh_idle = self
            .fresh_used
            .saturating_add(duration_to_nanos(FRESH_IDLE))
            < now;
        let t = if fresh_idle { shape.t } else { shape.t_main };
        self.tat = slot.saturating_add(t);
        Some((slot, t))
    }

    /// Time until `slot` plus jitter in [0, T): clients told adjacent slots never land on the
    /// same instant, and every arrival stays inside its own emission interval.
    pub(super) fn slot_hint(&mut self, now: Nanos, slot: Nanos, t: Nanos) -> Duration {
        Duration::from_nanos((slot - now).saturating_add(self.jitter.below(t)))
    }

    /// max_retry_after, jittered down within its last second, so an overflowing herd does not
    /// come back as one wave.
    pub(super) fn overflow_hint(&mut self) -> Duration {
        let max = duration_to_nanos(self.params.max_retry_after);
        let spread = max.min(NANOS_PER_SEC);
        Duration::from_nanos(max - self.jitter.below(spread))
    }
}
