//! Helpers shared by the sticky, health and reload tests: WebSocket clients that can pick
//! their source address, a fleet of echo nodes that can die and come back on the same
//! port, a tiny HTTP node with a switchable health endpoint, `/admin/nodes` parsing, and
//! polling with a deadline.
#![allow(dead_code)]

use crate::support::{http_get, within, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use herdgate::admin::NodeReport;
use herdgate::routing::key_hash;
use herdgate::server::Handle;
use herdgate_echo::EchoNode;
use http_body_util::Full;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<TcpStream>;

/// Poll `cond` until it holds; a condition that never holds within the deadline fails the
/// test with `what`.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "condition never held: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP connection to `addr` from `local` (any 127.0.0.0/8 address works on Linux
/// loopback, which lets one test act as many client IPs).
pub async fn tcp_from(local: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = within(sock.connect(addr)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// WebSocket handshake to `addr` + `path` with extra request headers.
pub async fn ws_try(
    local: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Response), String> {
    let tcp = tcp_from(local, addr).await.map_err(|e| e.to_string())?;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    within(tokio_tungstenite::client_async(req, tcp))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                format!("HTTP {}", r.status().as_u16())
            }
            e => e.to_string(),
        })
}

/// Status of an upgrade attempt: 101 (and the open socket) or the HTTP error status.
pub async fn ws_status(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<Ws>) {
    match ws_try(None, addr, path, headers).await {
        Ok((w, _)) => (101, Some(w)),
        Err(e) => match e.strip_prefix("HTTP ").and_then(|s| s.parse().ok()) {
            Some(code) => (code, None),
            None => panic!("upgrade to {addr}{path} failed below HTTP: {e}"),
        },
    }
}

pub async fn ws(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Ws, Response) {
    match ws_try(None, addr, path, headers).await {
        Ok(x) => x,
        Err(e) => panic!("WebSocket to {addr}{path} {headers:?} failed: {e}"),
    }
}

/// Send one text message and expect it back unchanged (proves the tunnel is alive end to
/// end, and that the node has counted the handshake).
pub async fn echo(ws: &mut Ws, text: &str) {
    within(ws.send(Message::text(text))).await.unwrap();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text, "echo corrupted");
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// The close code the server sends next (after draining data messages). Completes the
/// close handshake: reading on after the Close sends tungstenite's reply.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    let mut code = None;
    while let Some(m) = within(ws.next()).await {
        match m {
            Ok(Message::Close(f)) => code = Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    code
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
            let n = EchoNode::start("127.0.0.1:0".parse().unwrap())
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
        eventually(&format!("{addr} refuses connections"), || async move {
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
        let (mut w, _) = ws(addr, path, headers).await;
        echo(&mut w, "where am i").await;
        let _ = within(w.close(None)).await;
    })
    .await
    .0
}

/// Where the pool's hash puts `key` among all its nodes (ignoring health), by name.
pub fn hash_pick(handle: &Handle, pool: &str, key: &str) -> String {
    hash_order(handle, pool, key)[0].clone()
}

/// The pool's preference order for `key`, by node name.
pub fn hash_order(handle: &Handle, pool: &str, key: &str) -> Vec<String> {
    let snap = handle.snapshot();
    let p = snap
        .pools
        .iter()
        .find(|p| &*p.name == pool)
        .unwrap_or_else(|| panic!("no pool {pool}"));
    p.ring
        .order(key_hash(key.as_bytes()), |_| true)
        .map(|i| p.nodes[i].key.name.to_string())
        .collect()
}

/// Learned sticky entries of a pool.
pub fn sticky_len(handle: &Handle, pool: &str) -> usize {
    let snap = handle.snapshot();
    let p = snap.pools.iter().find(|p| &*p.name == pool).unwrap();
    p.sticky.as_ref().map_or(0, |t| t.len())
}

/// `/admin/nodes`, parsed.
pub async fn admin_nodes(admin: SocketAddr) -> Vec<NodeReport> {
    let (status, body) = http_get(admin, "/admin/nodes").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /admin/nodes JSON {e}: {body}"))
}

pub async fn admin_node(admin: SocketAddr, node: &str) -> NodeReport {
    admin_nodes(admin)
        .await
        .into_iter()
        .find(|n| n.node == node)
        .unwrap_or_else(|| panic!("/admin/nodes has no {node}"))
}

/// Wait until `/admin/nodes` reports `node` with the given health.
pub async fn wait_health(admin: SocketAddr, node: &str, healthy: bool) {
    eventually(
        &format!("{node} healthy={healthy} in /admin/nodes"),
        || async move { admin_node(admin, node).await.healthy == healthy },
    )
    .await;
}

/// Wait until the clients' closes have reached every tunnel (shutdown would otherwise
/// funnel the ending tunnels at its configured pace).
pub async fn wait_no_tunnels(h: &Handle) {
    eventually("all tunnels ended", || async { h.tunnels() == 0 }).await;
}

/// A port that was free a moment ago (for configs that need fixed ports).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

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
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
