//! What one admission request brings and what it gets back: [`AdmitInput`], [`Decision`]
//! and [`AdmitVia`], plus the per-node counters and sizes [`super::NodeAdmission`] reports.
//! Kept apart from the bucket (bucket.rs) so the GCRA and schedule logic reads on its own.

use std::time::Duration;

use super::clock::Nanos;
use super::ticket::TicketCheck;

/// What the caller knows about one admission request.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitInput<'a> {
    /// The ticket the client presented, if any.
    pub ticket: Option<&'a str>,
    /// The client said it can carry a ticket: a rejection should come with one.
    pub wants_ticket: bool,
    /// Queue mode: the caller may hold the request this long waiting for its slot.
    pub may_queue: Option<Duration>,
    /// Who asks: a hash of the client's identity (its address, /64 for IPv6). Slots are
    /// bound to it and capped per owner; `None`: anonymous (no cap, public promises).
    pub owner: Option<u64>,
}

impl<'a> AdmitInput<'a> {
    /// A client that only understands Retry-After.
    pub const TICKETLESS: AdmitInput<'static> = AdmitInput {
        ticket: None,
        wants_ticket: false,
        may_queue: None,
        owner: None,
    };

    /// A ticket-capable client, presenting `ticket` if it has one.
    pub fn ticketed(ticket: Option<&'a str>) -> Self {
        Self {
            ticket,
            wants_ticket: true,
            may_queue: None,
            owner: None,
        }
    }

    /// The same request, made by `owner`.
    pub fn owned_by(self, owner: u64) -> Self {
        Self {
            owner: Some(owner),
            ..self
        }
    }
}

/// Why a request was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmitVia {
    /// It presented a valid ticket for a reserved token.
    Ticket,
    /// It claimed a due promise credit.
    Promise,
    /// The bucket had a token.
    Bucket,
    /// The share of the rate kept for fresh arrivals had a token.
    Fresh,
    /// It waited in the caller's queue for its slot (queue mode, [`Decision::Queue`]); never returned by
    /// [`NodeAdmission::check`](super::NodeAdmission::check), offered for the caller's metrics when it forwards.
    Queue,
}

impl AdmitVia {
    /// Stable lowercase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ticket => "ticket",
            Self::Promise => "promise",
            Self::Bucket => "bucket",
            Self::Fresh => "fresh",
            Self::Queue => "queue",
        }
    }
}

/// The answer to one admission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward now.
    Admit {
        /// What paid for the token, for the caller's metrics.
        via: AdmitVia,
        /// What checking the presented ticket found, even if it did not pay (metrics, logs).
        ticket: TicketCheck,
    },
    /// Hold the request and forward it at `until`; the token is charged. If the client goes
    /// away before then, call [`NodeAdmission::refund`](super::NodeAdmission::refund) with `slot` so the token is not lost.
    /// Returned in queue mode, and also without it when forwards run ahead of the rate
    /// (pacing of bunched late claims, see the module doc): then `until` is only as far
    /// ahead as the bunch was late, and `slot == until`.
    Queue {
        /// When the caller should forward the held request.
        until: Nanos,
        /// The charged slot, to hand to [`NodeAdmission::refund`](super::NodeAdmission::refund)
        /// if the client leaves first.
        slot: Nanos,
        /// How it will have been admitted: [`AdmitVia::Queue`] in queue mode, else the
        /// ticket, promise or bucket whose forward is being paced.
        via: AdmitVia,
        /// `until` comes from the node's pacer (a forward held back because forwards ran
        /// ahead of the rate); else it is the slot (queue mode, a client held for its
        /// promise). Either way the caller asks
        /// [`NodeAdmission::release`](super::NodeAdmission::release) when it wakes.
        paced: bool,
        /// `until` is a turn the node's release gate gave this request (it was held back
        /// behind others): the caller presents it to
        /// [`NodeAdmission::release`](super::NodeAdmission::release), which serves turns
        /// in order.
        turn: bool,
        /// What checking the presented ticket found (metrics, logs).
        ticket_check: TicketCheck,
    },
    /// Refuse; tell the client to come back after `retry_after` (RFC 9110 §10.2.3), with
    /// `ticket` if it can carry one. `overflow`: the schedule is deeper than max_retry_after,
    /// nothing was reserved and the hint is only a guess.
    Reject {
        /// The Retry-After / close-reason delay that spaces returning clients at the rate.
        retry_after: Duration,
        /// The signed reservation for a ticket-capable client; `None` means a promise or
        /// overflow.
        ticket: Option<String>,
        /// Nothing was reserved, so the caller can count and log overload apart.
        overflow: bool,
        /// The client already holds its cap of slots on this node: it was given a place
        /// in its own queue and nothing was booked.
        capped: bool,
        /// The client holds a promise that the node will also hold for it if it comes back
        /// up to [`EARLY_HOLD`](super::EARLY_HOLD) early (a [`Decision::Queue`] until its
        /// slot): a whole-second `Retry-After` may round down instead of up.
        early_hold: bool,
        /// What checking the presented ticket found (metrics, logs).
        ticket_check: TicketCheck,
    },
}

