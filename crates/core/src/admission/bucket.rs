//! Per-node admission: a GCRA token bucket that also owns the node's retry schedule.
//!
//! Why not governor here: governor answers "may this cell pass now?" and, when not, "when
//! could it?". The retry scheduler needs a third operation: *reserve a future token now*,
//! i.e. advance the theoretical arrival time (TAT) by one emission interval without the cell
//! conforming, and hand the future instant to a client as its slot. governor's state is
//! private and its only writes are conforming checks, so a reservation cannot be expressed.
//! The GCRA itself is a few lines (ATM Forum TM 4.1 / ITU-T I.371 virtual scheduling):
//!
//! - emission interval `T = 1/rate`, tolerance `tau = (burst - 1) * T`;
//! - a cell at `now` conforms iff `TAT - now <= tau`; then `TAT = max(TAT, now) + T`;
//! - a reservation takes `slot = max(now, TAT)` and sets `TAT = slot + T`.
//!
//! Every admission is charged exactly once against one TAT, so over any window `W` this
//! node admits at most `W * rate + burst` (a sliding window, not per calendar second), and a
//! rejected client's slot is spaced `T` from every other: obeying clients arrive at `rate`.
//!
//! Rejected clients come in two kinds (ARCHITECTURE.md, glossary: Promise, Reservation):
//! - a client that can carry a ticket gets a *reservation*: its token is charged now and a
//!   signed ticket lets it claim the token inside `[slot - early, slot + claim_window]`;
//! - any other client gets a *promise*: its token is charged now too (so fresh arrivals
//!   cannot take it) and parked as a credit that the first ticketless arrival at or after
//!   the slot claims, which is almost always the promised client, told to come back then.
//!
//! Both kinds draw slots from the same TAT, so neither can starve the other. A reservation or
//! promise not claimed in its window is lost capacity; both are counted.
//!
//! Booking slots at the rate is not enough to hold the node to it: clients come back late,
//! and late clients arrive bunched. Over TLS under load, handshakes queue behind one another
//! and a second's worth of ticket holders can reach admission in a few milliseconds; every
//! ticket is valid (its window is `claim_window`), so all were forwarded at once and the
//! node took up to 1.9x its rate in a 1 s window (benches/STORM.md). So forwards are paced
//! too: a second GCRA over the instants requests are actually forwarded (same T and tau).
//! A claim or admission that would run ahead of it is answered with [`Decision::Queue`]:
//! the caller holds the request for a few milliseconds instead of rejecting a client that
//! did nothing wrong (over TLS, each retry costs a handshake).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::clock::{duration_to_nanos, Nanos, NANOS_PER_MILLI, NANOS_PER_SEC};
use super::decision::{AdmissionStats, AdmitInput, AdmitVia, Decision, StateSizes};
use super::params::AdmissionParams;
use super::schedule::{ForeignClaims, LedgerClaim, PromiseQueue, ReservationLedger};
use super::ticket::{TicketCheck, TicketClaims, TicketSigner};
use super::AdmissionError;

/// Most live reservations one node tracks (its anti-replay window). Memory is used only as
/// reservations are made (16 bytes each); past the cap, ticket-capable clients get promises.
pub const RESERVATION_WINDOW: usize = 1 << 16;
/// Most foreign-instance ticket claims one node remembers at once (each for ~claim_window).
pub const FOREIGN_CLAIMS_CAP: usize = 1 << 14;
/// A ticket may be presented this early, or one emission interval early if that is longer:
/// covers the millisecond truncation of the slot and client timer slop.
pub const TICKET_EARLY_TOLERANCE: Duration = Duration::from_millis(50);

/// Emission interval and tolerance in force at some instant.
#[derive(Debug, Clone, Copy)]
struct Shape {
    t: Nanos,
    tau: Nanos,
}

impl Shape {
    fn of(params: &AdmissionParams, factor: f64) -> Self {
        // Float to int `as` casts saturate; validation keeps rate in (0, 1e9].
        let t = (NANOS_PER_SEC as f64 / (params.rate * factor))
            .round()
            .max(1.0) as u64;
        // Slow start scales the burst too, or a new node would take a full burst at once.
        let burst = (f64::from(params.burst) * factor).round().max(1.0) as u64;
        Self {
            t,
            tau: (burst - 1).saturating_mul(t),
        }
    }
}

/// A tiny seedable PRNG (SplitMix64) for jitter: 8 bytes per node, no locking, reproducible.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (0 when n = 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[derive(Debug)]
struct State {
    params: AdmissionParams,
    base: Shape,
    tat: Nanos,
    /// TAT of the pacing GCRA over forwarding instants (see the module doc).
    paced: Nanos,
    slow_start_from: Option<Nanos>,
    promises: PromiseQueue,
    ledger: ReservationLedger,
    foreign: ForeignClaims,
    jitter: Jitter,
    stats: AdmissionStats,
}

