//! When to try again: jittered exponential backoff, overridden by server hints.
//!
//! Pure and deterministic given the rng, so the storm bench can replay a herd and the
//! tests can check every bound.
//!
//! # Why a hint resets the backoff
//!
//! The exponent counts *consecutive attempts on which the server told us nothing*
//! (refused, timed out, reset, a rejection without a hint). A hint is the server saying
//! "I am alive, and this is your slot": it has already spread the herd over time at the
//! rate the node can take, so
//! - the client waits exactly the hinted delay, with **no client jitter on top** (jitter
//!   would move the client out of the slot the server reserved for it), and
//! - obeying the hint does not grow the exponent; it resets it to zero. If the very next
//!   attempt fails blindly (say the node died meanwhile), the client starts again at its
//!   base delay instead of inheriting a 30 s wait earned while the server was talking
//!   to it. The server that gave the hint will give another if it is still overloaded.
//!
//! `max_retries` therefore bounds consecutive blind failures, not hinted retries: a
//! client obeying hints is doing what the server asked, and giving up on it would only
//! throw away its place. Put a deadline around the whole loop for a wall-clock bound.

use std::time::Duration;

use rand::Rng;

use crate::hint::Hint;
use crate::Outcome;

/// Smallest per-client base delay (the seeds: base uniform in 100–500 ms).
pub const BASE_MIN: Duration = Duration::from_millis(100);
/// Largest per-client base delay.
pub const BASE_MAX: Duration = Duration::from_millis(500);
/// Ceiling of the un-jittered delay.
pub const DEFAULT_CAP: Duration = Duration::from_secs(30);

/// Jittered exponential backoff: `min(base * 2^attempt, cap)` times uniform ±50 %.
///
/// The cap applies before the jitter, so a capped client waits 15–45 s. Clamping after
/// the jitter instead would pile every capped client onto exactly `cap`: a new herd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    max_retries: Option<u32>,
}

impl Backoff {
    /// A client's backoff with its base drawn uniformly from [`BASE_MIN`]..=[`BASE_MAX`]
    /// (microsecond resolution), so that clients dropped together do not stay in step.
    pub fn new<R: Rng + ?Sized>(rng: &mut R) -> Backoff {
        let lo = BASE_MIN.as_micros() as u64;
        let hi = BASE_MAX.as_micros() as u64;
        Backoff::with_base(Duration::from_micros(rng.gen_range(lo..=hi)), DEFAULT_CAP)
    }

    /// A backoff with a fixed base and cap (the full-jitter seed uses 1 s and 30 s).
    pub fn with_base(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            max_retries: None,
        }
    }

    /// Allow `max` retries after consecutive blind failures; the failure after that
    /// gets `None` (give up). `0` means "one attempt, no retry".
    pub fn with_max_retries(mut self, max: u32) -> Backoff {
        self.max_retries = Some(max);
        self
    }

    /// This client's base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Ceiling of the un-jittered delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Consecutive blind failures so far (the exponent of the next delay).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The configured limit on retries after consecutive blind failures, if any.
    pub fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    /// `min(base * 2^attempt, cap)` for the next delay, before jitter. Saturates
    /// instead of overflowing however many attempts were made.
    pub fn ceiling(&self) -> Duration {
        let base = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let factor = 1u64.checked_shl(self.attempt).unwrap_or(u64::MAX);
        Duration::from_nanos(base.saturating_mul(factor)).min(self.cap)
    }

    /// The next delay, ±50 % around [`Backoff::ceiling`], and count the attempt.
    /// `None` once `max_retries` is reached.
    pub fn next_jittered<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<Duration> {
        let c = self.take()?;
        let lo = c / 2;
        let hi = c.saturating_add(c / 2);
        Some(Duration::from_nanos(rng.gen_range(lo..=hi)))
    }

    /// "Full jitter": uniform in `0..=ceiling`, and count the attempt.
    pub fn next_full_jitter<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<Duration> {
        let c = self.take()?;
        Some(Duration::from_nanos(rng.gen_range(0..=c)))
    }

    /// Count one attempt without drawing a delay (strategies with constant delays).
    pub fn next_attempt(&mut self) -> Option<()> {
        self.take().map(|_| ())
    }

    /// Back to attempt 0 (after a connection or an obeyed hint); the base stays.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The current ceiling in nanoseconds, then one more attempt; `None` if exhausted.
    fn take(&mut self) -> Option<u64> {
        if self.max_retries.is_some_and(|max| self.attempt >= max) {
            return None;
        }
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Some(ceiling)
    }
}

