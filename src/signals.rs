//! Signals: SIGHUP reloads, SIGTERM drains and stops, a second SIGTERM or a SIGINT
//! closes everything at once.

use crate::server::Handle;
use std::path::PathBuf;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The installed signal handlers and the shutdown token they cancel.
pub struct Signals {
    shutdown: CancellationToken,
}

impl Signals {
    /// Install the handlers (inside a tokio runtime).
    pub fn new(handle: Handle, config: PathBuf) -> std::io::Result<Signals> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading {}", config.display());
                        notify(crate::systemd::reloading).await;
                        let status = match handle.reload_file(&config).await {
                            Ok(()) => format!(
                                "serving, config generation {}",
                                handle.snapshot().generation
                            ),
                            Err(e) => format!("reload failed, old config kept: {e}"),
                        };
                        // READY=1 even after a failed reload, or `systemctl reload` hangs
                        // on Type=notify-reload.
                        notify(crate::systemd::ready).await;
                        notify(move || crate::systemd::status(&status)).await;
                    }
                    _ = term.recv() => {
                        if token.is_cancelled() {
                            tracing::warn!("second SIGTERM: closing everything now (1001)");
                            handle.shutdown_now();
                        } else {
                            tracing::info!("SIGTERM: draining and stopping");
                            let _ = crate::systemd::stopping();
                            token.cancel();
                        }
                    }
                    _ = int.recv() => {
                        tracing::warn!("SIGINT: closing everything now (1001)");
                        let _ = crate::systemd::stopping();
                        // 1001 first: cancelling first lets the graceful funnel, woken on
                        // another thread, send its first tunnels 1012 in between.
                        handle.shutdown_now();
                        token.cancel();
                    }
                }
            }
        });
        Ok(Signals { shutdown })
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub fn shutdown_requested(&self) -> impl std::future::Future<Output = ()> + 'static {
        let t = self.shutdown.clone();
        async move { t.cancelled().await }
    }
}

/// sd_notify from the signal loop on a blocking thread: the send blocks while the service
/// manager's queue is full, and must not stall a runtime worker (and the proxy with it).
async fn notify(send: impl FnOnce() -> std::io::Result<bool> + Send + 'static) {
    if let Err(e) = tokio::task::spawn_blocking(send).await {
        tracing::warn!("sd_notify: {e}");
    }
}
