//! Resident memory per idle proxied WebSocket, plain and TLS, for herdgate, nginx and
//! HAProxy.
//!
//! Run: `cargo bench --bench idle_memory` (under a minute). For each proxy and
//! mode a fresh proxy process (herdgate: the release binary; nginx and HAProxy: system
//! binaries with the configs of benches/common, skipped with a note when not installed)
//! is started in front of a fresh echo node process; this process opens 9,000 WebSockets
//! through it (64 handshakes in flight), sends one 64-byte echo on each, and leaves them
//! idle. The proxy's VmRSS (and RssAnon) from /proc/<pid>/status, summed over its
//! processes (nginx: master and workers), is read after a warm-up of 64 tunnels that are
//! opened and closed again (runtime threads, allocator arenas and TLS state exist by then)
//! and again after the 9,000 have settled; the difference divided by 9,000 is the cost of
//! one idle tunnel.
//!
//! A tunnel costs a proxy two descriptors. Every process raises its soft limit to the
//! hard one; when the hard limit is too small for 9,000 the bench says so and uses fewer.
//! HERDGATE_BENCH_TUNNELS=N changes the count, HERDGATE_BENCH_PROXIES=herdgate,nginx,
//! haproxy (any subset) the proxies.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const TUNNELS: usize = 9000;
const WARMUP: usize = 64;
const OPEN_CONCURRENCY: usize = 64;
/// Descriptors herdgate needs besides its tunnels (listeners, admin, epoll, stdio, ...).
const FD_SLACK: u64 = 200;

fn main() -> ExitCode {
    bench_main("idle_memory", Duration::from_secs(300), run)
}

struct Row {
    proxy: &'static str,
    procs: usize,
    fds_per_tunnel: f64,
    mode: &'static str,
    n: usize,
    rss0: u64,
    rss1: u64,
    anon0: u64,
    anon1: u64,
    rss_half: u64,
    rss_closed: u64,
    rss_again: u64,
    open_secs: f64,
}

async fn run() -> Result<()> {
    let (soft, hard) = raise_fd_limit();
    let want = std::env::var("HERDGATE_BENCH_TUNNELS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TUNNELS);
    let fit = (hard.min(soft).saturating_sub(FD_SLACK) / 2) as usize;
    let n = want.min(fit);
    let mut notes = Vec::new();
    notes.push(format!(
        "descriptor limit raised to {soft} (hard {hard}); herdgate raises its own the same way"
    ));
    if n < want {
        notes.push(format!(
            "SHORT: the hard limit {hard} leaves room for {n} tunnels (2 descriptors each), not {want}"
        ));
    }
    let (kinds, skipped) = proxies_to_run();
    notes.extend(skipped);
    for k in &kinds {
        notes.push(format!("{}: {}", k.label(), k.version()));
    }
    let mut rows = Vec::new();
    for mode in ["plain (ws)", "TLS (wss)"] {
        for &k in &kinds {
            rows.push(measure(k, mode, n).await?);
        }
    }
    let sizes = type_sizes().await?;

    println!();
    println!("## idle tunnel memory: load average {}", loadavg(3));
    for n in &notes {
        println!("{n}");
    }
    println!();
    println!("| mode | proxy | processes | tunnels | fds per tunnel | VmRSS before → after | per idle tunnel (VmRSS) | RssAnon | marginal, 2nd half | VmRSS all closed → same again | open time |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |k: u64| k as f64 / 1024.0;
    for r in &rows {
        let per = |a: u64, b: u64, n: usize| b.saturating_sub(a) as f64 * 1024.0 / n as f64;
        let whole = per(r.rss0, r.rss1, r.n);
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.1} → {:.1} MiB | **{:.2} KiB** ({:.0} B) | {:.2} KiB | {:.2} KiB | {:.1} → {:.1} MiB | {:.1} s |",
            r.mode,
            r.proxy,
            r.procs,
            r.n,
            r.fds_per_tunnel,
            mib(r.rss0),
            mib(r.rss1),
            whole / 1024.0,
            whole,
            per(r.anon0, r.anon1, r.n) / 1024.0,
            per(r.rss_half, r.rss1, r.n - r.n / 2) / 1024.0,
            mib(r.rss_closed),
            mib(r.rss_again),
            r.open_secs,
        );
    }
    println!();
    println!(
        "VmRSS and RssAnon are summed over the proxy's processes (nginx: master + workers); fds \
         per tunnel = growth of their open descriptors / tunnels (2 = both connections held). \
         per idle tunnel = (VmRSS after - before) / tunnels; marginal = growth from {} to {} tunnels \
         / {}; \"all closed → same again\": VmRSS once every tunnel closed, then with as many open \
         again (the allocator reuses what closed tunnels left; no growth = no leak).",
        rows.first().map_or(0, |r| r.n / 2),
        rows.first().map_or(0, |r| r.n),
        rows.first().map_or(0, |r| r.n - r.n / 2),
    );
    println!();
    println!("Type sizes (bytes, this build): {sizes}");
    println!();
    Ok(())
}

