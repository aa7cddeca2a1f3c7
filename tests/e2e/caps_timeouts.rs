//! Timeouts after the request head: a client that stalls its request body is cut off
//! with 408 and the node is not blamed (`timeouts.request_body`); a tunnel whose client
//! never reads is closed after `timeouts.write` while another tunnel keeps echoing.

use crate::support::http1::Reader;
use crate::support::metrics::{metric, metric_reaches};
use crate::support::net::tcp_from;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{admin_node, fast_pool, parse, pool_toml, start, Proxy};
use crate::support::ws::{echo_text, try_ws_over, ws_try};
use crate::support::{eventually, within};
use futures_util::SinkExt;
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::Message;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// An upload endpoint: reads the whole request body, then answers 200 with its length.
async fn upload_node() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let n = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len(),
                            Err(_) => 0,
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(n.to_string())),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn upload_proxy(timeouts: &str) -> (Proxy, tempfile::TempDir) {
    let node = upload_node().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\n{timeouts}\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"web\"\n\n{}",
        pool_toml("web", &[node], "")
    );
    (start(parse(&toml, dir.path())).await, dir)
}

/// A POST from `from` announcing 1000 bytes; `sent` of them are sent, then nothing. The
/// status herdgate answers (None: closed without one).
async fn post(from: IpAddr, addr: SocketAddr, sent: usize) -> Option<u16> {
    let mut s = tcp_from(Some(from), addr).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    within(Reader::new(s).response())
        .await
        .ok()
        .map(|r| r.status)
}

