//! Resident memory per idle proxied WebSocket, plain and TLS, for herdgate, nginx and
//! HAProxy, measured two ways.
//!
//! Run: `cargo bench --bench idle_memory` (a few minutes). For each method, mode and proxy
//! a fresh proxy process (herdgate: the release binary; nginx and HAProxy: system binaries
//! with the configs of benches/common, skipped with a note when not installed) is started
//! in front of a fresh echo node process, 9,000 WebSockets are opened through it and left
//! idle, and the proxy's VmRSS (and RssAnon) from /proc/<pid>/status, summed over its
//! processes (nginx: master and workers), is read before and after; the difference divided
//! by 9,000 is the cost of one idle tunnel.
//!
//! - `tungstenite` (the default, the way a user's clients connect): a separate load
//!   process of tokio-tungstenite 0.28 clients with default settings and TCP_NODELAY
//!   opens the tunnels as fast as 256 handshakes in flight allow (on a 2-core machine
//!   about 4,000-7,000/s plain, 1,500-2,000/s TLS) and sends nothing on them; "before" is the fresh proxy process, with no warm-up.
//! - `raw`: this process opens them with the raw client of benches/common/ws.rs (64
//!   handshakes in flight, as fast as they go, one echo each); "before" is read after a
//!   warm-up of 64 tunnels that are opened and closed again (runtime threads, allocator
//!   arenas and TLS state exist by then).
//!
//! A tunnel costs a proxy two descriptors. Every process raises its soft limit to the
//! hard one; when the hard limit is too small for 9,000 the bench says so and uses fewer.
//! HERDGATE_BENCH_TUNNELS=N changes the count, HERDGATE_BENCH_PROXIES=herdgate,nginx,
//! haproxy (any subset) the proxies, HERDGATE_BENCH_METHODS=tungstenite,raw (either or
//! both, default both) the methods, HERDGATE_BENCH_MODES=ws,wss the modes.
//! HERDGATE_BENCH_LOAD_RATE (opens/s at most, default 0: unpaced),
//! HERDGATE_BENCH_LOAD_IN_FLIGHT (default 256) and HERDGATE_BENCH_LOAD_ECHO=1 (one 64-byte
//! echo on each tunnel; default none) shape the tungstenite load.
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    /// A separate process of tokio-tungstenite clients; baseline: the fresh proxy.
    Tungstenite,
    /// This process's raw client; baseline: after a warm-up.
    Raw,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Tungstenite => "tungstenite, fresh",
            Method::Raw => "raw, warmed",
        }
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// HERDGATE_BENCH_METHODS (tungstenite, raw; default both, tungstenite first).
fn methods() -> Result<Vec<Method>> {
    let Ok(sel) = std::env::var("HERDGATE_BENCH_METHODS") else {
        return Ok(vec![Method::Tungstenite, Method::Raw]);
    };
    sel.split(',')
        .map(|m| match m.trim() {
            "tungstenite" => Ok(Method::Tungstenite),
            "raw" => Ok(Method::Raw),
            other => {
                Err(format!("HERDGATE_BENCH_METHODS: {other:?} is not tungstenite or raw").into())
            }
        })
        .collect()
}

/// HERDGATE_BENCH_MODES (ws, wss; default both).
fn modes() -> Vec<&'static str> {
    let sel = std::env::var("HERDGATE_BENCH_MODES").unwrap_or_else(|_| "ws,wss".into());
    let mut v = Vec::new();
    if sel.split(',').any(|m| m.trim() == "ws") {
        v.push("plain (ws)");
    }
    if sel.split(',').any(|m| m.trim() == "wss") {
        v.push("TLS (wss)");
    }
    v
}

fn load_spec(n: usize) -> LoadSpec {
    LoadSpec {
        n,
        rate: env_num("HERDGATE_BENCH_LOAD_RATE", 0),
        in_flight: env_num("HERDGATE_BENCH_LOAD_IN_FLIGHT", 256),
        // A tunnel that never carried a message is the case that once held a finished
        // connection task (4 KiB) through a stale waker: the default measures it.
        echo: std::env::var("HERDGATE_BENCH_LOAD_ECHO").is_ok_and(|v| v == "1"),
    }
}

struct Row {
    method: Method,
    proxy: &'static str,
    procs: usize,
    fds_per_tunnel: f64,
    mode: &'static str,
    n: usize,
    rss0: u64,
    rss1: u64,
    anon0: u64,
    anon1: u64,
    /// After the first half (raw method only).
    rss_half: Option<u64>,
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
    let spec = load_spec(n);
    notes.push(format!(
        "tungstenite load: {} opens/s, {} handshakes in flight, {}",
        if spec.rate == 0 {
            "unpaced".to_string()
        } else {
            format!("at most {}", spec.rate)
        },
        spec.in_flight,
        if spec.echo {
            "one 64-byte echo per tunnel"
        } else {
            "no message"
        }
    ));
    for var in [
        "MALLOC_ARENA_MAX",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
        "LD_PRELOAD",
    ] {
        if let Ok(v) = std::env::var(var) {
            notes.push(format!("{var}={v} (inherited by every proxy)"));
        }
    }
    let mut rows = Vec::new();
    for method in methods()? {
        for mode in modes() {
            for &k in &kinds {
                rows.push(measure(k, mode, method, n).await?);
            }
        }
    }
    let sizes = type_sizes().await?;

