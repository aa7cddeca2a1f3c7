//! Robustness over real sockets: silent and slow clients dropped at the one handshake
//! deadline (plain and TLS), the connection cap, abusive input on both listeners while
//! other clients' tunnels keep working, and the admin endpoints.

use crate::support::http1::{http_get, raw_request, Reader};
use crate::support::metrics::{metric, metric_reaches};
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{fast_pool, parse, start, wait_no_tunnels, Proxy};
use crate::support::tls::{cert_toml, certs, tls_client, tls_client_any, tls_connect, Cert};
use crate::support::within;
use crate::support::ws::{echo_text, pattern, ws_connect, ws_over};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Plain listener `{tag}` and TLS listener `{tag}-tls`, admin on, `extra` at the top; the
/// TLS listener's certificate (and the directory that holds it).
async fn proxy(tag: &str, nodes: &[SocketAddr], extra: &str) -> (Proxy, Cert, tempfile::TempDir) {
    let (dir, c) = certs(&["localhost"]);
    let toml = format!(
        "{extra}\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"{tag}\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"{tag}-tls\"\nbind = \"127.0.0.1:0\"\n\
         {}\n\
         [[route]]\npool = \"{tag}\"\n\n{}",
        cert_toml(&c),
        fast_pool(tag, nodes)
    );
    (start(parse(&toml, dir.path())).await, c, dir)
}

/// Read until the peer closes; true when it closed (EOF or reset), with what came first.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn label(l: &str) -> String {
    format!("listener=\"{l}\"")
}

#[tokio::test]
async fn silent_client_dropped_at_the_handshake_deadline() {
    let nodes = echo_nodes(1).await;
    let (p, c, _dir) = proxy(
        "silent",
        &[nodes[0].addr],
        "[timeouts]\nhandshake = \"300ms\"\n",
    )
    .await;

    // Plain: connect and say nothing.
    let mut s = within(TcpStream::connect(p.addr("silent"))).await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.is_empty(), "a silent client gets no response: {got:?}");
    metric_reaches(
        &p,
        "herdgate_handshake_timeouts_total",
        &[&label("silent")],
        |v| v >= 1.0,
    )
    .await;

    // TLS: connect and never send a ClientHello.
    let mut s = within(TcpStream::connect(p.addr("silent-tls")))
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(got.is_empty(), "{got:?}");
    metric_reaches(
        &p,
        "herdgate_handshake_timeouts_total",
        &[&label("silent-tls")],
        |v| v >= 1.0,
    )
    .await;
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "herdgate_tls_handshake_failures_total",
            &[&label("silent-tls")]
        ) >= 1.0
    );

    // TLS handshake done, then no request: the rest of the same deadline applies.
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));
    let mut tls = tls_connect(p.addr("silent-tls"), cfg, "localhost").await;
    let got = read_until_closed(&mut tls).await;
    assert!(got.is_empty(), "{got:?}");

    // Everyone else is served normally meanwhile.
    let mut ws = ws_connect(p.addr("silent"), "/").await;
    echo_text(&mut ws, "still fine").await;
}

#[tokio::test]
async fn half_a_header_then_stall_is_dropped() {
    let nodes = echo_nodes(1).await;
    let (p, _c, _dir) = proxy(
        "stall",
        &[nodes[0].addr],
        "[timeouts]\nhandshake = \"300ms\"\n",
    )
    .await;
    let mut s = within(TcpStream::connect(p.addr("stall"))).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: app.exa")
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    // Dropped: nothing, or at most a 408 before the close.
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        nodes[0]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    );
    metric_reaches(
        &p,
        "herdgate_handshake_timeouts_total",
        &[&label("stall")],
        |v| v >= 1.0,
    )
    .await;

    // A header dribbled byte by byte, never finished: same end.
    let mut s = within(TcpStream::connect(p.addr("stall"))).await.unwrap();
    let req = b"GET /dribble HTTP/1.1\r\nHost: app.example\r\nX-Slow: ";
    let dribble = async {
        for b in req.iter().chain(std::iter::repeat(&b'a')) {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(dribble).await;
    // Bytes kept coming, yet the one deadline held (it is not renewed per read).
    metric_reaches(
        &p,
        "herdgate_handshake_timeouts_total",
        &[&label("stall")],
        |v| v >= 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_enforced() {
    let nodes = echo_nodes(1).await;
    let (p, _c, _dir) = proxy("cap", &[nodes[0].addr], "[limits]\nmax_connections = 2\n").await;
    let addr = p.addr("cap");
    let mut ws1 = ws_connect(addr, "/one").await;
    let mut ws2 = ws_connect(addr, "/two").await;
    echo_text(&mut ws1, "one").await;
    echo_text(&mut ws2, "two").await;
    assert_eq!(
        metric(
            &p.metrics().await,
            "herdgate_connections_accepted_total",
            &[&label("cap")]
        ),
        2.0
    );

    // The third connects (the kernel backlog takes it) but is not served.
    let third = within(TcpStream::connect(addr)).await.unwrap();
    let mut third = Reader::new(third);
    third
        .s
        .write_all(
            b"GET /three HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut probe = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.s.peek(&mut probe))
            .await
            .is_err(),
        "the third connection was answered while two tunnels hold the cap"
    );
    assert_eq!(
        metric(
            &p.metrics().await,
            "herdgate_connections_accepted_total",
            &[&label("cap")]
        ),
        2.0,
        "the third connection must wait in the backlog, not be accepted"
    );
    // The TLS listener shares the process cap: its client waits too.
    let tls_waiting = within(TcpStream::connect(p.addr("cap-tls"))).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tls_waiting.peek(&mut probe))
            .await
            .is_err()
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "herdgate_connections_accepted_total",
            &[&label("cap-tls")]
        ),
        0.0
    );
    assert_eq!(
        metric(&m, "herdgate_connections_accepted_total", &[&label("cap")]),
        2.0
    );
    assert_eq!(
        metric(&m, "herdgate_connections_open", &[&label("cap")]),
        2.0
    );
    drop(tls_waiting);

    // One tunnel closes: the third is served.
    ws1.close(None).await.unwrap();
    while let Some(Ok(_)) = within(ws1.next()).await {}
    drop(ws1);
    let r = within(third.response()).await.unwrap();
    assert_eq!(r.status, 101);
    metric_reaches(
        &p,
        "herdgate_connections_accepted_total",
        &[&label("cap")],
        |v| v == 3.0,
    )
    .await;
    echo_text(&mut ws2, "two still works").await;
}

