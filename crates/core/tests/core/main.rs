//! herdgate-core's integration tests, one binary (one link): the admission scheduler's
//! properties on a fake clock and the routing properties over 100,000 keys.

// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission_hostile;
mod admission_node;
mod admission_sim;
mod admission_storm;
mod routing_props;
