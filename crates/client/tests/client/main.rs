//! herdgate-client's integration tests, one binary (one link): hint parsing, the backoff
//! policy, and the client against scripted servers on loopback.

// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_conn;
mod client_hint;
mod client_policy;
