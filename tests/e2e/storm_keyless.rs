//! Routing that follows admission (issue 10), over real sockets. 600 clients, each from
//! its own loopback address, hold tunnels over three echo nodes on a route with no sticky
//! key. They read only `Retry-After`, send no key and keep no cookie (what most WebSocket
//! libraries do). Node n1 is killed; the survivors admit at different rates (n2 10/s, n3
//! 20/s), listed in the file with the slower node first and weighted against its rate.
//! Beside the herd, one client from its own address ignores every hint and retries at once.
//! Asserted, from counts only (no wall clock):
//! - the displaced clients split over the survivors by rate (1 : 2), not by file order or
//!   weight;
//! - every obedient client was turned away at most once (one retry);
//! - no survivor saw more than rate x 1 s + burst handshakes in any sliding 1 s window;
//! - no node was marked down, and the hint ignorer was turned away and counted.

use crate::support::metrics::metric;
use crate::support::net::tcp_from;
use crate::support::nodes::Fleet;
use crate::support::proxy::{admin_node, parse, start};
use crate::support::ws::retry_after_only;
use crate::support::{eventually, within};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CLIENTS: usize = 600;
const BURST: u32 = 2;
/// (name, admit_rate during the storm, weight): the slower survivor first, and heavier.
const NODES: [(&str, f64, u32); 3] = [("n1", 10.0, 1), ("n2", 10.0, 5), ("n3", 20.0, 1)];

fn config(fleet: &Fleet, storm: bool) -> String {
    let nodes: String = NODES
        .iter()
        .map(|&(name, rate, weight)| {
            let rate = if storm { rate } else { 100_000.0 };
            format!(
                "[[pool.node]]\nname = \"{name}\"\naddr = \"{}\"\nweight = {weight}\nadmit_rate = {rate:.1}\nadmit_burst = {BURST}\n",
                fleet.addrs[fleet.index(name)]
            )
        })
        .collect();
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nmax_retry_after = \"60s\"\n{nodes}"
    )
}

fn client_ip(i: usize) -> IpAddr {
    Ipv4Addr::new(127, 0, 20 + (i / 250) as u8, 2 + (i % 250) as u8).into()
}

/// One client: connects, holds its tunnel until its node dies, then comes back obeying
/// the hints and reports how often it was turned away.
async fn client(
    i: usize,
    addr: SocketAddr,
    connected: Arc<AtomicU64>,
    displaced: Arc<AtomicU64>,
    back: Arc<Mutex<Vec<u32>>>,
) {
    let ip = client_ip(i);
    let ws = retry_after_only(ip, addr).await.ws;
    connected.fetch_add(1, Ordering::Relaxed);
    let (_tx, mut rx) = ws.split();
    while let Some(Ok(_)) = rx.next().await {}
    displaced.fetch_add(1, Ordering::Relaxed);
    let c = retry_after_only(ip, addr).await;
    back.lock().unwrap().push(c.rejected);
    let ws = c.ws;
    std::future::pending::<()>().await;
    drop(ws);
}

/// Upgrades in a loop from its own address, ignoring every hint, until `stop`.
async fn hint_ignorer(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let ip: IpAddr = Ipv4Addr::new(127, 0, 29, 2).into();
    let (mut tries, mut refused) = (0, 0);
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = tcp_from(Some(ip), addr).await else {
            continue;
        };
        tries += 1;
        let req = format!("ws://{addr}/").into_client_request().unwrap();
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, _)) => held.push(ws),
            Err(_) => refused += 1,
        }
    }
    (tries, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_obedient_clients_split_by_rate_and_retry_once_after_a_node_dies() {
    herdgate::fdlimit::raise().unwrap();
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(&fleet, false), dir.path())).await;
    let (addr, admin) = (proxy.addr("plain"), proxy.admin.unwrap());
    let connected = Arc::new(AtomicU64::new(0));
    let displaced = Arc::new(AtomicU64::new(0));
    let back = Arc::new(Mutex::new(Vec::new()));
    for i in 0..CLIENTS {
        tokio::spawn(client(
            i,
            addr,
            connected.clone(),
            displaced.clone(),
            back.clone(),
        ));
    }
    eventually("every client connected", || async {
        connected.load(Ordering::Relaxed) == CLIENTS as u64
    })
    .await;
    // With no key, the herd spread by open tunnels: about a third each.
    let on_n1 = admin_node(admin, "n1").await.open_tunnels;
    eprintln!(
        "tunnels on n1, n2, n3: {on_n1}, {}, {}",
        admin_node(admin, "n2").await.open_tunnels,
        admin_node(admin, "n3").await.open_tunnels
    );
    assert!(on_n1 >= 150, "n1 holds {on_n1} tunnels");
    proxy
        .handle
        .reload(parse(&config(&fleet, true), dir.path()))
        .await
        .unwrap();
    let before = fleet.accepted();
    for n in fleet.nodes.iter().flatten() {
        n.stats.peak.reset();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ignorer = tokio::spawn(hint_ignorer(addr, stop.clone()));
    fleet.kill(fleet.index("n1")).await;
    eventually_back(&displaced, &back, on_n1).await;
    stop.store(true, Ordering::Relaxed);
    let (tries, refused) = within(ignorer).await.unwrap();

    let after = fleet.accepted();
    let (i2, i3) = (fleet.index("n2"), fleet.index("n3"));
    let arrived = [after[i2] - before[i2], after[i3] - before[i3]];
    let rejections = back.lock().unwrap().clone();
    let peaks: Vec<u64> = [i2, i3]
        .iter()
        .map(|&i| fleet.nodes[i].as_ref().unwrap().stats.peak.peak())
        .collect();
    let retries: u32 = rejections.iter().sum();
    eprintln!(
        "{} displaced; arrivals on n2, n3: {arrived:?}; peaks per 1 s: {peaks:?}; \
         {retries} rejections in all, most for one client {}; ignorer {tries} tries, {refused} refused",
        rejections.len(),
        rejections.iter().max().unwrap()
    );

    // Split by rate: n3 (20/s) takes two thirds, whatever the file order and weights.
    let share = arrived[1] as f64 / (arrived[0] + arrived[1]) as f64;
    assert!(
        (0.58..=0.75).contains(&share),
        "n3 took {share:.2} of the arrivals {arrived:?} (rate share 0.67)"
    );
    // One retry per obedient client.
    assert!(
        rejections.iter().all(|&r| r <= 1),
        "an obedient client was turned away more than once: {:?}",
        rejections.iter().filter(|&&r| r > 1).collect::<Vec<_>>()
    );
    // No survivor over rate x 1 s + burst in any 1 s window.
    for (k, &(name, rate, _)) in NODES[1..].iter().enumerate() {
        let bound = rate as u64 + u64::from(BURST);
        assert!(
            peaks[k] <= bound,
            "{name} saw {} handshakes in 1 s (bound {bound})",
            peaks[k]
        );
    }
    for n in ["n2", "n3"] {
        assert!(admin_node(admin, n).await.healthy, "{n} was marked down");
    }
    // The hint ignorer: turned away and counted, never more than its slot cap let in.
    assert!(refused > tries / 2, "{refused} of {tries} refused");
    let m = proxy.metrics().await;
    assert!(metric(&m, "herdgate_admission_rejected_total", &[]) >= refused as f64);
}

async fn eventually_back(displaced: &AtomicU64, back: &Mutex<Vec<u32>>, on_n1: u64) {
    eventually("every displaced client is back", || async {
        let d = displaced.load(Ordering::Relaxed);
        d == on_n1 && back.lock().unwrap().len() as u64 == d
    })
    .await;
}
