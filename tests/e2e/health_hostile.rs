//! Passive health counts only what no client can cause (issue 9). A scripted node answers
//! by path: a valid 101, a 500, a 101 that is not a WebSocket handshake, a reset, or
//! nothing. One client (its own loopback address) provokes every one of those many times:
//! the node stays up, the broken 101s are refused and counted, and an honest client from
//! another address is still served. The same soft failures from distinct clients still mark
//! a node down, and a 101 resets the run.

use crate::support::http1::{read_head, Then};
use crate::support::metrics::metric;
use crate::support::net::tcp_from;
use crate::support::proxy::{admin_node, parse, start, wait_no_tunnels};
use crate::support::within;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A node whose answer to an upgrade depends on its path.
async fn scripted_node() -> SocketAddr {
    crate::support::http1::scripted_node(|path, accept| {
        let answer = match path {
            "/ok" => format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ),
            "/500" => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_string(),
            "/bad-accept" => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                .to_string(),
            "/no-upgrade" => format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ),
            // /reset: close without an answer.
            _ => return None,
        };
        // Hold the connection until the other side closes it.
        Some((answer.into_bytes(), Then::Hold))
    })
    .await
}

fn config(node: SocketAddr) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n\n\
         [[pool.node]]\nname = \"s\"\naddr = \"{node}\"\n"
    )
}

/// An upgrade to `path` sent from the loopback address `from`; the answer's status and the
/// connection (a 101 leaves it open).
async fn upgrade_from(from: &str, addr: SocketAddr, path: &str) -> (u16, tokio::net::TcpStream) {
    let ip: IpAddr = from.parse().unwrap();
    let mut s = tcp_from(Some(ip), addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_a_client_can_provoke_marks_a_node_down() {
    let node = scripted_node().await;
    let dir = tempfile::tempdir().unwrap();
    // Default passive threshold: 3 soft failures.
    let proxy = start(parse(&config(node), dir.path())).await;
    let (addr, admin) = (proxy.addr("plain"), proxy.admin.unwrap());

    let attacker = "127.0.0.2";
    let mut seen = Vec::new();
    for round in 0..10 {
        for path in ["/500", "/bad-accept", "/no-upgrade", "/reset"] {
            let (status, _) = upgrade_from(attacker, addr, path).await;
            seen.push((path, status));
        }
        if round % 3 == 2 {
            // An honest client from elsewhere gets its 101 meanwhile.
            let (status, _) = upgrade_from("127.0.0.3", addr, "/ok").await;
            assert_eq!(status, 101, "honest client turned away in round {round}");
        }
    }
    for (path, status) in &seen {
        let want = match *path {
            "/500" => 500,
            _ => 502,
        };
        assert_eq!(*status, want, "{path}: {seen:?}");
    }
    assert!(
        admin_node(admin, "s").await.healthy,
        "one client's requests marked the node down"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herdgate_backend_bad_handshakes_total",
            &["node=\"s\""]
        ),
        20.0,
        "every broken 101 refused and counted"
    );
    let (status, _) = upgrade_from("127.0.0.3", addr, "/ok").await;
    assert_eq!(status, 101);
    wait_no_tunnels(&proxy.handle).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_failures_from_distinct_clients_mark_a_node_down_and_a_101_resets_them() {
    let node = scripted_node().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(node), dir.path())).await;
    let (addr, admin) = (proxy.addr("plain"), proxy.admin.unwrap());

    for from in ["127.0.0.4", "127.0.0.5", "127.0.0.5", "127.0.0.4"] {
        assert_eq!(upgrade_from(from, addr, "/reset").await.0, 502);
    }
    assert!(
        admin_node(admin, "s").await.healthy,
        "two distinct clients < 3, however many requests"
    );
    // A 101 is a success: the run starts again.
    let (status, tunnel) = upgrade_from("127.0.0.3", addr, "/ok").await;
    assert_eq!(status, 101);
    for from in ["127.0.0.6", "127.0.0.7"] {
        assert_eq!(upgrade_from(from, addr, "/reset").await.0, 502);
    }
    assert!(
        admin_node(admin, "s").await.healthy,
        "the 101 reset the run: 2 since, not 4"
    );
    assert_eq!(upgrade_from("127.0.0.8", addr, "/reset").await.0, 502);
    assert!(
        !admin_node(admin, "s").await.healthy,
        "three distinct clients in a row"
    );
    drop(tunnel);
    within(async { wait_no_tunnels(&proxy.handle).await }).await;
    proxy.shutdown().await;
}
