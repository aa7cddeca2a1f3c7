//! The one harness of herdgate's integration tests. Every test binary (`tests/e2e`,
//! `tests/logic`, `tests/systemd`) includes this tree as `mod support;`.
//!
//! One of each, by concern:
//!
//! | module | what |
//! | --- | --- |
//! | [`wait`] | `DEADLINE`, `within` (one step, bounded) and `eventually` (a condition, polled until the deadline) |
//! | [`net`] | `free_addr` (a port for a child process, outside the ephemeral range), connecting from a chosen source address |
//! | [`tls`] | the certificate helper (rcgen) and TLS client configs |
//! | [`metrics`] | the Prometheus text parser |
//! | [`proxy`] | herdgate in this process: configs, start/stop, admin and routing introspection |
//! | [`redis`] | a real `redis-server` (fleet tests): start, kill, restart on the same port, INFO stats |
//! | [`process`] | herdgate as a child process (`CARGO_BIN_EXE_herdgate`), and `systemd-socket-activate` |
//! | [`http1`] | hand-made HTTP/1.1 clients and response reading |
//! | [`ws`] | WebSocket clients (tungstenite) and hand-made frames |
//! | [`nodes`] | backends: echo nodes and fleets of them, plain HTTP nodes, scripted nodes |
//! | [`stream`] | fleets of streaming WebSocket clients that check every echo |
//!
//! Real sockets on loopback; no sleep is a synchronisation and no test asserts on
//! wall-clock time: a test waits on an event, or polls with [`eventually`], and every
//! wait is bounded by [`DEADLINE`].

pub mod http1;
pub mod metrics;
pub mod net;
pub mod nodes;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod stream;
pub mod tls;
pub mod wait;
pub mod ws;

pub use wait::{eventually, eventually_within, within, DEADLINE};

// What the tests use of herdgate besides the proxy library: the workspace's reference
// client and echo node crates.
/// The proxy's admission clock (nanoseconds), to read a node's effective rate "now".
pub use herdgate::clock::now;
/// The reference client (`connect_once`, `Target`, `Hint`, ...).
pub use herdgate_client as client;
/// The echo node every WebSocket test talks to.
pub use herdgate_echo::EchoNode;
