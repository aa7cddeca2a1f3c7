//! The tunnel registry: every open tunnel, what drain and shutdown walk.
//!
//! hyper does not track upgraded connections, so every tunnel registers here and holds a
//! [`TunnelGuard`] for its whole life; its [`TunnelCtl`] is how the control plane asks it
//! to close ([`TunnelState`]). [`ActiveCount`] does the same for plain HTTP connections.

use crate::backend::Node;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Every open tunnel, by id.
#[derive(Default)]
pub struct Registry {
    tunnels: DashMap<u64, Arc<TunnelCtl>>,
    next_id: AtomicU64,
    /// Woken whenever a tunnel ends (shutdown waits on it).
    ended: tokio::sync::Notify,
}

impl Registry {
    /// An empty registry, shared by the listeners and the control plane.
    pub fn new() -> Arc<Self> {
        Arc::new(Registry::default())
    }

    /// Enter a new tunnel to `node`; it stays listed until the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        node: Arc<Node>,
        key_hash: Option<u64>,
        wants_ticket: bool,
    ) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(TunnelCtl::new(id, node, key_hash, wants_ticket));
        self.tunnels.insert(id, ctl.clone());
        TunnelGuard {
            registry: self.clone(),
            ctl,
        }
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    /// No tunnel is open.
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

    /// Every open tunnel (a copy: tunnels may end meanwhile).
    pub fn all(&self) -> Vec<Arc<TunnelCtl>> {
        self.tunnels.iter().map(|e| e.value().clone()).collect()
    }

    /// Wait until `node` has no open tunnel left.
    pub async fn wait_node_empty(&self, node: &Node) {
        while node.open_tunnels.load(Ordering::Relaxed) > 0 {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if node.open_tunnels.load(Ordering::Relaxed) == 0 {
                return;
            }
            ended.await;
        }
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
    /// The control handle the tunnel watches for close requests.
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

/// Where a tunnel is in its life, as the control plane sees it. Stored in one atomic so
/// the relay reads it without a lock; it only moves forward, except that a hard close may
/// overtake a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TunnelState {
    /// Relaying; no one asked it to close.
    Open = 0,
    /// Drain asked for a clean 1012 close with a retry hint (funnel, deploy, removal).
    Draining = 1,
    /// Shutdown asked for an immediate 1001 close.
    ClosingNow = 2,
}

impl TunnelState {
    fn from_u8(v: u8) -> TunnelState {
        match v {
            1 => TunnelState::Draining,
            2 => TunnelState::ClosingNow,
            _ => TunnelState::Open,
        }
    }
}

/// Handle the drain machinery holds on a running tunnel.
#[derive(Debug)]
pub struct TunnelCtl {
    /// Registry key, unique within the process.
    pub id: u64,
    /// The node the tunnel relays to; drain selects tunnels by it.
    pub node: Arc<Node>,
    /// The client's session key hash: where it will land when it reconnects.
    pub key_hash: Option<u64>,
    /// The client announced it can carry tickets (herdgate-accept-ticket): a drain hint
    /// for it must come with one.
    pub wants_ticket: bool,
    /// A [`TunnelState`], stored as its `u8`.
    state: AtomicU8,
    hint_ms: AtomicU64,
    /// The drain hint's ticket, set before `Draining` is published.
    ticket: OnceLock<String>,
    notify: Notify,
}

impl TunnelCtl {
    /// A handle in state [`TunnelState::Open`]; [`Registry::register`] makes and lists it.
    pub fn new(id: u64, node: Arc<Node>, key_hash: Option<u64>, wants_ticket: bool) -> Self {
        TunnelCtl {
            id,
            node,
            key_hash,
            wants_ticket,
            state: AtomicU8::new(TunnelState::Open as u8),
            hint_ms: AtomicU64::new(0),
            ticket: OnceLock::new(),
            notify: Notify::new(),
        }
    }

    /// Close cleanly with 1012 (Service Restart) and a retry hint (and ticket, if any)
    /// for the client.
    pub fn drain(&self, retry_after: Duration, ticket: Option<String>) {
        // Rounded up, and never 0: a client told 0 (or a hair early) comes back before
        // its slot; the wire contract's rounding, as for rejection hints.
        self.hint_ms.store(
            herdgate_wire::retry_after_ms(retry_after),
            Ordering::Relaxed,
        );
        if let Some(t) = ticket {
            // A tunnel is drained once (the funnel skips closing ones), so this is unset.
            let _ = self.ticket.set(t);
        }
        let _ = self.state.compare_exchange(
            TunnelState::Open as u8,
            TunnelState::Draining as u8,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.notify.notify_one();
    }

    /// Already told to close (drain or shutdown): its close handshake is under way.
    pub fn is_closing(&self) -> bool {
        self.state() != TunnelState::Open
    }

    /// Close now with 1001 (Going Away).
    pub fn close_now(&self) {
        self.state
            .store(TunnelState::ClosingNow as u8, Ordering::Release);
        self.notify.notify_one();
    }

    /// Where the tunnel is in its life.
    pub fn state(&self) -> TunnelState {
        TunnelState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The drain hint in milliseconds (meaningful once `Draining`).
    pub fn hint_ms(&self) -> u64 {
        self.hint_ms.load(Ordering::Relaxed)
    }

    /// The drain hint's ticket, if the client can carry one.
    pub fn ticket(&self) -> Option<&str> {
        self.ticket.get().map(String::as_str)
    }

    /// Resolves when the control plane changed [`TunnelCtl::state`].
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// A count of things under way that shutdown waits for.
#[derive(Default)]
pub struct ActiveCount {
    n: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

impl ActiveCount {
    /// Count one more until the returned guard drops.
    pub fn enter(&self) -> ActiveGuard<'_> {
        self.n.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self)
    }

    /// How many are under way now.
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

/// One entry in an [`ActiveCount`]; dropping it counts down and wakes waiters at zero.
pub struct ActiveGuard<'a>(&'a ActiveCount);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}
