//! Data-plane shards (issue 13): the real binary with `[runtime] threads = 2` accepts on a
//! SO_REUSEPORT socket per shard, and the kernel spreads connections over both (counted
//! by `herdgate_shard_connections_accepted_total`); stalled clients on each shard harm no
//! honest client; a listener renamed by a reload takes over its address while the old
//! socket still listens, and the tunnels opened before stay up.

use crate::support::eventually;
use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::Herdgate;
use crate::support::ws::{echo_text, ws_connect};
use futures_util::StreamExt;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

const SHARD_ACCEPTED: &str = "herdgate_shard_connections_accepted_total";

fn config(listener: &str, listen: SocketAddr, admin: SocketAddr, node: SocketAddr) -> String {
    format!(
        "[runtime]\nthreads = 2\n\n[admin]\nbind = \"{admin}\"\n\n\
         [[listener]]\nname = \"{listener}\"\nbind = \"{listen}\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nadmit_rate = 100000.0\n\
         admit_burst = 100000\n[[pool.node]]\nname = \"n\"\naddr = \"{node}\"\n"
    )
}

/// Connections accepted by shard `i`, from `/metrics`.
async fn accepted(admin: SocketAddr, shard: usize) -> f64 {
    let text = http_get(admin, "/metrics").await.1;
    metric(&text, SHARD_ACCEPTED, &[&format!("shard=\"{shard}\"")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_shards_accept_and_stalled_clients_on_each_harm_no_honest_one() {
    let nodes = echo_nodes(1).await;
    let (listen, admin) = (free_addr(), free_addr());
    let _h = Herdgate::start(&config("plain", listen, admin, nodes[0].addr)).await;

    // Hostile: 16 connections that send half a request head and stop. The kernel spreads
    // them over both shards like any other connection.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        stalled.push(s);
    }
    // Honest: 32 WebSockets, each proven by an echo, while the stalled ones are held.
    let mut honest = Vec::new();
    for i in 0..32 {
        let mut ws = ws_connect(listen, "/").await;
        echo_text(&mut ws, &format!("hello {i}")).await;
        honest.push(ws);
    }
    // Every connection was accepted by exactly one shard, and each shard took some: 48
    // connections hashed by source port all to one socket would be a 2^-47 chance.
    eventually("48 connections counted over the shards", || async {
        accepted(admin, 0).await + accepted(admin, 1).await == 48.0
    })
    .await;
    let (a0, a1) = (accepted(admin, 0).await, accepted(admin, 1).await);
    assert!(a0 > 0.0 && a1 > 0.0, "shard 0: {a0}, shard 1: {a1}");
    // The tunnels opened first still echo: nothing on either shard waited on the others.
    for (i, ws) in honest.iter_mut().enumerate() {
        echo_text(ws, &format!("again {i}")).await;
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_renamed_by_a_reload_takes_over_its_address_and_keeps_the_tunnels() {
    let nodes = echo_nodes(1).await;
    let (listen, admin) = (free_addr(), free_addr());
    let mut h = Herdgate::start(&config("before", listen, admin, nodes[0].addr)).await;
    let mut old = Vec::new();
    for i in 0..8 {
        let mut ws = ws_connect(listen, "/").await;
        echo_text(&mut ws, &format!("old {i}")).await;
        old.push(ws);
    }

    // Same address, new name: the new sockets bind beside the old ones (SO_REUSEPORT)
    // before those close, so the reload needs no gap in which connects are refused.
    std::fs::write(
        h.config_path(),
        config("after", listen, admin, nodes[0].addr),
    )
    .unwrap();
    h.signal("HUP");
    assert!(h.next_notification().await.starts_with("RELOADING=1"));
    assert_eq!(h.next_notification().await, "READY=1", "{}", h.log());
    assert!(h.log().contains("listener removed"), "{}", h.log());

    for i in 0..8 {
        let mut ws = ws_connect(listen, "/").await;
        echo_text(&mut ws, &format!("new {i}")).await;
    }
    let text = http_get(admin, "/metrics").await.1;
    let after = metric(
        &text,
        "herdgate_connections_accepted_total",
        &["listener=\"after\""],
    );
    assert_eq!(after, 8.0, "{text}");
    for (i, ws) in old.iter_mut().enumerate() {
        echo_text(ws, &format!("still {i}")).await;
    }
    assert!(h.running());
}

/// The TLS handshake cap's per-client wait cap counts over every shard: the accept loops
/// of one listener share one gate. An attacker's 24 ClientHellos at once, spread by the
/// kernel over both shards, get one token (the burst) and 4 waiting places in all; the
/// other 19 are closed and counted. An honest client beside it is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_wait_cap_counts_over_all_shards() {
    use crate::support::net::tcp_from;
    use crate::support::proxy::{fast_pool, parse, start_sharded};
    use crate::support::tls::{cert_toml, certs, tls_client};
    use crate::support::within;
    use std::sync::Arc;

    let (dir, cert) = certs(&["localhost"]);
    let nodes = echo_nodes(1).await;
    // One token per 100 s: none comes back while the test runs. The handshake deadline
    // must outlast the time the 24 ClientHellos take to arrive, or one arriving after the
    // first waiters timed out takes a freed waiting place (a loaded debug build took more
    // than 1.5 s once).
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nhandshake = \"4s\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         handshakes_per_second = 0.01\nhandshake_burst = 1\n\
         max_waiting_handshakes_per_client = 4\n[listener.tls]\n{}\n\
         [[route]]\npool = \"ws\"\n\n{}",
        cert_toml(&cert),
        fast_pool("ws", &[nodes[0].addr])
    );
    let proxy = start_sharded(parse(&toml, dir.path()), 2).await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&cert.der]));
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let addr = proxy.addr("tls");
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let tcp = tcp_from(Some(attacker), addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                within(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
                    .await
                    .is_ok()
            })
        })
        .collect();
    // The honest client on the plain listener, from another address, while the
    // attacker's handshakes wait on both shards.
    let mut ws = ws_connect(proxy.addr("plain"), "/").await;
    echo_text(&mut ws, "honest").await;
    let mut completed = 0;
    for f in flood {
        completed += within(f).await.unwrap() as usize;
    }
    let text = proxy.metrics().await;
    let tls = "listener=\"tls\"";
    let (s0, s1) = (
        metric(&text, SHARD_ACCEPTED, &["shard=\"0\""]),
        metric(&text, SHARD_ACCEPTED, &["shard=\"1\""]),
    );
    assert!(s0 > 0.0 && s1 > 0.0, "both shards took some: {s0} and {s1}");
    assert_eq!(completed, 1, "the burst's one token");
    assert_eq!(
        metric(&text, "herdgate_tls_handshakes_refused_total", &[tls]),
        19.0,
        "24 = 1 served + 4 waiting (then timed out) + 19 refused, over both shards\n{text}"
    );
    assert_eq!(
        metric(&text, "herdgate_handshake_timeouts_total", &[tls]),
        4.0,
        "{text}"
    );
    echo_text(&mut ws, "still honest").await;
}

