//! WebSocket handshakes per second and echo round-trip latency, direct to the echo node and
//! through herdgate, nginx and HAProxy, plain (ws) and TLS (wss), side by side in one run.
//!
//! Run: `cargo bench --bench proxy` (about 2 minutes). The processes share the machine:
//! this one (the clients), the echo node (this binary in its echo role), and the proxies,
//! each its own process(es) in front of that same echo node: herdgate (the release
//! binary), nginx and HAProxy (system binaries, configs in benches/common/proxies.rs; one
//! that is not installed is skipped with a printed note).
//! "Direct TLS" is the same lean echo behind tokio-rustls. The paths are interleaved in
//! rounds (their order rotating), so a load spike from elsewhere hits all of them; rates
//! are the median over rounds, latency percentiles pool all samples.
//!
//! A handshake here is a whole short WebSocket: TCP connect, (TLS), upgrade to 101, then
//! the closing handshake (Close, Close back, the server closes TCP first). Closing the way
//! RFC 6455 wants it keeps TIME_WAIT on the servers' accepted sockets; a client that
//! reset or closed first would make a proxy (which then closes towards the node first)
//! search a port range full of TIME_WAIT on every connect, a cost of the bench's
//! choice rather than of the proxy.
//!
//! Environment: HERDGATE_BENCH_ECHO=tungstenite uses herdgate_echo::EchoNode (and
//! tokio-tungstenite behind TLS) as the echo node instead of the lean raw echo;
//! HERDGATE_BENCH_ONLY runs one part: "handshakes", "rtt", or one mode of it such as
//! "handshakes ws", "handshakes wss (resumed)", "rtt wss"; HERDGATE_BENCH_PROXIES=
//! herdgate,nginx,haproxy (any subset) chooses the proxies; HERDGATE_BENCH_ROUNDS=n runs
//! n rounds of the handshake part instead of 6 (while tracing or profiling a proxy).
//!
//! Worker counts (issue 13, fair comparisons): `HERDGATE_BENCH_WORKERS=1,2 cargo bench
//! --bench proxy` runs the whole bench once per count, each proxy configured alike:
//! herdgate with that many data-plane threads (`[runtime] threads` in its config), nginx with `worker_processes`, HAProxy with `nbthread`; a
//! last table puts the configurations side by side (CPU µs per plain WebSocket opened and
//! closed, echo RTT p50/p99 and what each proxy adds to direct, the load average of each
//! run). Without it, one run at the default (2 each, = this machine's cores; the
//! HERDGATE_BENCH_NGINX_WORKERS, HERDGATE_BENCH_HAPROXY_THREADS and
//! HERDGATE_BENCH_HERDGATE_THREADS knobs still set each alone).
//! HERDGATE_BENCH_BASELINE_BIN=<another herdgate build> adds it as one more path
//! ("herdgate (baseline)"), interleaved with the others: before/after figures of a change
//! under the same conditions.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Connections in flight at once in the handshake phases.
const HS_CONCURRENCY: usize = 32;
const HS_PHASE: Duration = Duration::from_millis(1000);
const HS_ROUNDS: usize = 6;
const RTT_PHASE: Duration = Duration::from_millis(750);
const RTT_ROUNDS: usize = 4;
const RTT_CONNS: [usize; 2] = [1, 16];

fn main() -> ExitCode {
    bench_main("proxy", Duration::from_secs(900), run_all)
}

/// One path's figures in one configuration, for the side-by-side table.
struct Row {
    workers: String,
    path: String,
    load: String,
    /// Proxy CPU µs per plain WebSocket opened and closed (None: not measured).
    ws_cpu: Option<f64>,
    /// Plain echo RTT p50 / p99 µs with 1 connection, and the same for direct.
    rtt: Option<((f64, f64), (f64, f64))>,
}