/// Reconnect strategies the storm bench compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Retry at once, ignoring hints: the naive loop that makes storms.
    Immediate,
    /// Retry after a constant delay, ignoring hints.
    Fixed(Duration),
    /// The seeds' full jitter, `random(0, min(cap, base * 2^n))`, ignoring hints.
    FullJitter,
    /// The reference policy: obey hints (ticket first), else ±50 % jittered backoff.
    /// With `tickets`, announce ticket support and present tickets we are given.
    Herdgate {
        /// Send `herdgate-accept-ticket: 1` and echo tickets back.
        tickets: bool,
    },
    /// What most WebSocket libraries and load generators do: obey the standard
    /// `Retry-After` header (whole seconds) and nothing else (no `retry-after-ms`, no
    /// ticket, no cookie, no close reason); without one, the reference jittered backoff.
    RetryAfterHeader,
}

/// Per-client reconnect state: a strategy, its backoff, and a ticket to present next.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    strategy: Strategy,
    backoff: Backoff,
    ticket: Option<Box<str>>,
}

impl ReconnectPolicy {
    /// A policy with this client's base delay drawn from `rng` (see [`Backoff::new`]).
    pub fn new<R: Rng + ?Sized>(strategy: Strategy, rng: &mut R) -> ReconnectPolicy {
        ReconnectPolicy::with_backoff(strategy, Backoff::new(rng))
    }

    /// A policy with an explicit backoff (fixed base, max retries...).
    pub fn with_backoff(strategy: Strategy, backoff: Backoff) -> ReconnectPolicy {
        ReconnectPolicy {
            strategy,
            backoff,
            ticket: None,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The backoff state.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Whether the next attempt should announce ticket support.
    pub fn accept_tickets(&self) -> bool {
        matches!(self.strategy, Strategy::Herdgate { tickets: true })
    }

    /// Whether this strategy obeys server hints at all.
    pub fn honours_hints(&self) -> bool {
        matches!(
            self.strategy,
            Strategy::Herdgate { .. } | Strategy::RetryAfterHeader
        )
    }

    /// The ticket to present on the next attempt, if the last hint gave one.
    pub fn ticket(&self) -> Option<&str> {
        self.ticket.as_deref()
    }

    /// How long to wait before the next attempt, given how the last one ended.
    ///
    /// `None` means "do not retry": either the attempt connected (the backoff and the
    /// ticket are reset for the next disconnection) or `max_retries` is spent.
    ///
    /// For [`Strategy::Herdgate`] the precedence is the hint's ([`super::HintSource`]
    /// order): a ticket with its exact delay, then `retry-after-ms` / `Retry-After`,
    /// then a 1013/1012 close reason, else jittered exponential backoff.
    pub fn next_delay<C, R: Rng + ?Sized>(
        &mut self,
        outcome: &Outcome<C>,
        rng: &mut R,
    ) -> Option<Duration> {
        match outcome {
            Outcome::Connected(_) => {
                self.on_connected();
                None
            }
            Outcome::Rejected(rejection) => self.schedule(rejection.hint.as_ref(), rng),
            Outcome::Failed(_) => self.schedule(None, rng),
        }
    }

    /// How long to wait after an established connection closed, given the close's hint
    /// (1012 on drain carries one; 1001 and abnormal closes do not).
    pub fn after_close<R: Rng + ?Sized>(
        &mut self,
        hint: Option<&Hint>,
        rng: &mut R,
    ) -> Option<Duration> {
        self.schedule(hint, rng)
    }

    /// A connection succeeded: the next disconnection starts from attempt 0.
    pub fn on_connected(&mut self) {
        self.backoff.reset();
        self.ticket = None;
    }

    fn schedule<R: Rng + ?Sized>(&mut self, hint: Option<&Hint>, rng: &mut R) -> Option<Duration> {
        // A ticket is good for one slot: whatever happens next, the old one is spent.
        self.ticket = None;
        match self.strategy {
            Strategy::Immediate => self.backoff.next_attempt().map(|()| Duration::ZERO),
            Strategy::Fixed(delay) => self.backoff.next_attempt().map(|()| delay),
            Strategy::FullJitter => self.backoff.next_full_jitter(rng),
            Strategy::RetryAfterHeader => match hint.and_then(|h| h.header) {
                Some(delay) => {
                    self.backoff.reset();
                    Some(delay)
                }
                None => self.backoff.next_jittered(rng),
            },
            Strategy::Herdgate { tickets } => match hint {
                Some(hint) => {
                    self.backoff.reset();
                    if tickets {
                        self.ticket = hint.ticket.as_deref().map(Box::from);
                    }
                    Some(hint.retry_after)
                }
                None => self.backoff.next_jittered(rng),
            },
        }
    }
}
