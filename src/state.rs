//! The state every connection and the control plane share, split by concern.
//!
//! Live state has three homes (ARCHITECTURE.md): the immutable [`Snapshot`] (one writer:
//! reload), the node table (live per-node state that outlives snapshots) and the tunnel
//! [`Registry`] (what drain and shutdown walk). The rest here is process plumbing: the
//! connection cap, the stop signals, the ticket signer and the metrics handle.

use crate::backend::health::Health;
use crate::backend::{Node, NodeKey};
use crate::registry::{ActiveCount, Registry};
use crate::snapshot::Snapshot;
use arc_swap::{ArcSwap, Guard};
use dashmap::DashMap;
use herdgate_core::admission::TicketSigner;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Live node state keyed by identity (pool, name, address): it outlives snapshots, so a
/// reload never resets a bucket in the middle of a storm.
pub type NodeTable = DashMap<NodeKey, Arc<Node>>;

/// State shared by every connection and by the control plane.
pub struct Shared {
    /// The current snapshot: private so that [`Shared::load`] is the only read and
    /// [`Shared::publish`] (reload, holding the writer lock) the only write.
    snapshot: ArcSwap<Snapshot>,
    /// Live node state; snapshots hold `Arc`s into it.
    pub nodes: NodeTable,
    /// Every open tunnel, for drain and shutdown.
    pub tunnels: Arc<Registry>,
    /// The process-wide connection cap (`limits.max_connections`), resizable by reload.
    pub conns: ConnLimit,
    /// Per-client caps on open connections and tunnels.
    pub clients: crate::conn::ClientCaps,
    /// Active checks and passive failure counting; marks nodes down and up.
    pub health: Arc<Health>,
    /// Stop signals and the count of HTTP connections shutdown waits for.
    pub lifecycle: Lifecycle,
    /// Signs admission tickets (one key for the process life).
    pub signer: Arc<TicketSigner>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Fleet admission (`[fleet]`): the mode and the shares in force, set by `fleet`.
    pub fleet: Arc<herdgate_core::fleet::FleetStatus>,
    /// The fleet's last Redis connection that answered (set by `fleet`), for the shared
    /// ticket replay ledger.
    pub fleet_redis: arc_swap::ArcSwapOption<redis::aio::MultiplexedConnection>,
    /// Reload's own bookkeeping: generation, writer lock, running listeners.
    pub(crate) control: Control,
    /// The data-plane shards (`crate::shards`), set once before the listeners start;
    /// unset or empty: listeners run on the runtime that starts them.
    pub(crate) shards: std::sync::OnceLock<Vec<tokio::runtime::Handle>>,
}

impl Shared {
    /// Assemble the shared state around the first snapshot.
    pub(crate) fn new(
        snapshot: Snapshot,
        nodes: NodeTable,
        health: Arc<Health>,
        stop_all: CancellationToken,
        max_connections: usize,
        signer: Arc<TicketSigner>,
        metrics: PrometheusHandle,
    ) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            nodes,
            tunnels: Registry::new(),
            conns: ConnLimit::new(max_connections),
            clients: crate::conn::ClientCaps::default(),
            health,
            lifecycle: Lifecycle {
                stop_http: CancellationToken::new(),
                http_active: ActiveCount::default(),
                stop_all,
            },
            signer,
            metrics,
            fleet: Arc::default(),
            fleet_redis: arc_swap::ArcSwapOption::empty(),
            control: Control {
                generation: AtomicU64::new(1),
                reload_lock: tokio::sync::Mutex::new(()),
                listeners: Mutex::new(HashMap::new()),
            },
            shards: std::sync::OnceLock::new(),
        }
    }

    /// The current snapshot, cheaply (a connection loads it once and keeps it).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that outlive a request.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Make `snap` current. Only reload calls this, and the writer guard it must show
    /// proves it holds the one writer's lock.
    pub(crate) fn publish(&self, _writer: &WriterGuard<'_>, snap: Arc<Snapshot>) {
        self.snapshot.store(snap);
    }

    /// Stop accepting on every listener (their sockets close).
    pub(crate) fn stop_listeners(&self) {
        if let Ok(mut g) = self.control.listeners.lock() {
            for (_, l) in g.drain() {
                l.stop.cancel();
            }
        }
    }

    /// Learned sticky entries over all pools (`None` when no pool learns).
    pub fn sticky_entries(&self) -> Option<usize> {
        let snap = self.load();
        let mut any = false;
        let n = snap
            .pools
            .iter()
            .filter_map(|p| p.sticky.as_ref())
            .inspect(|_| any = true)
            .map(|t| t.len())
            .sum();
        any.then_some(n)
    }
}

/// Proof of holding the snapshot writer's lock ([`Control::reload_lock`]).
pub(crate) type WriterGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

/// Stop signals, in the order shutdown fires them.
pub struct Lifecycle {
    /// Cancelled at shutdown: keep-alive HTTP connections finish their request and close.
    pub stop_http: CancellationToken,
    /// HTTP connections being served (not tunnels): shutdown waits for them.
    pub http_active: ActiveCount,
    /// Cancelled when everything must stop (background tasks).
    pub stop_all: CancellationToken,
}

/// Reload's bookkeeping.
pub(crate) struct Control {
    /// Config generation now serving (1 at start, +1 per successful reload).
    pub generation: AtomicU64,
    /// Serialises reloads: one writer of the snapshot.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Running listeners by (name, configured bind address).
    pub listeners: Mutex<HashMap<(String, SocketAddr), RunningListener>>,
}

/// A listener's accept loop, as reload and shutdown see it.
pub(crate) struct RunningListener {
    /// Stops the accept loop (its socket closes).
    pub stop: CancellationToken,
    /// Where it is bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// A duplicate of each socket its accept loops serve on (one per shard), so that a
    /// reload giving the address to a renamed listener hands the sockets over: closing a
    /// listening socket resets the connections waiting in its accept queue.
    pub sockets: Vec<std::net::TcpListener>,
}

/// The process-wide connection cap: a semaphore whose size reload may change while
/// connections hold permits.
pub struct ConnLimit {
    /// One permit per open client connection.
    pub sem: Arc<Semaphore>,
    size: AtomicU64,
    /// Permits a lowered cap could not take back (they were in use): the accept loops
    /// forget that many as they get them back.
    debt: AtomicU64,
}

impl ConnLimit {
    fn new(max: usize) -> ConnLimit {
        ConnLimit {
            sem: Arc::new(Semaphore::new(max)),
            size: AtomicU64::new(max as u64),
            debt: AtomicU64::new(0),
        }
    }

    /// Change the cap; a shrink takes effect as connections end.
    pub(crate) fn resize(&self, max: usize) {
        let old = self.size.swap(max as u64, Ordering::AcqRel) as usize;
        if max > old {
            // A shrink not yet paid back is cancelled first.
            let grow = (max - old) as u64;
            let cancelled = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .map_or(0, |d| d.min(grow));
            self.sem.add_permits((grow - cancelled) as usize);
        } else if max < old {
            // Only free permits can be forgotten now; the rest as connections end.
            let forgotten = self.sem.forget_permits(old - max);
            self.debt
                .fetch_add((old - max - forgotten) as u64, Ordering::AcqRel);
        }
    }

    /// Give a connection permit to the debt of a lowered cap: `None` when it was taken.
    pub(crate) fn pay_debt(&self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let paid = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if paid {
            permit.forget();
            None
        } else {
            Some(permit)
        }
    }
}
