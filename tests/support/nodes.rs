//! Backends for the proxy to talk to: echo nodes (and fleets of them that can die and come
//! back on the same port), plain HTTP nodes, and scripted nodes that send hand-made frames
//! or answer only when the test lets them.

use super::http1::{header, read_head};
use super::ws::{echo_text, read_client_frame, server_frame, ws_connect_with};
use super::{eventually, within, EchoNode};
use herdgate::websocket::handshake::accept_key;
use http_body_util::Full;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// `n` echo nodes on ephemeral loopback ports.
pub async fn echo_nodes(n: usize) -> Vec<EchoNode> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            EchoNode::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap(),
        );
    }
    v
}

/// Echo nodes by name that can be killed and restarted on the same address.
pub struct Fleet {
    pub names: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    pub nodes: Vec<Option<EchoNode>>,
}

impl Fleet {
    pub async fn start(names: &[&str]) -> Fleet {
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for _ in names {
            let n = EchoNode::start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap();
            addrs.push(n.addr);
            nodes.push(Some(n));
        }
        Fleet {
            names: names.iter().map(|s| s.to_string()).collect(),
            addrs,
            nodes,
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn accepted(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                n.as_ref()
                    .map_or(0, |n| n.stats.accepted.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// Kill node `i` and wait until its port refuses connections.
    pub async fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.stop();
        }
        let addr = self.addrs[i];
        eventually(format!("{addr} refuses connections"), || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
    }

    /// Start node `i` again on its old address.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        // tokio (mio) binds listeners with SO_REUSEADDR, so sockets of the dead node still
        // in TIME_WAIT do not block the port.
        let n = EchoNode::start(self.addrs[i]).await.unwrap();
        self.nodes[i] = Some(n);
    }

    /// `[[pool.node]]` entries for these nodes, in the order of `order` (indices).
    pub fn nodes_toml(&self, order: &[usize]) -> String {
        order
            .iter()
            .map(|&i| {
                format!(
                    "[[pool.node]]\nname = \"{}\"\naddr = \"{}\"\n",
                    self.names[i], self.addrs[i]
                )
            })
            .collect()
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.names.len()).collect()
    }
}

/// Run `connect` (which must complete a handshake and an echo), and return the index of
/// the one node whose accepted count grew.
pub async fn landed<F, Fut, T>(fleet: &Fleet, connect: F) -> (usize, T)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let before = fleet.accepted();
    let out = connect().await;
    let after = fleet.accepted();
    let grew: Vec<usize> = (0..before.len())
        .filter(|&i| after[i] != before[i])
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "exactly one node should have taken the connection: before {before:?}, after {after:?}"
    );
    assert_eq!(after[grew[0]], before[grew[0]] + 1);
    (grew[0], out)
}

/// Connect with `headers` on `path`, echo once, close; return the node index.
pub async fn land_ws(
    fleet: &Fleet,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> usize {
    landed(fleet, || async {
        let (mut w, _) = ws_connect_with(addr, path, headers).await;
        echo_text(&mut w, "where am i").await;
        let _ = within(w.close(None)).await;
    })
    .await
    .0
}

// ---------------------------------------------------------------------------
// A plain HTTP node with a switchable health endpoint
// ---------------------------------------------------------------------------

/// A plain HTTP node: `GET /healthz` answers `health` (settable), anything else answers
/// 200 with the node's name as the body.
pub struct HttpNode {
    pub name: String,
    pub addr: SocketAddr,
    pub health: Arc<AtomicU16>,
    /// Requests other than health checks.
    pub requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl HttpNode {
    pub async fn start(name: &str) -> HttpNode {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (h, r, s, n) = (
            health.clone(),
            requests.clone(),
            stop.clone(),
            name.to_string(),
        );
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    r = l.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                };
                let (h, r, n, s) = (h.clone(), r.clone(), n.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let (h, r, n) = (h.clone(), r.clone(), n.clone());
                        async move {
                            let resp = if req.uri().path() == "/healthz" {
                                let mut resp = http::Response::new(Full::new(bytes::Bytes::new()));
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(h.load(Ordering::Relaxed)).unwrap();
                                resp
                            } else {
                                r.fetch_add(1, Ordering::Relaxed);
                                http::Response::new(Full::new(bytes::Bytes::from(n)))
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        HttpNode {
            name: name.to_string(),
            addr,
            health,
            requests,
            stop,
        }
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }
}

impl Drop for HttpNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------
// A node that writes hand-made frames
// ---------------------------------------------------------------------------

/// The 4 MiB message the large-message node sends, in 4 fragments.
pub const BIG: usize = 4 << 20;

pub fn big_payload() -> Vec<u8> {
    (0..BIG).map(|i| (i % 253) as u8).collect()
}

/// What the large-message node saw.
#[derive(Debug)]
pub struct BigNodeReport {
    /// The close frame the node received (code), if any.
    pub close: Option<u16>,
    /// Frames other than the close the node received.
    pub other_frames: usize,
}

/// A node that upgrades one connection, sends the first quarter of [`BIG`] as a
/// non-final binary frame, reports `first_sent`, waits for `go`, then sends a ping and
/// the three remaining fragments, and finally answers the client's close.
pub async fn big_message_node() -> (
    SocketAddr,
    oneshot::Receiver<()>,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<BigNodeReport>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (first_tx, first_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        // Health checks are off in these configs; the first connection is the tunnel.
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let key = header(&head, "sec-websocket-key").expect("key");
        let accept = accept_key(key.as_bytes());
        s.write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let data = big_payload();
        let q = BIG / 4;
        s.write_all(&server_frame(false, 0x2, &data[..q]))
            .await
            .unwrap();
        let _ = first_tx.send(());
        let _ = go_rx.await;
        s.write_all(&server_frame(true, 0x9, b"mid-message ping"))
            .await
            .unwrap();
        for i in 1..4 {
            s.write_all(&server_frame(i == 3, 0x0, &data[i * q..(i + 1) * q]))
                .await
                .unwrap();
        }
        let mut rep = BigNodeReport {
            close: None,
            other_frames: 0,
        };
        loop {
            match read_client_frame(&mut s).await {
                Ok((_, 0x8, p)) => {
                    rep.close = Some(if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    });
                    let _ = s
                        .write_all(&server_frame(true, 0x8, &p[..p.len().min(2)]))
                        .await;
                    break;
                }
                Ok(_) => rep.other_frames += 1,
                Err(_) => break,
            }
        }
        rep
    });
    (addr, first_rx, go_tx, task)
}

// ---------------------------------------------------------------------------
// A slow HTTP node
// ---------------------------------------------------------------------------

/// An HTTP node that, for each request, reports its arrival and answers `slow` only when
/// released (one release per request).
pub struct SlowNode {
    pub addr: SocketAddr,
    pub arrived: Arc<Notify>,
    pub release: mpsc::UnboundedSender<()>,
}

pub async fn slow_http_node() -> SlowNode {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let arrived = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let a = arrived.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (a, rx) = (a.clone(), rx.clone());
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if head.is_empty() {
                    return;
                }
                a.notify_waiters();
                if rx.lock().await.recv().await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    SlowNode {
        addr,
        arrived,
        release: tx,
    }
}
