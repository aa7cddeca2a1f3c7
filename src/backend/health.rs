//! Health: active checks per pool, passive marks from real traffic.
//!
//! Passive: a refused connect marks a node down at once (the process is gone); softer
//! failures (timeouts, broken exchanges) count up to `passive_failures` distinct clients.
//! Only what a client cannot cause counts at all (see `failure.rs`): never a 4xx or 5xx
//! answer, never a client's own slowness or malformed request, never herdgate's own
//! resource exhaustion. A WebSocket counts as a success at
//! its 101, not when it closes: a proxy that counts at close never sees a long-lived
//! tunnel succeed, and after one collapse would never mark its nodes up again.
//!
//! A node marked down by traffic alone, in a pool without active checks, gets a recovery
//! probe (TCP connect each second) so that it can come back.

use super::{Node, NodeKey};
use crate::config::{HealthConfig, HealthKind};
use rand::Rng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Called when a node goes from down to up (starts slow start).
pub type UpHook = Arc<dyn Fn(&Arc<Node>) + Send + Sync>;

/// Active and passive health of every node: runs the checks and flips nodes up and down.
pub struct Health {
    /// Running active checks, by node; a reload keeps those whose settings are unchanged
    /// (restarting them would reset their rise/fall counts and delay the next check).
    active: Mutex<HashMap<NodeKey, (HealthConfig, CancellationToken)>>,
    on_up: UpHook,
    stop: CancellationToken,
}

impl Health {
    /// No checks running yet; `on_up` runs when a node comes back, `stop` ends every check.
    pub fn new(on_up: UpHook, stop: CancellationToken) -> Self {
        Health {
            active: Mutex::new(HashMap::new()),
            on_up,
            stop,
        }
    }

    /// A connect or request to `node` failed. `hard`: refused or reset at connect, which
    /// no client can cause: the node is marked down at once. A soft failure (the node
    /// timed out or broke an exchange on a request herdgate built) is attributed to
    /// `client`, the identity whose request met it: a run of soft failures marks the node
    /// down only when it holds `passive_failures` distinct clients, so one client, however
    /// many requests it sends, never does.
    pub fn passive_failure(&self, node: &Arc<Node>, hard: bool, client: Option<IpAddr>) {
        if hard {
            self.mark(node, false, "connect refused");
            return;
        }
        let threshold = node.passive_threshold.load(Ordering::Relaxed).max(1) as usize;
        if let (Some(c), Ok(mut seen)) = (client, node.soft_failure_clients.lock()) {
            if seen.contains(&c) {
                return;
            }
            if seen.len() < threshold {
                seen.push(c);
            }
        }
        let n = node.soft_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold as u64 {
            self.mark(node, false, "consecutive failures");
        }
    }

    /// A tunnel's node ended it without a WebSocket close (or reset it): connect to the
    /// node (twice if the first connect stays open). Refused, or accepted and then reset or closed within
    /// [`CONFIRM_TIMEOUT`] (a dying process's listener still queues connects until it is
    /// closed), is the node's death, which no client can cause: it is marked down at
    /// once, before the tunnel's client (and the node's other clients) learn and
    /// reconnect. A node that keeps the connection open is alive; a node already down is
    /// not asked.
    ///
    /// One probe per node at a time: when a node dies, all its tunnels end at once, and a
    /// probe each would open one socket per tunnel (thousands, at the moment the
    /// displaced clients reconnect: herdgate ran out of descriptors in the storm bench,
    /// and refused them). A tunnel waits for the probe in flight; if the node is down
    /// by then, or a probe that began after this tunnel asked found it alive, that is
    /// its answer.
    pub async fn confirm_alive(&self, node: &Arc<Node>) {
        if !node.is_healthy() {
            return;
        }
        let asked = Instant::now();
        let mut last_alive = node.confirm.lock().await;
        if !node.is_healthy() || last_alive.is_some_and(|began| began >= asked) {
            return;
        }
        let began = Instant::now();
        // A listener about to close may still take the first connect into its backlog (or
        // accept it just before it stops): if that one stays open, ask once more.
        let gone = probe_gone(node.key.addr, true).await || probe_gone(node.key.addr, false).await;
        if gone {
            node.metrics.backend_refused.increment(1);
            self.mark(node, false, "a tunnel ended and the node is gone");
        } else {
            *last_alive = Some(began);
        }
    }

    /// A request succeeded, or a WebSocket reached its 101.
    pub fn passive_success(&self, node: &Arc<Node>) {
        if node.soft_failures.load(Ordering::Relaxed) != 0 {
            node.soft_failures.store(0, Ordering::Relaxed);
            if let Ok(mut seen) = node.soft_failure_clients.lock() {
                seen.clear();
            }
        }
    }