/// Admission state of one backend node. `Send + Sync`; one short mutex per node, no global
/// lock, nothing allocated on the admit path (only a rejection's ticket string).
#[derive(Debug)]
pub struct NodeAdmission {
    node: u64,
    signer: Arc<TicketSigner>,
    state: Mutex<State>,
}

/// Builds a [`NodeAdmission`]; see [`NodeAdmission::builder`].
#[derive(Debug)]
pub struct NodeAdmissionBuilder {
    node: u64,
    params: AdmissionParams,
    signer: Arc<TicketSigner>,
    slow_start: bool,
    seed: Option<u64>,
}

impl NodeAdmissionBuilder {
    /// Start in slow start (a node that just joined or came back up).
    pub fn slow_start(mut self, on: bool) -> Self {
        self.slow_start = on;
        self
    }

    /// Seed the jitter (and the first ticket seq) for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the params and builds the state as of `now`: idle, full burst available.
    pub fn build(self, now: Nanos) -> Result<NodeAdmission, AdmissionError> {
        self.params.validate()?;
        let mut jitter = Jitter(self.seed.unwrap_or_else(rand::random));
        // A random first seq: tickets from an earlier state of this node (same instance id)
        // then almost never alias a live reservation; the slot check catches the rest.
        let first_seq = jitter.next() >> 32;
        let state = State {
            base: Shape::of(&self.params, 1.0),
            tat: 0,
            paced: 0,
            slow_start_from: None,
            promises: PromiseQueue::default(),
            ledger: ReservationLedger::new(first_seq, RESERVATION_WINDOW),
            foreign: ForeignClaims::new(FOREIGN_CLAIMS_CAP),
            jitter,
            stats: AdmissionStats::default(),
            params: self.params,
        };
        let node = NodeAdmission {
            node: self.node,
            signer: self.signer,
            state: Mutex::new(state),
        };
        if self.slow_start {
            node.begin_slow_start(now);
        }
        Ok(node)
    }
}

impl NodeAdmission {
    /// A builder for node `node` (see [`super::node_id`]); tickets are signed by `signer`.
    pub fn builder(
        node: u64,
        params: AdmissionParams,
        signer: Arc<TicketSigner>,
    ) -> NodeAdmissionBuilder {
        NodeAdmissionBuilder {
            node,
            params,
            signer,
            slow_start: false,
            seed: None,
        }
    }

