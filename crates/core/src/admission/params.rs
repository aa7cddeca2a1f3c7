//! Per-node admission parameters and their validation.

use std::time::Duration;

use super::clock::NANOS_PER_SEC;
use super::AdmissionError;

/// How a backend node admits new connections. Plain data so config can build it; check it
/// with [`AdmissionParams::validate`] (the constructors of the state do).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionParams {
    /// Sustained admissions per second (GCRA emission interval T = 1/rate).
    pub rate: f64,
    /// Admissions allowed back to back when the node has been idle.
    pub burst: u32,
    /// Longest Retry-After handed out; a schedule deeper than this rejects with this hint and
    /// reserves nothing (the "overflow" case).
    pub max_retry_after: Duration,
    /// How late after its slot a ticket or promise may still be claimed. Clients that read only
    /// whole-second `Retry-After` (RFC 9110 §10.2.3) come back up to 1 s late: keep it >= 1 s.
    pub claim_window: Duration,
    /// Ramp time of slow start (0 = off): the effective rate (and burst) grows linearly from
    /// `slow_start_floor * rate` to `rate`.
    pub slow_start: Duration,
    /// Fraction of the rate a node starts at in slow start, in (0, 1].
    pub slow_start_floor: f64,
    /// Most slots one client (owner) may hold on this node at once, promises and
    /// reservations together; 0 = half a second of the rate (at least 4), so one client
    /// can push the schedule back by at most about half a second. Past the cap its requests
    /// queue behind its own slots (see owners.rs), so clients sharing an address still
    /// come back spaced at the rate.
    pub max_slots_per_client: u32,
    /// Share of the rate, in [0, 0.5], that is never booked for returning clients and
    /// stays with fresh arrivals (clients holding no slot).
    pub fresh_share: f64,
}

impl Default for AdmissionParams {
    fn default() -> Self {
        Self {
            rate: 100.0,
            burst: 10,
            max_retry_after: Duration::from_secs(60),
            claim_window: Duration::from_secs(2),
            slow_start: Duration::ZERO,
            slow_start_floor: 0.1,
            max_slots_per_client: 0,
            fresh_share: 0.0,
        }
    }
}

impl AdmissionParams {
    /// Defaults with the given rate and burst, validated.
    pub fn new(rate: f64, burst: u32) -> Result<Self, AdmissionError> {
        let p = Self {
            rate,
            burst,
            ..Self::default()
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks every field; the error names the field and the value.
    pub fn validate(&self) -> Result<(), AdmissionError> {
        let bad = |field: &'static str, expected: &'static str, got: String| {
            Err(AdmissionError::InvalidParam {
                field,
                expected,
                got,
            })
        };
        // T is kept in whole nanoseconds, so the rate cannot exceed 1e9/s.
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= NANOS_PER_SEC as f64) {
            return bad(
                "rate",
                "must be finite, > 0 and <= 1e9",
                self.rate.to_string(),
            );
        }
        if self.burst == 0 {
            return bad("burst", "must be >= 1", self.burst.to_string());
        }
        if self.max_retry_after.is_zero() {
            return bad(
                "max_retry_after",
                "must be > 0",
                format!("{:?}", self.max_retry_after),
            );
        }
        if !(self.slow_start_floor.is_finite()
            && self.slow_start_floor > 0.0
            && self.slow_start_floor <= 1.0)
        {
            return bad(
                "slow_start_floor",
                "must be in (0, 1]",
                self.slow_start_floor.to_string(),
            );
        }
        if !(self.fresh_share.is_finite() && (0.0..=0.5).contains(&self.fresh_share)) {
            return bad(
                "fresh_share",
                "must be in [0, 0.5]",
                self.fresh_share.to_string(),
            );
        }
        Ok(())
    }

    /// The slot cap in force (see [`AdmissionParams::max_slots_per_client`]).
    pub fn slots_per_client(&self) -> usize {
        match self.max_slots_per_client {
            0 => ((self.rate / 2.0).ceil() as usize).max(4),
            n => n as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_field_and_value() {
        assert!(AdmissionParams::new(500.0, 50).is_ok());
        for (rate, burst, field) in [
            (0.0, 1, "rate"),
            (-1.0, 1, "rate"),
            (f64::NAN, 1, "rate"),
            (f64::INFINITY, 1, "rate"),
            (2e9, 1, "rate"),
            (1.0, 0, "burst"),
        ] {
            let e = AdmissionParams::new(rate, burst).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let p = AdmissionParams {
            slow_start_floor: 0.0,
            ..AdmissionParams::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("slow_start_floor"));
        let p = AdmissionParams {
            max_retry_after: Duration::ZERO,
            ..AdmissionParams::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_retry_after"));
    }
}
