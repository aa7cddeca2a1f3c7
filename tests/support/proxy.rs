//! herdgate in this process: configs, start and graceful stop, and what a test reads of a
//! running proxy (admin endpoints, its routing tables).

use super::http1::http_get;
use super::{eventually, within};
use herdgate::admin::NodeReport;
use herdgate::config::Config;
use herdgate::routing::key_hash;
use herdgate::server::{Handle, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use tokio::sync::oneshot;

/// Parse a test config (relative paths resolve in `dir`); an invalid one fails the test.
pub fn parse(toml: &str, dir: &Path) -> Config {
    match Config::parse(toml, "test.toml", dir) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

/// TOML for a pool of nodes named `{name}-1`, `{name}-2`, ...; `extra` goes in the
/// `[[pool]]` table.
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

/// A pool whose admission never gets in the way of a functional test.
pub fn fast_pool(name: &str, nodes: &[SocketAddr]) -> String {
    pool_toml(name, nodes, "admit_rate = 100000.0\nadmit_burst = 100000")
}

/// A plain listener + admin on ephemeral ports + one route to `pool`.
pub fn basic_toml(pool: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\npool = \"{pool}\"\n\n"
    )
}

/// A running herdgate in this process.
pub struct Proxy {
    pub handle: Handle,
    pub addrs: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The data-plane shards it serves on (`start_sharded`), stopped with it.
    _shards: Option<herdgate::shards::Shards>,
}

/// Bind `config` (port 0 listeners get their ports here) and run it.
pub async fn start(config: Config) -> Proxy {
    run(Server::bind(config).expect("bind"), None)
}

/// Like [`start`], serving the listeners on `n` data-plane shards, as the binary does.
pub async fn start_sharded(config: Config, n: usize) -> Proxy {
    let shards = herdgate::shards::Shards::start(n).expect("start the shards");
    let server = Server::bind(config).expect("bind").with_shards(&shards);
    run(server, Some(shards))
}

fn run(server: Server, shards: Option<herdgate::shards::Shards>) -> Proxy {
    let mut addrs = HashMap::new();
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
        _shards: shards,
    }
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

    /// `/metrics` of the admin endpoint.
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

/// `/admin/nodes`, parsed.
pub async fn admin_nodes(admin: SocketAddr) -> Vec<NodeReport> {
    let (status, body) = http_get(admin, "/admin/nodes").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /admin/nodes JSON {e}: {body}"))
}

/// The node names `/admin/nodes` lists, in its order.
pub async fn admin_node_names(admin: SocketAddr) -> Vec<String> {
    admin_nodes(admin)
        .await
        .into_iter()
        .map(|n| n.node)
        .collect()
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
        format!("{node} healthy={healthy} in /admin/nodes"),
        || async move { admin_node(admin, node).await.healthy == healthy },
    )
    .await;
}

/// Wait until the clients' closes have reached every tunnel (shutdown would otherwise
/// funnel the ending tunnels at its configured pace).
pub async fn wait_no_tunnels(h: &Handle) {
    eventually("all tunnels ended", || async { h.tunnels() == 0 }).await;
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

/// A key the pool's hash sends to `node` first: `{prefix}-{i}` for the first such `i`.
pub fn key_for(handle: &Handle, pool: &str, node: &str, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| hash_pick(handle, pool, k) == node)
        .unwrap()
}

/// Learned sticky entries of a pool.
pub fn sticky_len(handle: &Handle, pool: &str) -> usize {
    let snap = handle.snapshot();
    let p = snap.pools.iter().find(|p| &*p.name == pool).unwrap();
    p.sticky.as_ref().map_or(0, |t| t.len())
}
