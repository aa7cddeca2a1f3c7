//! The node leg of an upgrade (issue 13): herdgate writes the upgrade head itself and
//! parses the node's answer in place. A scripted node answers by path: a 101 with the
//! first tunnel bytes in the same segment as its head, refusals with a body framed by
//! Content-Length, chunked or the close, a garbage head, an oversized head, and silence.
//! One client (127.0.0.2) provokes each; an honest client (127.0.0.3) is served
//! throughout, the broken answers are refused (502/504) and counted per node.

use crate::support::http1::{header, read_head, Reader, Then};
use crate::support::metrics::metric;
use crate::support::net::tcp_from;
use crate::support::proxy::{parse, start, wait_no_tunnels};
use crate::support::within;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// A server text frame "hi": what the node sends right behind its 101 head.
const FIRST_FRAME: &[u8] = b"\x81\x02hi";

/// A node whose answer to an upgrade depends on its path.
async fn scripted_node() -> SocketAddr {
    crate::support::http1::scripted_node(|path, accept| {
        let answer: Vec<u8> = match path {
            // The head and the first frame in one write: the frame must reach
            // the client after the 101, not be lost with the head's buffer.
            "/ok" => [
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\
                     X-Node: yes\r\n\r\n"
                )
                .into_bytes(),
                FIRST_FRAME.to_vec(),
            ]
            .concat(),
            // An interim answer first, then the 101.
            "/early-hints" => format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                 HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes(),
            "/403-length" => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\n\
                X-Why: banned\r\nKeep-Alive: timeout=5\r\n\r\nnot for you!"
                .to_vec(),
            "/403-chunked" => b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\
                Connection: x-secret\r\nX-Secret: 1\r\n\r\n\
                4\r\nnot \r\n8\r\nfor you!\r\n0\r\n\r\n"
                .to_vec(),
            "/403-close" => {
                b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nuntil the close".to_vec()
            }
            "/garbage" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(),
            "/oversized" => {
                let mut a = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Accept: {accept}\r\nX-Big: "
                )
                .into_bytes();
                a.resize(a.len() + 40 * 1024, b'a');
                a.extend_from_slice(b"\r\n\r\n");
                a
            }
            // /silent: read the request, answer nothing, hold the connection.
            _ => Vec::new(),
        };
        // Then hold the connection (a tunnel: echo) until the other side closes it.
        let then = if path.starts_with("/403-close") {
            Then::Close
        } else {
            Then::Echo
        };
        Some((answer, then))
    })
    .await
}

fn config(node: SocketAddr) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[timeouts]\nbackend_response = \"400ms\"\n\n\
         [[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n\n\
         [[pool.node]]\nname = \"s\"\naddr = \"{node}\"\n"
    )
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An honest client from 127.0.0.3: its 101, the node's first frame, and an echo.
async fn honest(addr: SocketAddr, path: &str) {
    let ip: IpAddr = "127.0.0.3".parse().unwrap();
    let mut s = tcp_from(Some(ip), addr).await.unwrap();
    s.write_all(upgrade(path).as_bytes()).await.unwrap();
    // Read byte by byte: nothing past the head is taken.
    let head = within(read_head(&mut s)).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{path}: {head}");
    let mut got = Vec::new();
    if path == "/ok" {
        assert_eq!(header(&head, "x-node"), Some("yes"));
        while got.len() < FIRST_FRAME.len() {
            let mut b = [0u8; 64];
            let n = within(s.read(&mut b)).await.unwrap();
            assert!(n > 0, "the node's first frame was lost");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(&got[..FIRST_FRAME.len()], FIRST_FRAME);
        got.drain(..FIRST_FRAME.len());
    }
    // A masked text frame "ping" goes through and comes back (the node echoes raw bytes).
    let frame = [
        0x81u8,
        0x84,
        1,
        2,
        3,
        4,
        b'p' ^ 1,
        b'i' ^ 2,
        b'n' ^ 3,
        b'g' ^ 4,
    ];
    s.write_all(&frame).await.unwrap();
    while got.len() < frame.len() {
        let mut b = [0u8; 64];
        let n = within(s.read(&mut b)).await.unwrap();
        assert!(n > 0, "tunnel closed");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(&got[..frame.len()], &frame);
}

/// The misbehaving client's request to `path`: the whole answer.
async fn provoke(addr: SocketAddr, path: &str) -> crate::support::http1::Resp {
    let ip: IpAddr = "127.0.0.2".parse().unwrap();
    let s = tcp_from(Some(ip), addr).await.unwrap();
    let mut rd = Reader::new(s);
    rd.s.write_all(upgrade(path).as_bytes()).await.unwrap();
    within(rd.response()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_answers_reach_the_client_and_broken_heads_are_refused_and_counted() {
    let node = scripted_node().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(parse(&config(node), dir.path())).await;
    let addr = proxy.addr("plain");

    honest(addr, "/ok").await;
    honest(addr, "/early-hints").await;

    let r = provoke(addr, "/403-length").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "not for you!");
    assert_eq!(r.header("x-why"), Some("banned"));
    assert!(!r.has("keep-alive"), "hop-by-hop fields stay with the node");

    let r = provoke(addr, "/403-chunked").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "not for you!");
    assert!(
        !r.has("x-secret"),
        "a field the node's Connection names is stripped"
    );

    let r = provoke(addr, "/403-close").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "until the close");

    honest(addr, "/ok").await;

    for path in ["/garbage", "/oversized"] {
        let r = provoke(addr, path).await;
        assert_eq!(r.status, 502, "{path}");
    }
    let r = provoke(addr, "/silent").await;
    assert_eq!(r.status, 504, "a node that never answers is a timeout");

    honest(addr, "/ok").await;

    let text = proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herdgate_backend_bad_handshakes_total",
            &["node=\"s\""]
        ),
        2.0,
        "the garbage and the oversized heads, each counted once"
    );
    let timeouts = text
        .lines()
        .filter(|l| l.starts_with("herdgate_backend_errors_total") && l.contains("timeout"))
        .collect::<Vec<_>>();
    assert!(
        !timeouts.is_empty(),
        "the silent node's timeout is counted: {text}"
    );
    wait_no_tunnels(&proxy.handle).await;
    proxy.shutdown().await;
}
