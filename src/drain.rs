//! Registry of open tunnels, and the funnel that closes them gradually.
//!
//! hyper does not track upgraded connections, so every tunnel registers here and holds a
//! guard for its whole life; drain and shutdown find the tunnels through this registry.

use crate::backend::{DrainSource, Node};
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::websocket::tunnel::TunnelCtl;
use dashmap::DashMap;
use rand::seq::SliceRandom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub struct Registry {
    tunnels: DashMap<u64, Arc<TunnelCtl>>,
    next_id: AtomicU64,
    /// Woken whenever a tunnel ends (shutdown waits on it).
    ended: tokio::sync::Notify,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    pub fn register(self: &Arc<Self>, node: Arc<Node>, key_hash: Option<u64>) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(TunnelCtl::new(id, node, key_hash));
        self.tunnels.insert(id, ctl.clone());
        TunnelGuard {
            registry: self.clone(),
            ctl,
        }
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Tunnels of one node.
    pub fn of_node(&self, node: &Arc<Node>) -> Vec<Arc<TunnelCtl>> {
        self.tunnels
            .iter()
            .filter(|e| Arc::ptr_eq(&e.value().node, node))
            .map(|e| e.value().clone())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<TunnelCtl>> {
        self.tunnels.iter().map(|e| e.value().clone()).collect()
    }

    /// Wait until no tunnel is left, or `deadline`; true when empty.
    pub async fn wait_empty(&self, deadline: Instant) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.tunnels.is_empty() {
                return true;
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => return self.tunnels.is_empty(),
            }
        }
    }
}

/// Held by a running tunnel; deregisters on drop.
pub struct TunnelGuard {
    registry: Arc<Registry>,
    ctl: Arc<TunnelCtl>,
}

impl TunnelGuard {
    pub fn ctl(&self) -> &Arc<TunnelCtl> {
        &self.ctl
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.registry.tunnels.remove(&self.ctl.id);
        self.registry.ended.notify_waiters();
    }
}

/// How fast a funnel closes tunnels.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Tunnels per second.
    Rate(f64),
    /// All of them spread evenly over this time.
    Spread(Duration),
}

const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(30);

impl Pace {
    fn interval(self, n: usize) -> Duration {
        match self {
            Pace::Rate(r) => Duration::from_secs_f64(1.0 / r.max(1e-3)),
            Pace::Spread(d) => d / (n.max(1) as u32),
        }
    }
}

/// Start draining `node` (no-op when it already drains): it gets no new connections,
/// and its tunnels are closed in random order at the pool's drain pace, each with 1012
/// and a hint from the retry schedule of the node the client will land on.
pub fn drain_node(shared: &Arc<Shared>, node: &Arc<Node>, source: DrainSource, snap: &Snapshot) {
    if !node.start_drain(source) {
        return;
    }
    let pace = snap
        .config
        .pool(&node.key.pool)
        .map(|p| match (p.drain_rate, p.drain_spread) {
            (Some(r), _) => Pace::Rate(r),
            (None, Some(d)) => Pace::Spread(d.0),
            (None, None) => Pace::Spread(DEFAULT_DRAIN_SPREAD),
        })
        .unwrap_or(Pace::Spread(DEFAULT_DRAIN_SPREAD));
    let shared = shared.clone();
    let node = node.clone();
    tokio::spawn(async move {
        // Tunnels still being set up when the drain began show up a moment later: go
        // round until the node has none left (or it is taken back into service).
        loop {
            let tunnels = shared.tunnels.of_node(&node);
            if tunnels.is_empty() || !node.is_draining() {
                break;
            }
            tracing::info!(node = %node.key, "draining {} tunnels ({pace:?})", tunnels.len());
            funnel(&shared, tunnels, pace, &shared.stop_all).await;
            if shared.stop_all.is_cancelled() {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            let _ = tokio::time::timeout_at(deadline, wait_node_empty(&shared, &node)).await;
        }
        tracing::info!(node = %node.key, "drain finished");
    });
}

async fn wait_node_empty(shared: &Shared, node: &Arc<Node>) {
    while node.open_tunnels.load(Ordering::Relaxed) > 0 {
        let ended = shared.tunnels.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if node.open_tunnels.load(Ordering::Relaxed) == 0 {
            return;
        }
        ended.await;
    }
}

/// Drain by names (admin API). False when no such node.
pub fn drain_node_by_name(shared: &Arc<Shared>, pool: &str, node: &str) -> bool {
    let snap = shared.snapshot.load_full();
    let Some(n) = snap
        .pools
        .iter()
        .find(|p| &*p.name == pool)
        .and_then(|p| p.nodes.iter().find(|n| &*n.key.name == node))
        .cloned()
    else {
        return false;
    };
    drain_node(shared, &n, DrainSource::Admin, &snap);
    true
}

/// Close `tunnels` (shuffled) at `pace`, in batches of whatever is due at each wake.
async fn funnel(
    shared: &Arc<Shared>,
    mut tunnels: Vec<Arc<TunnelCtl>>,
    pace: Pace,
    stop: &tokio_util::sync::CancellationToken,
) {
    tunnels.shuffle(&mut rand::thread_rng());
    let n = tunnels.len();
    let interval = pace.interval(n);
    let start = Instant::now();
    let mut next = 0usize;
    while next < n {
        let due_at = start + interval * (next as u32);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due_at) => {}
        }
        let elapsed = start.elapsed();
        let due = if interval.is_zero() {
            n
        } else {
            ((elapsed.as_nanos() / interval.as_nanos().max(1)) as usize + 1).min(n)
        };
        for t in &tunnels[next..due.max(next + 1)] {
            let hint = crate::admission::drain_hint(shared, t);
            t.drain(hint);
            t.node.metrics.drain_closed.increment(1);
        }
        next = due.max(next + 1);
    }
}

