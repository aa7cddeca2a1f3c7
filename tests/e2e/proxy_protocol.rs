//! Real client identity behind load balancers, over real sockets: PROXY protocol v1 and v2
//! from trusted peers only (before TLS, under the handshake deadline, never reading past
//! the header), and `X-Forwarded-For` believed only from trusted peers, for the node's
//! view and for the per-client limit.
//!
//! Distinct peers are distinct loopback source addresses: 127.0.0.1 is the trusted load
//! balancer, 127.0.0.2 and up are anyone else.

use crate::support::http1::{header, read_head};
use crate::support::metrics::{metric, metric_reaches};
use crate::support::net::tcp_from;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, pool_toml, start, Proxy};
use crate::support::tls::{cert_toml, certs, tls_client};
use crate::support::within;
use crate::support::ws::{echo_text, ws_over, ws_try};
use herdgate_echo::EchoNode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const REFUSED: &str = "herdgate_proxy_protocol_refused_total";

fn other(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A PROXY v2 header: PROXY command, TCP over IPv4 or IPv6, `src` as the client, and one
/// TLV (PP2_TYPE_AUTHORITY) to be skipped.
fn v2_header(src: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let ft = match src {
        SocketAddr::V4(a) => {
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
            0x11
        }
        SocketAddr::V6(a) => {
            body.extend_from_slice(&a.ip().octets());
            body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x02, 0x00, 0x04]);
    body.extend_from_slice(b"chat");
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, ft]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A PROXY v2 LOCAL header (a health check of the balancer's own).
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

fn upgrade_request(host: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The X-Forwarded-For the node saw on its last handshake.
fn node_xff(node: &EchoNode) -> String {
    let h = node.stats.last_headers.lock().unwrap().clone().unwrap();
    h.get("x-forwarded-for")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The connection was closed by herdgate without a byte of answer.
async fn closed_silently(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match within(s.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "expected a silent close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

async fn pp_proxy(node: SocketAddr, extra: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{extra}\n\
         [[listener]]\nname = \"pp\"\nbind = \"127.0.0.1:0\"\n\
         proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
         [[route]]\npool = \"ws\"\n\n{}",
        fast_pool("ws", &[node])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    (dir, proxy)
}

/// A trusted balancer's v1 and v2 headers name the client the node sees; an untrusted
/// peer's header, and a trusted peer without one, are refused and counted; the honest
/// connections before and after are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_trusted_peers_only() {
    let nodes = echo_nodes(1).await;
    let (_dir, proxy) = pp_proxy(nodes[0].addr, "").await;
    let addr = proxy.addr("pp");

    // v1, header and request in one write: the bytes after the header reach hyper intact.
    let mut s = tcp_from(Some(LB), addr).await.unwrap();
    let wire = format!(
        "PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n{}",
        upgrade_request("chat.example")
    );
    within(s.write_all(wire.as_bytes())).await.unwrap();
    let head = within(read_head(&mut s)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(header(&head, "sec-websocket-accept").is_some(), "{head}");
    assert_eq!(node_xff(&nodes[0]), "198.51.100.7");
    drop(s);

    // v2 over IPv6 with a TLV, then a WebSocket client on the same stream.
    let forged: SocketAddr = "[2001:db8::7]:5555".parse().unwrap();
    let mut s = tcp_from(Some(LB), addr).await.unwrap();
    within(s.write_all(&v2_header(forged))).await.unwrap();
    let (mut ws, _) = ws_over(s, &format!("ws://{addr}/chat"), &[]).await;
    echo_text(&mut ws, "behind v2").await;
    assert_eq!(node_xff(&nodes[0]), "2001:db8::7");
    drop(ws);

    // v2 LOCAL: the balancer speaks for itself.
    let mut s = tcp_from(Some(LB), addr).await.unwrap();
    within(s.write_all(&v2_local())).await.unwrap();
    let (mut ws, _) = ws_over(s, &format!("ws://{addr}/chat"), &[]).await;
    echo_text(&mut ws, "local").await;
    assert_eq!(node_xff(&nodes[0]), "127.0.0.1");
    drop(ws);

    // An untrusted peer forging a header: closed before anything is read, counted.
    let accepted = nodes[0]
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut bad = tcp_from(Some(other(2)), addr).await.unwrap();
    let wire = format!(
        "PROXY TCP4 10.0.0.1 127.0.0.1 1 80\r\n{}",
        upgrade_request("chat.example")
    );
    // The write may already fail if the close came first; the close is what counts.
    let _ = bad.write_all(wire.as_bytes()).await;
    closed_silently(&mut bad).await;
    metric_reaches(&proxy, REFUSED, &["reason=\"untrusted\""], |v| v == 1.0).await;
    // And one sending v2 from yet another address.
    let mut bad = tcp_from(Some(other(3)), addr).await.unwrap();
    let _ = bad
        .write_all(&v2_header("10.0.0.2:1".parse().unwrap()))
        .await;
    closed_silently(&mut bad).await;
    metric_reaches(&proxy, REFUSED, &["reason=\"untrusted\""], |v| v == 2.0).await;

    // The trusted peer without a header (plain HTTP straight away): invalid.
    let mut bad = tcp_from(Some(LB), addr).await.unwrap();
    let _ = bad
        .write_all(upgrade_request("chat.example").as_bytes())
        .await;
    closed_silently(&mut bad).await;
    metric_reaches(&proxy, REFUSED, &["reason=\"invalid\""], |v| v == 1.0).await;

    // None of them reached the node; the honest balancer still gets through.
    assert_eq!(
        nodes[0]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        accepted
    );
    let mut s = tcp_from(Some(LB), addr).await.unwrap();
    within(s.write_all(&v2_header("192.0.2.44:1234".parse().unwrap())))
        .await
        .unwrap();
    let (mut ws, _) = ws_over(s, &format!("ws://{addr}/chat"), &[]).await;
    echo_text(&mut ws, "still served").await;
    assert_eq!(node_xff(&nodes[0]), "192.0.2.44");
    drop(ws);
    proxy.shutdown().await;
}

/// A peer that sends half a header, or nothing, is closed at the handshake deadline and
/// counted; an honest balancer connection meanwhile is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_proxy_header_is_closed_at_the_deadline() {
    let nodes = echo_nodes(1).await;
    let (_dir, proxy) = pp_proxy(nodes[0].addr, "[timeouts]\nhandshake = \"3s\"\n").await;
    let addr = proxy.addr("pp");

    let mut partial = tcp_from(Some(LB), addr).await.unwrap();
    within(partial.write_all(b"PROXY TCP4 198.51.100.9 127.0"))
        .await
        .unwrap();
    let mut partial_v2 = tcp_from(Some(LB), addr).await.unwrap();
    within(partial_v2.write_all(&v2_header("198.51.100.9:9".parse().unwrap())[..20]))
        .await
        .unwrap();
    let mut silent = tcp_from(Some(LB), addr).await.unwrap();

    // While those hang, an honest connection is served.
    let mut s = tcp_from(Some(LB), addr).await.unwrap();
    within(s.write_all(b"PROXY TCP4 198.51.100.10 127.0.0.1 1 80\r\n"))
        .await
        .unwrap();
    let (mut ws, _) = ws_over(s, &format!("ws://{addr}/chat"), &[]).await;
    echo_text(&mut ws, "not blocked").await;
    assert_eq!(node_xff(&nodes[0]), "198.51.100.10");
    // Served while the hanging ones are still waiting on their deadline (a reader that
    // held up the accept loop would have served it only after closing them).
    let mut b = [0u8; 1];
    for s in [&partial, &partial_v2, &silent] {
        match s.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "a hanging connection was closed before the honest one was served: {other:?}"
            ),
        }
    }

    for s in [&mut partial, &mut partial_v2, &mut silent] {
        closed_silently(s).await;
    }
    metric_reaches(&proxy, REFUSED, &["reason=\"timeout\""], |v| v == 3.0).await;
    echo_text(&mut ws, "still open").await;
    drop(ws);
    proxy.shutdown().await;
}

/// An honest TLS client behind a PROXY v2 balancer completes wss; the node sees the client
/// the header named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_behind_proxy_v2() {
    let nodes = echo_nodes(1).await;
    let (dir, c) = certs(&["localhost"]);
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/31\"]\n\
         [listener.tls]\n{}\n\
         [[route]]\npool = \"ws\"\n\n{}",
        cert_toml(&c),
        fast_pool("ws", &[nodes[0].addr])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("tls");
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));

    let mut tcp = tcp_from(Some(LB), addr).await.unwrap();
    within(tcp.write_all(&v2_header("203.0.113.50:6000".parse().unwrap())))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within(tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp))
        .await
        .unwrap();
    let (mut ws, _) = ws_over(tls, "wss://localhost/chat", &[]).await;
    echo_text(&mut ws, "wss behind v2").await;
    let seen = nodes[0].stats.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.50");
    assert_eq!(seen["x-forwarded-proto"], "https");

    // A TLS client straight from an untrusted address: refused before the handshake.
    let tcp = tcp_from(Some(other(2)), addr).await.unwrap();
    let r = within(tokio_rustls::TlsConnector::from(cfg).connect(name, tcp)).await;
    assert!(r.is_err(), "an untrusted peer must not get a TLS session");
    metric_reaches(&proxy, REFUSED, &["reason=\"untrusted\""], |v| v == 1.0).await;
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "herdgate_tls_handshake_failures_total", &[]),
        0.0,
        "refused before TLS"
    );
    echo_text(&mut ws, "unharmed").await;
    drop(ws);
    proxy.shutdown().await;
}

