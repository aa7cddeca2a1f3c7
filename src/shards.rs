//! Data-plane shards: one single-threaded tokio runtime per worker thread, each with its
//! own accept loop on every listener, so that a connection lives its whole life on the
//! thread that accepted it: no work stealing, no cross-thread wakeups. nginx's workers and
//! HAProxy's threads run the same way. The control plane (reload, health checks, admin,
//! fleet leases, signals) stays on the runtime that runs `Server::run`.
//!
//! Each shard accepts on its own `SO_REUSEPORT` socket bound to the listener's address,
//! and the kernel spreads new connections over them (`listener::start`).

use std::io;
use tokio::runtime::Handle;

/// Running shard threads (`hg-shard-<i>`). Dropping it stops them: each runtime
/// ends, and the connections it still holds are closed.
pub struct Shards {
    handles: Vec<Handle>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Shards {
    /// Start `n` shards (at least one), each a current-thread runtime on its own thread.
    pub fn start(n: usize) -> io::Result<Shards> {
        let n = n.max(1);
        let (mut handles, mut stop) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Each thread says when it runs, so that every shard is up (and named: a thread
        // sets its own name when it starts) before herdgate listens.
        let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            stop.push(tx);
            let up = up_tx.clone();
            std::thread::Builder::new()
                .name(format!("hg-shard-{i}"))
                .spawn(move || {
                    let _ = up.send(());
                    drop(up);
                    // Ends when the sender is dropped (with `Shards`).
                    let _ = rt.block_on(rx);
                })?;
        }
        drop(up_tx);
        for _ in 0..n {
            up_rx
                .recv()
                .map_err(|_| io::Error::other("a data-plane shard thread ended at start"))?;
        }
        Ok(Shards {
            handles,
            _stop: stop,
        })
    }

    /// The shards' runtime handles, one per thread.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}