/// SIGTERM: stop accepting, let in-flight HTTP finish, funnel every tunnel over
/// `shutdown.spread`, and close what is left at `shutdown.timeout` with 1001.
pub async fn shutdown(shared: &Arc<Shared>) {
    let snap = shared.snapshot.load_full();
    let spread = snap.config.shutdown.spread.0;
    let timeout = snap.config.shutdown.timeout.0;
    let close = snap.config.timeouts.close.0;
    let started = Instant::now();
    shared.stop_listeners();
    shared.stop_http.cancel();
    let tunnels = shared.tunnels.all();
    tracing::info!(
        "shutting down: {} tunnels, funnelled over {spread:?} (timeout {timeout:?})",
        tunnels.len()
    );
    metrics::gauge!(crate::metrics::DRAINING_TUNNELS).set(tunnels.len() as f64);
    let _ = crate::systemd::status(&format!(
        "shutting down: closing {} tunnels over {spread:?}",
        tunnels.len()
    ));
    let deadline = started + timeout;
    let never = tokio_util::sync::CancellationToken::new();
    // Tunnels that end on their own shorten the wait: stop as soon as none is left.
    tokio::select! {
        _ = funnel(shared, tunnels, Pace::Spread(spread), &never) => {}
        _ = shared.tunnels.wait_empty(deadline) => {}
    }
    if !shared.http_active.wait_zero(deadline).await {
        tracing::warn!(
            "shutdown timeout: {} HTTP connections still busy",
            shared.http_active.get()
        );
    }
    if !shared.tunnels.wait_empty(deadline).await {
        tracing::warn!(
            "shutdown timeout: closing the {} remaining tunnels with 1001",
            shared.tunnels.len()
        );
        close_all_now(shared);
        if !shared.tunnels.wait_empty(Instant::now() + close).await {
            tracing::warn!("{} tunnels did not close in time", shared.tunnels.len());
        }
    }
    metrics::gauge!(crate::metrics::DRAINING_TUNNELS).set(0.0);
    shared.stop_all.cancel();
    tracing::info!("shutdown complete in {:?}", started.elapsed());
}

/// Close every tunnel now with 1001 (second signal).
pub fn close_all_now(shared: &Shared) {
    shared.stop_listeners();
    shared.stop_http.cancel();
    for t in shared.tunnels.all() {
        t.close_now();
    }
}

/// A count of things under way that shutdown waits for.
#[derive(Default)]
pub struct ActiveCount {
    n: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

impl ActiveCount {
    pub fn enter(&self) -> ActiveGuard<'_> {
        self.n.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self)
    }

    pub fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Wait until the count is zero, or `deadline`; true when zero.
    pub async fn wait_zero(&self, deadline: Instant) -> bool {
        loop {
            let z = self.zero.notified();
            tokio::pin!(z);
            z.as_mut().enable();
            if self.get() == 0 {
                return true;
            }
            tokio::select! {
                _ = z => {}
                _ = tokio::time::sleep_until(deadline) => return self.get() == 0,
            }
        }
    }
}

pub struct ActiveGuard<'a>(&'a ActiveCount);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}
