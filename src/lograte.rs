//! Rate-limited warnings: a storm of bad clients must not flood the journal.
//!
//! `warn_limited!` writes a `tracing::warn!` line through a [`LogLimiter`] of its own
//! call site: at most [`PER_SECOND`] lines per site and second; the rest are dropped and
//! counted (`herdgate_log_suppressed_total`), and the first line the site writes in a
//! later second is preceded by `suppressed N similar lines` (naming the site). Nothing
//! is allocated; a dropped line costs three atomic operations and is never formatted.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines one call site may write per second.
pub const PER_SECOND: u32 = 10;

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` lines of this site were dropped since it last wrote (report
    /// them first when non-zero).
    Write {
        /// Lines dropped before this one.
        suppressed: u64,
    },
    /// Drop it (already counted here; the caller counts the metric).
    Drop,
}

/// One call site's budget: a window of one second and the lines written and dropped in
/// it. Races between threads at a window's edge may let a line or two more through;
/// nothing is ever lost from the suppressed count.
#[derive(Debug)]
pub struct LogLimiter {
    window: AtomicU64,
    written: AtomicU32,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with nothing written yet (usable in a `static`).
    pub const fn new() -> Self {
        LogLimiter {
            window: AtomicU64::new(0),
            written: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// May a line be written now?
    pub fn admit(&self) -> Admit {
        self.admit_at(now_window(), PER_SECOND)
    }

    /// [`Self::admit`] in window `window` (seconds from any fixed start, from 1) with
    /// `max` lines per window.
    pub fn admit_at(&self, window: u64, max: u32) -> Admit {
        let cur = self.window.load(Ordering::Acquire);
        if window > cur
            && self
                .window
                .compare_exchange(cur, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This line opens the window: it is written, and reports what was dropped.
            self.written.store(1, Ordering::Release);
            let suppressed = self.suppressed.swap(0, Ordering::AcqRel);
            return if max == 0 {
                self.suppressed.fetch_add(suppressed + 1, Ordering::AcqRel);
                Admit::Drop
            } else {
                Admit::Write { suppressed }
            };
        }
        if self.written.fetch_add(1, Ordering::AcqRel) < max {
            Admit::Write { suppressed: 0 }
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            Admit::Drop
        }
    }
}

/// The current window: whole seconds since the first call, plus one.
fn now_window() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() + 1
}

/// `tracing::warn!` through a limiter of this call site (see the module documentation).
/// Takes the same arguments as `tracing::warn!`.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::lograte::LogLimiter = $crate::lograte::LogLimiter::new();
        match LIMITER.admit() {
            $crate::lograte::Admit::Write { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!(
                        site = concat!(file!(), ":", line!()),
                        suppressed,
                        "suppressed {suppressed} similar lines"
                    );
                }
                tracing::warn!($($arg)+);
            }
            $crate::lograte::Admit::Drop => {
                metrics::counter!($crate::metrics::LOG_SUPPRESSED).increment(1);
            }
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_window_and_the_rest_reported_once() {
        let l = LogLimiter::new();
        let mut written = 0;
        for _ in 0..100 {
            if let Admit::Write { suppressed } = l.admit_at(1, 10) {
                assert_eq!(suppressed, 0);
                written += 1;
            }
        }
        assert_eq!(written, 10);
        // The next window: its first line reports the 90 dropped, and only it.
        assert_eq!(l.admit_at(2, 10), Admit::Write { suppressed: 90 });
        assert_eq!(l.admit_at(2, 10), Admit::Write { suppressed: 0 });
        // A window with nothing dropped reports nothing.
        assert_eq!(l.admit_at(5, 10), Admit::Write { suppressed: 0 });
    }

    #[test]
    fn an_old_window_never_resets_the_budget() {
        let l = LogLimiter::new();
        for _ in 0..3 {
            l.admit_at(7, 3);
        }
        assert_eq!(l.admit_at(7, 3), Admit::Drop);
        assert_eq!(
            l.admit_at(6, 3),
            Admit::Drop,
            "a late thread's older window"
        );
        assert_eq!(l.admit_at(8, 3), Admit::Write { suppressed: 2 });
    }

    #[test]
    fn many_threads_write_at_most_the_budget_and_count_the_rest() {
        let l = std::sync::Arc::new(LogLimiter::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| matches!(l.admit_at(3, 10), Admit::Write { .. }))
                        .count()
                })
            })
            .collect();
        let written: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The window's opening may race once per thread; nothing dropped goes uncounted.
        assert!((10..=13).contains(&written), "{written}");
        let dropped = 4000 - written as u64;
        assert_eq!(
            l.admit_at(4, 10),
            Admit::Write {
                suppressed: dropped
            }
        );
    }
}
