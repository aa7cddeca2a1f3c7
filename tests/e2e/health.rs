//! Health over real sockets: active TCP and HTTP checks follow a node that dies and comes
//! back (on the same port); a refused connect marks a node down at once and the recovery
//! probe brings it back; a down node gets no
//! new connections and its keys fail over to the next node in hash order; a client stays
//! on its learned node after the original one recovers; a recovered node ramps up (slow
//! start); `/admin/nodes` reports every node.

use crate::support::http1::{http_get, http_raw};
use crate::support::metrics::metric;
use crate::support::nodes::{land_ws, Fleet, HttpNode};
use crate::support::proxy::{
    admin_node, admin_nodes, key_for, parse, start, wait_health, wait_no_tunnels,
};
use crate::support::ws::{echo_text, ws_connect_with, ws_status};
use crate::support::{eventually, now, within};
use futures_util::StreamExt;
use herdgate::server::Handle;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

/// Connects to `node` that herdgate counted as refused, from the metrics text `m`.
fn refused(m: &str, node: &str) -> f64 {
    let node = format!("node=\"{node}\"");
    metric(
        m,
        "herdgate_backend_errors_total",
        &[&node, "kind=\"refused\""],
    )
}

const RATE: f64 = 100_000.0;

fn config(nodes: &str, pool_extra: &str, sticky: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n{sticky}\n\n\
         [[pool]]\nname = \"p\"\nadmit_rate = {RATE:.1}\nadmit_burst = 100000\n{pool_extra}\n{nodes}"
    )
}

const STICKY: &str = "sticky = { header = \"x-session\" }";