    println!();
    println!("## idle tunnel memory: load average {}", loadavg(3));
    for n in &notes {
        println!("{n}");
    }
    println!();
    println!("| method | mode | proxy | processes | tunnels | fds per tunnel | VmRSS before → after | per idle tunnel (VmRSS) | RssAnon | marginal, 2nd half | VmRSS all closed → same again | open time |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |k: u64| k as f64 / 1024.0;
    for r in &rows {
        let per = |a: u64, b: u64, n: usize| b.saturating_sub(a) as f64 * 1024.0 / n as f64;
        let whole = per(r.rss0, r.rss1, r.n);
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} → {:.1} MiB | **{:.2} KiB** ({:.0} B) | {:.2} KiB | {} | {:.1} → {:.1} MiB | {:.1} s |",
            r.method.label(),
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
            r.rss_half.map_or("–".to_string(), |h| format!(
                "{:.2} KiB",
                per(h, r.rss1, r.n - r.n / 2) / 1024.0
            )),
            mib(r.rss_closed),
            mib(r.rss_again),
            r.open_secs,
        );
    }
    println!();
    println!(
        "VmRSS and RssAnon are summed over the proxy's processes (nginx: master + workers); fds \
         per tunnel = growth of their open descriptors / tunnels (2 = both connections held). \
         per idle tunnel = (VmRSS after - before) / tunnels, before = the fresh proxy \
         (tungstenite) or after a 64-tunnel warm-up (raw); open time: the tungstenite load's \
         own (first open to last handshake) or this process's (raw); marginal = growth from {} to {} tunnels \
         / {} (raw; the tungstenite load opens all at once); \"all closed → same again\": VmRSS once every tunnel closed, then with as many open \
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

async fn measure(kind: ProxyKind, mode: &'static str, method: Method, n: usize) -> Result<Row> {
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

    if method == Method::Tungstenite {
        return measure_load(px, &cert, mode, n, heaptrack.is_some()).await;
    }
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
    let rss_half = Some(settled_rss(&px).await?);
    conns.extend(open_many(&target, n - n / 2).await?);
    let open_secs = t0.elapsed().as_secs_f64();
    wait_open(&px, n).await?;
    let rss1 = settled_rss(&px).await?;
    let anon1 = px.status_kib("RssAnon")?;
    let fds_per_tunnel = px.fds()?.saturating_sub(fds0) as f64 / n as f64;
    let procs = px.pids().len();
    px.proc.alive()?;
    let row = |rss_closed, rss_again| Row {
        method,
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

/// The tungstenite method: the fresh proxy's VmRSS, then `n` tunnels opened by a separate
/// load process, held idle; then all closed and `n` opened again.
async fn measure_load(
    mut px: Proxy,
    cert: &Cert,
    mode: &'static str,
    n: usize,
    heaptrack: bool,
) -> Result<Row> {
    let (addr, pem) = if mode.starts_with("TLS") {
        (px.wss, Some(cert.cert.as_path()))
    } else {
        (px.ws, None)
    };
    let spec = load_spec(n);
    let rss0 = settled_rss(&px).await?;
    let anon0 = px.status_kib("RssAnon")?;
    let fds0 = px.fds()?;

    // All `n` in one go, as the client did (so no reading at half way).
    let load = spawn_load(addr, pem, &spec)?;
    wait_open(&px, n).await?;
    let rss1 = settled_rss(&px).await?;
    let anon1 = px.status_kib("RssAnon")?;
    let fds_per_tunnel = px.fds()?.saturating_sub(fds0) as f64 / n as f64;
    let procs = px.pids().len();
    px.proc.alive()?;
    let kind_label = px.kind.label();
    let open_secs = load.open_secs;
    let (rss_closed, rss_again) = if heaptrack {
        // End herdgate with its tunnels open (the trace shows them as "leaked").
        drop(px);
        drop(load);
        (0, 0)
    } else {
        drop(load);
        wait_closed(&px, fds0).await?;
        let rss_closed = settled_rss(&px).await?;
        let again = spawn_load(addr, pem, &spec)?;
        wait_open(&px, n).await?;
        let rss_again = settled_rss(&px).await?;
        drop(again);
        (rss_closed, rss_again)
    };
    Ok(Row {
        method: Method::Tungstenite,
        proxy: kind_label,
        procs,
        fds_per_tunnel,
        mode,
        n,
        rss0,
        rss1,
        anon0,
        anon1,
        rss_half: None,
        rss_closed,
        rss_again,
        open_secs,
    })
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
        &ctl,
        &settings,
        None,
    );
    let relay_size = std::mem::size_of_val(&fut);
    drop(fut);
    Ok(format!(
        "relay future {relay_size}, Side {}, tokio TcpStream {}, TLS session {} (boxed; rustls' unbuffered connection inside: {}), TunnelCtl {} (+16 Arc header)",
        std::mem::size_of::<Side>(),
        std::mem::size_of::<tokio::net::TcpStream>(),
        std::mem::size_of::<herdgate::io::tls::TlsSession>(),
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>(),
        std::mem::size_of::<TunnelCtl>(),
    ))
}
