//! The single writer of the snapshot: read ─► validate ─► build ─► store ─► diff.
//!
//! On any error the old snapshot stays, the error is logged with its key path and line,
//! and counted. Open tunnels are never touched by a reload: they hold their own
//! snapshot. Live node state (bucket, schedule, health, counters) carries over for nodes
//! whose identity (pool, name, address) is unchanged.

use crate::backend::{DrainSource, Node, NodeKey};
use crate::config::{Config, ConfigErrors};
use crate::metrics as m;
use crate::snapshot::{BuildCtx, BuildError, Snapshot};
use crate::state::Shared;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Why a reload failed; the running configuration then stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file could not be read, or is not a valid configuration.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A snapshot could not be built from it (TLS material, routing, admission).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A listener the new configuration needs could not bind its address.
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address it was to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reload itself failed unexpectedly (a bug); the reload task goes on.
    #[error("reload aborted: {0}")]
    Aborted(String),
}

fn failed(e: ReloadError) -> ReloadError {
    tracing::error!("reload failed, keeping the running configuration: {e}");
    metrics::counter!(m::RELOAD_FAILURES).increment(1);
    metrics::gauge!(m::LAST_RELOAD_SUCCESS).set(0.0);
    e
}

/// Load the configuration at `path` and apply it (what SIGHUP does); failures are logged
/// and counted.
pub async fn reload_file(shared: &Arc<Shared>, path: &Path) -> Result<(), ReloadError> {
    match Config::load(path) {
        Ok(c) => reload(shared, c).await,
        Err(e) => Err(failed(e.into())),
    }
}

/// Apply an already parsed configuration: all or nothing, one reload at a time.
///
/// The work runs in a task of its own, so that even a bug that panics while applying it
/// costs this reload only: the caller (the SIGHUP loop, the admin endpoint) gets an error
/// and stays alive for the next one.
pub async fn reload(shared: &Arc<Shared>, config: Config) -> Result<(), ReloadError> {
    let task = tokio::spawn(apply(shared.clone(), config));
    match task.await {
        Ok(r) => r,
        Err(e) => Err(failed(ReloadError::Aborted(e.to_string()))),
    }
}

async fn apply(shared: Arc<Shared>, config: Config) -> Result<(), ReloadError> {
    let shared = &shared;
    let writer = shared.control.reload_lock.lock().await;
    let old = shared.load_full();
    let generation = shared
        .control
        .generation
        .load(std::sync::atomic::Ordering::Relaxed)
        + 1;
    // Building registers new nodes in the live table. If this reload fails they must go
    // again: the next good reload would take them for removed nodes and drop the learned
    // sticky entries of every node by their name.
    let known: HashSet<NodeKey> = shared.nodes.iter().map(|e| e.key().clone()).collect();
    let failed = |e: ReloadError| {
        shared.nodes.retain(|k, _| known.contains(k));
        failed(e)
    };
    let snap = Snapshot::build(
        Arc::new(config),
        BuildCtx {
            nodes: &shared.nodes,
            signer: &shared.signer,
            generation,
            prev: Some(&old),
        },
    )
    .map_err(|e| failed(e.into()))?;

    // Bind new listeners before anything changes, so a bind error leaves all as it was.
    let running: HashSet<(String, SocketAddr)> = shared
        .control
        .listeners
        .lock()
        .map(|g| g.keys().cloned().collect())
        .unwrap_or_default();
    let wanted: HashSet<(String, SocketAddr)> = snap
        .config
        .listeners
        .iter()
        .map(|l| (l.name().to_string(), l.bind))
        .collect();
    let mut fresh = Vec::new();
    for l in &snap.config.listeners {
        let key = (l.name().to_string(), l.bind);
        if running.contains(&key) {
            continue;
        }
        // A listener renamed (or moved between names) keeps its address: it takes the
        // sockets of the one that goes, whose accept queues then lose nothing.
        if let Some(socks) = take_sockets(shared, &running, &wanted, l.bind) {
            fresh.push((key, socks));
            continue;
        }
        let sock = crate::listener::bind(l.bind, l.backlog).map_err(|source| {
            failed(ReloadError::Bind {
                name: l.name().to_string(),
                addr: l.bind,
                source,
            })
        })?;
        fresh.push((key, vec![sock]));
    }

    let snap = Arc::new(snap);
    shared.publish(&writer, snap.clone());
    shared
        .control
        .generation
        .store(generation, std::sync::atomic::Ordering::Relaxed);

    for ((name, bind), socks) in fresh {
        if let Err(e) = crate::listener::start(shared, name.clone(), bind, socks) {
            tracing::error!(listener = %name, "cannot serve the new listener: {e}");
        }
    }
    if let Ok(mut g) = shared.control.listeners.lock() {
        g.retain(|key, l| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(listener = %key.0, "listener removed; closing {}", l.local_addr);
                l.stop.cancel();
            }
            keep
        });
    }
    shared.conns.resize(snap.config.limits.max_connections);
    crate::admission::apply_snapshot(&snap);
    crate::fleet::reapply(shared, &snap);
    shared.health.apply(snap.health_targets());

    // Nodes no longer in the config: drained, then forgotten once their tunnels end.
    let live: HashSet<*const Node> = snap
        .pools
        .iter()
        .flat_map(|p| p.nodes.iter().map(Arc::as_ptr))
        .collect();
    let removed: Vec<Arc<Node>> = shared
        .nodes
        .iter()
        .filter(|e| !live.contains(&Arc::as_ptr(e.value())))
        .map(|e| e.value().clone())
        .collect();
    for node in removed {
        shared.nodes.remove(&node.key);
        crate::routing::forget_node(shared, &node);
        tracing::info!(node = %node.key, "node removed from the config; draining it");
        crate::drain::drain_node(shared, &node, DrainSource::Removed, &old);
    }
    apply_drain_flags(shared, &snap);

    metrics::counter!(m::RELOADS).increment(1);
    metrics::gauge!(m::LAST_RELOAD_SUCCESS).set(1.0);
    tracing::info!("configuration reloaded (generation {generation})");
    Ok(())
}

/// Duplicates of the sockets of a running listener bound to `bind` that this reload
/// removes, for a new listener of the same address (not for port 0, which asks for a new
/// port). Duplicates, not the sockets themselves: a reload that fails later leaves the
/// running listener as it was, able to hand them over the next time.
fn take_sockets(
    shared: &Shared,
    running: &HashSet<(String, SocketAddr)>,
    wanted: &HashSet<(String, SocketAddr)>,
    bind: SocketAddr,
) -> Option<Vec<std::net::TcpListener>> {
    if bind.port() == 0 {
        return None;
    }
    let key = running
        .iter()
        .find(|k| k.1 == bind && !wanted.contains(*k))?;
    let g = shared.control.listeners.lock().ok()?;
    let socks = g
        .get(key)?
        .sockets
        .iter()
        .map(|s| s.try_clone())
        .collect::<std::io::Result<Vec<_>>>()
        .ok()?;
    (!socks.is_empty()).then_some(socks)
}

/// Start draining nodes marked `drain = true`; undo a config drain that was lifted.
pub(crate) fn apply_drain_flags(shared: &Arc<Shared>, snap: &Arc<Snapshot>) {
    for pool in &snap.pools {
        for (node, cfg) in pool.nodes.iter().zip(&pool.cfg.nodes) {
            if cfg.drain {
                crate::drain::drain_node(shared, node, DrainSource::Config, snap);
            } else if node.is_draining() && node.drained_by_config() {
                tracing::info!(node = %node.key, "drain lifted by the config");
                node.undrain();
            }
        }
    }
}