/// X-Forwarded-For changes identity only from a trusted peer: an untrusted client that
/// rotates it is still limited on its own address (and the node never sees its forgery),
/// while another client is not limited; behind the trusted peer, two forwarded clients
/// are limited separately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_peers() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\n\
         [[route]]\npool = \"ws\"\n[route.client_limit]\nrate = 0.01\nburst = 2\n\n{}",
        pool_toml(
            "ws",
            &[nodes[0].addr],
            "admit_rate = 100000.0\nadmit_burst = 100000"
        )
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");
    let mut keep = Vec::new();

    // The rotating forger from 127.0.0.2: two get in (its burst), the third does not.
    for (i, xff) in ["10.1.1.1", "203.0.113.1", "203.0.113.2"]
        .iter()
        .enumerate()
    {
        let r = ws_try(Some(other(2)), addr, "/", &[("x-forwarded-for", xff)]).await;
        if i < 2 {
            keep.push(r.unwrap().0);
            assert_eq!(node_xff(&nodes[0]), "127.0.0.2", "the forgery is replaced");
        } else {
            assert_eq!(
                r.err().as_deref(),
                Some("HTTP 429"),
                "rotating XFF must not help"
            );
        }
    }
    // Another untrusted client is not limited by it.
    keep.push(ws_try(Some(other(3)), addr, "/", &[]).await.unwrap().0);

    // Behind the trusted peer: each forwarded client has its own burst.
    for xff in ["6.6.6.6, 203.0.113.7", "203.0.113.7, 10.2.2.2"] {
        keep.push(
            ws_try(Some(LB), addr, "/", &[("x-forwarded-for", xff)])
                .await
                .unwrap()
                .0,
        );
        assert_eq!(node_xff(&nodes[0]), format!("{xff}, 127.0.0.1"), "appended");
    }
    let r = ws_try(Some(LB), addr, "/", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(
        r.err().as_deref(),
        Some("HTTP 429"),
        "203.0.113.7 spent its burst"
    );
    keep.push(
        ws_try(Some(LB), addr, "/", &[("x-forwarded-for", "203.0.113.8")])
            .await
            .unwrap()
            .0,
    );
    // A malformed list from the trusted peer: the peer is the client, counted, served.
    keep.push(
        ws_try(
            Some(LB),
            addr,
            "/",
            &[("x-forwarded-for", "203.0.113.9:80")],
        )
        .await
        .unwrap()
        .0,
    );

    let text = proxy.metrics().await;
    assert_eq!(metric(&text, "herdgate_client_limited_total", &[]), 2.0);
    assert_eq!(
        metric(&text, "herdgate_forwarded_for_ignored_total", &[]),
        1.0
    );
    assert_eq!(
        nodes[0]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        keep.len() as u64
    );
    drop(keep);
    proxy.shutdown().await;
}
