//! Fleet admission at run time (`[fleet]`): several instances in front of the same nodes
//! admit, summed, at most each node's rate.
//!
//! - Static share (`instances = K`, no `redis`): `snapshot::params` already scales every
//!   node to `rate / K`; this module only reports it.
//! - Shared (`redis = ...`): a background task renews this instance's capacity leases
//!   every `lease` with ONE script call for all nodes (`lease.rs`, `grant.lua`), and
//!   applies the granted shares to the nodes' parameters. No admission decision waits on
//!   Redis. When a call fails or takes longer than `lease`, every node falls back to the
//!   static share `rate / K` (K from the config, else the live members last seen), the
//!   fallback is counted and logged once, and the next answer rejoins.

mod lease;
pub mod ledger;

use crate::metrics as m;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use herdgate_core::fleet::{
    fallback_instances, static_share, FleetMode, FleetView, Link, LinkChange,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Renewals after (re)joining during which an instance admits at least its static share.
const JOIN_GRACE: u32 = 3;

/// The name a node's share is reported and leased under: `pool/name`.
pub fn node_label(pool: &str, name: &str) -> String {
    format!("{pool}/{name}")
}

/// Start fleet admission for the process: report the static share, and with `redis`
/// spawn the lease task (stopped with the process).
pub fn spawn(shared: Arc<Shared>) {
    let snap = shared.load_full();
    let cfg = snap.config.fleet.clone();
    let _ = metrics::counter!(m::FLEET_FALLBACK);
    metrics::gauge!(m::FLEET_MODE).set(0.0);
    shared.fleet.set(FleetView {
        mode: FleetMode::Static,
        instances: cfg.static_instances(),
        live_members: None,
        shares: HashMap::new(),
    });
    apply(&shared, &snap);
    if cfg.redis.is_some() {
        match lease::Leaser::new(&cfg) {
            Ok(l) => {
                tokio::spawn(run(shared, l));
            }
            // Validation opened the URL and read the file already; a failure here is
            // a file changed since: run on the static share, loudly.
            Err(e) => tracing::error!("fleet: {e}; admitting the static share only"),
        }
    }
}

/// After a reload: put the shares in force back on the nodes (the reload applied the
/// static share of the new config) and take up a changed `instances`.
pub fn reapply(shared: &Shared, snap: &Snapshot) {
    let mut v = shared.fleet.view();
    if v.mode == FleetMode::Static {
        v.instances = snap.config.fleet.static_instances();
        shared.fleet.set(v);
    }
    apply(shared, snap);
}

/// Apply the view's share to every node whose parameters differ from it.
fn apply(shared: &Shared, snap: &Snapshot) {
    let v = shared.fleet.view();
    let t = crate::clock::now();
    let fleet_on = snap.config.fleet.instances.is_some() || snap.config.fleet.shared();
    for pool in &snap.pools {
        for (node, cfg) in pool.nodes.iter().zip(&pool.cfg.nodes) {
            let share = v.share(&node_label(&pool.name, &node.key.name));
            let p = crate::snapshot::base_params(&snap.config, &pool.cfg, cfg).scaled(share);
            if fleet_on {
                metrics::gauge!(m::FLEET_SHARE, "pool" => pool.name.to_string(), "node" => node.key.name.to_string())
                    .set(herdgate_core::fleet::clamp_share(share));
            }
            if node.admission.params() == p {
                continue;
            }
            if let Err(e) = node.admission.update_params(p, t) {
                tracing::error!(node = %node.key, "fleet share rejected: {e}");
            }
        }
    }
}

/// The lease loop: renew every `lease`, apply, fall back on failure.
async fn run(shared: Arc<Shared>, mut leaser: lease::Leaser) {
    let configured = shared.load().config.fleet.instances;
    let mut link = Link::default();
    let mut last_live: Option<u32> = None;
    // Renewals left in which a (re)joining instance keeps at least its static share.
    let mut grace = JOIN_GRACE;
    let mut tick = tokio::time::interval(leaser.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.lifecycle.stop_all.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = shared.load_full();
        let outcome = leaser.renew(&snap, last_live.unwrap_or(1)).await;
        let mut view = shared.fleet.view();
        match outcome {
            Ok(grant) => {
                metrics::counter!(m::FLEET_RENEWALS, "outcome" => "ok").increment(1);
                if let Some(c) = leaser.connection() {
                    shared.fleet_redis.store(Some(Arc::new(c)));
                }
                last_live = Some(grant.live);
                metrics::gauge!(m::FLEET_MEMBERS).set(f64::from(grant.live));
                view.mode = FleetMode::Shared;
                view.live_members = Some(grant.live);
                view.instances = fallback_instances(configured, last_live);
                view.shares = grant.shares;
                if grace > 0 {
                    // Just (re)joined: the others give room at their next renewal. Until
                    // then a near-zero grant would book this instance's first clients
                    // far into the future; keep the static share a few leases instead.
                    grace -= 1;
                    let floor = static_share(view.instances);
                    for s in view.shares.values_mut() {
                        *s = s.max(floor);
                    }
                }
                if link.ok() == LinkChange::Joined {
                    metrics::gauge!(m::FLEET_MODE).set(FleetMode::Shared.gauge());
                    tracing::info!(
                        members = grant.live,
                        "fleet: admission shared through Redis (leases renewed every {:?})",
                        leaser.period()
                    );
                }
            }
            Err(e) => {
                // The ledger keeps the last connection: a call on a dead one fails fast
                // or times out, and one slow renewal must not open a replay window.
                metrics::counter!(m::FLEET_RENEWALS, "outcome" => e.outcome()).increment(1);
                view.mode = FleetMode::Fallback;
                view.instances = fallback_instances(configured, last_live);
                grace = JOIN_GRACE;
                if link.failed() == LinkChange::Lost {
                    metrics::counter!(m::FLEET_FALLBACK).increment(1);
                    metrics::gauge!(m::FLEET_MODE).set(FleetMode::Fallback.gauge());
                    tracing::warn!(
                        "fleet: Redis {e}; falling back to the static share 1/{} of each node until it answers",
                        view.instances
                    );
                }
            }
        }
        shared.fleet.set(view);
        apply(&shared, &snap);
    }
}

/// For reports: the mode, the instance count of the static share, and the share of the
/// node `pool/name` in force on this instance.
pub fn share_of(shared: &Shared, pool: &str, name: &str) -> (FleetMode, u32, f64) {
    let v = shared.fleet.view();
    (v.mode, v.instances, v.share(&node_label(pool, name)))
}
