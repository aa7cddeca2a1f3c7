//! systemd integration without systemd running: sd_notify(3) datagrams on real unix
//! sockets, and socket activation (sd_listen_fds(3)) with real sockets passed by
//! systemd-socket-activate(1) to a probe child process (see `probe`).
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Every binary includes the whole harness; this one uses a few pieces of it (free_addr,
// the systemd-socket-activate lookup, DEADLINE), so the rest is dead code here
// (and its re-exports unused imports).
#[allow(dead_code, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod listen;
mod notify;
mod probe;
