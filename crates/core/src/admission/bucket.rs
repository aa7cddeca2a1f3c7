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
//! No client can book the schedule for others (issue 9):
//! - every slot is held by its client (the *owner*, a hash of its address), and one owner
//!   holds at most `slots_per_client` at once; past the cap it gets places in a queue of
//!   its own (after its slots, one interval apart) and nothing is booked. An early ticket presented again gets itself back;
//! - a reservation not claimed `T + RESERVATION_GRACE` after its slot is released as a public
//!   credit; an owned promise is its owner's until `T + PROMISE_GRACE` after its slot (whole-
//!   second `Retry-After` readers come back up to a second late), then public;
//! - a share of the rate (`fresh_share`) is never booked: the schedule lane runs at
//!   `rate * (1 - fresh_share)` and a fresh lane at the rest serves clients that hold no
//!   slot, so honest newcomers get in however deep the schedule is booked (lanes.rs).
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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::clock::{duration_to_nanos, Nanos, NANOS_PER_MILLI};
use super::decision::{AdmissionStats, AdmitInput, AdmitVia, Decision, StateSizes};
use super::lanes::{Gate, Jitter, Shape, State};
use super::owners::Owners;
use super::params::AdmissionParams;
use super::schedule::{ForeignClaims, LedgerClaim, PromiseQueue, ReservationLedger};
use super::ticket::{TicketCheck, TicketClaims, TicketSigner};
use super::AdmissionError;

mod outlook;
use outlook::{Locked, Outlook};

/// Most live reservations one node tracks (its anti-replay window). Memory is used only as
/// reservations are made (16 bytes each); past the cap, ticket-capable clients get promises.
pub const RESERVATION_WINDOW: usize = 1 << 16;
/// Most foreign-instance ticket claims one node remembers at once (each for ~claim_window).
pub const FOREIGN_CLAIMS_CAP: usize = 1 << 14;
/// A ticket may be presented this early, or one emission interval early if that is longer:
/// covers the millisecond truncation of the slot and client timer slop.
pub const TICKET_EARLY_TOLERANCE: Duration = Duration::from_millis(50);
/// A reservation not claimed this long after its slot (plus one emission interval, the
/// hint's jitter) is released as a public credit that any arrival may take.
pub const RESERVATION_GRACE: Duration = Duration::from_millis(50);
/// An owned promise is its owner's alone this long after its slot (plus one emission
/// interval): a client that reads only `Retry-After` rounds the hint up to whole seconds.
pub const PROMISE_GRACE: Duration = Duration::from_millis(1050);
/// A client back this long before its promise's slot is held until the slot instead of
/// rejected again: a whole-second `Retry-After` rounded down brings it back up to a second
/// early (plus timer slop).
pub const EARLY_HOLD: Duration = Duration::from_millis(1100);
/// ...but only once this long has passed since the promise was booked: the smallest
/// `Retry-After` is one second, so an arrival sooner is not the client that was told to
/// come back (it is one that ignores hints, or another client behind the same address,
/// which must not take this one's slot).
pub const EARLY_HOLD_AFTER: Duration = Duration::from_millis(900);

