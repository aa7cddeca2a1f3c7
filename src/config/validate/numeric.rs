//! Numeric bounds: every value that would panic or overflow where it is used (a semaphore
//! size, a governor quota, a preallocated cache, a nanosecond product) is refused here, with
//! the key, instead of failing inside the reload task. Values serde or the checks in
//! [`super::validate`] already refuse (0, negative, NaN) are not reported twice.

use super::super::Config;
use super::Report;
use toml::Spanned;

/// Largest connection cap: tokio's `Semaphore` panics above it.
pub const MAX_CONNECTIONS: usize = tokio::sync::Semaphore::MAX_PERMITS;
/// Highest rate (per second) anywhere: rates are kept as whole-nanosecond intervals.
pub const MAX_RATE: f64 = 1e9;
/// Lowest rate (per second) anywhere: one per 11.6 days; below it intervals stop being
/// meaningful and products with them overflow.
pub const MIN_RATE: f64 = 1e-6;
/// Longest `burst / rate` of a token bucket: governor multiplies the two in nanoseconds.
pub const MAX_BURST_SECONDS: f64 = 365.0 * 86_400.0;
/// Largest TLS session cache: rustls allocates it whole when the listener is built.
pub const MAX_SESSION_CACHE: usize = 1_000_000;
/// Largest request head: hyper's read buffer may grow to it per connection.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Adds an error for every out-of-range number in `cfg`.
pub(super) fn check(cfg: &Config, r: &mut Report) {
    let none: Option<&Spanned<String>> = None;
    if cfg.limits.max_connections > MAX_CONNECTIONS {
        r.at(
            "limits.max_connections".into(),
            none,
            format!(
                "must be at most {MAX_CONNECTIONS}, got {}",
                cfg.limits.max_connections
            ),
        );
    }
    if cfg.limits.max_header_bytes > MAX_HEADER_BYTES {
        r.at(
            "limits.max_header_bytes".into(),
            none,
            format!(
                "must be at most {MAX_HEADER_BYTES} (1 MiB), got {}",
                cfg.limits.max_header_bytes
            ),
        );
    }

    for (i, l) in cfg.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        let at = Some(&l.name);
        if let Some(max) = l.max_connections.filter(|&m| m > MAX_CONNECTIONS) {
            r.at(
                format!("{key}.max_connections"),
                at,
                format!("must be at most {MAX_CONNECTIONS}, got {max}"),
            );
        }
        if l.handshake_burst == Some(0) {
            r.at(format!("{key}.handshake_burst"), at, "must be >= 1, got 0");
        }
        if let Some(hps) = l
            .handshakes_per_second
            .filter(|v| v.is_finite() && *v > 0.0)
        {
            let key = format!("{key}.handshakes_per_second");
            if rate_in_range(r, &key, at, hps) {
                let burst = l
                    .handshake_burst
                    .unwrap_or((hps / 10.0).ceil().max(1.0) as u32);
                burst_in_range(r, &format!("{key}/handshake_burst"), at, hps, burst);
            }
        }
        if let Some(tls) = &l.tls {
            if tls.session_cache > MAX_SESSION_CACHE {
                r.at(
                    format!("{key}.tls.session_cache"),
                    at,
                    format!(
                        "must be at most {MAX_SESSION_CACHE}, got {}",
                        tls.session_cache
                    ),
                );
            }
        }
    }

    for (i, p) in cfg.pools.iter().enumerate() {
        let key = format!("pool[{i}]");
        let at = Some(&p.name);
        if p.admit_rate.is_finite() && p.admit_rate > 0.0 {
            rate_in_range(r, &format!("{key}.admit_rate"), at, p.admit_rate);
        }
        if let Some(d) = p.drain_rate.filter(|v| v.is_finite() && *v > 0.0) {
            rate_in_range(r, &format!("{key}.drain_rate"), at, d);
        }
        if let Some(h) = &p.health {
            if h.passive_failures == 0 {
                r.at(
                    format!("{key}.health.passive_failures"),
                    at,
                    "must be > 0, got 0",
                );
            }
        }
        for (j, n) in p.nodes.iter().enumerate() {
            if let Some(rate) = n.admit_rate.filter(|v| v.is_finite() && *v > 0.0) {
                rate_in_range(
                    r,
                    &format!("{key}.node[{j}].admit_rate"),
                    Some(&n.name),
                    rate,
                );
            }
        }
    }

    for (i, route) in cfg.routes.iter().enumerate() {
        let key = format!("route[{i}]");
        let at = Some(&route.pool);
        if let Some(c) = &route.client_limit {
            if c.rate.is_finite()
                && c.rate > 0.0
                && c.burst > 0
                && rate_in_range(r, &format!("{key}.client_limit.rate"), at, c.rate)
            {
                burst_in_range(r, &format!("{key}.client_limit.burst"), at, c.rate, c.burst);
            }
        }
        if let Some(s) = &route.sticky {
            if s.max_entries_per_client == 0 {
                r.at(
                    format!("{key}.sticky.max_entries_per_client"),
                    at,
                    "must be > 0, got 0",
                );
            }
        }
    }
}

/// Reports `rate` outside [`MIN_RATE`, `MAX_RATE`]; true when it is inside.
fn rate_in_range(r: &mut Report, key: &str, at: Option<&Spanned<String>>, rate: f64) -> bool {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        return true;
    }
    r.at(
        key.to_string(),
        at,
        format!("must be between {MIN_RATE:?} and {MAX_RATE:?} per second, got {rate:?}"),
    );
    false
}

/// Reports a bucket whose `burst / rate` is longer than [`MAX_BURST_SECONDS`].
fn burst_in_range(r: &mut Report, key: &str, at: Option<&Spanned<String>>, rate: f64, burst: u32) {
    let secs = f64::from(burst) / rate;
    if secs > MAX_BURST_SECONDS {
        r.at(
            key.to_string(),
            at,
            format!(
                "burst {burst} at rate {rate:?}/s takes {secs:.0} s to refill; at most \
                 {MAX_BURST_SECONDS:.0} s (one year)"
            ),
        );
    }
}
