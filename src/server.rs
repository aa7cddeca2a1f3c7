//! The running proxy: shared state, listeners, admin endpoint, lifecycle.

use crate::backend::health::Health;
use crate::backend::Node;
use crate::config::Config;
use crate::snapshot::{BuildCtx, BuildError, Snapshot};
use crate::state::Shared;
use dashmap::DashMap;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a server could not be started: nothing is served in that case.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The first snapshot could not be built (TLS material, routing, admission).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A `[[listener]]` could not bind its address.
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address it was to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin listener could not bind its address.
    #[error("admin listener: cannot bind {addr}: {source}")]
    AdminBind {
        /// The `[admin] bind` address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A listener socket handed in from outside (systemd socket activation).
pub struct Inherited {
    /// The name it was passed under (systemd's `FileDescriptorName=`), matched against
    /// listener names first; `None` matches by address only.
    pub name: Option<String>,
    /// The open listening socket.
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
            // A node that comes back up ramps its rate (slow start).
            let on_up: crate::backend::health::UpHook = Arc::new(move |node: &Arc<Node>| {
                if weak.upgrade().is_some() {
                    crate::admission::on_node_up(node);
                }
            });
            Shared::new(
                snap,
                nodes,
                Arc::new(Health::new(on_up, stop_all.clone())),
                stop_all,
                config.limits.max_connections,
                signer,
                metrics,
            )
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

    /// The bound address of the listener named `listener` (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.pending
            .iter()
            .find(|(n, _, _)| n == listener)
            .and_then(|(_, _, l)| l.local_addr().ok())
    }

    /// The bound address of the admin listener; `None` when it is disabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve the listeners on these data-plane shards ([`crate::shards::Shards`]): each
    /// shard runs its own accept loop on every listener, and a connection stays on the
    /// shard that accepted it. Without shards, listeners run on the runtime that calls
    /// [`Server::run`]. Keep `shards` alive while the server runs; call before `run`
    /// (a second call is ignored).
    pub fn with_shards(self, shards: &crate::shards::Shards) -> Server {
        let _ = self.shared.shards.set(shards.handles().to_vec());
        self
    }

    /// A control handle, usable before and while the server runs.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` resolves, then shut down gracefully (see `drain`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let shared = self.shared.clone();
        // Fleet admission first: its view is set before the admin endpoint reports it.
        crate::fleet::spawn(shared.clone());
        {
            // A reload (SIGHUP, Handle::reload) may already be running: serialise with it
            // so that each configured listener ends up running exactly once.
            let _writer = shared.control.reload_lock.lock().await;
            for (name, bind, sock) in self.pending {
                crate::listener::start(&shared, name, bind, vec![sock])?;
            }
        }
        if let Some(admin) = self.admin {
            let l = tokio::net::TcpListener::from_std(admin)?;
            tokio::spawn(crate::admin::serve(l, shared.clone()));
        }
        let snap = shared.load_full();
        shared.health.apply(snap.health_targets());
        crate::admission::gate::spawn_limiter_sweeper(shared.clone());
        crate::reload::apply_drain_flags(&shared, &snap);
        tracing::info!("herdgate serving (config generation 1)");
        shutdown.await;
        crate::drain::shutdown(&shared).await;
        Ok(())
    }
}

/// Control of a running server (reload, drain, shutdown), cheap to clone.
#[derive(Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// The routing snapshot in force now (it changes on reload).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    /// Open tunnels right now.
    pub fn tunnels(&self) -> usize {
        self.shared.tunnels.len()
    }

    /// Addresses the listeners are bound to, by name.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.shared
            .control
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

    /// Undo an admin drain of a node (admin API).
    pub fn undrain_node(&self, pool: &str, node: &str) -> crate::drain::Undrain {
        crate::drain::undrain_node_by_name(&self.shared, pool, node)
    }

    /// The metrics in Prometheus text format, as `/metrics` serves them.
    pub fn render_metrics(&self) -> String {
        self.shared.metrics.render()
    }
}