/// Stalling clients get 408 (or a close), the honest one is served, the node stays up.
async fn stalled_bodies_are_the_clients_fault(proxy: &Proxy) {
    let addr = proxy.addr("plain");
    let stallers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(post(ip(2), addr, 10)))
        .collect();
    // An honest upload while the stallers hold theirs.
    assert_eq!(post(ip(3), addr, 1000).await, Some(200));
    for s in stallers {
        let got = within(s).await.unwrap();
        assert!(
            matches!(got, Some(408) | None),
            "a stalled body got {got:?}"
        );
    }
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "herdgate_backend_errors_total", &[]),
        0.0,
        "a client's stall is not the node's failure"
    );
    assert!(admin_node(proxy.admin.unwrap(), "web-1").await.healthy);
    assert_eq!(
        post(ip(3), addr, 1000).await,
        Some(200),
        "the node still serves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_the_node_stays_up() {
    let (proxy, _dir) = upload_proxy("request_body = \"300ms\"").await;
    stalled_bodies_are_the_clients_fault(&proxy).await;
    let n = metric(
        &proxy.metrics().await,
        "herdgate_request_body_timeouts_total",
        &[],
    );
    assert_eq!(n, 4.0, "each stalled body is counted once");
    assert_eq!(
        metric(
            &proxy.metrics().await,
            "herdgate_requests_total",
            &["status=\"408\""]
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_the_response_deadline_is_still_the_clients_fault() {
    // The node's answer deadline runs out while the node still waits for the client's
    // body: that is not the node's timeout.
    let (proxy, _dir) = upload_proxy("request_body = \"30s\"\nbackend_response = \"300ms\"").await;
    stalled_bodies_are_the_clients_fault(&proxy).await;
}

/// A socket from `from` with a tiny receive buffer, so that a client that does not read
/// pushes back at once.
async fn small_window_tcp(from: IpAddr, addr: SocketAddr) -> tokio::net::TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    within(sock.connect(addr)).await.unwrap()
}

/// A node that completes WebSocket upgrades and then pushes 64 KiB binary messages as
/// fast as it can (at most 256 MiB), never reading.
async fn firehose_node() -> SocketAddr {
    use crate::support::http1::{header, read_head};
    use crate::support::ws::server_frame;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let Some(key) = header(&head, "sec-websocket-key") else {
                    return;
                };
                let accept = herdgate::websocket::handshake::accept_key(key.as_bytes());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let frame = server_frame(true, 0x2, &[0x5a; 64 << 10]);
                for _ in 0..4096 {
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_client_never_reads_is_closed_after_the_write_timeout() {
    let nodes = echo_nodes(1).await;
    let firehose = firehose_node().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nwrite = \"300ms\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath_prefix = \"/firehose\"\npool = \"firehose\"\n\n\
         [[route]]\npool = \"ws\"\n\n{}\n{}",
        fast_pool("ws", &[nodes[0].addr]),
        fast_pool("firehose", &[firehose])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");

    let (mut honest, _) = ws_try(Some(ip(3)), addr, "/", &[]).await.unwrap();
    echo_text(&mut honest, "before").await;

    // The slow reader: a tiny receive window, and it never reads what the node pushes.
    let tcp = small_window_tcp(ip(2), addr).await;
    let (slow, resp) = try_ws_over(tcp, &format!("ws://{addr}/firehose"), &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    metric_reaches(
        &proxy,
        "herdgate_write_timeouts_total",
        &["side=\"client\"", "phase=\"tunnel\""],
        |v| v >= 1.0,
    )
    .await;
    eventually("only the honest tunnel is left", || async {
        proxy.handle.tunnels() == 1
    })
    .await;
    echo_text(&mut honest, "after").await;
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "herdgate_write_timeouts_total", &["side=\"node\""]),
        0.0,
        "the node never had to wait"
    );
    assert_eq!(metric(&text, "herdgate_backend_errors_total", &[]), 0.0);
    drop(slow);
}

/// A node that completes WebSocket upgrades and then never reads (its sockets are kept
/// until the test ends).
async fn deaf_node() -> SocketAddr {
    use crate::support::http1::{header, read_head};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let head = read_head(&mut s).await;
            let Some(key) = header(&head, "sec-websocket-key") else {
                continue;
            };
            let accept = herdgate::websocket::handshake::accept_key(key.as_bytes());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if s.write_all(resp.as_bytes()).await.is_ok() {
                held.push(s);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_node_never_reads_is_closed_after_the_write_timeout() {
    let nodes = echo_nodes(1).await;
    let deaf = deaf_node().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nwrite = \"300ms\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath_prefix = \"/deaf\"\npool = \"deaf\"\n\n\
         [[route]]\npool = \"ws\"\n\n{}\n{}",
        fast_pool("ws", &[nodes[0].addr]),
        fast_pool("deaf", &[deaf])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");
    let (mut honest, _) = ws_try(Some(ip(3)), addr, "/", &[]).await.unwrap();

    let (mut to_deaf, _) = ws_try(Some(ip(2)), addr, "/deaf", &[]).await.unwrap();
    let writer = tokio::spawn(async move {
        let msg = vec![0xa5_u8; 256 << 10];
        for _ in 0..1024 {
            if to_deaf.send(Message::binary(msg.clone())).await.is_err() {
                return true;
            }
        }
        false
    });
    metric_reaches(
        &proxy,
        "herdgate_write_timeouts_total",
        &["side=\"node\"", "phase=\"tunnel\""],
        |v| v >= 1.0,
    )
    .await;
    assert!(within(writer).await.unwrap(), "the tunnel was cut");
    eventually("only the honest tunnel is left", || async {
        proxy.handle.tunnels() == 1
    })
    .await;
    echo_text(&mut honest, "unharmed").await;
}

/// A plain HTTP node whose every answer is a 64 MiB body.
async fn big_body_node() -> SocketAddr {
    use crate::support::http1::read_head;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let chunk = vec![0x5a; 64 << 10];
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    1024 * chunk.len()
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..1024 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_http_response_is_cut_after_the_write_timeout() {
    let nodes = echo_nodes(1).await;
    let big = big_body_node().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nwrite = \"300ms\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath_prefix = \"/big\"\npool = \"big\"\n\n\
         [[route]]\npool = \"ws\"\n\n{}\n{}",
        fast_pool("ws", &[nodes[0].addr]),
        fast_pool("big", &[big])
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");
    let (mut honest, _) = ws_try(Some(ip(3)), addr, "/", &[]).await.unwrap();
    echo_text(&mut honest, "before").await;

    // The slow reader asks for the big body and never reads it.
    let mut slow = small_window_tcp(ip(2), addr).await;
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    metric_reaches(
        &proxy,
        "herdgate_write_timeouts_total",
        &["side=\"client\"", "phase=\"http\""],
        |v| v >= 1.0,
    )
    .await;
    echo_text(&mut honest, "after").await;
    assert_eq!(
        metric(&proxy.metrics().await, "herdgate_backend_errors_total", &[]),
        0.0,
        "the client's slowness is not the node's failure"
    );
    drop(slow);
}
