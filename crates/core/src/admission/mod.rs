//! Admission: who may open a connection to which backend node, and when everyone else should
//! come back.
//!
//! - [`NodeAdmission`] (bucket.rs): per-node GCRA token bucket that owns the node's retry
//!   schedule: promises for ticketless clients, signed reservations for ticket-capable ones,
//!   optional queueing, slow start, reload without reset. Pure logic: every call takes `now`.
//! - [`AdmitInput`] / [`Decision`] (decision.rs): what a request brings and gets back, and
//!   the node's [`AdmissionStats`].
//! - [`TicketSigner`] / [`TicketKey`] (ticket.rs): compact HMAC tickets that fit in a
//!   WebSocket close reason, and [`node_id`], the stable id they name a node by.
//! - [`ClientLimiter`] (client_limit.rs): per-client new-connection limit.
//! - [`HandshakeLimiter`] (handshake.rs): TLS handshakes per second, charged at the
//!   ClientHello; [`FairQueue`] (fair.rs) serves the waiters in round robin by source.
//! - [`Clock`] (clock.rs): unix-aligned nanoseconds; [`ManualClock`] drives tests and
//!   simulators.
//!
//! Metrics are the caller's job: every [`Decision`] says how it was reached, and
//! [`NodeAdmission::stats`] holds what only the node can see (unclaimed promises and
//! reservations).

mod bucket;
mod client_limit;
mod clock;
mod decision;
mod fair;
mod handshake;
mod lanes;
mod owners;
mod params;
mod schedule;
mod ticket;

pub use bucket::{
    NodeAdmission, NodeAdmissionBuilder, EARLY_HOLD, EARLY_HOLD_AFTER, FOREIGN_CLAIMS_CAP,
    PROMISE_GRACE, RESERVATION_GRACE, RESERVATION_WINDOW, TICKET_EARLY_TOLERANCE,
};
pub use client_limit::{client_prefix, ClientKey, ClientLimiter};
pub use clock::{
    duration_to_nanos, Clock, ManualClock, MonotonicClock, Nanos, NANOS_PER_MILLI, NANOS_PER_SEC,
};
pub use decision::{AdmissionStats, AdmitInput, AdmitVia, Decision, StateSizes};
pub use fair::{FairQueue, SourceFull, WaiterId};
pub use handshake::HandshakeLimiter;
pub use lanes::{FRESH_IDLE, RELEASE_MARGIN, WAKE_ROOM};
pub use params::AdmissionParams;
pub use ticket::{
    node_id, TicketCheck, TicketClaims, TicketKey, TicketSigner, TICKET_KEY_MIN_LEN, TICKET_MAX_LEN,
};

/// Errors of the admission module; each names the offending setting or file and its value.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// A parameter is out of range.
    #[error("admission: {field} {expected}, got {got}")]
    InvalidParam {
        /// The setting's name as the config spells it, so the operator finds it.
        field: &'static str,
        /// The accepted range, in words.
        expected: &'static str,
        /// The rejected value as given.
        got: String,
    },
    /// A key given as bytes is too short.
    #[error("ticket key: {len} bytes, need at least {min}", min = TICKET_KEY_MIN_LEN)]
    KeyTooShort {
        /// The length given, in bytes.
        len: usize,
    },
    /// The ticket key file cannot be read or holds no usable key.
    #[error("ticket key file {path}: {reason}")]
    KeyFile {
        /// The file as configured.
        path: String,
        /// What was wrong with it (I/O error or content).
        reason: String,
    },
}
