//! Admission at run time: node admission state built from the config, the request's
//! ticket, per-decision metrics, drain hints and slow start on recovery ([`gate`]).
//! The pure parts (bucket, schedule, tickets, per-client and handshake limiters, the
//! clock) live in [`herdgate_core::admission`] and are re-exported here.

pub mod gate;

pub use gate::{apply_snapshot, node_rate_backlog, on_node_up, refresh_gauges, RouteLimiter};
pub use herdgate_core::admission::*;
