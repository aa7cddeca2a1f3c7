//! The process clock: monotonic, unix-aligned nanoseconds for every admission decision.

use herdgate_core::admission::{Clock, MonotonicClock, Nanos};
use std::sync::OnceLock;

/// The process clock: monotonic, unix-aligned (tickets carry unix time so that several
/// instances agree on slots).
pub fn clock() -> &'static MonotonicClock {
    static C: OnceLock<MonotonicClock> = OnceLock::new();
    C.get_or_init(MonotonicClock::new)
}

/// Now on the [`clock`].
pub fn now() -> Nanos {
    clock().now()
}
