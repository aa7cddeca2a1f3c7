//! The one harness of the benches (proxy, idle_memory, storm): child processes, ports,
//! waits, certificates, the echo nodes, herdgate and the other proxies as processes, a raw
//! WebSocket client, herdgate's metrics and /proc readings.
//!
//! Everything runs on 127.0.0.1. herdgate runs as its own process (the release binary that
//! `cargo bench` builds), each echo node as another (this bench binary started again in a
//! child role, see [`child_role`]), and the clients in the bench process: each process
//! keeps its own descriptor budget, so 9,000 tunnels (18,000 descriptors in herdgate) fit
//! under a 20,000 limit.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`bench_main`], [`step`], the error type |
//! | `process.rs` | [`Proc`] (killed on drop), child roles, [`free_addr`], [`until`], [`retry`] |
//! | `sys.rs` | /proc readings, load average, descriptor limit, wall clock, percentiles |
//! | `tls.rs` | the self-signed certificate, server and client TLS configs |
//! | `echo.rs` | the echo nodes: the lean one and the accept-logging one |
//! | `herdgate.rs` | herdgate as a process: the launcher and the bench config |
//! | `proxies.rs` | herdgate, nginx and HAProxy side by side |
//! | `ws.rs` | the raw WebSocket client |
//! | `load.rs` | the independent load: tokio-tungstenite clients in a process of their own |
//! | `metrics.rs` | herdgate's Prometheus text |
#![allow(dead_code)] // each bench uses a part

mod echo;
mod herdgate;
mod load;
mod metrics;
mod process;
mod proxies;
mod sys;
mod tls;
mod ws;

// Each bench uses a part: a glob it takes nothing from is no mistake.
#[allow(unused_imports)]
pub use self::{
    echo::*, herdgate::*, load::*, metrics::*, process::*, proxies::*, sys::*, tls::*, ws::*,
};

use std::process::ExitCode;
use std::time::Duration;

/// Bound on every single network step of a bench (a hang is an error, not a result).
pub const STEP: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

pub async fn step<F: std::future::Future>(what: &str, f: F) -> Result<F::Output> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| format!("{what}: no progress within {STEP:?}").into())
}

/// `cargo bench` passes `--bench`; `cargo test --benches` does not (then we do nothing:
/// these loads are not tests).
pub fn invoked_by_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The `main` of a bench that runs one async body: the child role if this process was
/// started as one ([`child_role`]), nothing but a line under `cargo test --benches`, else
/// [`run_main`].
pub fn bench_main<F: std::future::Future<Output = Result<()>>>(
    name: &str,
    budget: Duration,
    body: impl FnOnce() -> F,
) -> ExitCode {
    if let Some(code) = child_role() {
        return code;
    }
    if !invoked_by_cargo_bench() {
        println!("{name} bench: skipped (run it with `cargo bench --bench {name}`)");
        return ExitCode::SUCCESS;
    }
    run_main(name, budget, body())
}

/// Run a bench body within `budget`. SIGINT and SIGTERM end it early too, through the
/// normal return path, so the child processes are killed on the way out.
pub fn run_main<F: std::future::Future<Output = Result<()>>>(
    name: &str,
    budget: Duration,
    body: F,
) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = runtime();
    let res: Result<()> = rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = tokio::time::timeout(budget, body) => {
                r.unwrap_or_else(|_| Err(format!("exceeded its {budget:?} budget").into()))
            }
            _ = term.recv() => Err("terminated".into()),
            _ = int.recv() => Err("interrupted".into()),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// tokio's multi-thread runtime with its defaults (one worker per CPU).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