async fn measure(kind: ProxyKind, mode: &'static str, n: usize) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let cert = write_cert(dir.path())?;
    let echo = spawn_echo(&cert).await?;
    // Analysis only: HERDGATE_BENCH_HEAPTRACK=<dir> runs herdgate under heaptrack's
    // preload library, writing a raw trace (see benches/RESULTS.md for reading it). VmRSS
    // figures of such a run include heaptrack's own buffers.
    let heaptrack = std::env::var_os("HERDGATE_BENCH_HEAPTRACK")
        .filter(|_| kind == ProxyKind::Herdgate)
        .map(|d| {
            let tag = if mode.starts_with("TLS") {
                "tls"
            } else {
                "plain"
            };
            std::path::Path::new(&d).join(format!("heaptrack.{tag}.raw"))
        });
    let env: Vec<(&str, std::ffi::OsString)> = match &heaptrack {
        Some(f) => vec![
            (
                "LD_PRELOAD",
                "/usr/lib/heaptrack/libheaptrack_preload.so".into(),
            ),
            ("DUMP_HEAPTRACK_OUTPUT", f.clone().into()),
        ],
        None => vec![],
    };
    let mut px = spawn_proxy(kind, dir.path(), &cert, echo.plain, &env).await?;
    let target = if mode.starts_with("TLS") {
        Target {
            addr: px.wss,
            tls: Some(tls_connector(&cert.der, false)?),
        }
    } else {
        Target {
            addr: px.ws,
            tls: None,
        }
    };

    let warm = open_many(&target, WARMUP).await?;
    let fds_warm = px.fds()?;
    drop(warm);
    let fds0 = fds_warm.saturating_sub(2 * WARMUP);
    wait_closed(&px, fds0).await?;
    let rss0 = settled_rss(&px).await?;
    let anon0 = px.status_kib("RssAnon")?;
    let fds0 = px.fds()?;

    // Every tunnel carried an echo before open_many returns, so it is open in the proxy.
    let t0 = Instant::now();
    let mut conns = open_many(&target, n / 2).await?;
    wait_open(&px, n / 2).await?;
    let rss_half = settled_rss(&px).await?;
    conns.extend(open_many(&target, n - n / 2).await?);
    let open_secs = t0.elapsed().as_secs_f64();
    wait_open(&px, n).await?;
    let rss1 = settled_rss(&px).await?;
    let anon1 = px.status_kib("RssAnon")?;
    let fds_per_tunnel = px.fds()?.saturating_sub(fds0) as f64 / n as f64;
    let procs = px.pids().len();
    px.proc.alive()?;
    let row = |rss_closed, rss_again| Row {
        proxy: kind.label(),
        procs,
        fds_per_tunnel,
        mode,
        n,
        rss0,
        rss1,
        anon0,
        anon1,
        rss_half,
        rss_closed,
        rss_again,
        open_secs,
    };
    if heaptrack.is_some() {
        // End herdgate with its tunnels open: the trace then shows what they held as
        // "leaked".
        drop(px);
        return Ok(row(0, 0));
    }

    // The tunnels were live, not just counted: a sample still echoes.
    for c in conns.iter_mut().step_by((n / 50).max(1)) {
        step("echo after idle", echo_once(c)).await??;
    }
    drop(conns);
    wait_closed(&px, fds0).await?;
    let rss_closed = settled_rss(&px).await?;

    // Closed tunnels leave their memory to the allocator, not to the system; opening the
    // same number again must reuse it (growth here would be a leak).
    let again = open_many(&target, n).await?;
    wait_open(&px, n).await?;
    let rss_again = settled_rss(&px).await?;
    drop(again);
    Ok(row(rss_closed, rss_again))
}

