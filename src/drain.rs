//! The funnel: closing a node's tunnels gradually (deploy, removal, admin drain) and
//! everything at shutdown, walking the tunnel registry ([`crate::registry`]).

use crate::backend::{DrainSource, Node};
use crate::registry::TunnelCtl;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
    // This drain, until the node is undrained (and maybe drained anew: another funnel).
    let this_drain = node.drains_begun();
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
            if tunnels.is_empty() || !still_draining(&node, this_drain) {
                break;
            }
            // Tunnels told to close in an earlier round are still in their close
            // handshake (up to close_timeout): not again, nor counted twice.
            let tunnels: Vec<_> = tunnels.into_iter().filter(|t| !t.is_closing()).collect();
            if !tunnels.is_empty() {
                tracing::info!(node = %node.key, "draining {} tunnels ({pace:?})", tunnels.len());
                funnel(
                    &shared,
                    tunnels,
                    pace,
                    &shared.lifecycle.stop_all,
                    Some((&node, this_drain)),
                )
                .await;
            }
            if shared.lifecycle.stop_all.is_cancelled() {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(1);
            let _ = tokio::time::timeout_at(deadline, shared.tunnels.wait_node_empty(&node)).await;
        }
        tracing::info!(node = %node.key, "drain finished");
    });
}

/// The node `pool`/`node` of `snap`, if it has one.
fn node_by_name(snap: &Snapshot, pool: &str, node: &str) -> Option<Arc<Node>> {
    snap.pools
        .iter()
        .find(|p| &*p.name == pool)
        .and_then(|p| p.node_by_name(node))
        .cloned()
}

/// Drain by names (admin API). False when no such node.
pub fn drain_node_by_name(shared: &Arc<Shared>, pool: &str, node: &str) -> bool {
    let snap = shared.load_full();
    let Some(n) = node_by_name(&snap, pool, node) else {
        return false;
    };
    drain_node(shared, &n, DrainSource::Admin, &snap);
    true
}

/// What [`undrain_node_by_name`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undrain {
    /// An admin drain was lifted: the node takes new connections again (when healthy).
    Undrained,
    /// The node was not draining: nothing to do.
    NotDraining,
    /// The node drains for another reason (`drain = true` in the config), which only the
    /// config can lift; it stays draining.
    HeldBy(DrainSource),
    /// The running config has no such node.
    NoSuchNode,
}

/// Undo an admin drain by names (admin API). The node is eligible for new connections
/// again at once; the funnel stops, so tunnels not yet closed stay open, while those the
/// drain already closed stay closed (their clients reconnect wherever routing sends them).
pub fn undrain_node_by_name(shared: &Shared, pool: &str, node: &str) -> Undrain {
    let snap = shared.load();
    let Some(n) = node_by_name(&snap, pool, node) else {
        return Undrain::NoSuchNode;
    };
    match n.undrain_admin() {
        Ok(()) => {
            tracing::info!(node = %n.key, "admin drain lifted");
            Undrain::Undrained
        }
        Err(None) => Undrain::NotDraining,
        Err(Some(source)) => Undrain::HeldBy(source),
    }
}

/// Whether the drain numbered `this_drain` of `node` still runs (not undrained since).
fn still_draining(node: &Node, this_drain: u64) -> bool {
    node.is_draining() && node.drains_begun() == this_drain
}

/// Close `tunnels` (shuffled) at `pace`, in batches of whatever is due at each wake.
/// With a node's drain, it stops at the first wake after that drain ended (undrained).
async fn funnel(
    shared: &Arc<Shared>,
    mut tunnels: Vec<Arc<TunnelCtl>>,
    pace: Pace,
    stop: &tokio_util::sync::CancellationToken,
    drain: Option<(&Node, u64)>,
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
        if drain.is_some_and(|(n, this)| !still_draining(n, this)) {
            return;
        }
        let elapsed = start.elapsed();
        let due = if interval.is_zero() {
            n
        } else {
            ((elapsed.as_nanos() / interval.as_nanos().max(1)) as usize + 1).min(n)
        };
        for t in &tunnels[next..due.max(next + 1)] {
            if t.is_closing() {
                // Closed meanwhile (a second signal, another drain): no hint, no count.
                continue;
            }
            let (hint, ticket) = drain_hint(shared, t);
            t.drain(hint, ticket);
            t.node.metrics.drain_closed.increment(1);
        }
        next = due.max(next + 1);
    }
}

/// SIGTERM: stop accepting, let in-flight HTTP finish, funnel every tunnel over
/// `shutdown.spread`, and close what is left at `shutdown.timeout` with 1001.
pub async fn shutdown(shared: &Arc<Shared>) {
    let snap = shared.load_full();
    let spread = snap.config.shutdown.spread.0;
    let timeout = snap.config.shutdown.timeout.0;
    let close = snap.config.timeouts.close.0;
    let started = Instant::now();
    shared.stop_listeners();
    shared.lifecycle.stop_http.cancel();
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
        _ = funnel(shared, tunnels, Pace::Spread(spread), &never, None) => {}
        _ = shared.tunnels.wait_empty(deadline) => {}
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
    // In-flight HTTP requests finish: their connections close once the response is out
    // (listener::handle_conn shuts them down gracefully). Returning earlier would end the
    // process, and the runtime would drop those requests half done.
    if !shared.lifecycle.http_active.wait_zero(deadline).await {
        tracing::warn!(
            "shutdown timeout: {} HTTP connections still busy are cut",
            shared.lifecycle.http_active.get()
        );
    }
    metrics::gauge!(crate::metrics::DRAINING_TUNNELS).set(0.0);
    shared.lifecycle.stop_all.cancel();
    tracing::info!("shutdown complete in {:?}", started.elapsed());
}

/// Close every tunnel now with 1001 (second signal).
pub fn close_all_now(shared: &Shared) {
    shared.stop_listeners();
    shared.lifecycle.stop_http.cancel();
    for t in shared.tunnels.all() {
        t.close_now();
    }
}

/// When a drained client should come back: the slot of the node it will land on, with a
/// ticket for that slot if the client can carry one.
fn drain_hint(shared: &Shared, t: &TunnelCtl) -> (Duration, Option<String>) {
    let snap = shared.load();
    let target = snap
        .pools
        .iter()
        .find(|p| p.name == t.node.key.pool)
        .and_then(|p| crate::routing::landing(p, t.key_hash));
    match target {
        // A promise credit is only claimable by ticketless arrivals (bucket.rs, step b):
        // a ticket-capable client told to come back on a promise would be refused at its
        // slot and sent to the end of the schedule. It gets a reservation and ticket.
        Some(n) if t.wants_ticket => n.admission.hint_with_ticket(crate::admission::gate::now()),
        Some(n) => (n.admission.hint(crate::admission::gate::now()), None),
        // Nowhere to go in this instance (whole pool draining: a deploy or shutdown): the
        // client will land on the next instance; spread it over a second.
        None => (
            Duration::from_millis(rand::random::<u64>() % 1000 + 1),
            None,
        ),
    }
}
