//! Per-client limit on new connections (by IP or by an authenticated client id), so that one
//! client reconnecting in a tight loop cannot eat a node's admission budget.
//!
//! A governor keyed GCRA over a DashMap. Keyed governor stores never evict on their own:
//! call [`ClientLimiter::retain_recent`] periodically (every few seconds) or the map grows by
//! one entry per distinct client ever seen.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::AdmissionError;

/// Who a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The peer address (or the address from a trusted forwarding header).
    Ip(IpAddr),
    /// A client id the caller extracted (token subject, device id).
    Id(Box<str>),
}

/// The address a client is limited by: IPv4 as is (IPv4-mapped IPv6 folded to IPv4), IPv6
/// masked to its /64, because one subscriber or one host routinely holds a whole /64 and
/// could otherwise take a fresh identity per connection.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

/// Builds a governor quota from a per-second rate and a burst, naming `what` in errors.
pub(crate) fn quota(what: &'static str, rate: f64, burst: u32) -> Result<Quota, AdmissionError> {
    let bad_rate = || AdmissionError::InvalidParam {
        field: what,
        expected: "rate must be finite and > 0",
        got: rate.to_string(),
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(bad_rate());
    }
    let burst = NonZeroU32::new(burst).ok_or(AdmissionError::InvalidParam {
        field: what,
        expected: "burst must be >= 1",
        got: burst.to_string(),
    })?;
    let period = Duration::try_from_secs_f64(1.0 / rate).map_err(|_| bad_rate())?;
    // governor multiplies the period by the burst in u64 nanoseconds, unchecked.
    let tau = period
        .as_nanos()
        .saturating_mul(u128::from(burst.get() - 1));
    if u64::try_from(period.as_nanos()).is_err() || u64::try_from(tau).is_err() {
        return Err(AdmissionError::InvalidParam {
            field: what,
            expected: "burst / rate must fit in 584 years",
            got: format!("rate {rate}, burst {burst}"),
        });
    }
    Ok(Quota::with_period(period)
        .ok_or_else(bad_rate)?
        .allow_burst(burst))
}

/// New-connection limiter keyed by client.
pub struct ClientLimiter<K = ClientKey, C = DefaultClock>
where
    K: Hash + Eq + Clone,
    C: GovernorClock,
{
    limiter: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
}

impl<K: Hash + Eq + Clone> ClientLimiter<K, DefaultClock> {
    /// `rate` new connections per second per client, `burst` back to back.
    pub fn new(rate: f64, burst: u32) -> Result<Self, AdmissionError> {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: GovernorClock> ClientLimiter<K, C> {
    /// Same with an injected clock (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(rate: f64, burst: u32, clock: C) -> Result<Self, AdmissionError> {
        let quota = quota("client_limit", rate, burst)?;
        Ok(Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock),
        })
    }

    /// Counts one new connection from `key`; `Err(retry_after)` if it is over its limit.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets clients whose state is indistinguishable from fresh (idle for one period).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Number of clients tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// True if no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv6Addr;

    #[test]
    fn ipv6_clients_are_one_per_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_prefix(a), client_prefix(b));
        assert_ne!(client_prefix(a), client_prefix(other));
        assert_eq!(
            client_prefix(a),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_prefix(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_prefix(v4), v4);
    }

    #[test]
    fn quotas_that_would_overflow_are_errors_not_panics() {
        // governor computes period * (burst - 1) in u64 nanoseconds.
        for (rate, burst) in [
            (1e-9, u32::MAX),
            (1e-12, 2),
            (1e-300, 1),
            (f64::MIN_POSITIVE, 1),
        ] {
            let e = quota("client_limit", rate, burst).unwrap_err();
            assert!(matches!(
                e,
                AdmissionError::InvalidParam {
                    field: "client_limit",
                    ..
                }
            ));
        }
        assert!(quota("client_limit", 1e9, u32::MAX).is_ok());
        assert!(quota("client_limit", 1.0, u32::MAX).is_ok());
    }

    #[test]
    fn limits_per_key_and_hints_retry() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::<ClientKey, _>::with_clock(2.0, 2, clock.clone()).unwrap();
        let a = ClientKey::Id("alice".into());
        let b = ClientKey::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(l.check(&a), Ok(()));
        assert_eq!(l.check(&a), Ok(()));
        assert_eq!(l.check(&a), Err(Duration::from_millis(500)));
        assert_eq!(l.check(&b), Ok(()), "keys are independent");
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(&a), Ok(()));
    }

    #[test]
    fn a_million_keys_are_evicted_once_idle() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::<IpAddr, _>::with_clock(1.0, 3, clock.clone()).unwrap();
        const N: u128 = 1_000_000;
        for i in 0..N {
            let ip = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i));
            assert!(l.check(&ip).is_ok());
        }
        assert_eq!(l.len(), N as usize);
        l.retain_recent();
        assert_eq!(l.len(), N as usize, "nobody idle yet");
        clock.advance(Duration::from_secs(2));
        l.retain_recent();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn rejects_bad_params() {
        for (rate, burst) in [(0.0, 1), (f64::NAN, 1), (1.0, 0), (-3.0, 1)] {
            let e = ClientLimiter::<IpAddr>::new(rate, burst).err().unwrap();
            assert!(e.to_string().contains("client_limit"), "{e}");
        }
    }
}
