//! The learned sticky table against a client cycling sticky keys: it learns only sessions
//! a node accepted (a rejected upgrade learns nothing), and one client holds at most
//! `max_entries_per_client` entries, replacing its own, so honest clients' learned entries
//! survive. Honest clients pinned to a fallback node while their hash's node was drained
//! stay there after it comes back: only their learned entries keep them there.

use crate::support::metrics::metric;
use crate::support::nodes::Fleet;
use crate::support::proxy::{hash_order, hash_pick, key_for, parse, start, sticky_len};
use crate::support::ws::{echo_text, ws_try};
use crate::support::{eventually, eventually_within, within};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const HONEST: u8 = 20;
const HOSTILE_TASKS: u32 = 4;
const HOSTILE_KEYS_PER_TASK: u32 = 100;
const QUOTA: usize = 4;

/// n3 drained or not; n2 admits slowly after a burst of 40 (the hostile client's keys all
/// hash to n2, so that it is turned away there; honest clients failing over from a drained
/// n3 may take some of the burst).
fn config(fleet: &Fleet, drain_n3: bool) -> String {
    let node = |i: usize, extra: &str| {
        format!(
            "[[pool.node]]\nname = \"{}\"\naddr = \"{}\"\n{extra}\n",
            fleet.names[i], fleet.addrs[i]
        )
    };
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n\
         sticky = {{ header = \"x-session\", max_entries = 1000, max_entries_per_client = {QUOTA} }}\n\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n\
         queue = {{ timeout = \"0s\" }}\n{}{}{}",
        node(0, ""),
        node(1, "admit_rate = 50.0\nadmit_burst = 40"),
        node(2, &format!("drain = {drain_n3}"))
    )
}

fn honest_ip(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 10 + i])
}

/// One upgrade from `local` with `key`, echo once, close: the node that took it, or the
/// HTTP refusal.
async fn try_land(
    fleet: &Fleet,
    local: IpAddr,
    addr: SocketAddr,
    key: &str,
) -> Result<usize, String> {
    let before = fleet.accepted();
    let (mut ws, _) = ws_try(Some(local), addr, "/", &[("x-session", key)]).await?;
    echo_text(&mut ws, "where am i").await;
    let _ = within(ws.close(None)).await;
    let after = fleet.accepted();
    let grew: Vec<usize> = (0..before.len())
        .filter(|&i| after[i] > before[i])
        .collect();
    assert_eq!(grew.len(), 1, "one node took it: {before:?} -> {after:?}");
    Ok(grew[0])
}

/// Like [`try_land`], retried (a honest client comes back after a refusal) until it lands.
async fn land(fleet: &Fleet, local: IpAddr, addr: SocketAddr, key: &str) -> usize {
    let got = Cell::new(None);
    eventually(format!("{key} from {local} lands"), || async {
        match try_land(fleet, local, addr, key).await {
            Ok(n) => {
                got.set(Some(n));
                true
            }
            Err(e) if e == "HTTP 503" => false,
            Err(e) => panic!("{key}: {e}"),
        }
    })
    .await;
    got.get().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cycling_keys_cannot_evict_honest_entries() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(&fleet, true), dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;
    let n3 = fleet.index("n3");

    // Honest clients whose keys hash to n3 land on their fallback while n3 is drained,
    // and that is learned.
    let mut honest = Vec::new();
    let honest_keys = (0..).map(|k| format!("honest-{k}")).filter(|k| {
        let order = hash_order(h, "p", k);
        order[0] == "n3"
    });
    for (i, key) in (0..HONEST).zip(honest_keys) {
        let node = land(&fleet, honest_ip(i), addr, &key).await;
        assert_ne!(node, n3, "{key}: n3 is drained");
        honest.push((i, key, node));
    }
    assert_eq!(sticky_len(h, "p"), usize::from(HONEST));

    // The hostile client: thousands of distinct keys, some upgrades taken, most turned
    // away by admission.
    let hostile = IpAddr::from([127, 0, 0, 99]);
    let hostile_keys: Vec<String> = (0..)
        .map(|k| format!("hostile-{k}"))
        .filter(|k| hash_pick(h, "p", k) == "n2")
        .take((HOSTILE_TASKS * HOSTILE_KEYS_PER_TASK) as usize)
        .collect();
    let tasks: Vec<_> = hostile_keys
        .chunks(HOSTILE_KEYS_PER_TASK as usize)
        .map(|keys| {
            let keys = keys.to_vec();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0u32, 0u32);
                for key in keys {
                    match ws_try(Some(hostile), addr, "/", &[("x-session", &key)]).await {
                        Ok((mut ws, _)) => {
                            ok += 1;
                            let _ = within(ws.close(None)).await;
                        }
                        Err(e) if e == "HTTP 503" => refused += 1,
                        Err(e) => panic!("{key}: {e}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = within(t).await.unwrap();
        ok += o;
        refused += r;
    }
    assert_eq!(ok + refused, HOSTILE_TASKS * HOSTILE_KEYS_PER_TASK);
    assert!(ok > QUOTA as u32, "some hostile upgrades were taken: {ok}");
    assert!(
        refused > 0,
        "some hostile upgrades were refused: {ok} taken"
    );

    // The hostile client holds its quota, no more; rejected keys were never learned.
    let snap = h.snapshot();
    let table = snap.pools[0].sticky.as_ref().unwrap();
    assert_eq!(table.client_entries(hostile), QUOTA);
    assert_eq!(table.len(), usize::from(HONEST) + QUOTA);
    for (i, _, _) in &honest {
        assert_eq!(table.client_entries(honest_ip(*i)), 1);
    }
    let m = proxy.metrics().await;
    let quota_fired = metric(&m, "herdgate_sticky_client_quota_total", &[]);
    // Every hostile entry past its quota replaced one of its own, even with the hostile
    // tasks learning concurrently (room is reserved before it is charged).
    assert_eq!(quota_fired, f64::from(ok) - QUOTA as f64, "{m}");
    assert_eq!(metric(&m, "herdgate_sticky_evictions_total", &[]), 0.0);
    assert!(metric(&m, "herdgate_admission_rejected_total", &[]) >= f64::from(refused));

    // n3 comes back. A fresh key of n3 goes there; every honest key stays where it was
    // learned.
    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, config(&fleet, false)).unwrap();
    within(h.reload_file(&path)).await.unwrap();
    let fresh = key_for(h, "p", "n3", "fresh");
    assert_eq!(hash_pick(h, "p", &fresh), "n3");
    eventually_within(
        Duration::from_secs(20),
        "a fresh key of n3 lands on n3 again",
        || async { try_land(&fleet, honest_ip(HONEST), addr, &fresh).await == Ok(n3) },
    )
    .await;
    for (i, key, node) in &honest {
        let now = land(&fleet, honest_ip(*i), addr, key).await;
        assert_eq!(
            now, *node,
            "{key} moved from {} to {}",
            fleet.names[*node], fleet.names[now]
        );
    }
    proxy.shutdown().await;
}
