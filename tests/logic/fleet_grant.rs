//! The Rust model of the fleet grant (`herdgate_core::fleet::grant`, which the storm
//! simulator runs) against the real script (`src/fleet/grant.lua`) on a real
//! redis-server: for a table of cases, and for random ones, the script's grant and the
//! lease it stores are exactly what the model gives. The model cannot drift from the
//! script without this test failing.

use crate::support::redis::RedisServer;
use herdgate_core::fleet::grant::{grant, NodeLeases, FULL_PPM};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;

const F: u64 = FULL_PPM;
const SCRIPT: &str = include_str!("../../src/fleet/grant.lua");

/// One other instance's entry in the node's hash before the call.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// share, demand; expires a minute from now.
    Live(u64, u64),
    /// share, demand; expired a second ago (the script drops it).
    Expired(u64, u64),
    /// Not of the form `s:d:e` (the script drops it).
    Garbage,
}

struct Case {
    mine: u64,
    others: Vec<Other>,
    expected: u64,
}

async fn redis_now_ms(c: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

/// Runs the script for `me` on one node set up as `case.others`; returns the grant, the
/// stored lease and the entries left in the hash.
async fn script_grant(
    c: &mut MultiplexedConnection,
    tag: &str,
    case: &Case,
) -> (u64, String, usize) {
    let node = format!("test:grant:{tag}:node");
    let members = format!("test:grant:{tag}:members");
    let now = redis_now_ms(c).await;
    for (i, o) in case.others.iter().enumerate() {
        let v = match *o {
            Other::Live(s, d) => format!("{s}:{d}:{}", now + 60_000),
            Other::Expired(s, d) => format!("{s}:{d}:{}", now - 1_000),
            Other::Garbage => "not-a-lease".to_string(),
        };
        let _: () = redis::cmd("HSET")
            .arg(&node)
            .arg(format!("other-{i}"))
            .arg(v)
            .query_async(c)
            .await
            .unwrap();
    }
    let reply: Vec<i64> = redis::Script::new(SCRIPT)
        .key(&members)
        .key(&node)
        .arg("me")
        .arg(150)
        .arg(3000)
        .arg(case.expected)
        .arg(case.mine)
        .invoke_async(c)
        .await
        .unwrap();
    assert_eq!(reply.len(), 2, "{reply:?}");
    let stored: String = redis::cmd("HGET")
        .arg(&node)
        .arg("me")
        .query_async(c)
        .await
        .unwrap();
    let left: usize = redis::cmd("HLEN").arg(&node).query_async(c).await.unwrap();
    (u64::try_from(reply[1]).unwrap(), stored, left)
}

fn model_grant(case: &Case) -> (u64, usize) {
    let live: Vec<(u64, u64)> = case
        .others
        .iter()
        .filter_map(|o| match *o {
            Other::Live(s, d) => Some((s, d)),
            _ => None,
        })
        .collect();
    (grant(case.mine, &live, case.expected), live.len() + 1)
}

async fn check(c: &mut MultiplexedConnection, tag: &str, case: &Case) -> u64 {
    let (g, stored, left) = script_grant(c, tag, case).await;
    let (want, want_left) = model_grant(case);
    assert_eq!(
        g, want,
        "case {tag}: script {g}, model {want} (mine {}, others {:?}, expected {})",
        case.mine, case.others, case.expected
    );
    assert!(
        stored.starts_with(&format!("{g}:{}:", case.mine)),
        "case {tag}: stored {stored}"
    );
    assert_eq!(
        left, want_left,
        "case {tag}: expired and garbage leases dropped"
    );
    g
}

#[tokio::test]
async fn the_rust_grant_model_gives_the_scripts_grants() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    use Other::{Expired, Garbage, Live};
    let third = F / 3;
    let table = vec![
        // Alone, idle or busy: everything.
        Case {
            mine: 0,
            others: vec![],
            expected: 1,
        },
        Case {
            mine: 5 * F,
            others: vec![],
            expected: 1,
        },
        // Alone but expecting 4 (the store lost its state): 3/4 kept aside.
        Case {
            mine: 2 * F,
            others: vec![],
            expected: 4,
        },
        // Idle fleet: equal split.
        Case {
            mine: 0,
            others: vec![Live(third, 0), Live(third, 0)],
            expected: 3,
        },
        // A newcomer while the others hold everything: nothing yet.
        Case {
            mine: F,
            others: vec![Live(F / 2, 0), Live(F / 2, 0)],
            expected: 3,
        },
        // Busy against idle: the idle keep a standby quarter each.
        Case {
            mine: 3 * F,
            others: vec![Live(F / 12, 0), Live(F / 12, 0)],
            expected: 3,
        },
        // Two busy, one needs little: max-min gives me the rest (capped by held).
        Case {
            mine: 3 * F,
            others: vec![Live(100_000, 100_000), Live(50_000, 0)],
            expected: 3,
        },
        // Everyone fits: demand plus an equal part of what is left.
        Case {
            mine: 200_000,
            others: vec![Live(100_000, 100_000), Live(50_000, 0)],
            expected: 3,
        },
        // Idle me among busy ones: standby quarter.
        Case {
            mine: 0,
            others: vec![Live(400_000, F), Live(400_000, F)],
            expected: 3,
        },
        // Expired and malformed leases do not count (and are dropped).
        Case {
            mine: F,
            others: vec![Expired(F, F), Garbage, Live(250_000, 0)],
            expected: 2,
        },
        // Over-held (a rejoin after a restart of the store): clipped at 0.
        Case {
            mine: F,
            others: vec![Live(F, F), Live(F / 2, 0)],
            expected: 5,
        },
        // The demand clip of the runtime (1e12 ppm).
        Case {
            mine: 1_000_000_000_000,
            others: vec![Live(10, 1_000_000_000_000)],
            expected: 2,
        },
        // 20 instances, one hot, the others lightly loaded.
        Case {
            mine: 16 * F,
            others: (0..19).map(|_| Live(F / 20, 5_000)).collect(),
            expected: 20,
        },
    ];
    for (i, case) in table.iter().enumerate() {
        check(&mut c, &format!("t{i}"), case).await;
    }

    // Random cases, seeded: up to 24 other instances, shares, demands, expiry, garbage.
    let mut rng = StdRng::seed_from_u64(11);
    for i in 0..300 {
        let k = rng.gen_range(0..24);
        let others = (0..k)
            .map(|_| {
                let s = rng.gen_range(0..=F / 2);
                let d = if rng.gen_bool(0.4) {
                    0
                } else {
                    rng.gen_range(1..=3 * F)
                };
                match rng.gen_range(0..10) {
                    0 => Expired(s, d),
                    1 => Garbage,
                    _ => Live(s, d),
                }
            })
            .collect();
        let case = Case {
            mine: if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(1..=4 * F)
            },
            others,
            expected: rng.gen_range(0..=26),
        };
        check(&mut c, &format!("r{i}"), &case).await;
    }
}

