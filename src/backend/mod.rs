//! Backend nodes: live state that outlives config snapshots, and connecting to them.

pub mod connect;
mod failure;
pub mod health;
pub mod request_body;

pub use failure::NodeFailure;

use crate::metrics::NodeMetrics;
use herdgate_core::admission::NodeAdmission;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Identity of a node across reloads: same pool, name and address ⇒ same live state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    /// The pool's name.
    pub pool: Arc<str>,
    /// The node's name within the pool.
    pub name: Arc<str>,
    /// The node's address; a changed address makes it a new node.
    pub addr: SocketAddr,
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.pool, self.name, self.addr)
    }
}

/// Why a node is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DrainSource {
    /// `drain = true` in the config.
    Config = 1,
    /// `POST /admin/nodes/{pool}/{node}/drain`.
    Admin = 2,
    /// Removed from the config by a reload.
    Removed = 3,
}

/// Live state of one backend node. Shared by routing, admission, health and drain; kept
/// across reloads for unchanged nodes so a reload never resets a node in mid-storm.
#[derive(Debug)]
pub struct Node {
    /// Identity; reloads match live state by it.
    pub key: NodeKey,
    /// Health as seen by active and passive checks.
    healthy: AtomicBool,
    /// Why the node drains (a [`DrainSource`] as u8; 0: it does not).
    drain: AtomicU8,
    /// Drains begun so far: a drain's funnel stops once another has begun (or none runs).
    drains: AtomicU64,
    /// Open WebSocket tunnels.
    pub open_tunnels: AtomicU64,
    /// Consecutive soft failures seen by passive health.
    pub soft_failures: AtomicU64,
    /// The clients whose requests make up the current run of soft failures: one client
    /// counts once, so that no single client can mark a node down.
    pub soft_failure_clients: std::sync::Mutex<Vec<std::net::IpAddr>>,
    /// Soft failures that mark the node down (from the pool's health settings).
    pub passive_threshold: AtomicU32,
    /// The pool runs active checks for it (else a down node gets a recovery probe).
    pub actively_checked: AtomicBool,
    /// A recovery probe is running.
    pub probing: AtomicBool,
    /// One [`Health::confirm_alive`](health::Health::confirm_alive) probe at a time, and when the last one that found the
    /// node alive began: the tunnels of a dying node end together, and they share one
    /// probe's answer instead of opening one socket each.
    pub confirm: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Metric handles resolved once for this node, so the hot path only adds.
    pub metrics: NodeMetrics,
    /// Token bucket and retry schedule for new connections.
    pub admission: NodeAdmission,
    /// Requests waiting in queue mode.
    pub queue_len: AtomicU64,
    /// Requests routed here and not finished yet (admission, connect, the node's answer):
    /// routing counts them with the open tunnels, or a rush would all see the same least
    /// loaded node before any of its tunnels opened.
    pub in_flight: AtomicU64,
}

/// One request counted in [`Node::in_flight`] until dropped.
pub struct InFlight<'a>(&'a Node);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    /// A node starting healthy, not draining, with no tunnels.
    pub fn new(key: NodeKey, admission: NodeAdmission) -> Self {
        let metrics = NodeMetrics::new(&key.pool, &key.name);
        metrics.healthy.set(1.0);
        Node {
            metrics,
            key,
            healthy: AtomicBool::new(true),
            drain: AtomicU8::new(0),
            drains: AtomicU64::new(0),
            open_tunnels: AtomicU64::new(0),
            soft_failures: AtomicU64::new(0),
            soft_failure_clients: std::sync::Mutex::new(Vec::new()),
            passive_threshold: AtomicU32::new(3),
            actively_checked: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            confirm: tokio::sync::Mutex::new(None),
            admission,
            queue_len: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Count a request routed here until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// What routing balances on: open tunnels and requests in flight.
    pub fn load(&self) -> u64 {
        self.open_tunnels.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
    }

    /// Health checks count it up (a new node starts up).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Returns the previous value.
    pub fn set_healthy(&self, up: bool) -> bool {
        self.metrics.healthy.set(if up { 1.0 } else { 0.0 });
        self.healthy.swap(up, Ordering::Relaxed)
    }

    /// It drains, for any [`DrainSource`]: it takes no new connections.
    pub fn is_draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed) != 0
    }

    /// Mark the node draining; false if it already was.
    pub fn start_drain(&self, source: DrainSource) -> bool {
        self.metrics.draining.set(1.0);
        let began = self
            .drain
            .compare_exchange(0, source as u8, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if began {
            self.drains.fetch_add(1, Ordering::AcqRel);
        }
        began
    }

    /// Drains begun so far (one more at each [`Node::start_drain`] that began one).
    pub fn drains_begun(&self) -> u64 {
        self.drains.load(Ordering::Acquire)
    }

    /// It drains because of `drain = true`, so a reload without it may take it back.
    pub fn drained_by_config(&self) -> bool {
        self.drain.load(Ordering::Relaxed) == DrainSource::Config as u8
    }

    /// Why it drains; `None` when it does not.
    pub fn drain_source(&self) -> Option<DrainSource> {
        match self.drain.load(Ordering::Relaxed) {
            1 => Some(DrainSource::Config),
            2 => Some(DrainSource::Admin),
            3 => Some(DrainSource::Removed),
            _ => None,
        }
    }

    /// Take the node back into service (a config drain that was lifted).
    pub fn undrain(&self) {
        self.metrics.draining.set(0.0);
        self.drain.store(0, Ordering::Relaxed);
    }

    /// Take the node back into service if an admin drain, and nothing else, holds it:
    /// what it drains for now otherwise (`None` when it did not drain at all).
    pub fn undrain_admin(&self) -> Result<(), Option<DrainSource>> {
        match self.drain.compare_exchange(
            DrainSource::Admin as u8,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                self.metrics.draining.set(0.0);
                Ok(())
            }
            Err(_) => Err(self.drain_source()),
        }
    }

    /// May receive new connections.
    pub fn is_eligible(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }
}