/// Admission state of one backend node. `Send + Sync`; one short mutex per node, no global
/// lock, nothing allocated on the admit path (only a rejection's ticket string).
#[derive(Debug)]
pub struct NodeAdmission {
    node: u64,
    signer: Arc<TicketSigner>,
    state: Mutex<State>,
    /// Read without the lock by routing (see [`NodeAdmission::free_at`]); written whenever
    /// the lock is released.
    outlook: Outlook,
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
            released: Gate::default(),
            written: Gate::default(),
            fresh_tat: 0,
            fresh_used: 0,
            owners: Owners::default(),
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
            outlook: Outlook::default(),
        };
        // Publishes the outlook (begin_slow_start takes the lock too).
        drop(node.lock());
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

    fn lock(&self) -> Locked<'_> {
        // No code panics while holding the lock; if one ever did, the state is still
        // consistent enough to keep admitting.
        Locked {
            guard: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            outlook: &self.outlook,
        }
    }

    /// Decides one admission request at `now`.
    pub fn check(&self, now: Nanos, input: &AdmitInput<'_>) -> Decision {
        // The MAC needs no state: compute it before taking the lock.
        let verified = input.ticket.map(|t| self.signer.verify(t));
        let ticket_slot = verified
            .as_ref()
            .and_then(|v| v.as_ref().ok())
            .map(TicketClaims::slot);
        let mut st = self.lock();
        let shape = st.shape(now);
        st.expire(now, shape);
        let early = shape.t.max(duration_to_nanos(TICKET_EARLY_TOLERANCE));

        // a. A valid ticket claims the token reserved for it.
        let mut check = TicketCheck::None;
        if let Some(verified) = verified {
            match self.claim_ticket(&mut st, verified, now, shape) {
                Ok(slot) => {
                    if let Some(o) = input.owner {
                        st.owners.remove(o, slot);
                    }
                    st.stats.admitted_ticket += 1;
                    return st.forward(now, shape, AdmitVia::Ticket, TicketCheck::Valid);
                }
                // The same client asking again before its slot: the same slot and ticket
                // back, nothing new booked.
                Err(TicketCheck::Early) => {
                    if let (Some(slot), Some(t)) = (ticket_slot, input.ticket) {
                        st.stats.rejected += 1;
                        st.stats.reasked += 1;
                        return Decision::Reject {
                            retry_after: Duration::from_nanos(slot.saturating_sub(now)),
                            ticket: Some(t.to_owned()),
                            overflow: false,
                            capped: false,
                            early_hold: false,
                            ticket_check: TicketCheck::Early,
                        };
                    }
                    check = TicketCheck::Early;
                }
                Err(c) => check = c,
            }
        }

        // b. The client's own promise, once due; or, up to EARLY_HOLD before it, held
        // until its slot: a client that read a whole-second Retry-After rounded down is
        // back early, and holding it costs one waiting request where a rejection would
        // cost it a retry (and over TLS a handshake). A held request goes when a promise
        // is due (`early` before its slot), as a client asking again then would: holding
        // never makes a client later than asking again at once. The pacer still bounds
        // the instant it goes.
        if let Some(o) = input.owner {
            if let Some(slot) = st.owners.due_promise(o, now, early) {
                if st.promises.claim_owned(slot, o) {
                    st.owners.remove(o, slot);
                    st.stats.admitted_promise += 1;
                    return st.forward(now, shape, AdmitVia::Promise, check);
                }
            }
            let hold = duration_to_nanos(EARLY_HOLD);
            let after = duration_to_nanos(EARLY_HOLD_AFTER);
            if let Some(slot) = st.owners.earliest_promise(o, now, after, hold) {
                if st.promises.claim_owned(slot, o) {
                    // Still counted against its cap until the slot: holding requests
                    // never lets a client book more than its cap.
                    st.owners.hold(o, slot);
                    st.stats.held_early += 1;
                    return Decision::Queue {
                        until: slot.saturating_sub(early).max(now),
                        slot,
                        via: AdmitVia::Promise,
                        paced: false,
                        turn: false,
                        ticket_check: check,
                    };
                }
            }
        }

        // b'. Public credits are for clients that cannot carry tickets (a ticket-capable
        // client taking one would push a ticketless client back to the end of the schedule)
        // and hold no slot: a client that keeps asking while it holds slots must not take
        // what others were late for.
        let holds = input.owner.map_or(0, |o| st.owners.count(o, now));
        if !input.wants_ticket && holds == 0 && st.promises.claim(now) {
            st.stats.admitted_promise += 1;
            return st.forward(now, shape, AdmitVia::Promise, check);
        }

        // c. The bucket conforms. While it does, nothing is booked and the fresh lane
        // accrues nothing: it exists for when the schedule is booked ahead.
        if st.tat.saturating_sub(now) <= shape.tau_main {
            st.fresh_tat = st.fresh_tat.max(now.saturating_add(shape.t_fresh));
            st.tat = st.tat.max(now).saturating_add(shape.t_main);
            st.stats.admitted_bucket += 1;
            return st.forward(now, shape, AdmitVia::Bucket, check);
        }

        // c'. The fresh share: never booked, so a client holding no slot can get in even
        // when the schedule is booked ahead.
        if shape.t_fresh > 0 && holds == 0 && st.fresh_tat.saturating_sub(now) <= shape.tau_fresh {
            st.fresh_tat = st.fresh_tat.max(now).saturating_add(shape.t_fresh);
            st.fresh_used = now;
            st.stats.admitted_fresh += 1;
            return st.forward(now, shape, AdmitVia::Fresh, check);
        }

        // d. A client at its cap of slots gets a place in a queue of its own, after its
        // slots, one interval apart, and nothing is booked: asking again pushes back only
        // the asker, and clients sharing an address (a NAT) come back spaced as if each
        // had a slot, and book one then.
        if let Some(o) = input.owner {
            if holds >= st.params.slots_per_client() {
                st.stats.rejected += 1;
                st.stats.capped += 1;
                let horizon = duration_to_nanos(st.params.max_retry_after);
                let retry_after = match st.owners.queue_place(o, now, shape.t_main, horizon) {
                    Some(place) => st.slot_hint(now, place, shape.t_main),
                    None => st.overflow_hint(),
                };
                return Decision::Reject {
                    retry_after,
                    ticket: None,
                    overflow: false,
                    capped: true,
                    early_hold: false,
                    ticket_check: check,
                };
            }
        }

        // e. Take a slot. A ticket-capable client cannot use a public credit (step b'), so
        // when the reservation window is full it is told to come back later, like an
        // overflow.
        let full = input.wants_ticket && st.ledger.is_full();
        let Some((slot, t_slot)) = (!full).then(|| st.take_slot(now)).flatten() else {
            st.stats.rejected += 1;
            st.stats.overflow += 1;
            let retry_after = st.overflow_hint();
            return Decision::Reject {
                retry_after,
                ticket: None,
                overflow: true,
                capped: false,
                early_hold: false,
                ticket_check: check,
            };
        };
        if let Some(q) = input.may_queue {
            if slot - now <= duration_to_nanos(q) {
                st.stats.queued += 1;
                // Counted against the client's cap until its slot, like a booked slot:
                // holding requests never lets one client take more of the schedule.
                if let Some(o) = input.owner {
                    st.owners.add(o, slot, slot, false, now);
                }
                // Not booked on the pacer: queued forwards are already spaced by the TAT,
                // and a refund would leave a hole the pacer cannot give back.
                return Decision::Queue {
                    until: slot.saturating_sub(early).max(now),
                    slot,
                    via: AdmitVia::Queue,
                    paced: false,
                    turn: false,
                    ticket_check: check,
                };
            }
        }
        st.stats.rejected += 1;
        let seq = st.promise_or_reserve(now, slot, t_slot, input.wants_ticket, input.owner);
        let retry_after = st.slot_hint(now, slot, t_slot);
        drop(st);
        Decision::Reject {
            retry_after,
            early_hold: seq.is_none() && input.owner.is_some(),
            ticket: seq.map(|seq| self.sign(slot, seq)),
            overflow: false,
            capped: false,
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
        let shape = st.shape(now);
        st.expire(now, shape);
        let full = wants_ticket && st.ledger.is_full();
        let Some((slot, t_slot)) = (!full).then(|| st.take_slot(now)).flatten() else {
            st.stats.overflow += 1;
            return (st.overflow_hint(), None);
        };
        st.stats.hinted += 1;
        let seq = st.promise_or_reserve(now, slot, t_slot, wants_ticket, None);
        let retry_after = st.slot_hint(now, slot, t_slot);
        drop(st);
        (retry_after, seq.map(|seq| self.sign(slot, seq)))
    }

    /// Gives back the token of a [`Decision::Queue`] whose client went away: it becomes a
    /// promise credit at `slot`, so the next ticketless arrival from then on gets it.
    pub fn refund(&self, slot: Nanos) {
        self.refund_to(slot, None, 0);
    }

    /// [`NodeAdmission::refund`] to the client that was held (`owner`): the token goes
    /// back to it as a promise it may claim at once (a client that gave up waiting, over a
    /// slow TLS handshake say, comes back to its own slot; clients behind one address
    /// keep what they booked), public after the usual grace. Anonymous: a public credit.
    pub fn refund_to(&self, slot: Nanos, owner: Option<u64>, now: Nanos) {
        let mut st = self.lock();
        st.stats.refunded += 1;
        let Some(o) = owner else {
            st.promises.push(slot);
            return;
        };
        let shape = st.shape(now);
        let cw = duration_to_nanos(st.params.claim_window);
        let grace = (shape.t_main + duration_to_nanos(PROMISE_GRACE)).min(cw);
        let until = slot.max(now).saturating_add(grace);
        // The slot it was held for (if any) becomes a promise again, claimable now.
        st.owners.remove(o, slot);
        st.owners.add(o, slot, until, true, 0);
        st.promises.push_owned(slot, o, until);
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
        let shape = st.shape(now);
        st.expire(now, shape);
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
        let shape = st.shape(now);
        st.expire(now, shape);
        StateSizes {
            promises: st.promises.len(),
            reservations: st.ledger.len(),
            foreign_claims: st.foreign.len(),
            owners: st.owners.len(),
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
    ) -> Result<Nanos, TicketCheck> {
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
                LedgerClaim::Claimed => return Ok(slot),
                LedgerClaim::Reused => return Err(TicketCheck::Reused),
                // Its holder came after the grace: its token went public. Any public credit
                // left will do (the token is the same kind); else it starts again.
                LedgerClaim::Released => {
                    return if st.promises.claim(now) {
                        Ok(slot)
                    } else {
                        Err(TicketCheck::Expired)
                    }
                }
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
        st.tat = st.tat.max(now).saturating_add(shape.t_main);
        st.stats.foreign_tickets += 1;
        Ok(slot)
    }
}
