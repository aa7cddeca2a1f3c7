//! Per-client caps on open connections and tunnels (`limits.max_connections_per_client`,
//! `limits.max_tunnels_per_client`): one client at its caps is refused (counted) while
//! another client is served, and a connection turned away with a 1013 close still counts
//! while the client keeps it open.

use crate::support::http1::Reader;
use crate::support::metrics::{metric, metric_reaches};
use crate::support::net::tcp_from;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, start, Proxy};
use crate::support::ws::{echo_text, try_ws_over, ws_try};
use crate::support::{eventually, within};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn proxy(reject: &str) -> (Proxy, tempfile::TempDir) {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [timeouts]\nclose = \"30s\"\n\n\
         [limits]\nmax_connections_per_client = 3\nmax_tunnels_per_client = 2\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath_prefix = \"/ws\"\npool = \"ws\"\nreject = \"{reject}\"\n\n{}",
        fast_pool("ws", &[nodes[0].addr])
    );
    // The node lives as long as the test: leak it into the proxy's lifetime.
    std::mem::forget(nodes);
    (start(parse(&toml, dir.path())).await, dir)
}

/// One GET on a fresh connection from `from`: Some(status) when served, None when the
/// connection was closed without an answer (refused by a cap).
async fn get_from(from: IpAddr, addr: SocketAddr) -> Option<u16> {
    let mut s = tcp_from(Some(from), addr).await.unwrap();
    let req = "GET /none HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return None;
    }
    within(Reader::new(s).response())
        .await
        .ok()
        .map(|r| r.status)
}

/// An idle connection from `from` that herdgate keeps (proved by a served request on it).
async fn held_connection(from: IpAddr, addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tcp_from(Some(from), addr).await.unwrap();
    s.write_all(b"GET /none HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // herdgate's own 404 (no route), on a connection kept alive.
    let mut buf = [0u8; 1024];
    let n = within(s.read(&mut buf)).await.unwrap();
    assert!(n > 0, "the held connection was served");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_at_its_caps_is_refused_while_another_is_served() {
    let (proxy, _dir) = proxy("http").await;
    let addr = proxy.addr("plain");
    let greedy = ip(2);

    // Tunnels: two are fine, the third is refused with 429 and a hint.
    let (mut t1, _) = ws_try(Some(greedy), addr, "/ws", &[]).await.unwrap();
    let (mut t2, _) = ws_try(Some(greedy), addr, "/ws", &[]).await.unwrap();
    let third = ws_try(Some(greedy), addr, "/ws", &[]).await;
    assert_eq!(third.err().as_deref(), Some("HTTP 429"));
    metric_reaches(
        &proxy,
        "herdgate_client_capped_total",
        &["kind=\"tunnels\""],
        |v| v == 1.0,
    )
    .await;
    // Another client is served meanwhile.
    let (mut other, _) = ws_try(Some(ip(3)), addr, "/ws", &[]).await.unwrap();
    echo_text(&mut other, "other client").await;

    // Connections: the two tunnels and one more are the cap of 3; the fourth is closed.
    // (First the refused upgrade's connection, answered with `Connection: close`, ends.)
    metric_reaches(
        &proxy,
        "herdgate_connections_open",
        &["listener=\"plain\""],
        |v| v == 3.0,
    )
    .await;
    let _held = held_connection(greedy, addr).await;
    assert_eq!(
        get_from(greedy, addr).await,
        None,
        "over the connection cap"
    );
    metric_reaches(
        &proxy,
        "herdgate_client_capped_total",
        &["kind=\"connections\""],
        |v| v >= 1.0,
    )
    .await;
    assert!(
        get_from(ip(3), addr).await.is_some(),
        "the other client is served"
    );
    echo_text(&mut t1, "still open").await;
    echo_text(&mut t2, "still open").await;

    // Closing a tunnel gives its places back.
    drop(t1);
    eventually("a freed place serves the greedy client again", || async {
        get_from(greedy, addr).await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_turned_away_with_1013_counts_while_it_stays_open() {
    let (proxy, _dir) = proxy("websocket-close").await;
    let addr = proxy.addr("plain");
    let greedy = ip(4);
    let (mut t1, _) = ws_try(Some(greedy), addr, "/ws", &[]).await.unwrap();
    let (_t2, _) = ws_try(Some(greedy), addr, "/ws", &[]).await.unwrap();
    // Over the tunnel cap on a websocket-close route: a 101, then a 1013 close that the
    // client neither reads nor answers; it keeps the socket open.
    let tcp = tcp_from(Some(greedy), addr).await.unwrap();
    let (held_1013, resp) = try_ws_over(tcp, &format!("ws://{addr}/ws"), &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    metric_reaches(
        &proxy,
        "herdgate_client_capped_total",
        &["kind=\"tunnels\""],
        |v| v == 1.0,
    )
    .await;
    // Two tunnels and the 1013 connection are 3: the next connection is closed at once.
    assert_eq!(get_from(greedy, addr).await, None);
    let text = proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herdgate_client_capped_total",
            &["kind=\"connections\""]
        ),
        1.0
    );
    assert!(
        get_from(ip(5), addr).await.is_some(),
        "another client is served"
    );
    echo_text(&mut t1, "unharmed").await;
    // Once the client lets the 1013 connection go, its place is free again.
    drop(held_1013);
    eventually("the 1013 connection's place is given back", || async {
        get_from(greedy, addr).await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_per_client_caps_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herdgate.toml");
    let text = |max: usize| {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [limits]\nmax_connections_per_client = {max}\nmax_tunnels_per_client = 1\n\n\
             [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
             [[route]]\npath_prefix = \"/ws\"\npool = \"ws\"\n\n\
             [[pool]]\nname = \"ws\"\n[[pool.node]]\nname = \"n\"\naddr = \"127.0.0.1:9\"\n"
        )
    };
    std::fs::write(&path, text(1)).unwrap();
    let proxy = start(parse(&text(1), dir.path())).await;
    let addr = proxy.addr("plain");
    let client = ip(6);
    let _first = held_connection(client, addr).await;
    assert_eq!(
        get_from(client, addr).await,
        None,
        "cap 1: the second is closed"
    );

    std::fs::write(&path, text(2)).unwrap();
    within(proxy.handle.reload_file(&path)).await.unwrap();
    assert!(
        get_from(client, addr).await.is_some(),
        "cap 2 after the reload: the second is served"
    );
    let _second = held_connection(client, addr).await;
    assert_eq!(
        get_from(client, addr).await,
        None,
        "cap 2: the third is closed"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herdgate_client_capped_total",
            &["kind=\"connections\""]
        ),
        2.0
    );
}