/// HERDGATE_BENCH_WORKERS=1,2: the bench once per worker count, then one table of all.
async fn run_all() -> Result<()> {
    let counts: Vec<Option<u32>> = match std::env::var("HERDGATE_BENCH_WORKERS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("HERDGATE_BENCH_WORKERS: {n:?} is not a count"))
            })
            .collect::<std::result::Result<_, _>>()?,
        Err(_) => vec![None],
    };
    let mut rows = Vec::new();
    for w in &counts {
        rows.extend(run(*w).await?);
    }
    if counts.len() > 1 {
        print_side_by_side(&rows);
    }
    Ok(())
}

fn print_side_by_side(rows: &[Row]) {
    println!("## configurations side by side (plain ws)");
    println!();
    println!("| workers | path | CPU µs per ws opened and closed | of nginx | echo RTT p50 / p99 µs, 1 conn. | added to direct p50 / p99 µs | load average (1/5/15 min) |");
    println!("|---:|---|---:|---:|---:|---:|---|");
    for r in rows {
        let nginx = rows
            .iter()
            .find(|n| n.workers == r.workers && n.path == "nginx")
            .and_then(|n| n.ws_cpu);
        let cpu = r.ws_cpu.map_or("–".into(), |c| format!("{c:.0}"));
        let of = match (r.ws_cpu, nginx) {
            (Some(c), Some(n)) if r.path != "nginx" => format!("{:.2}", c / n),
            _ => "–".into(),
        };
        let (rtt, added) = match r.rtt {
            Some(((a, b), (da, db))) if r.path != "direct" => (
                format!("{a:.0} / {b:.0}"),
                format!("{:.0} / {:.0}", a - da, b - db),
            ),
            Some(((a, b), _)) => (format!("{a:.0} / {b:.0}"), "–".into()),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {} | {} | {cpu} | {of} | {rtt} | {added} | {} |",
            r.workers, r.path, r.load
        );
    }
    println!();
}

/// What one phase (or several rounds of it) measured.
#[derive(Default)]
struct Samples {
    /// Completed operations per second, one entry per phase.
    rates: Vec<f64>,
    /// Latency of every completed operation, in ns.
    lat: Vec<u64>,
    errors: u64,
    resumed: u64,
    /// CPU seconds per operation per phase: the proxy (if any), echo node, clients.
    cpu: Vec<[f64; 3]>,
    /// The proxy's user and kernel clock ticks over every phase (/proc/PID/stat).
    ticks: [u64; 2],
}

