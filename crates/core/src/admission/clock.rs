//! Time for admission decisions: nanoseconds since the UNIX epoch.
//!
//! Admission is pure logic: every decision takes `now` explicitly, and the caller gets it from a
//! [`Clock`]. Unix alignment matters because a ticket carries its slot as wall-clock time, so a
//! ticket issued by one herdgate instance can be checked by another one (clocks kept by NTP).
//! Within one process the time must never go backwards, hence [`MonotonicClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the UNIX epoch (u64 lasts until 2554).
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Nanoseconds in one millisecond.
pub const NANOS_PER_MILLI: u64 = 1_000_000;

/// A source of "now" for admission decisions.
pub trait Clock: Send + Sync {
    /// Current time, nanoseconds since the UNIX epoch; never decreases.
    fn now(&self) -> Nanos;
}

/// Saturating conversion of a duration to nanoseconds.
pub fn duration_to_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Monotonic, unix-aligned clock: the wall-clock reading taken once at construction plus the
/// monotonic time elapsed since. A wall-clock step (NTP, admin) after start does not move it,
/// so buckets and schedules never see time run backwards.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    base: Nanos,
    start: Instant,
}

impl MonotonicClock {
    /// Captures the current wall-clock time as the base.
    pub fn new() -> Self {
        // A clock set before 1970 is a broken host; count from 0 rather than fail.
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(duration_to_nanos)
            .unwrap_or(0);
        Self {
            base,
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        self.base
            .saturating_add(duration_to_nanos(self.start.elapsed()))
    }
}

/// A clock that only moves when told to: tests and simulators drive it.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Nanos) -> Self {
        Self {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the clock to `to`. Setting it backwards is allowed (a simulator may rewind between
    /// runs): admission arithmetic saturates, so it misjudges at worst, never panics.
    pub fn set(&self, to: Nanos) {
        self.now.store(to, Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(Duration::from_millis(2));
        assert_eq!(c.now(), 5 + 2 * NANOS_PER_MILLI);
        c.set(1);
        assert_eq!(c.now(), 1);
        c.set(u64::MAX - 1);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now(), u64::MAX);
    }

    #[test]
    fn monotonic_clock_is_unix_aligned_and_never_decreases() {
        let c = MonotonicClock::new();
        let a = c.now();
        // 2020-01-01 in ns: any sane host is past it.
        assert!(a > 1_577_836_800 * NANOS_PER_SEC);
        let b = c.now();
        assert!(b >= a);
    }
}