/// herdgate counts its tunnels; for the others every tunnel has already carried an echo.
async fn wait_open(px: &Proxy, n: usize) -> Result<()> {
    match px.admin {
        Some(admin) => wait_metric(admin, "herdgate_tunnels_open", n as f64, STEP).await,
        None => Ok(()),
    }
}

/// Until the proxy has closed the tunnels: herdgate's count at 0, and (every proxy) its
/// descriptors back to `fds0` (a few of slack: log files, an admin connection).
async fn wait_closed(px: &Proxy, fds0: usize) -> Result<()> {
    let within = Duration::from_secs(30);
    if let Some(admin) = px.admin {
        wait_metric(admin, "herdgate_tunnels_open", 0.0, within).await?;
    }
    until(within, Duration::from_millis(100), async || {
        let fds = px.fds()?;
        Ok(if fds <= fds0 + 4 {
            Check::Done
        } else {
            Check::NotYet(format!(
                "{} still holds {fds} descriptors, {fds0} before the tunnels",
                px.kind.label()
            ))
        })
    })
    .await
}

/// Open `n` WebSockets (OPEN_CONCURRENCY handshakes in flight), one echo on each.
async fn open_many(t: &Target, n: usize) -> Result<Vec<Conn>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..OPEN_CONCURRENCY {
        let t = t.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let mut o = step("open", open(&t, true)).await??;
                step("echo", echo_once(&mut o.conn)).await??;
                mine.push(o.conn);
            }
            Ok::<_, BoxError>(mine)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// VmRSS (KiB, summed over the proxy's processes) once it has stopped moving (two
/// readings 300 ms apart within 64 KiB), or after 5 s.
async fn settled_rss(px: &Proxy) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = px.status_kib("VmRSS")?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = px.status_kib("VmRSS")?;
        if now.abs_diff(last) <= 64 || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Sizes of the per-tunnel objects: the relay future (what a tunnel task holds besides the
/// upgrade bookkeeping), one side, a rustls connection, the registry entry.
async fn type_sizes() -> Result<String> {
    use herdgate::admission::{AdmissionParams, NodeAdmission, TicketKey, TicketSigner};
    use herdgate::backend::{Node, NodeKey};
    use herdgate::registry::TunnelCtl;
    use herdgate::websocket::side::Side;
    use herdgate::websocket::tunnel::{relay, TunnelSettings};

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let a = tokio::net::TcpStream::connect(l.local_addr()?).await?;
    let (b, _) = l.accept().await?;
    let signer = Arc::new(TicketSigner::with_random_instance(TicketKey::random()));
    let admission = NodeAdmission::new(0, AdmissionParams::default(), signer, 0)?;
    let node = Arc::new(Node::new(
        NodeKey {
            pool: "p".into(),
            name: "n".into(),
            addr: l.local_addr()?,
        },
        admission,
    ));
    let ctl = Arc::new(TunnelCtl::new(0, node, None, false));
    let settings = TunnelSettings {
        idle: None,
        close_timeout: Duration::from_secs(1),
        write: Duration::from_secs(30),
    };
    // Built, never polled: its size is the state a running tunnel keeps.
    let fut = relay(
        Side::Plain(a),
        bytes::Bytes::new(),
        Side::Plain(b),
        bytes::Bytes::new(),
        ctl,
        settings,
        None,
    );
    let relay_size = std::mem::size_of_val(&fut);
    drop(fut);
    Ok(format!(
        "relay future {relay_size}, Side {}, tokio TcpStream {}, rustls ServerConnection {} (boxed), TunnelCtl {} (+16 Arc header)",
        std::mem::size_of::<Side>(),
        std::mem::size_of::<tokio::net::TcpStream>(),
        std::mem::size_of::<tokio_rustls::rustls::ServerConnection>(),
        std::mem::size_of::<TunnelCtl>(),
    ))
}