#[tokio::test]
async fn a_sequence_of_renewals_leads_the_model_and_the_script_to_the_same_shares() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    // 5 instances over 3 nodes, renewing in turn (one script call each, every node in
    // it), demand moving from an even spread to 80 % on instance 0 and back to idle.
    let (k, nodes) = (5u32, 3usize);
    let mut model: Vec<NodeLeases> = (0..nodes).map(|_| NodeLeases::new()).collect();
    let script = redis::Script::new(SCRIPT);
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..30u32 {
        for me in 0..k {
            let demands: Vec<u64> = (0..nodes)
                .map(|n| match round {
                    0..=4 => 0,
                    5..=14 => rng.gen_range(F / 10..F / 2),
                    15..=24 if me == 0 => rng.gen_range(3 * F..4 * F) + n as u64,
                    15..=24 => rng.gen_range(0..F / 20),
                    _ => 0,
                })
                .collect();
            let mut inv = script.prepare_invoke();
            inv.key("test:seq:members")
                .arg(format!("inst-{me}"))
                .arg(60_000)
                .arg(120_000)
                .arg(k);
            for (n, d) in demands.iter().enumerate() {
                inv.key(format!("test:seq:node:{n}")).arg(*d);
            }
            let reply: Vec<i64> = inv.invoke_async(&mut c).await.unwrap();
            assert_eq!(
                reply[0],
                i64::from((me + 1).max(if round > 0 { k } else { 0 }))
            );
            for (n, d) in demands.iter().enumerate() {
                // The model's clock only orders expiry: no lease expires here (60 s ttl).
                let want = model[n].renew(me, u64::from(round), 60_000, *d, u64::from(k));
                assert_eq!(
                    u64::try_from(reply[n + 1]).unwrap(),
                    want,
                    "round {round}, instance {me}, node {n}"
                );
            }
        }
        for (n, m) in model.iter().enumerate() {
            assert!(
                m.live_sum(u64::from(round)) <= F,
                "node {n}: shares sum to at most 1"
            );
            let share0 = m.lease(0).unwrap().share;
            if round == 24 {
                // After the skewed rounds instance 0 holds most of each node (the
                // script agreed at every step).
                assert!(share0 > F * 3 / 4, "node {n}: instance 0 holds {share0}");
            }
            if round == 29 {
                // Idle again: back to an equal split.
                assert_eq!(share0, F / u64::from(k), "node {n}");
            }
        }
    }
}
