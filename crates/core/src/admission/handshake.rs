//! Listener-level cap on TLS handshakes per second.
//!
//! Over TLS a limiter that acts after the handshake still pays a full handshake per retry;
//! in a storm that alone saturates the CPU (measured against nginx and HAProxy in benches/STORM.md).
//! The listener charges it once a ClientHello has been read and before the expensive part
//! of the handshake (key exchange, signature): a bare TCP connect that never sends a
//! ClientHello takes no token. When tokens are short, waiters are served in round robin
//! by source ([`super::FairQueue`]).

use std::future::Future;
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::RateLimiter;

use super::client_limit::quota;
use super::AdmissionError;

/// Handshakes-per-second gate, charged at the ClientHello.
pub struct HandshakeLimiter<C = DefaultClock>
where
    C: GovernorClock,
{
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
}

impl HandshakeLimiter<DefaultClock> {
    /// At most `rate` handshakes per second, `burst` back to back.
    pub fn new(rate: f64, burst: u32) -> Result<Self, AdmissionError> {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: GovernorClock> HandshakeLimiter<C> {
    /// Same with an injected clock.
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Result<Self, AdmissionError> {
        Ok(Self {
            limiter: RateLimiter::direct_with_clock(quota("handshake_rate", rate, burst)?, clock),
        })
    }

    /// Takes a handshake token if one is available now.
    pub fn try_acquire(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// Waits until a token is available and takes it, sleeping with `sleep` (the runtime's
    /// timer in the listener, a fake clock in tests: this core knows no runtime).
    pub async fn until_ready_with<F, Fut>(&self, mut sleep: F)
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            match self.limiter.check() {
                Ok(()) => return,
                // Re-check after the wait: another acceptor may have taken the token.
                Err(not_until) => sleep(not_until.wait_time_from(self.limiter.clock().now())).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn caps_handshakes_per_second() {
        let clock = FakeRelativeClock::default();
        let l = HandshakeLimiter::with_clock(100.0, 10, clock.clone()).unwrap();
        let burst = (0..20).filter(|_| l.try_acquire()).count();
        assert_eq!(burst, 10);
        // Over one more second: exactly 100 more.
        let mut got = 0;
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(1));
            got += usize::from(l.try_acquire());
        }
        assert_eq!(got, 100);
    }

    /// Polls a future whose every await is ready at once (the injected sleep here).
    fn run_ready<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the fake sleep is always ready"),
        }
    }

    #[test]
    fn until_ready_waits_exactly_the_gap() {
        let clock = FakeRelativeClock::default();
        let l = HandshakeLimiter::with_clock(10.0, 1, clock.clone()).unwrap();
        let mut waited = Duration::ZERO;
        for _ in 0..5 {
            run_ready(l.until_ready_with(|d| {
                waited += d;
                clock.advance(d);
                std::future::ready(())
            }));
        }
        // The first is free, then 4 gaps of 100 ms.
        assert_eq!(waited, Duration::from_millis(400));
        assert!(!l.try_acquire());
    }

    #[test]
    fn rejects_bad_params() {
        assert!(HandshakeLimiter::new(0.0, 1).is_err());
        assert!(HandshakeLimiter::new(1.0, 0).is_err());
    }
}
