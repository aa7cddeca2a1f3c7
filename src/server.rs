//! The running proxy: shared state, listeners, admin endpoint, lifecycle.

use crate::admission::TicketSigner;
use crate::backend::health::Health;
use crate::backend::{Node, NodeKey};
use crate::config::Config;
use crate::drain::Registry;
use crate::snapshot::{BuildCtx, BuildError, Snapshot};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State shared by every connection and by the control plane.
pub struct Shared {
    /// The current snapshot. Connections load it once; only `reload` stores it.
    pub snapshot: ArcSwap<Snapshot>,
    /// Live node state, keyed by identity, outliving snapshots.
    pub nodes: DashMap<NodeKey, Arc<Node>>,
    pub tunnels: Arc<Registry>,
    /// Process-wide connection cap (`limits.max_connections`).
    pub conn_limit: Arc<Semaphore>,
    conn_limit_size: AtomicU64,
    /// Permits a lowered `max_connections` could not take back (they were in use): the
    /// accept loops forget that many as they get them back.
    conn_limit_debt: AtomicU64,
    pub health: Arc<Health>,
    /// Cancelled at shutdown: keep-alive HTTP connections finish their request and close.
    pub stop_http: CancellationToken,
    /// HTTP connections being served (not tunnels): shutdown waits for them.
    pub http_active: crate::drain::ActiveCount,
    /// Cancelled when everything must stop (background tasks).
    pub stop_all: CancellationToken,
    pub(crate) generation: AtomicU64,
    /// Serialises reloads: one writer of the snapshot.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Running listeners by (name, configured bind address).
    pub(crate) listeners: Mutex<HashMap<(String, SocketAddr), RunningListener>>,
    /// Signs admission tickets (one key for the process life).
    pub signer: Arc<TicketSigner>,
    pub metrics: PrometheusHandle,
}

pub(crate) struct RunningListener {
    pub stop: CancellationToken,
    pub local_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin listener: cannot bind {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A listener socket handed in from outside (systemd socket activation).
pub struct Inherited {
    pub name: Option<String>,
    pub listener: std::net::TcpListener,
}

/// A proxy with its sockets bound, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    pending: Vec<(String, SocketAddr, std::net::TcpListener)>,
    admin: Option<std::net::TcpListener>,
}

impl Server {
    /// Bind every listener of `config` (port 0 is fine: see [`Server::local_addr`]).
    pub fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with(config, Vec::new())
    }