    /// Shorthand for `builder(..).build(now)`.
    pub fn new(
        node: u64,
        params: AdmissionParams,
        signer: Arc<TicketSigner>,
        now: Nanos,
    ) -> Result<Self, AdmissionError> {
        Self::builder(node, params, signer).build(now)
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the state is still
        // consistent enough to keep admitting.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides one admission request at `now`.
    pub fn check(&self, now: Nanos, input: &AdmitInput<'_>) -> Decision {
        // The MAC needs no state: compute it before taking the lock.
        let verified = input.ticket.map(|t| self.signer.verify(t));
        let mut st = self.lock();
        let shape = st.shape(now);
        st.expire(now);

        // a. A valid ticket claims the token reserved for it.
        let mut check = TicketCheck::None;
        if let Some(verified) = verified {
            match self.claim_ticket(&mut st, verified, now, shape) {
                Ok(()) => {
                    st.stats.admitted_ticket += 1;
                    return st.forward(now, shape, AdmitVia::Ticket, TicketCheck::Valid);
                }
                Err(c) => check = c,
            }
        }

        // b. Promise credits are for clients that cannot carry tickets: a ticket-capable
        // client taking one would push a ticketless client back to the end of the schedule.
        if !input.wants_ticket && st.promises.claim(now) {
            st.stats.admitted_promise += 1;
            return st.forward(now, shape, AdmitVia::Promise, check);
        }

        // c. The bucket conforms.
        if st.tat.saturating_sub(now) <= shape.tau {
            st.tat = st.tat.max(now).saturating_add(shape.t);
            st.stats.admitted_bucket += 1;
            return st.forward(now, shape, AdmitVia::Bucket, check);
        }

        // d. Take a slot. A ticket-capable client cannot use a promise (step b), so when the
        // reservation window is full it is told to come back later, like an overflow.
        let full = input.wants_ticket && st.ledger.is_full();
        let Some((slot, t_slot)) = (!full).then(|| st.take_slot(now)).flatten() else {
            st.stats.rejected += 1;
            st.stats.overflow += 1;
            let retry_after = st.overflow_hint();
            return Decision::Reject {
                retry_after,
                ticket: None,
                overflow: true,
                ticket_check: check,
            };
        };
        if let Some(q) = input.may_queue {
            if slot - now <= duration_to_nanos(q) {
                st.stats.queued += 1;
                // Not booked on the pacer: queued forwards are already spaced by the TAT,
                // and a refund would leave a hole the pacer cannot give back.
                return Decision::Queue {
                    until: slot,
                    slot,
                    via: AdmitVia::Queue,
                    ticket_check: check,
                };
            }
        }
        st.stats.rejected += 1;
        let seq = st.promise_or_reserve(slot, input.wants_ticket);
        let retry_after = st.slot_hint(now, slot, t_slot);
        drop(st);
        Decision::Reject {
            retry_after,
            ticket: seq.map(|seq| self.sign(slot, seq)),
            overflow: false,
            ticket_check: check,
        }
    }

    /// Takes a promise slot without a request: tells a client closed by drain when to come
    /// back to this node. Same slot logic as a rejection (overflow gives max_retry_after).
    pub fn hint(&self, now: Nanos) -> Duration {
        self.hint_inner(now, false).0
    }

    /// Like [`NodeAdmission::hint`] but reserves a token and signs a ticket for a client known
    /// to carry tickets (none on overflow or when the reservation window is full).
    pub fn hint_with_ticket(&self, now: Nanos) -> (Duration, Option<String>) {
        self.hint_inner(now, true)
    }

    fn hint_inner(&self, now: Nanos, wants_ticket: bool) -> (Duration, Option<String>) {
        let mut st = self.lock();
        st.expire(now);
        let full = wants_ticket && st.ledger.is_full();
        let Some((slot, t_slot)) = (!full).then(|| st.take_slot(now)).flatten() else {
            st.stats.overflow += 1;
            return (st.overflow_hint(), None);
        };
        st.stats.hinted += 1;
        let seq = st.promise_or_reserve(slot, wants_ticket);
        let retry_after = st.slot_hint(now, slot, t_slot);
        drop(st);
        (retry_after, seq.map(|seq| self.sign(slot, seq)))
    }

    /// Gives back the token of a [`Decision::Queue`] whose client went away: it becomes a
    /// promise credit at `slot`, so the next ticketless arrival from then on gets it.
    pub fn refund(&self, slot: Nanos) {
        let mut st = self.lock();
        st.promises.push(slot);
        st.stats.refunded += 1;
    }

    /// Starts (or restarts) slow start at `now`; no-op when `slow_start` is zero.
    pub fn begin_slow_start(&self, now: Nanos) {
        let mut st = self.lock();
        st.slow_start_from = (!st.params.slow_start.is_zero()).then_some(now);
    }

    /// Applies new params (reload). TAT, the schedule, promises, reservations, replay state,
    /// counters and a slow start in progress all carry over: a reload never resets a bucket
    /// in the middle of a storm.
    pub fn update_params(&self, params: AdmissionParams, now: Nanos) -> Result<(), AdmissionError> {
        params.validate()?;
        let mut st = self.lock();
        st.base = Shape::of(&params, 1.0);
        st.params = params;
        st.expire(now);
        Ok(())
    }

    /// The params in force.
    pub fn params(&self) -> AdmissionParams {
        self.lock().params.clone()
    }

    /// Admissions per second in force at `now` (below `rate` during slow start).
    pub fn effective_rate(&self, now: Nanos) -> f64 {
        let st = self.lock();
        st.params.rate * st.ramp_factor(now)
    }

    /// How far ahead the schedule is booked: `max(0, TAT - now)`.
    pub fn backlog(&self, now: Nanos) -> Duration {
        Duration::from_nanos(self.lock().tat.saturating_sub(now))
    }

    /// Counters since creation.
    pub fn stats(&self) -> AdmissionStats {
        self.lock().stats
    }

    /// Current sizes of the bounded structures, after expiring what is due at `now`.
    pub fn state_sizes(&self, now: Nanos) -> StateSizes {
        let mut st = self.lock();
        st.expire(now);
        StateSizes {
            promises: st.promises.len(),
            reservations: st.ledger.len(),
            foreign_claims: st.foreign.len(),
        }
    }

    /// Signs the ticket of reservation `seq` (outside the lock: HMAC and allocation).
    fn sign(&self, slot: Nanos, seq: u64) -> String {
        // The ticket carries the low 32 bits; the ledger recovers the rest.
        self.signer.sign(self.node, slot, seq as u32)
    }

    fn claim_ticket(
        &self,
        st: &mut State,
        verified: Result<TicketClaims, TicketCheck>,
        now: Nanos,
        shape: Shape,
    ) -> Result<(), TicketCheck> {
        let claims = verified?;
        if claims.node != self.node {
            return Err(TicketCheck::OtherNode);
        }
        let slot = claims.slot();
        let early = shape.t.max(duration_to_nanos(TICKET_EARLY_TOLERANCE));
        if now < slot.saturating_sub(early) {
            return Err(TicketCheck::Early);
        }
        // + 1 ms: the ticket's slot is truncated to the millisecond.
        let claim_window = duration_to_nanos(st.params.claim_window);
        if now > slot.saturating_add(claim_window + NANOS_PER_MILLI) {
            return Err(TicketCheck::Late);
        }
        if claims.instance == self.signer.instance() {
            match st.ledger.claim(claims.seq, claims.slot_ms) {
                LedgerClaim::Claimed => return Ok(()),
                LedgerClaim::Reused => return Err(TicketCheck::Reused),
                LedgerClaim::Gone => return Err(TicketCheck::Expired),
                // Genuine but not issued by this state: nobody here paid, so treat it as
                // foreign (charged now).
                LedgerClaim::Unknown => {}
            }
        }
        let expires = slot.saturating_add(claim_window + NANOS_PER_MILLI);
        if !st.foreign.insert(claims.instance, claims.seq, expires) {
            return Err(TicketCheck::Reused);
        }
        // Another instance reserved this token against its own bucket; this node's bucket
        // must still count it. Debt is allowed: the client was promised its slot.
        st.tat = st.tat.max(now).saturating_add(shape.t);
        st.stats.foreign_tickets += 1;
        Ok(())
    }
}

impl State {
    /// Books a forward at `at` or later on the pacing GCRA; returns the instant it conforms.
    fn pace(&mut self, at: Nanos, shape: Shape) -> Nanos {
        let earliest = at.max(self.paced.saturating_sub(shape.tau));
        self.paced = self.paced.max(earliest).saturating_add(shape.t);
        earliest
    }

