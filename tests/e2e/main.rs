//! herdgate end to end over real sockets on loopback: a proxy started in this process (or
//! the herdgate binary as a child process, in `shutdown` and one `reload` test) between
//! real clients (tungstenite, rustls, the reference client, hand-made HTTP and frames,
//! Python's `websockets`) and real nodes.
//!
//! One binary (one link) for every test that starts a proxy. Run it with nextest: each
//! test then has a process of its own, which matters because herdgate's metrics recorder
//! is process-wide and many tests assert exact counts.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod access_log;
mod admin_cli;
mod admin_security;
mod admission;
mod attacks;
mod caps_client;
mod caps_handshake;
mod caps_timeouts;
mod core_http;
mod core_robustness;
mod core_tls;
mod core_ws;
mod dashboard;
mod drain;
mod drain_ticket;
mod fleet;
mod fleet_redis;
mod health;
mod health_hostile;
mod log_flood;
mod logs;
mod node_leg;
mod proxy_protocol;
mod reload;
mod reload_bad_values;
mod runtime_threads;
mod shards;
mod shutdown;
mod status_cli;
mod sticky;
mod sticky_hostile;
mod storm_keyless;
mod ticket_window;
mod tls_tunnel;
