//! Shared test harness: a real herdgate on ephemeral loopback ports, real echo nodes,
//! real certificates.
#![allow(dead_code)]

use herdgate::config::Config;
use herdgate::server::{Handle, Server};
use herdgate_echo::EchoNode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;

/// Every await in a test is bounded by this deadline (a hang is a failure, not a timing).
pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("test step exceeded its deadline")
}

pub struct Certs {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: Vec<u8>,
}

/// A self-signed certificate for `names`, written as PEM files.
pub fn certs(names: &[&str]) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Certs {
        cert_der: ck.cert.der().to_vec(),
        dir,
        cert,
        key,
    }
}

pub fn parse(toml: &str, dir: &Path) -> Config {
    match Config::parse(toml, "test.toml", dir) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

/// A running herdgate.
pub struct Proxy {
    pub handle: Handle,
    pub addrs: std::collections::HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("ws://{}{}", self.addr(listener), path)
    }

    /// Begin the graceful shutdown (what SIGTERM does) and wait for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            within(d).await.unwrap().unwrap();
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin.unwrap(), "/metrics").await.1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(d) = &self.done {
            d.abort();
        }
    }
}

pub async fn start(config: Config) -> Proxy {
    let server = Server::bind(config).expect("bind");
    let mut addrs = std::collections::HashMap::new();
    let snap = server.handle().snapshot();
    for l in &snap.config.listeners {
        addrs.insert(l.name().to_string(), server.local_addr(l.name()).unwrap());
    }
    let admin = server.admin_addr();
    let handle = server.handle();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Proxy {
        handle,
        addrs,
        admin,
        stop: Some(tx),
        done: Some(done),
    }
}

pub async fn echo_nodes(n: usize) -> Vec<EchoNode> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            EchoNode::start("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    v
}

/// TOML for a pool of nodes.
pub fn pool_toml(name: &str, nodes: &[SocketAddr], extra: &str) -> String {
    let mut s = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for (i, a) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.node]]\nname = \"{name}-{}\"\naddr = \"{a}\"\n",
            i + 1
        ));
    }
    s
}

/// A plain listener + admin on ephemeral ports + one route to `pool`.
pub fn basic_toml(pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\npool = \"{pool}\"\n\n"
    )
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    (status, body)
}

/// Send raw bytes, read until EOF: (status, head, body).
pub async fn http_raw(addr: SocketAddr, req: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    within(s.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Value of a sample in Prometheus text (`name{labels} value`), summed over lines that
/// contain every fragment.
pub fn metric(text: &str, name: &str, fragments: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