    /// Like [`Server::bind`], taking already-open sockets first: matched by name, else by
    /// local address.
    pub fn bind_with(config: Config, inherited: Vec<Inherited>) -> Result<Server, StartError> {
        let metrics = crate::metrics::install();
        let config = Arc::new(config);
        let nodes = DashMap::new();
        let signer = crate::admission::gate::signer(&config).map_err(BuildError::from)?;
        let snap = Snapshot::build(
            config.clone(),
            BuildCtx {
                nodes: &nodes,
                signer: &signer,
                generation: 1,
                prev: None,
            },
        )?;
        let stop_all = CancellationToken::new();
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            let on_up: crate::backend::health::UpHook = Arc::new(move |node: &Arc<Node>| {
                if let Some(s) = weak.upgrade() {
                    s.node_came_up(node);
                }
            });
            Shared {
                snapshot: ArcSwap::from_pointee(snap),
                nodes,
                tunnels: Registry::new(),
                conn_limit: Arc::new(Semaphore::new(config.limits.max_connections)),
                conn_limit_size: AtomicU64::new(config.limits.max_connections as u64),
                conn_limit_debt: AtomicU64::new(0),
                health: Arc::new(Health::new(on_up, stop_all.clone())),
                stop_http: CancellationToken::new(),
                http_active: Default::default(),
                stop_all,
                generation: AtomicU64::new(1),
                reload_lock: tokio::sync::Mutex::new(()),
                listeners: Mutex::new(HashMap::new()),
                signer,
                metrics,
            }
        });
        // Inherited sockets (socket activation): by name first, then by address.
        let wanted: Vec<(&str, SocketAddr)> = config
            .listeners
            .iter()
            .map(|l| (l.name(), l.bind))
            .collect();
        let inherited = inherited
            .into_iter()
            .map(|i| crate::systemd::InheritedListener {
                name: i.name,
                listener: i.listener,
            })
            .collect();
        let (slots, unclaimed) = crate::systemd::match_listeners(inherited, &wanted);
        for i in unclaimed {
            tracing::warn!(
                "inherited socket {:?} ({:?}) matches no [[listener]]: closing it \
                 (fix the socket unit or the config: nothing would serve it)",
                i.name,
                i.local_addr().ok()
            );
        }
        let mut pending = Vec::new();
        for (l, slot) in config.listeners.iter().zip(slots) {
            let sock = match slot {
                Some(i) => {
                    tracing::info!(listener = %l.name(), "using the inherited socket");
                    i.listener
                }
                None => {
                    crate::listener::bind(l.bind, l.backlog).map_err(|source| StartError::Bind {
                        name: l.name().to_string(),
                        addr: l.bind,
                        source,
                    })?
                }
            };
            pending.push((l.name().to_string(), l.bind, sock));
        }
        let admin = if config.admin.enabled {
            Some(
                crate::listener::bind(config.admin.bind, 128).map_err(|source| {
                    StartError::AdminBind {
                        addr: config.admin.bind,
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        Ok(Server {
            shared,
            pending,
            admin,
        })
    }

    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.pending
            .iter()
            .find(|(n, _, _)| n == listener)
            .and_then(|(_, _, l)| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` resolves, then shut down gracefully (see `drain`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let shared = self.shared.clone();
        {
            // A reload (SIGHUP, Handle::reload) may already be running: serialise with it
            // so that each configured listener ends up running exactly once.
            let _writer = shared.reload_lock.lock().await;
            for (name, bind, sock) in self.pending {
                shared.start_listener(name, bind, sock)?;
            }
        }
        if let Some(admin) = self.admin {
            let l = tokio::net::TcpListener::from_std(admin)?;
            tokio::spawn(crate::admin::serve(l, shared.clone()));
        }
        let snap = shared.snapshot.load_full();
        shared.health.apply(&snap);
        crate::admission::gate::spawn_limiter_sweeper(shared.clone());
        crate::reload::apply_drain_flags(&shared, &snap);
        tracing::info!("herdgate serving (config generation 1)");
        shutdown.await;
        crate::drain::shutdown(&shared).await;
        Ok(())
    }
}

impl Shared {
    pub(crate) fn start_listener(
        self: &Arc<Self>,
        name: String,
        bind: SocketAddr,
        sock: std::net::TcpListener,
    ) -> std::io::Result<()> {
        let local_addr = sock.local_addr()?;
        let l = tokio::net::TcpListener::from_std(sock)?;
        let stop = self.stop_all.child_token();
        tracing::info!(listener = %name, "listening on {local_addr}");
        tokio::spawn(crate::listener::serve(
            l,
            Arc::from(name.as_str()),
            self.clone(),
            stop.clone(),
        ));
        if let Ok(mut g) = self.listeners.lock() {
            if let Some(old) = g.insert((name, bind), RunningListener { stop, local_addr }) {
                // A reload that ran before `run` started the listeners bound a socket of
                // its own for this one: keep one, or the other would serve on unseen and
                // hold a connection slot that shutdown waits for.
                old.stop.cancel();
            }
        }
        Ok(())
    }

    /// Stop accepting on every listener (their sockets close).
    pub(crate) fn stop_listeners(&self) {
        if let Ok(mut g) = self.listeners.lock() {
            for (_, l) in g.drain() {
                l.stop.cancel();
            }
        }
    }

    pub(crate) fn node_came_up(&self, node: &Arc<Node>) {
        crate::admission::on_node_up(self, node);
    }

    /// Learned sticky entries over all pools.
    pub fn sticky_entries(&self) -> Option<usize> {
        let snap = self.snapshot.load();
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

    pub(crate) fn resize_conn_limit(&self, max: usize) {
        let old = self.conn_limit_size.swap(max as u64, Ordering::AcqRel) as usize;
        if max > old {
            // A shrink not yet paid back is cancelled first.
            let grow = (max - old) as u64;
            let cancelled = self
                .conn_limit_debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .map_or(0, |d| d.min(grow));
            self.conn_limit.add_permits((grow - cancelled) as usize);
        } else if max < old {
            // Only free permits can be forgotten now; the rest as connections end.
            let forgotten = self.conn_limit.forget_permits(old - max);
            self.conn_limit_debt
                .fetch_add((old - max - forgotten) as u64, Ordering::AcqRel);
        }
    }

    /// Give a connection permit to the debt of a lowered cap: `None` when it was taken.
    pub(crate) fn pay_conn_debt(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let paid = self
            .conn_limit_debt
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

/// Control of a running server (reload, drain, shutdown), cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Open tunnels right now.
    pub fn tunnels(&self) -> usize {
        self.shared.tunnels.len()
    }

    /// Addresses the listeners are bound to, by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.shared
            .listeners
            .lock()
            .map(|g| {
                g.iter()
                    .map(|((n, _), l)| (n.clone(), l.local_addr))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replace the configuration (what SIGHUP does after reading the file).
    pub async fn reload(&self, config: Config) -> Result<(), crate::reload::ReloadError> {
        crate::reload::reload(&self.shared, config).await
    }

    /// Read, validate and apply a file; on error the running config stays.
    pub async fn reload_file(
        &self,
        path: &std::path::Path,
    ) -> Result<(), crate::reload::ReloadError> {
        crate::reload::reload_file(&self.shared, path).await
    }

    /// Close everything at once with 1001 (second SIGTERM, or SIGINT).
    pub fn shutdown_now(&self) {
        crate::drain::close_all_now(&self.shared);
    }

    /// Start draining a node (admin API).
    pub fn drain_node(&self, pool: &str, node: &str) -> bool {
        crate::drain::drain_node_by_name(&self.shared, pool, node)
    }

    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }
}