    /// An admission at `now`: forward now, or hold until forwards are back at the rate.
    fn forward(&mut self, now: Nanos, shape: Shape, via: AdmitVia, check: TicketCheck) -> Decision {
        let at = self.pace(now, shape);
        if at <= now {
            return Decision::Admit { via, ticket: check };
        }
        self.stats.paced += 1;
        Decision::Queue {
            until: at,
            slot: at,
            via,
            ticket_check: check,
        }
    }

    /// Parks the charged `slot` as a promise, or records a reservation and returns its seq
    /// for the caller to sign.
    fn promise_or_reserve(&mut self, slot: Nanos, wants_ticket: bool) -> Option<u64> {
        if wants_ticket {
            if let Some(seq) = self.ledger.reserve(slot) {
                self.stats.reserved += 1;
                return Some(seq);
            }
        }
        self.promises.push(slot);
        self.stats.promised += 1;
        None
    }

    /// Fraction of the rate in force at `at` (1 outside slow start).
    fn ramp_factor(&self, at: Nanos) -> f64 {
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
    fn shape(&self, at: Nanos) -> Shape {
        if self.slow_start_from.is_none() {
            return self.base;
        }
        Shape::of(&self.params, self.ramp_factor(at))
    }

    fn expire(&mut self, now: Nanos) {
        if let Some(start) = self.slow_start_from {
            let ramp = duration_to_nanos(self.params.slow_start);
            if now.saturating_sub(start) >= ramp {
                self.slow_start_from = None;
            }
        }
        let cw = duration_to_nanos(self.params.claim_window);
        self.stats.unclaimed_promises += self.promises.expire(now, cw);
        self.stats.unclaimed_reservations += self.ledger.expire(now, cw);
        self.foreign.prune(now);
    }

    /// Charges the next free slot, or `None` (overflow) if it lies beyond max_retry_after.
    /// Returns the slot and the emission interval in force *at the slot*: during slow start a
    /// herd booked at once is spaced along the ramp, not at the rate of the booking instant
    /// (which would keep the node at its floor rate long after the ramp is over).
    fn take_slot(&mut self, now: Nanos) -> Option<(Nanos, Nanos)> {
        let slot = self.tat.max(now);
        if slot - now > duration_to_nanos(self.params.max_retry_after) {
            return None;
        }
        let t = self.shape(slot).t;
        self.tat = slot.saturating_add(t);
        Some((slot, t))
    }

    /// Time until `slot` plus jitter in [0, T): clients told adjacent slots never land on the
    /// same instant, and every arrival stays inside its own emission interval.
    fn slot_hint(&mut self, now: Nanos, slot: Nanos, t: Nanos) -> Duration {
        Duration::from_nanos((slot - now).saturating_add(self.jitter.below(t)))
    }

    /// max_retry_after, jittered down within its last second, so an overflowing herd does not
    /// come back as one wave.
    fn overflow_hint(&mut self) -> Duration {
        let max = duration_to_nanos(self.params.max_retry_after);
        let spread = max.min(NANOS_PER_SEC);
        Duration::from_nanos(max - self.jitter.below(spread))
    }
}
