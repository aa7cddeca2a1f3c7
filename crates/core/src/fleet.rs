//! Fleet admission, the pure parts: several herdgate instances in front of the same nodes
//! each admit a *share* of every node's rate, so that summed over the instances a node
//! sees at most its configured rate.
//!
//! - [`AdmissionParams::scaled`]: one instance's part of a node's parameters.
//! - [`static_share`]: the share with no shared store, `1 / instances`.
//! - [`DemandMeter`]: decisions per second a node saw here, from its counters.
//! - [`FleetStatus`] / [`FleetView`]: what the runtime last applied, for reports.
//! - [`Link`]: the store's reachability, so that a fallback is logged once, not per try.
//!
//! - [`grant`]: the grant of `src/fleet/grant.lua` as a pure function (max-min fair
//!   shares over demand), for the simulator; a test pins it to the script.
//!
//! The shares themselves are granted by the runtime (`src/fleet/`) from Redis.

pub mod grant;

use crate::admission::{AdmissionParams, AdmissionStats, Nanos, NANOS_PER_SEC};
use std::collections::HashMap;
use std::sync::Mutex;

/// The smallest share applied: a rate must stay above zero, and an instance granted
/// nothing still answers with hints spaced at a (very low) rate.
pub const MIN_SHARE: f64 = 0.001;

impl AdmissionParams {
    /// This instance's part of a node's parameters: `rate × share` and `burst × share`
    /// rounded down but at least 1. `share` is clamped to `[MIN_SHARE, 1]` (NaN counts as
    /// `MIN_SHARE`); everything else (claim window, caps, slow start) is kept. Summed
    /// over instances whose shares sum to at most 1, the rates sum to at most `rate` and
    /// the bursts to at most `burst + instances`.
    pub fn scaled(&self, share: f64) -> AdmissionParams {
        let share = clamp_share(share);
        if share >= 1.0 {
            return self.clone();
        }
        let burst = (f64::from(self.burst) * share).floor();
        AdmissionParams {
            rate: self.rate * share,
            // `as` saturates; the value is in [1, burst] here.
            burst: (burst as u32).max(1),
            ..self.clone()
        }
    }
}

/// A share made safe to apply: in `[MIN_SHARE, 1]`, NaN as `MIN_SHARE`.
pub fn clamp_share(share: f64) -> f64 {
    if share.is_nan() {
        MIN_SHARE
    } else {
        share.clamp(MIN_SHARE, 1.0)
    }
}

/// The static share of one instance out of `instances` (0 counts as 1).
pub fn static_share(instances: u32) -> f64 {
    1.0 / f64::from(instances.max(1))
}

/// The instance count a fallback divides by: the configured count if any, else the live
/// members last seen in the store, else 1.
pub fn fallback_instances(configured: Option<u32>, last_seen: Option<u32>) -> u32 {
    configured.or(last_seen).unwrap_or(1).max(1)
}

/// Every admission decision a node's counters hold (admissions, rejections, holds).
pub fn decisions(s: &AdmissionStats) -> u64 {
    s.admitted_bucket
        .saturating_add(s.admitted_promise)
        .saturating_add(s.admitted_ticket)
        .saturating_add(s.admitted_fresh)
        .saturating_add(s.rejected)
        .saturating_add(s.queued)
}

/// Demand seen by one node on this instance: decisions per second between two readings.
#[derive(Debug, Default, Clone)]
pub struct DemandMeter {
    last: Option<(u64, Nanos)>,
}

impl DemandMeter {
    /// Read the node's decision count at `now`; the demand (per second) since the last
    /// reading, 0 on the first one or when no time passed.
    pub fn sample(&mut self, count: u64, now: Nanos) -> f64 {
        let out = match self.last {
            Some((c, t)) if now > t => {
                count.saturating_sub(c) as f64 * NANOS_PER_SEC as f64 / (now - t) as f64
            }
            _ => 0.0,
        };
        self.last = Some((count, now));
        out
    }
}

/// How this instance admits right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FleetMode {
    /// No shared store: `1 / instances` of each node (1 without `[fleet]`).
    #[default]
    Static,
    /// Shares leased from the shared store.
    Shared,
    /// The store is configured but slow or down: the static share, `1 / K`.
    Fallback,
}

impl FleetMode {
    /// The name reports use: `static`, `shared` or `fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetMode::Static => "static",
            FleetMode::Shared => "shared",
            FleetMode::Fallback => "fallback",
        }
    }

    /// The mode gauge's value: 1 when shared, 0 otherwise (static or fallback).
    pub fn gauge(self) -> f64 {
        match self {
            FleetMode::Shared => 1.0,
            FleetMode::Static | FleetMode::Fallback => 0.0,
        }
    }
}