    fn mark(&self, node: &Arc<Node>, up: bool, why: &str) {
        let was = node.set_healthy(up);
        if was == up {
            return;
        }
        if up {
            tracing::info!(node = %node.key, "node up ({why})");
            node.soft_failures.store(0, Ordering::Relaxed);
            if let Ok(mut seen) = node.soft_failure_clients.lock() {
                seen.clear();
            }
            (self.on_up)(node);
        } else {
            tracing::warn!(node = %node.key, "node down ({why})");
            if !node.actively_checked.load(Ordering::Relaxed)
                && !node.probing.swap(true, Ordering::AcqRel)
            {
                self.spawn_probe(node.clone());
            }
        }
    }

    fn spawn_probe(&self, node: Arc<Node>) {
        let stop = self.stop.clone();
        let on_up = self.on_up.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
                if node.is_healthy() {
                    break;
                }
                if tcp_check(node.key.addr, PROBE_INTERVAL).await {
                    if !node.set_healthy(true) {
                        tracing::info!(node = %node.key, "node up (recovery probe)");
                        node.soft_failures.store(0, Ordering::Relaxed);
                        on_up(&node);
                    }
                    break;
                }
            }
            node.probing.store(false, Ordering::Release);
        });
    }

    /// Start the active checks of a new snapshot (and stop the previous generation's):
    /// each pool's nodes with the pool's `[pool.health]`, if any.
    pub fn apply<'a>(
        self: &Arc<Self>,
        pools: impl IntoIterator<Item = (&'a [Arc<Node>], Option<&'a HealthConfig>)>,
    ) {
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        let mut keep: HashMap<NodeKey, (HealthConfig, CancellationToken)> = HashMap::new();
        for (nodes, health) in pools {
            let threshold = health.map_or(3, |h| h.passive_failures);
            for node in nodes {
                node.passive_threshold.store(threshold, Ordering::Relaxed);
                node.actively_checked
                    .store(health.is_some(), Ordering::Relaxed);
                // A node left down when its pool's active checks were removed has no one
                // left to see it come back but the recovery probe.
                if health.is_none()
                    && !node.is_healthy()
                    && !node.probing.swap(true, Ordering::AcqRel)
                {
                    self.spawn_probe(node.clone());
                }
                let Some(h) = health else { continue };
                match active.remove(&node.key) {
                    Some((old, token)) if old == *h => {
                        keep.insert(node.key.clone(), (old, token));
                    }
                    other => {
                        if let Some((_, token)) = other {
                            token.cancel();
                        }
                        let token = self.stop.child_token();
                        let this = self.clone();
                        let (n, hc, t) = (node.clone(), h.clone(), token.clone());
                        tokio::spawn(async move { this.check_loop(n, hc, t).await });
                        keep.insert(node.key.clone(), (h.clone(), token));
                    }
                }
            }
        }
        // Checks of nodes (or pools) no longer checked stop.
        for (_, (_, token)) in active.drain() {
            token.cancel();
        }
        *active = keep;
    }

    async fn check_loop(
        self: Arc<Self>,
        node: Arc<Node>,
        h: HealthConfig,
        stop: CancellationToken,
    ) {
        // Jittered start: checks of many nodes (and many proxies) never synchronise.
        let first = h.interval.0.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        let mut wait = first;
        let (mut ok_run, mut fail_run) = (0u32, 0u32);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let ok = match h.kind {
                HealthKind::Tcp => tcp_check(node.key.addr, h.timeout.0).await,
                HealthKind::Http => {
                    http_check(node.key.addr, h.path.as_deref().unwrap_or("/"), h.timeout.0).await
                }
            };
            metrics::counter!(crate::metrics::HEALTH_CHECKS,
                "pool" => node.key.pool.to_string(), "node" => node.key.name.to_string(),
                "result" => if ok { "ok" } else { "fail" })
            .increment(1);
            if ok {
                ok_run += 1;
                fail_run = 0;
                if ok_run >= h.rise && !node.is_healthy() {
                    self.mark(&node, true, "active check");
                }
            } else {
                fail_run += 1;
                ok_run = 0;
                if fail_run >= h.fall && node.is_healthy() {
                    self.mark(&node, false, "active check");
                }
            }
            // ±10% per round keeps them from drifting back into step.
            wait = h.interval.0.mul_f64(rand::thread_rng().gen_range(0.9..1.1));
        }
    }
}

/// One probe of [`Health::confirm_alive`]: refused, or (with `wait`) accepted and then
/// reset or closed within [`CONFIRM_TIMEOUT`], is a node that is gone.
async fn probe_gone(addr: SocketAddr, wait: bool) -> bool {
    match tokio::time::timeout(CONFIRM_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(mut s)) if wait => {
            let mut b = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(&mut s, &mut b);
            matches!(
                tokio::time::timeout(CONFIRM_TIMEOUT, read).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
        _ => false,
    }
}

/// How long [`Health::confirm_alive`] waits for a connect.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_millis(250);

/// Connect within `timeout`; a completed connect is a pass.
pub async fn tcp_check(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// GET `path`, expect a 2xx status line.
pub async fn http_check(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: herdgate-health\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        let code = line.split(' ').nth(1)?;
        Some(code.starts_with('2') && code.len() == 3)
    };
    matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)))
}