impl Samples {
    fn add(&mut self, p: Phase) {
        self.rates.push(p.rate);
        self.lat.extend(p.lat);
        self.errors += p.errors;
        self.resumed += p.resumed;
        self.cpu.push(p.cpu);
        self.ticks[0] += p.ticks[0];
        self.ticks[1] += p.ticks[1];
    }
    /// The proxy's kernel share of its CPU time over every phase.
    fn kernel_share(&self) -> f64 {
        self.ticks[1] as f64 / (self.ticks[0] + self.ticks[1]).max(1) as f64
    }
    fn median_rate(&self) -> f64 {
        median(&self.rates)
    }
    fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
    /// (p50, p99) in µs.
    fn p(&mut self) -> (f64, f64) {
        let (a, b) = percentiles(&mut self.lat);
        (a as f64 / 1e3, b as f64 / 1e3)
    }
    /// Median CPU µs per operation of process `i` (0 proxy, 1 echo, 2 clients).
    fn cpu_us(&self, i: usize) -> f64 {
        median(&self.cpu.iter().map(|c| c[i]).collect::<Vec<_>>()) * 1e6
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The processes whose CPU time a phase accounts.
#[derive(Clone)]
struct Pids {
    /// The proxy's processes (nginx: master and workers); empty for direct.
    proxy: Vec<u32>,
    echo: u32,
}

impl Pids {
    fn cpu(&self) -> Result<[f64; 3]> {
        Ok([
            self.proxy
                .iter()
                .map(|&p| cpu_secs(p))
                .sum::<Result<f64>>()?,
            cpu_secs(self.echo)?,
            cpu_secs(std::process::id())?,
        ])
    }
    /// The proxy's (user, kernel) clock ticks so far, summed over its processes.
    fn ticks(&self) -> [u64; 2] {
        let mut t = [0, 0];
        for &p in &self.proxy {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Fields after the command (which may hold spaces): state is field 3, utime
            // and stime are fields 14 and 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            for (i, slot) in t.iter_mut().enumerate() {
                *slot += f
                    .get(11 + i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        t
    }
}

/// One way to the echo node: direct, or through one of the proxies.
struct Path {
    name: String,
    proxy: Option<Proxy>,
    ws: std::net::SocketAddr,
    wss: std::net::SocketAddr,
}

impl Path {
    fn pids(&self, echo: u32) -> Pids {
        Pids {
            proxy: self.proxy.as_ref().map(|p| p.pids()).unwrap_or_default(),
            echo,
        }
    }
    fn alive(&mut self) -> Result<()> {
        match &mut self.proxy {
            Some(p) => p.proc.alive(),
            None => Ok(()),
        }
    }
}

const HS_MODES: [&str; 3] = ["ws", "wss (full handshake)", "wss (resumed)"];
const RTT_MODES: [&str; 2] = ["ws", "wss"];

/// One whole run; `workers`: every proxy's worker processes / threads (None: defaults).
async fn run(workers: Option<u32>) -> Result<Vec<Row>> {
    set_workers(workers);
    // herdgate's threads are `[runtime] threads` in its config (`set_workers`).
    let workers_label = workers.map_or("default".to_string(), |n| n.to_string());
    if let Some(n) = workers {
        println!();
        println!("# {n} worker(s) / thread(s) per proxy");
    }
    let (soft, hard) = raise_fd_limit();
    let dir = tempfile::tempdir()?;
    let cert = write_cert(dir.path())?;
    let mut echo = spawn_echo(&cert).await?;
    let echo_pid = echo.proc.pid();
    let (kinds, skipped) = proxies_to_run();
    let mut paths = vec![Path {
        name: "direct".into(),
        proxy: None,
        ws: echo.plain,
        wss: echo.tls,
    }];
    let mut versions = Vec::new();
    for k in kinds {
        let sub = dir.path().join(k.label());
        std::fs::create_dir(&sub)?;
        let p = spawn_proxy(k, &sub, &cert, echo.plain, &[]).await?;
        versions.push(k.version());
        paths.push(Path {
            name: k.label().into(),
            ws: p.ws,
            wss: p.wss,
            proxy: Some(p),
        });
    }
    // HERDGATE_BENCH_BASELINE_BIN=<another herdgate build>: measured as one more path,
    // interleaved with the others (before/after figures of a change, same conditions).
    if let Some(bin) = std::env::var_os("HERDGATE_BENCH_BASELINE_BIN") {
        let sub = dir.path().join("baseline");
        std::fs::create_dir(&sub)?;
        let launch = Launch {
            bin: Some(std::path::Path::new(&bin)),
            ..Launch::default()
        };
        let h = spawn_herdgate(&sub, &cert, echo.plain, &launch).await?;
        versions.push(format!("herdgate baseline: {}", bin.to_string_lossy()));
        paths.push(Path {
            name: "herdgate (baseline)".into(),
            ws: h.ws,
            wss: h.wss,
            proxy: Some(Proxy {
                kind: ProxyKind::Herdgate,
                proc: h.proc,
                ws: h.ws,
                wss: h.wss,
                admin: Some(h.admin),
            }),
        });
    }
    let load_before = loadavg(3);
    let echo_kind = std::env::var(ECHO_ENV).unwrap_or_else(|_| "raw".into());

    let target = |path: &Path, mode: &str| -> Result<Target> {
        Ok(match mode {
            "ws" => Target {
                addr: path.ws,
                tls: None,
            },
            // A connector per target, so session caches stay apart.
            m => Target {
                addr: path.wss,
                tls: Some(tls_connector(&cert.der, !m.contains("full"))?),
            },
        })
    };
    // HERDGATE_BENCH_ONLY=handshakes|rtt|"handshakes <mode>"|"rtt <mode>": one part only
    // (e.g. while profiling a proxy).
    let only = std::env::var("HERDGATE_BENCH_ONLY").ok();
    let wanted = |part: &str, label: &str| {
        only.as_deref()
            .is_none_or(|o| o == part || o == format!("{part} {label}"))
    };
    let hs_modes: Vec<&str> = HS_MODES
        .into_iter()
        .filter(|m| wanted("handshakes", m))
        .collect();
    let rtt_modes: Vec<&str> = RTT_MODES.into_iter().filter(|m| wanted("rtt", m)).collect();
    // targets[mode][path]
    let hs_targets: Vec<Vec<Target>> = hs_modes
        .iter()
        .map(|m| paths.iter().map(|p| target(p, m)).collect())
        .collect::<Result<_>>()?;
    let rtt_targets: Vec<Vec<Target>> = rtt_modes
        .iter()
        .map(|m| paths.iter().map(|p| target(p, m)).collect())
        .collect::<Result<_>>()?;

    // What TLS each path negotiates (the same work should be compared).
    let mut tls_lines = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let full = tls_summary(&target(p, "wss (full handshake)")?).await?;
        let resumed_t = target(p, "wss (resumed)")?;
        tls_summary(&resumed_t).await?; // gets a ticket
        let resumed = tls_summary(&resumed_t).await?;
        tls_lines.push(format!("{}: {full}; then {resumed}", paths[i].name));
    }

    // Warm up every path (connections, TLS caches, allocator) before measuring.
    for ts in &hs_targets {
        for (j, t) in ts.iter().enumerate() {
            handshakes(t, Duration::from_millis(300), &paths[j].pids(echo_pid)).await?;
        }
    }

    let np = paths.len();
    let mut hs: Vec<Vec<Samples>> = hs_modes
        .iter()
        .map(|_| (0..np).map(|_| Samples::default()).collect())
        .collect();
    // HERDGATE_BENCH_ROUNDS=n: more rounds (e.g. while profiling or tracing a proxy).
    let hs_rounds = std::env::var("HERDGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(HS_ROUNDS);
    for round in 0..hs_rounds {
        for (i, ts) in hs_targets.iter().enumerate() {
            // The order of the paths rotates each round, so none is always first or last.
            for k in 0..np {
                let j = (k + round) % np;
                let pids = paths[j].pids(echo_pid);
                hs[i][j].add(handshakes(&ts[j], HS_PHASE, &pids).await?);
                paths[j].alive()?;
                echo.proc.alive()?;
            }
        }
    }

    let mut rtt: Vec<Vec<Vec<Samples>>> = rtt_modes
        .iter()
        .map(|_| {
            RTT_CONNS
                .iter()
                .map(|_| (0..np).map(|_| Samples::default()).collect())
                .collect()
        })
        .collect();
    for round in 0..RTT_ROUNDS {
        for (i, ts) in rtt_targets.iter().enumerate() {
            for (c, &conns) in RTT_CONNS.iter().enumerate() {
                for k in 0..np {
                    let j = (k + round) % np;
                    let pids = paths[j].pids(echo_pid);
                    rtt[i][c][j].add(echo_rtt(&ts[j], conns, RTT_PHASE, &pids).await?);
                    paths[j].alive()?;
                    echo.proc.alive()?;
                }
            }
        }
    }

    let load_after = loadavg(3);
    println!();
    println!(
        "## proxy bench: {} logical CPUs, {} workers/threads per proxy, load average {load_before} before / {load_after} after",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        workers_label,
    );
    println!(
        "echo node: {echo_kind}; fd limit {soft}/{hard}; {HS_CONCURRENCY} connections in flight, \
         {hs_rounds} rounds x {}s per mode and path; ranges are min–max over rounds",
        HS_PHASE.as_secs_f64()
    );
    for v in &versions {
        println!("- {v}");
    }
    for n in &skipped {
        println!("- {n}");
    }
    for l in &tls_lines {
        println!("- TLS {l}");
    }

    let direct = 0;
    if !hs_modes.is_empty() {
        println!();
        println!("| WebSockets opened and closed | path | /s median (min–max) | of direct | time to 101 p50 / p99 ms | CPU µs each: proxy · echo · clients | proxy CPU µs: user · kernel | resumed | errors |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    for (i, label) in hs_modes.iter().enumerate() {
        let dr = hs[i][direct].median_rate();
        for (j, path) in paths.iter().enumerate() {
            let s = &mut hs[i][j];
            let r = s.median_rate();
            let (lo, hi) = s.range();
            let (p50, p99) = s.p();
            let (proxy_cpu, split) = if j == direct {
                ("–".to_string(), "–".to_string())
            } else {
                let (c, k) = (s.cpu_us(0), s.kernel_share());
                (
                    format!("{c:.0}"),
                    format!("{:.0} · {:.0}", c * (1.0 - k), c * k),
                )
            };
            let resumed = if label.contains("wss") {
                format!(
                    "{:.0}%",
                    100.0 * s.resumed as f64 / s.lat.len().max(1) as f64
                )
            } else {
                "–".into()
            };
            let ratio = if j == direct {
                "–".to_string()
            } else {
                format!("**{:.0}%**", 100.0 * r / dr.max(1e-9))
            };
            println!(
                "| {label} | {} | {r:.0} ({lo:.0}–{hi:.0}) | {ratio} | {:.2} / {:.2} | {proxy_cpu} · {:.0} · {:.0} | {split} | {resumed} | {} |",
                path.name,
                p50 / 1e3,
                p99 / 1e3,
                s.cpu_us(1),
                s.cpu_us(2),
                s.errors,
            );
        }
    }
    if !rtt_modes.is_empty() {
        println!();
        println!("| echo round trip, 64 B | connections | path | p50 / p99 µs | added p50 µs | msg/s | proxy CPU µs/msg |");
        println!("|---|---:|---|---:|---:|---:|---:|");
    }
    for (i, label) in rtt_modes.iter().enumerate() {
        for (c, conns) in RTT_CONNS.iter().enumerate() {
            let (d50, _) = rtt[i][c][direct].p();
            for (j, path) in paths.iter().enumerate() {
                let s = &mut rtt[i][c][j];
                let (p50, p99) = s.p();
                let (added, cpu) = if j == direct {
                    ("–".to_string(), "–".to_string())
                } else {
                    (format!("{:.0}", p50 - d50), format!("{:.1}", s.cpu_us(0)))
                };
                println!(
                    "| {label} | {conns} | {} | {p50:.0} / {p99:.0} | {added} | {:.0} | {cpu} |",
                    path.name,
                    s.median_rate(),
                );
            }
        }
    }

    // The same figures side by side, one column per path.
    println!();
    let head: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    println!("| side by side | {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(np));
    for (i, label) in hs_modes.iter().enumerate() {
        let row: Vec<String> = (0..np)
            .map(|j| format!("{:.0}", hs[i][j].median_rate()))
            .collect();
        println!("| {label}, WebSockets/s | {} |", row.join(" | "));
    }
    for (i, label) in hs_modes.iter().enumerate() {
        let row: Vec<String> = (0..np)
            .map(|j| {
                let (a, b) = hs[i][j].p();
                format!("{:.2} / {:.2}", a / 1e3, b / 1e3)
            })
            .collect();
        println!(
            "| {label}, time to 101 p50 / p99 ms | {} |",
            row.join(" | ")
        );
    }
    for (i, label) in rtt_modes.iter().enumerate() {
        for (c, conns) in RTT_CONNS.iter().enumerate() {
            let row: Vec<String> = (0..np)
                .map(|j| {
                    let (a, b) = rtt[i][c][j].p();
                    format!("{a:.0} / {b:.0}")
                })
                .collect();
            println!(
                "| {label} echo RTT p50 / p99 µs, {conns} conn. | {} |",
                row.join(" | ")
            );
        }
    }
    println!();
    let ws_hs = hs_modes.iter().position(|m| *m == "ws");
    let ws_rtt = rtt_modes.iter().position(|m| *m == "ws");
    let mut rows = Vec::new();
    for (j, path) in paths.iter().enumerate() {
        rows.push(Row {
            workers: workers_label.clone(),
            path: path.name.clone(),
            load: format!("{load_before} → {load_after}"),
            ws_cpu: ws_hs.filter(|_| j != direct).map(|i| hs[i][j].cpu_us(0)),
            rtt: ws_rtt.map(|i| (rtt[i][0][j].p(), rtt[i][0][direct].p())),
        });
    }
    drop(paths);
    Ok(rows)
}

struct Phase {
    rate: f64,
    lat: Vec<u64>,
    errors: u64,
    resumed: u64,
    cpu: [f64; 3],
    ticks: [u64; 2],
}

/// CPU seconds per operation of each process since `before`.
fn cpu_per_op(pids: &Pids, before: [f64; 3], ops: usize) -> Result<[f64; 3]> {
    let after = pids.cpu()?;
    let n = ops.max(1) as f64;
    Ok([0, 1, 2].map(|i| (after[i] - before[i]) / n))
}

/// HS_CONCURRENCY tasks run short WebSockets back to back for `dur`: connect, (TLS),
/// upgrade (timed), closing handshake.
async fn handshakes(t: &Target, dur: Duration, pids: &Pids) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, ticks0) = (pids.cpu()?, pids.ticks());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HS_CONCURRENCY {
        let t = t.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut resumed) = (Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = step("connection", async {
                    let o = open(&t, false).await?;
                    let to_101 = t0.elapsed();
                    close(o.conn).await?;
                    Ok::<_, BoxError>((to_101, o.resumed))
                })
                .await?;
                match r {
                    Ok((to_101, r)) => {
                        lat.push(to_101.as_nanos() as u64);
                        resumed += r as u64;
                    }
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("connection to {}: {e}", t.addr);
                        }
                    }
                }
            }
            Ok::<_, BoxError>((lat, errors, resumed))
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut errors, mut resumed) = (Vec::new(), 0, 0);
    for task in tasks {
        let (l, e, r) = task.await??;
        lat.extend(l);
        errors += e;
        resumed += r;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(pids, cpu0, lat.len())?;
    let ticks1 = pids.ticks();
    let ticks = [ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]];
    Ok(Phase {
        rate: lat.len() as f64 / elapsed,
        lat,
        errors,
        resumed,
        cpu,
        ticks,
    })
}

/// `conns` connections each send a 64-byte message and wait for its echo, back to back.
async fn echo_rtt(t: &Target, conns: usize, dur: Duration, pids: &Pids) -> Result<Phase> {
    let mut opened = Vec::new();
    for _ in 0..conns {
        let mut o = step("open", open(t, false)).await??;
        // Settle the connection (and its tunnel) before timing.
        for _ in 0..10 {
            step("echo", echo_once(&mut o.conn)).await??;
        }
        opened.push(o.conn);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, ticks0) = (pids.cpu()?, pids.ticks());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in opened {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                step("echo", echo_once(&mut conn)).await??;
                lat.push(t0.elapsed().as_nanos() as u64);
            }
            Ok::<_, BoxError>((lat, conn))
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut conns_back = Vec::new();
    for task in tasks {
        let (l, c) = task.await??;
        lat.extend(l);
        conns_back.push(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_per_op(pids, cpu0, lat.len())?;
    let ticks1 = pids.ticks();
    let ticks = [ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]];
    for c in conns_back {
        step("close", close(c)).await??;
    }
    Ok(Phase {
        rate: lat.len() as f64 / elapsed,
        lat,
        errors: 0,
        resumed: 0,
        cpu,
        ticks,
    })
}