/// What the fleet runtime last applied.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetView {
    /// Static, shared or fallback.
    pub mode: FleetMode,
    /// The instance count the static share divides by now.
    pub instances: u32,
    /// Live members last seen in the store, if it was ever reached.
    pub live_members: Option<u32>,
    /// Each node's share in force here, by node (`pool/name`); a node not listed has
    /// the static share `1 / instances`.
    pub shares: HashMap<String, f64>,
}

impl Default for FleetView {
    fn default() -> Self {
        FleetView {
            mode: FleetMode::Static,
            instances: 1,
            live_members: None,
            shares: HashMap::new(),
        }
    }
}

impl FleetView {
    /// A node's share in force: its leased share, else the static one.
    pub fn share(&self, node: &str) -> f64 {
        match (self.mode, self.shares.get(node)) {
            (FleetMode::Shared, Some(s)) => *s,
            _ => static_share(self.instances),
        }
    }
}

/// The [`FleetView`] behind a lock, shared between the runtime task and the reports.
#[derive(Debug, Default)]
pub struct FleetStatus {
    view: Mutex<FleetView>,
}

impl FleetStatus {
    /// A copy of the current view.
    pub fn view(&self) -> FleetView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the view.
    pub fn set(&self, view: FleetView) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

/// A change of the store's reachability worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    /// Nothing new.
    Same,
    /// It answered after failing (or for the first time): shared mode (re)starts.
    Joined,
    /// It failed after answering (or failed first): fall back to the static share.
    Lost,
}

/// The store's reachability as seen by the renewals.
#[derive(Debug, Default, Clone)]
pub struct Link {
    up: Option<bool>,
}

impl Link {
    /// A renewal answered.
    pub fn ok(&mut self) -> LinkChange {
        let was = self.up.replace(true);
        if was == Some(true) {
            LinkChange::Same
        } else {
            LinkChange::Joined
        }
    }

    /// A renewal failed or timed out.
    pub fn failed(&mut self) -> LinkChange {
        let was = self.up.replace(false);
        if was == Some(false) {
            LinkChange::Same
        } else {
            LinkChange::Lost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_divides_rate_and_burst_and_keeps_the_rest() {
        let p = AdmissionParams::new(300.0, 30).unwrap();
        let s = p.scaled(1.0 / 3.0);
        assert!((s.rate - 100.0).abs() < 1e-9);
        assert_eq!(s.burst, 10);
        assert_eq!(s.claim_window, p.claim_window);
        assert_eq!(p.scaled(1.0), p);
        assert_eq!(p.scaled(7.0), p);
        // Burst never below 1, rate never zero, NaN harmless.
        let tiny = p.scaled(0.0);
        assert_eq!(tiny.burst, 1);
        assert!(tiny.rate > 0.0 && tiny.validate().is_ok());
        assert!(p.scaled(f64::NAN).validate().is_ok());
        assert!(p.scaled(-1.0).validate().is_ok());
    }

    #[test]
    fn summed_static_shares_never_exceed_the_node() {
        let p = AdmissionParams::new(250.0, 25).unwrap();
        for k in 1..=50u32 {
            let s = p.scaled(static_share(k));
            assert!(s.rate * f64::from(k) <= p.rate * (1.0 + 1e-9), "k={k}");
            assert!(s.burst * k <= p.burst + k, "k={k}");
        }
        assert_eq!(static_share(0), 1.0);
    }

    #[test]
    fn fallback_count_prefers_config_then_last_seen() {
        assert_eq!(fallback_instances(Some(3), Some(5)), 3);
        assert_eq!(fallback_instances(None, Some(5)), 5);
        assert_eq!(fallback_instances(None, None), 1);
        assert_eq!(fallback_instances(None, Some(0)), 1);
    }

    #[test]
    fn demand_is_decisions_per_second() {
        let mut m = DemandMeter::default();
        assert_eq!(m.sample(10, 0), 0.0);
        let d = m.sample(60, NANOS_PER_SEC / 2);
        assert!((d - 100.0).abs() < 1e-9);
        assert_eq!(m.sample(60, NANOS_PER_SEC / 2), 0.0);
    }

    #[test]
    fn link_reports_each_change_once() {
        let mut l = Link::default();
        assert_eq!(l.failed(), LinkChange::Lost);
        assert_eq!(l.failed(), LinkChange::Same);
        assert_eq!(l.ok(), LinkChange::Joined);
        assert_eq!(l.ok(), LinkChange::Same);
        assert_eq!(l.failed(), LinkChange::Lost);
    }

    #[test]
    fn view_gives_leased_share_only_in_shared_mode() {
        let mut v = FleetView {
            instances: 4,
            ..FleetView::default()
        };
        v.shares.insert("p/a".into(), 0.7);
        assert_eq!(v.share("p/a"), 0.25);
        v.mode = FleetMode::Shared;
        assert_eq!(v.share("p/a"), 0.7);
        assert_eq!(v.share("p/b"), 0.25);
        assert_eq!(FleetMode::Fallback.gauge(), 0.0);
        assert_eq!(FleetMode::Shared.as_str(), "shared");
    }
}