impl Decision {
    /// What checking the presented ticket found.
    pub fn ticket_check(&self) -> TicketCheck {
        match self {
            Self::Admit { ticket, .. } => *ticket,
            Self::Queue { ticket_check, .. } | Self::Reject { ticket_check, .. } => *ticket_check,
        }
    }

    /// True for [`Decision::Admit`].
    pub fn is_admit(&self) -> bool {
        matches!(self, Self::Admit { .. })
    }
}

/// Counters of one node since it was created (they survive [`NodeAdmission::update_params`](super::NodeAdmission::update_params)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Admissions paid by a free bucket token: the node was below its rate.
    pub admitted_bucket: u64,
    /// Admissions that claimed a promise credit: ticketless clients coming back on time.
    pub admitted_promise: u64,
    /// Admissions by a valid ticket: ticket-capable clients coming back on time.
    pub admitted_ticket: u64,
    /// Rejections of any kind (with a promise, a ticket, or overflow).
    pub rejected: u64,
    /// Rejections because the schedule was full (nothing reserved).
    pub overflow: u64,
    /// Promise credits nobody claimed in their window.
    pub unclaimed_promises: u64,
    /// Reservations whose ticket was not presented in its window.
    pub unclaimed_reservations: u64,
    /// Requests told to wait in the caller's queue.
    pub queued: u64,
    /// Queued requests given back with [`NodeAdmission::refund`](super::NodeAdmission::refund).
    pub refunded: u64,
    /// Admissions held back ([`Decision::Queue`]) because forwards ran ahead of the rate.
    pub paced: u64,
    /// Promise credits created (rejections and hints).
    pub promised: u64,
    /// Tickets signed (reservations).
    pub reserved: u64,
    /// Slots handed out by [`NodeAdmission::hint`](super::NodeAdmission::hint).
    pub hinted: u64,
    /// Valid tickets reserved by another instance, charged here on claim.
    pub foreign_tickets: u64,
    /// Admissions from the share of the rate kept for fresh arrivals.
    pub admitted_fresh: u64,
    /// Rejections of a client already holding its cap of slots: a place in its own queue,
    /// nothing booked.
    pub capped: u64,
    /// Early tickets presented again: the same ticket back, nothing booked.
    pub reasked: u64,
    /// Reservations not claimed within their grace, released as public credits.
    pub released: u64,
    /// Clients back before their promise's slot, held until it (within [`EARLY_HOLD`](super::EARLY_HOLD)).
    pub held_early: u64,
    /// Held requests that woke later than their instant and were paced again at release,
    /// so that a stalled runtime never lets a bunch through.
    pub repaced: u64,
    /// Request heads held back at the node's door because writes ran ahead of the rate
    /// ([`NodeAdmission::pace_write`](super::NodeAdmission::pace_write)).
    pub write_paced: u64,
}

/// Sizes of the bounded per-node structures (for tests, simulators and /admin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSizes {
    /// Live promise credits: grows with ticketless clients waiting for their slot.
    pub promises: usize,
    /// Live reservations in the anti-replay ledger (at most [`super::RESERVATION_WINDOW`]).
    pub reservations: usize,
    /// Remembered foreign-ticket claims (at most [`super::FOREIGN_CLAIMS_CAP`]).
    pub foreign_claims: usize,
    /// Clients holding slots.
    pub owners: usize,
}