/// A listener's own cap (`max_connections`) with two shards: an idle shard must not keep a
/// slot of the cap while the kernel queues connections on the other shard's socket. With
/// a cap of 1, twenty WebSockets one after the other are each served (each lands on
/// either shard), and a client that holds the one slot delays the next but does not
/// block it for good once it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_cap_of_one_serves_connections_on_either_shard() {
    let nodes = echo_nodes(1).await;
    let (listen, admin) = (free_addr(), free_addr());
    let text = config("plain", listen, admin, nodes[0].addr).replace(
        &format!("bind = \"{listen}\"\n"),
        &format!("bind = \"{listen}\"\nmax_connections = 1\n"),
    );
    assert!(text.contains("max_connections = 1"), "{text}");
    let _h = Herdgate::start(&text).await;
    for i in 0..20 {
        let mut ws = ws_connect(listen, "/").await;
        echo_text(&mut ws, &format!("one at a time {i}")).await;
        ws.close(None).await.unwrap();
        // The slot frees when herdgate sees the connection end.
        while let Some(Ok(_)) = crate::support::within(ws.next()).await {}
    }
    let (a0, a1) = (accepted(admin, 0).await, accepted(admin, 1).await);
    assert_eq!(a0 + a1, 20.0, "shard 0: {a0}, shard 1: {a1}");
    assert!(
        a0 > 0.0 && a1 > 0.0,
        "both shards served some: {a0} and {a1}"
    );
}

/// Connections waiting for a connection slot when a reload renames their listener are all
/// served: those the old accept loops took (they keep waiting for the slot and are served
/// under the old name) and those still in the kernel's accept queues (the renamed
/// listener takes the old sockets over, so nothing closes them). Closing a listening
/// socket resets the connections in its queue: before the handover, the rename test
/// above failed now and then with "connection reset by peer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_slot_across_a_rename_are_all_served() {
    use crate::support::within;
    let nodes = echo_nodes(1).await;
    let (listen, admin) = (free_addr(), free_addr());
    let node = nodes[0].addr;
    let cfg = |name: &str| {
        format!(
            "[limits]\nmax_connections = 1\n\n{}",
            config(name, listen, admin, node)
        )
    };
    let mut h = Herdgate::start(&cfg("before")).await;
    let mut first = ws_connect(listen, "/").await;
    echo_text(&mut first, "holds the one slot").await;

    // Four clients connect while the slot is taken: the kernel completes their TCP
    // handshakes, and each shard's accept loop takes at most one and waits for the slot.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        waiting.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{listen}/"), tcp)
                .await
                .unwrap_or_else(|e| panic!("client {i} not served: {e}"));
            echo_text(&mut ws, &format!("waited {i}")).await;
            // Give the slot to the next one.
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }));
    }
    std::fs::write(h.config_path(), cfg("after")).unwrap();
    h.signal("HUP");
    assert!(h.next_notification().await.starts_with("RELOADING=1"));
    assert_eq!(h.next_notification().await, "READY=1", "{}", h.log());
    assert!(h.log().contains("listener removed"), "{}", h.log());

    drop(first);
    for w in waiting {
        within(w).await.unwrap();
    }
    let text = http_get(admin, "/metrics").await.1;
    let count = |l: &str| {
        metric(
            &text,
            "herdgate_connections_accepted_total",
            &[&format!("listener=\"{l}\"")],
        )
    };
    assert_eq!(count("before") + count("after"), 5.0, "{text}");
    assert!(h.running());
}
