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