/// Panics on tokio worker threads (the proxy's tasks in a multi-thread runtime).
fn worker_panics() -> &'static Mutex<Vec<String>> {
    static P: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    P.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                if let Some(p) = P.get() {
                    p.lock().unwrap().push(info.to_string());
                }
            }
            prev(info);
        }));
        Mutex::new(Vec::new())
    })
}

fn client_hello() -> Vec<u8> {
    let cfg = Arc::new(tls_client_any(rustls::DEFAULT_VERSIONS));
    let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    assert!(out.len() > 100 && out[0] == 0x16, "a TLS handshake record");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_does_not_hurt_other_clients() {
    worker_panics();
    let nodes = echo_nodes(1).await;
    let (p, c, _dir) = proxy("abuse", &[nodes[0].addr], "").await;
    let plain = p.addr("abuse");
    let tls_addr = p.addr("abuse-tls");
    // Tunnels open throughout, one plain and one TLS.
    let mut ws = ws_connect(plain, "/steady").await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));
    let tls = tls_connect(tls_addr, cfg.clone(), "localhost").await;
    let (mut wss, _) = ws_over(tls, "wss://localhost/steady", &[]).await;

    let hello = client_hello();
    let mut abuses: Vec<(&str, SocketAddr, Vec<u8>)> = vec![
        ("garbage to plain", plain, pattern(4096, 1)),
        ("binary with CRLFs to plain", plain, {
            let mut j = pattern(2000, 2);
            j.extend_from_slice(b"\r\n\r\n");
            j
        }),
        ("TLS ClientHello to plain", plain, hello.clone()),
        ("junk to TLS", tls_addr, pattern(8192, 3)),
        ("HTTP to TLS", tls_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("ClientHello then junk to TLS", tls_addr, {
            let mut h = hello.clone();
            h.extend_from_slice(&pattern(3000, 4));
            h
        }),
        ("truncated ClientHello to TLS", tls_addr, hello[..hello.len() / 2].to_vec()),
        ("NUL bytes to plain", plain, vec![0u8; 10_000]),
        (
            "request line of 100 KiB",
            plain,
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100 << 10)).into_bytes(),
        ),
        (
            "broken upgrade",
            plain,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec(),
        ),
    ];
    // An upgrade that then sends a frame header claiming 2^63-1 bytes and junk.
    abuses.push(("absurd frame length after upgrade", plain, {
        let mut v = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .to_vec();
        v.extend_from_slice(&[
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ]);
        v.extend_from_slice(&pattern(5000, 5));
        v
    }));

    let tls_failures_before = metric(
        &p.metrics().await,
        "herdgate_tls_handshake_failures_total",
        &[&label("abuse-tls")],
    );
    for (i, (what, addr, bytes)) in abuses.iter().enumerate() {
        let mut s = within(TcpStream::connect(*addr)).await.unwrap();
        // The proxy may close before taking it all; that is fine.
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let got = read_until_closed(&mut s).await;
        if *addr == plain && !got.is_empty() {
            let head = String::from_utf8_lossy(&got);
            let upgraded = what.contains("after upgrade");
            assert!(
                head.starts_with("HTTP/1.1 4") || (upgraded && head.starts_with("HTTP/1.1 101")),
                "{what}: {head}"
            );
        }
        // The steady tunnels still work, and a new client is served.
        echo_text(&mut ws, &format!("after {what}")).await;
        echo_text(&mut wss, &format!("after {what} (tls)")).await;
        let mut fresh = ws_connect(plain, "/fresh").await;
        echo_text(&mut fresh, &format!("fresh {i}")).await;
        fresh.close(None).await.unwrap();
    }
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "herdgate_tls_handshake_failures_total",
            &[&label("abuse-tls")]
        ) >= tls_failures_before + 4.0
    );
    let panics = worker_panics().lock().unwrap().clone();
    assert!(panics.is_empty(), "panics in the proxy: {panics:?}");
}

