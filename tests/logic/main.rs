//! Checks that start no proxy: what herdgate makes of config files (in this process, and
//! through `herdgate check`).
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Every binary includes the whole harness; this one uses a sliver of it (the path of the
// herdgate binary), so the rest is dead code here
// (and its re-exports unused imports).
#[allow(dead_code, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

mod admin_config;
mod config_errors;
mod config_limits;
mod fleet_grant;
mod identity_config;
