//! herdgate's pure cores: the decisions of the proxy with no I/O, no runtime and no config
//! types. Every function takes plain parameters and, where time matters, `now`; so each core
//! is tested exhaustively without sockets or tokio, and the simulator drives the very same
//! code on a virtual clock.
//!
//! - [`admission`]: per-node GCRA bucket and retry schedule (promises, reservations,
//!   tickets), per-client and handshake limiters, the unix-aligned clock.
//! - [`routing`]: stable key hash, weighted rendezvous and Maglev tables, the learned
//!   sticky table, sticky-key extraction from a request head.
//! - [`fleet`]: several instances sharing one node's rate: scaled parameters, demand,
//!   the fleet mode and status shown in reports.
//! - [`frame`]: the WebSocket frame-boundary tracker and close-frame codec used by the
//!   tunnel.
//! - [`proxy_protocol`]: the PROXY protocol (v1, v2) header parser; [`client_addr`]:
//!   trusted-proxy CIDRs and the `X-Forwarded-For` walk.
//!
//! The runtime (`herdgate`'s `server`, `proxy`, `tunnel`, ...) composes them; nothing here
//! imports from it. See ARCHITECTURE.md at the repository root.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod client_addr;
pub mod fleet;
pub mod frame;
pub mod proxy_protocol;
pub mod routing;