#[tokio::test]
async fn healthz_and_metrics() {
    let nodes = echo_nodes(1).await;
    let (p, c, _dir) = proxy("obs", &[nodes[0].addr], "").await;
    let admin = p.admin.unwrap();
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");

    // Some traffic: a tunnel with bytes both ways, a 404, a TLS failure.
    let mut ws = ws_connect(p.addr("obs"), "/").await;
    echo_text(&mut ws, "count me").await;
    let r = raw_request(
        p.addr("obs"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        r.status, 502,
        "plain GET to an echo node is not a WebSocket"
    );
    let mut s = within(TcpStream::connect(p.addr("obs-tls"))).await.unwrap();
    s.write_all(&pattern(512, 9)).await.unwrap();
    read_until_closed(&mut s).await;
    let cfg = Arc::new(tls_client(rustls::ALL_VERSIONS, &[&c.der]));
    let tls = tls_connect(p.addr("obs-tls"), cfg, "localhost").await;
    let (mut wss, _) = ws_over(tls, "wss://localhost/", &[]).await;
    echo_text(&mut wss, "tls too").await;

    let m = p.metrics().await;
    assert!(
        metric(&m, "herdgate_connections_accepted_total", &[&label("obs")]) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "herdgate_connections_accepted_total",
            &[&label("obs-tls")]
        ) >= 2.0
    );
    assert!(metric(&m, "herdgate_connections_open", &[&label("obs")]) >= 1.0);
    assert!(
        metric(
            &m,
            "herdgate_tls_handshake_failures_total",
            &[&label("obs-tls")]
        ) >= 1.0
    );
    assert!(metric(&m, "herdgate_requests_total", &["status=\"101\""]) >= 2.0);
    assert!(metric(&m, "herdgate_requests_total", &["status=\"502\""]) >= 1.0);
    assert_eq!(
        metric(
            &m,
            "herdgate_tunnels_open",
            &["pool=\"obs\"", "node=\"obs-1\""]
        ),
        2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "herdgate_tunnel_bytes_total",
            &["direction=\"client_to_node\""]
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            "herdgate_tunnel_bytes_total",
            &["direction=\"node_to_client\""]
        ) > 0.0
    );
    for line in [
        "# TYPE herdgate_connections_accepted_total counter",
        "# TYPE herdgate_tunnels_open gauge",
        "# TYPE herdgate_tunnel_bytes_total counter",
    ] {
        assert!(m.contains(line), "missing {line:?}");
    }

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);
    metric_reaches(
        &p,
        "herdgate_tunnels_open",
        &["pool=\"obs\"", "node=\"obs-1\""],
        |v| v == 1.0,
    )
    .await;
    wss.send(Message::Close(None)).await.unwrap();
}

/// Issue 9: path prefixes match at segment boundaries, and an upgrade that says it carries
/// a body is a 400 (its body would sit between the head and the first frame). The
/// misbehaving requests are refused; an honest WebSocket on the same route echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_match_at_segment_boundaries_and_upgrades_carry_no_body() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath_prefix = \"/api\"\npool = \"p\"\n\n{}",
        fast_pool("p", &[nodes[0].addr])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");
    let upgrade = |path: &str, extra: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };

    let r = raw_request(addr, upgrade("/apix", "").as_bytes()).await;
    assert_eq!(r.status, 404, "/apix is not under /api");
    let with_body = upgrade("/api/chat", "Content-Length: 5\r\n") + "hello";
    let r = raw_request(addr, with_body.as_bytes()).await;
    assert_eq!(r.status, 400, "an upgrade with a body");
    let chunked =
        upgrade("/api/chat", "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n";
    let r = raw_request(addr, chunked.as_bytes()).await;
    assert_eq!(r.status, 400, "an upgrade with a chunked body");

    let mut ws = ws_connect(addr, "/api/chat").await;
    echo_text(&mut ws, "honest").await;
    drop(ws);
    let mut ws = ws_connect(addr, "/api").await;
    echo_text(&mut ws, "exact prefix").await;
    drop(ws);
    assert_eq!(
        nodes[0]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "only the honest upgrades reached the node"
    );
    wait_no_tunnels(&proxy.handle).await;
    proxy.shutdown().await;
}
