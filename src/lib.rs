//! herdgate: an edge connection admission layer for WebSocket fleets.
#![forbid(unsafe_code)]

pub mod admission;
pub mod client;
pub mod routing;
pub mod systemd;
pub mod websocket;