fn effective_rate(h: &Handle, node: &str) -> f64 {
    let snap = h.snapshot();
    let n = snap.pools[0].node_by_name(node).unwrap();
    n.admission.effective_rate(now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_tcp_check_follows_a_node_that_dies_and_returns() {
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let health = "slow_start = \"30s\"\n\
                  [pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";
    let proxy = start(parse(
        &config(&fleet.nodes_toml(&fleet.all()), health, STICKY),
        dir.path(),
    ))
    .await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let n1 = fleet.index("n1");

    // Keys that prefer n1: they land there while it is up.
    let keys: Vec<String> = (0..5)
        .map(|i| key_for(h, "p", "n1", &format!("k{i}")))
        .collect();
    for k in &keys {
        assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", k)]).await, n1);
    }

    // No tunnel open (a tunnel's end would have n1 confirmed down at once, see
    // `a_tunnel_ended_by_a_dead_node_marks_it_down_before_its_client_learns`): the active
    // check finds it.
    wait_no_tunnels(h).await;
    fleet.kill(n1).await;
    wait_health(admin, "n1", false).await;
    // Down: its keys fail over to a survivor (the one that can admit soonest), and
    // nothing fails.
    let mut failover = Vec::new();
    for k in &keys {
        let got = land_ws(&fleet, addr, "/", &[("x-session", k)]).await;
        assert_ne!(got, n1, "{k}");
        failover.push(got);
    }
    assert_eq!(
        effective_rate(h, "n1"),
        RATE,
        "not in slow start while down"
    );

    fleet.restart(n1).await;
    wait_health(admin, "n1", true).await;
    // Back through slow start: well below the configured rate right after recovery.
    let r = effective_rate(h, "n1");
    assert!(r < RATE * 0.5, "slow start after recovery: {r}");
    let reported = admin_node(admin, "n1").await.admit_rate;
    assert!(reported < RATE * 0.5, "/admin/nodes admit_rate {reported}");
    assert_eq!(effective_rate(h, "n2"), RATE);

    // Returning clients stay on their learned node; new keys of n1 go to n1 again.
    for (k, was) in keys.iter().zip(&failover) {
        assert_eq!(
            land_ws(&fleet, addr, "/", &[("x-session", k)]).await,
            *was,
            "{k}"
        );
    }
    let fresh = key_for(h, "p", "n1", "fresh");
    assert_eq!(
        land_ws(&fleet, addr, "/", &[("x-session", &fresh)]).await,
        n1
    );

    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "herdgate_health_checks_total",
            &["node=\"n1\"", "result=\"fail\""]
        ) >= 2.0,
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_check_follows_healthz_and_a_down_node_gets_nothing() {
    let web = [HttpNode::start("w1").await, HttpNode::start("w2").await];
    let nodes: String = web
        .iter()
        .map(|n| {
            format!(
                "[[pool.node]]\nname = \"{}\"\naddr = \"{}\"\n",
                n.name, n.addr
            )
        })
        .collect();
    let health = "[pool.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\n\
                  timeout = \"500ms\"\nrise = 2\nfall = 2\n";
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(&nodes, health, STICKY), dir.path())).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let get = |key: String| async move {
        let req =
            format!("GET /x HTTP/1.1\r\nHost: a\r\nx-session: {key}\r\nConnection: close\r\n\r\n");
        let (status, _, body) = http_raw(addr, req.as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let k1 = key_for(h, "p", "w1", "a");
    assert_eq!(get(k1.clone()).await, "w1");

    // /healthz says 500: the node is alive, but gets no new requests.
    web[0].set_health(500);
    wait_health(admin, "w1", false).await;
    let before = web[0].requests.load(Ordering::Relaxed);
    for i in 0..20 {
        assert_eq!(get(format!("any-{i}")).await, "w2");
    }
    assert_eq!(get(k1.clone()).await, "w2", "its keys fail over");
    assert_eq!(web[0].requests.load(Ordering::Relaxed), before);
    web[0].set_health(204);
    wait_health(admin, "w1", true).await;
    let fresh = key_for(h, "p", "w1", "b");
    assert_eq!(get(fresh).await, "w1");
    // The client that failed over stays where it was learned.
    assert_eq!(get(k1).await, "w2");
    // Any answer but 2xx is a failure.
    web[0].set_health(302);
    wait_health(admin, "w1", false).await;
    proxy.shutdown().await;
}

/// A node that dies holding tunnels: the first tunnel to see the node's stream end
/// without a close asks the node (one connect), and the refused connect marks it down
/// before that tunnel's client is told, so no reconnect meets a dead node marked up.
/// A client that closes its own tunnel marks nothing down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_ended_by_a_dead_node_marks_it_down_before_its_client_learns() {
    let mut fleet = Fleet::start(&["n1", "n2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(
        &config(&fleet.nodes_toml(&fleet.all()), "", STICKY),
        dir.path(),
    ))
    .await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let (n1, n2) = (fleet.index("n1"), fleet.index("n2"));
    let k1 = key_for(h, "p", "n1", "a");
    let k2 = key_for(h, "p", "n2", "b");
    // The misbehaving client first: it opens a tunnel to n2 and drops it with no close.
    let (ws, _) = ws_connect_with(addr, "/", &[("x-session", &k2)]).await;
    drop(ws);
    let (mut on_n1, _) = ws_connect_with(addr, "/", &[("x-session", &k1)]).await;
    echo_text(&mut on_n1, "hi").await;
    eventually("both nodes counted their client", || async {
        fleet.accepted()[n1] == 1 && fleet.accepted()[n2] == 1
    })
    .await;
    assert!(admin_node(admin, "n2").await.healthy);

    fleet.kill(n1).await;
    // The tunnel ends for its client...
    while let Some(Ok(_)) = within(on_n1.next()).await {}
    // ...and by then n1 is down already: no waiting on any check.
    assert!(!admin_node(admin, "n1").await.healthy);
    assert!(admin_node(admin, "n2").await.healthy);
    let m = proxy.metrics().await;
    assert_eq!(refused(&m, "n1"), 1.0);
    assert_eq!(refused(&m, "n2"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_marks_down_at_once_and_the_probe_brings_it_back() {
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    // No active checks: passive health only.
    let proxy = start(parse(
        &config(
            &fleet.nodes_toml(&fleet.all()),
            "slow_start = \"30s\"",
            STICKY,
        ),
        dir.path(),
    ))
    .await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let n1 = fleet.index("n1");
    let k = key_for(h, "p", "n1", "k");
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n1);
    // No tunnel left to see the node die: the first request finds out.
    wait_no_tunnels(h).await;

    fleet.kill(n1).await;
    assert!(
        admin_node(admin, "n1").await.healthy,
        "nobody has noticed yet"
    );
    // The first client to hit the dead node gets 502, and the node is down before the
    // response leaves: no waiting on a check interval.
    let (status, _) = ws_status(addr, "/", &[("x-session", &k)]).await;
    assert_eq!(status, 502);
    assert!(!admin_node(admin, "n1").await.healthy);
    let second = land_ws(&fleet, addr, "/", &[("x-session", &k)]).await;
    assert_ne!(second, n1);
    for i in 0..10 {
        let got = land_ws(&fleet, addr, "/", &[("x-session", &format!("other-{i}"))]).await;
        assert_ne!(got, n1);
    }

    // The recovery probe (TCP connect, once a second) brings it back, in slow start.
    fleet.restart(n1).await;
    wait_health(admin, "n1", true).await;
    let r = effective_rate(h, "n1");
    assert!(r < RATE * 0.5, "slow start after recovery: {r}");
    let fresh = key_for(h, "p", "n1", "fresh");
    assert_eq!(
        land_ws(&fleet, addr, "/", &[("x-session", &fresh)]).await,
        n1
    );

    // The learned entry holds while its node is healthy and not draining...
    assert_eq!(
        land_ws(&fleet, addr, "/", &[("x-session", &k)]).await,
        second
    );
    // ...and once that node drains, the key goes back to the hash's first choice.
    assert!(h.drain_node("p", &fleet.names[second]));
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_http_forward_marks_down_at_once() {
    let mut web = vec![HttpNode::start("w1").await, HttpNode::start("w2").await];
    let nodes: String = web
        .iter()
        .map(|n| {
            format!(
                "[[pool.node]]\nname = \"{}\"\naddr = \"{}\"\n",
                n.name, n.addr
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(&nodes, "", STICKY), dir.path())).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let k = key_for(h, "p", "w1", "k");
    // w1 never served anything: no pooled keep-alive connection hides its death.
    let dead = web.remove(0).addr;
    eventually("w1 refuses", || async move {
        tokio::net::TcpStream::connect(dead).await.is_err()
    })
    .await;
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nx-session: {k}\r\nConnection: close\r\n\r\n");
    let (status, _, _) = http_raw(addr, req.as_bytes()).await;
    assert_eq!(status, 502);
    assert!(!admin_node(admin, "w1").await.healthy);
    let (status, _, body) = http_raw(addr, req.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "w2"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_nodes_reports_health_drain_tunnels_rate_and_backlog() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = &fleet.addrs;
    let nodes = format!(
        "[[pool.node]]\nname = \"n1\"\naddr = \"{}\"\n\
         [[pool.node]]\nname = \"n2\"\naddr = \"{}\"\nadmit_rate = 50.0\n\
         [[pool.node]]\nname = \"n3\"\naddr = \"{}\"\nadmit_rate = 0.01\nadmit_burst = 1\n",
        a[0], a[1], a[2]
    );
    let proxy = start(parse(&config(&nodes, "", STICKY), dir.path())).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);

    // Raw JSON: an array with one object per node and these fields.
    let (status, body) = http_get(admin, "/admin/nodes").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let mut fields: Vec<&str> = arr[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|s| s.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "addr",
            "admit_rate",
            "draining",
            "fleet_instances",
            "fleet_mode",
            "fleet_share",
            "healthy",
            "node",
            "open_tunnels",
            "pool",
            "schedule_backlog_seconds"
        ]
    );

    // Three tunnels on n1, one admission on n3 (its schedule is then booked ahead).
    let mut open = Vec::new();
    for i in 0..3 {
        let (mut w, _) = ws_connect_with(
            addr,
            "/",
            &[("x-session", &key_for(h, "p", "n1", &format!("t{i}")))],
        )
        .await;
        echo_text(&mut w, "hi").await;
        open.push(w);
    }
    let (mut w3, _) =
        ws_connect_with(addr, "/", &[("x-session", &key_for(h, "p", "n3", "s"))]).await;
    echo_text(&mut w3, "hi").await;
    assert!(h.drain_node("p", "n2"));
    eventually("3 tunnels on n1 reported", || async move {
        admin_node(admin, "n1").await.open_tunnels == 3
    })
    .await;
    let r = admin_nodes(admin).await;
    let by = |n: &str| r.iter().find(|x| x.node == n).unwrap();
    assert_eq!(by("n1").addr, fleet.addrs[0].to_string());
    assert_eq!(by("n1").pool, "p");
    assert!(by("n1").healthy && !by("n1").draining);
    assert_eq!(by("n1").admit_rate, RATE);
    assert!(by("n2").draining && by("n2").healthy);
    assert_eq!(by("n2").admit_rate, 50.0);
    assert_eq!(by("n2").open_tunnels, 0);
    assert_eq!(by("n3").admit_rate, 0.01);
    assert_eq!(by("n3").open_tunnels, 1);
    assert!(by("n3").schedule_backlog_seconds > 0.0, "{:?}", by("n3"));
    assert!(by("n1").schedule_backlog_seconds < 1.0, "{:?}", by("n1"));
    let used: HashSet<_> = r.iter().map(|x| x.node.clone()).collect();
    assert_eq!(used.len(), 3);
    for mut w in open {
        echo_text(&mut w, "bye").await;
        let _ = within(futures_util::SinkExt::close(&mut w)).await;
    }
    drop(w3);
    wait_no_tunnels(&proxy.handle).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_node_recovers_after_its_active_checks_are_removed() {
    let mut fleet = Fleet::start(&["n1", "n2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = fleet.nodes_toml(&fleet.all());
    let checked = config(
        &nodes,
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        STICKY,
    );
    let proxy = start(parse(&checked, dir.path())).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let n1 = fleet.index("n1");
    fleet.kill(n1).await;
    wait_health(admin, "n1", false).await;

    // The pool drops its active checks while n1 is down: only the passive recovery probe
    // is left to see it come back.
    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, config(&nodes, "", STICKY)).unwrap();
    within(h.reload_file(&path)).await.unwrap();
    fleet.restart(n1).await;
    wait_health(admin, "n1", true).await;
    let k = key_for(h, "p", "n1", "k");
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n1);
    proxy.shutdown().await;
}

/// Issue 9's first attack: an upgrade whose `Connection` header names handshake fields.
/// herdgate used to strip them, send the node a broken handshake, and count the node's
/// refusal against its health: nine such requests marked three nodes down. Now the fields
/// reach the node, no node is marked down, and honest clients beside the attacker connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_handshake_fields_marks_no_node_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(
        &config(&fleet.nodes_toml(&fleet.all()), "", ""),
        dir.path(),
    ))
    .await;
    let (addr, admin) = (proxy.addr("plain"), proxy.admin.unwrap());

    let attacks = [
        "Upgrade, Sec-WebSocket-Key",
        "Upgrade, Sec-WebSocket-Version",
        "upgrade, sec-websocket-key, sec-websocket-version, host",
    ];
    let mut statuses = Vec::new();
    for i in 0..30 {
        let conn = attacks[i % attacks.len()];
        let mut s = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        let req = format!(
            "GET /chat HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: {conn}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Read the response head only: a 101 leaves the connection open.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match within(s.read(&mut byte)).await.unwrap() {
                0 => break,
                _ => head.push(byte[0]),
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        statuses.push(status);
        // An honest client between the attacker's requests still gets in and echoes.
        if i % 10 == 9 {
            let (mut ws, _) = ws_connect_with(addr, "/chat", &[]).await;
            echo_text(&mut ws, "honest").await;
        }
    }
    assert!(
        statuses.iter().all(|s| *s == 101),
        "the handshake fields reached the node every time: {statuses:?}"
    );
    for n in ["n1", "n2", "n3"] {
        assert!(admin_node(admin, n).await.healthy, "{n} was marked down");
    }
    proxy.shutdown().await;
}

/// A node that accepts WebSockets and, on `cut`, drops every one of them at once without
/// a close while its listener stays open: every tunnel sees its node end at the same
/// moment, and the node is alive. It counts the connections it accepts after the cut (no
/// client reconnects in the test, so each is herdgate asking whether it is alive).
struct CuttingNode {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<tokio::sync::Notify>,
    after_cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingNode {
    async fn start() -> CuttingNode {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cut = Arc::new(tokio::sync::Notify::new());
        let after_cut = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, a, o) = (cut.clone(), after_cut.clone(), open.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            let mut cut_done = false;
            loop {
                tokio::select! {
                    _ = c.notified(), if !cut_done => {
                        cut_done = true;
                        held.clear();
                    }
                    r = l.accept() => {
                        let Ok((s, _)) = r else { continue };
                        if cut_done {
                            a.fetch_add(1, Ordering::SeqCst);
                            held.push(s);
                            continue;
                        }
                        let o = o.clone();
                        let ws = tokio_tungstenite::accept_async(s).await;
                        if let Ok(ws) = ws {
                            o.fetch_add(1, Ordering::SeqCst);
                            // The raw stream, so that dropping it sends no close.
                            held.push(ws.into_inner());
                        }
                    }
                }
            }
        });
        CuttingNode {
            addr,
            cut,
            after_cut,
            open,
        }
    }
}

/// When a node ends all its tunnels at once, herdgate asks it whether it is alive once
/// (one probe in flight per node, its answer shared by every tunnel that ended before it
/// began), not once per tunnel: at a real node death that was thousands of sockets at the
/// moment the displaced clients reconnect. The node stays up and every client is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_ended_together_by_a_live_node_share_one_probe() {
    const TUNNELS: usize = 100;
    let node = CuttingNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = format!("[[pool.node]]\nname = \"n1\"\naddr = \"{}\"\n", node.addr);
    let proxy = start(parse(&config(&nodes, "", ""), dir.path())).await;
    let (addr, admin) = (proxy.addr("plain"), proxy.admin.unwrap());
    let mut clients = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        clients.push(ws_connect_with(addr, "/", &[]).await.0);
    }
    // The misbehaving client: it drops its own tunnel with no close at the same moment.
    // Its end is the client's doing and costs the node no probe.
    let (rude, _) = ws_connect_with(addr, "/", &[]).await;
    eventually("the node holds every tunnel", || async {
        node.open.load(Ordering::SeqCst) == TUNNELS + 1
    })
    .await;

    drop(rude);
    node.cut.notify_one();
    // Every client learns its tunnel ended.
    for ws in &mut clients {
        while let Some(Ok(_)) = within(ws.next()).await {}
    }
    let probes = node.after_cut.load(Ordering::SeqCst);
    // A probe is up to two connects (a second one when the first stays open), and
    // tunnels that noticed the end after a probe began share the next one. One per
    // tunnel would be 100 to 200.
    assert!(
        (1..=6).contains(&probes),
        "{probes} probe connects for {TUNNELS} tunnels"
    );
    assert!(admin_node(admin, "n1").await.healthy, "the node is alive");
    let m = proxy.metrics().await;
    assert_eq!(refused(&m, "n1"), 0.0);
    drop(clients);
    proxy.shutdown().await;
}
