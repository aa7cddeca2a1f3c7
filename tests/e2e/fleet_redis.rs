//! Fleet admission (issue 11), shared through a real redis-server: three herdgate
//! processes lease their shares of the node's rate from Redis. A storm over the three
//! with a hostile client hammering one instance; Redis killed mid-storm (every instance
//! falls back to the static share rate/3, counted); the bound holds summed over the
//! instances throughout and every honest client gets in; Redis started again (empty):
//! shared mode resumes.

use super::fleet::{bound, fleet_metric, max_in_window, start_fleet, storm, Instance, RATE};
use crate::support::eventually;
use crate::support::metrics::metric;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::admin_nodes;
use crate::support::redis::RedisServer;
use std::time::Duration;

async fn wait_mode(fleet: &[Instance], mode: f64, fallbacks: f64) {
    for (k, i) in fleet.iter().enumerate() {
        eventually(
            format!("instance {k}: herdgate_fleet_mode {mode}, {fallbacks} fallbacks"),
            || async {
                let m = i.metrics().await;
                metric(&m, "herdgate_fleet_mode", &[]) == mode
                    && metric(&m, "herdgate_fleet_fallback_total", &[]) == fallbacks
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_three_redis_instances_survives_redis_dying_and_coming_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let nodes = echo_nodes(1).await;
    // No `instances`: the fallback divides by the live members last seen in Redis.
    let fleet = start_fleet(
        3,
        nodes[0].addr,
        &format!(
            "redis = \"{}\"\nlease = \"50ms\"\nmember_ttl = \"3s\"",
            redis.url()
        ),
    )
    .await;
    wait_mode(&fleet, 1.0, 0.0).await;
    for (k, i) in fleet.iter().enumerate() {
        eventually(format!("instance {k} sees 3 members"), || async {
            let n = &admin_nodes(i.admin).await[0];
            n.fleet_mode == "shared" && n.fleet_instances == 3
        })
        .await;
    }
    // Idle, the three split the node equally.
    let shares: f64 = {
        let mut s = 0.0;
        for i in &fleet {
            s += admin_nodes(i.admin).await[0].fleet_share;
        }
        s
    };
    assert!(
        shares <= 1.0 + 1e-9 && shares > 0.9,
        "idle shares sum to {shares}"
    );

    let before = redis.commands_processed().await;
    let started = std::time::Instant::now();
    let honest = 45;
    // Kill Redis once the storm is under way (20 admissions in).
    let redis_ref = &mut redis;
    let mut shared_phase = (0, Duration::ZERO);
    let shared_ref = &mut shared_phase;
    let log = storm(&fleet, honest, 20, || async {
        // Redis commands during the shared part of the storm (reported, not asserted).
        *shared_ref = (
            redis_ref.commands_processed().await - before,
            started.elapsed(),
        );
        redis_ref.kill().await;
        // Every instance falls back to the static share, once.
        wait_mode(&fleet, 0.0, 1.0).await;
    })
    .await;
    let all = log.admitted.lock().unwrap().clone();
    let hostile = log.hostile_admitted.lock().unwrap().clone();
    let peak = max_in_window(&all, Duration::from_secs(1));
    eprintln!(
        "redis (killed mid-storm): {} admissions ({} hostile), peak {peak}/s (bound {}), hostile peak {}/s",
        all.len(),
        hostile.len(),
        bound(),
        max_in_window(&hostile, Duration::from_secs(1))
    );
    assert!(peak <= bound(), "peak {peak} > {}", bound());
    assert_eq!(
        nodes[0]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        all.len()
    );
    let rejected = metric(
        &fleet[0].metrics().await,
        "herdgate_admission_rejected_total",
        &[],
    );
    assert!(
        rejected > 10.0,
        "hostile client refused and counted: {rejected}"
    );
    // In fallback each instance admits a third, K learned from Redis.
    for i in &fleet {
        let n = &admin_nodes(i.admin).await[0];
        assert_eq!(
            (n.fleet_mode.as_str(), n.fleet_instances),
            ("fallback", 3),
            "{n:?}"
        );
        assert!((n.admit_rate - RATE / 3.0).abs() < 1e-9, "{n:?}");
    }

    // Redis back, empty: shared mode resumes (fallback counted once per outage).
    redis.restart().await;
    wait_mode(&fleet, 1.0, 1.0).await;
    let renewals = fleet_metric(&fleet, "herdgate_fleet_renewals_total", &["outcome=\"ok\""]).await;
    assert!(renewals > 3.0, "{renewals}");
    // Each renewal is one script call for all nodes: commands grow with instances/lease,
    // not with clients (a few hundred per second here, whatever the storm).
    let c0 = redis.commands_processed().await;
    eventually("Redis sees renewals again", || async {
        redis.commands_processed().await > c0 + 30
    })
    .await;
    eprintln!(
        "redis: {} commands in the first {:?} of the storm ({:.0}/s); all honest in after {:?}",
        shared_phase.0,
        shared_phase.1,
        shared_phase.0 as f64 / shared_phase.1.as_secs_f64(),
        started.elapsed()
    );
}
