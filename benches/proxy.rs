//! WebSocket handshakes per second and echo round-trip latency, through herdgate versus
//! direct to the echo node, plain (ws) and TLS (wss), measured side by side in one run.
//!
//! Run: `cargo bench --bench proxy` (about 70 s). Three processes share the machine:
//! this one (the clients), herdgate (release binary, its own process) and the echo node
//! (this binary in its echo role). "Direct TLS" is the same lean echo behind tokio-rustls.
//! Direct and proxied phases are interleaved in rounds, so a load spike from elsewhere
//! hits both; rates are the median over rounds, latency percentiles pool all samples.
//!
//! A handshake here is a whole short WebSocket: TCP connect, (TLS), upgrade to 101, then
//! the closing handshake (Close, Close back, the server closes TCP first). Closing the way
//! RFC 6455 wants it keeps TIME_WAIT on the servers' accepted sockets; a client that
//! reset or closed first would make herdgate (which then closes towards the node first)
//! search a port range full of TIME_WAIT on every connect, a cost of the bench's
//! choice rather than of the proxy.
//!
//! Environment: HERDGATE_BENCH_ECHO=tungstenite uses herdgate::echo::EchoNode (and
//! tokio-tungstenite behind TLS) as the echo node instead of the lean raw echo;
//! HERDGATE_BENCH_ONLY runs one part: "handshakes", "rtt", or one mode of it such as
//! "handshakes ws", "handshakes wss (resumed)", "rtt wss".

mod common;

use common::*;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Connections in flight at once in the handshake phases.
const HS_CONCURRENCY: usize = 32;
const HS_PHASE: Duration = Duration::from_millis(1200);
const HS_ROUNDS: usize = 5;
const RTT_PHASE: Duration = Duration::from_millis(1500);
const RTT_ROUNDS: usize = 2;
const RTT_CONNS: [usize; 2] = [1, 16];

fn main() -> ExitCode {
    if let Some(code) = child_role() {
        return code;
    }
    if !invoked_by_cargo_bench() {
        println!("proxy bench: skipped (run it with `cargo bench --bench proxy`)");
        return ExitCode::SUCCESS;
    }
    run_main("proxy", Duration::from_secs(170), run())
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
    /// CPU seconds per operation per phase: herdgate (proxied phases), echo node, clients.
    cpu: Vec<[f64; 3]>,
}

impl Samples {
    fn add(&mut self, p: Phase) {
        self.rates.push(p.rate);
        self.lat.extend(p.lat);
        self.errors += p.errors;
        self.resumed += p.resumed;
        self.cpu.push(p.cpu);
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
    /// Median CPU µs per operation of process `i` (0 herdgate, 1 echo, 2 clients).
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
#[derive(Clone, Copy)]
struct Pids {
    herdgate: u32,
    echo: u32,
}

impl Pids {
    fn cpu(&self) -> Result<[f64; 3]> {
        Ok([
            cpu_secs(self.herdgate)?,
            cpu_secs(self.echo)?,
            cpu_secs(std::process::id())?,
        ])
    }
}

async fn run() -> Result<()> {
    let (soft, hard) = raise_fd_limit();
    let dir = tempfile::tempdir()?;
    let cert = write_cert(dir.path())?;
    let mut echo = spawn_echo(&cert)?;
    let mut hg = spawn_herdgate(dir.path(), &cert, echo.plain, &[]).await?;
    let pids = Pids {
        herdgate: hg.proc.pid(),
        echo: echo.proc.pid(),
    };
    let load_before = loadavg();
    let echo_kind = std::env::var(ECHO_ENV).unwrap_or_else(|_| "raw".into());

    let plain = |addr| Target { addr, tls: None };
    let tls = |addr, resume| -> Result<Target> {
        Ok(Target {
            addr,
            tls: Some(tls_connector(&cert.der, resume)?),
        })
    };
    // (label, direct, via herdgate); a connector per target so session caches stay apart.
    let hs_modes: Vec<(&str, Target, Target)> = vec![
        ("ws", plain(echo.plain), plain(hg.ws)),
        (
            "wss (full handshake)",
            tls(echo.tls, false)?,
            tls(hg.wss, false)?,
        ),
        ("wss (resumed)", tls(echo.tls, true)?, tls(hg.wss, true)?),
    ];
    let rtt_modes: Vec<(&str, Target, Target)> = vec![
        ("ws", plain(echo.plain), plain(hg.ws)),
        ("wss", tls(echo.tls, true)?, tls(hg.wss, true)?),
    ];
    // HERDGATE_BENCH_ONLY=handshakes|rtt|"handshakes <mode>"|"rtt <mode>": one part only
    // (e.g. while profiling herdgate).
    let only = std::env::var("HERDGATE_BENCH_ONLY").ok();
    let wanted = |part: &str, label: &str| {
        only.as_deref()
            .is_none_or(|o| o == part || o == format!("{part} {label}"))
    };
    let hs_modes: Vec<_> = hs_modes
        .into_iter()
        .filter(|m| wanted("handshakes", m.0))
        .collect();
    let rtt_modes: Vec<_> = rtt_modes
        .into_iter()
        .filter(|m| wanted("rtt", m.0))
        .collect();

    // Warm up every path (connections, TLS caches, allocator) before measuring.
    for (_, d, p) in &hs_modes {
        handshakes(d, Duration::from_millis(300), pids).await?;
        handshakes(p, Duration::from_millis(300), pids).await?;
    }

    let mut hs: Vec<(Samples, Samples)> = hs_modes.iter().map(|_| Default::default()).collect();
    for _ in 0..HS_ROUNDS {
        for (i, (_, d, p)) in hs_modes.iter().enumerate() {
            hs[i].0.add(handshakes(d, HS_PHASE, pids).await?);
            hs[i].1.add(handshakes(p, HS_PHASE, pids).await?);
            hg.proc.alive()?;
            echo.proc.alive()?;
        }
    }

    let mut rtt: Vec<Vec<(Samples, Samples)>> = rtt_modes
        .iter()
        .map(|_| RTT_CONNS.iter().map(|_| Default::default()).collect())
        .collect();
    for _ in 0..RTT_ROUNDS {
        for (i, (_, d, p)) in rtt_modes.iter().enumerate() {
            for (j, &c) in RTT_CONNS.iter().enumerate() {
                rtt[i][j].0.add(echo_rtt(d, c, RTT_PHASE, pids).await?);
                rtt[i][j].1.add(echo_rtt(p, c, RTT_PHASE, pids).await?);
                hg.proc.alive()?;
                echo.proc.alive()?;
            }
        }
    }

    println!();
    println!(
        "## herdgate proxy bench: {} logical CPUs, load average {load_before} before / {} after",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "echo node: {echo_kind}; fd limit {soft}/{hard}; {HS_CONCURRENCY} connections in flight, \
         {HS_ROUNDS} rounds x {}s per mode and path; ranges are min–max over rounds",
        HS_PHASE.as_secs_f64()
    );
    if !hs_modes.is_empty() {
        println!();
        println!("| WebSockets opened and closed | direct /s | via herdgate /s | herdgate/direct | time to 101, direct p50 / p99 ms | via herdgate p50 / p99 ms | CPU µs each: herdgate · echo · clients (direct: echo · clients) | errors |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    for (i, (label, _, _)) in hs_modes.iter().enumerate() {
        let (d, p) = &mut hs[i];
        let (dr, pr) = (d.median_rate(), p.median_rate());
        let (d50, d99) = d.p();
        let (p50, p99) = p.p();
        let resumed = if label.contains("resumed") {
            format!(
                ", {:.0}% / {:.0}% resumed",
                100.0 * d.resumed as f64 / d.lat.len().max(1) as f64,
                100.0 * p.resumed as f64 / p.lat.len().max(1) as f64
            )
        } else {
            String::new()
        };
        println!(
            "| {label}{resumed} | {dr:.0} ({:.0}–{:.0}) | {pr:.0} ({:.0}–{:.0}) | **{:.0}%** | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} · {:.0} · {:.0} ({:.0} · {:.0}) | {} / {} |",
            d.range().0,
            d.range().1,
            p.range().0,
            p.range().1,
            100.0 * pr / dr.max(1e-9),
            d50 / 1e3,
            d99 / 1e3,
            p50 / 1e3,
            p99 / 1e3,
            p.cpu_us(0),
            p.cpu_us(1),
            p.cpu_us(2),
            d.cpu_us(1),
            d.cpu_us(2),
            d.errors,
            p.errors,
        );
    }
    if !rtt_modes.is_empty() {
        println!();
        println!("| echo round trip, 64 B | connections | direct p50 / p99 µs | via herdgate p50 / p99 µs | added p50 µs | direct msg/s | via herdgate msg/s | herdgate CPU µs/msg |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    for (i, (label, _, _)) in rtt_modes.iter().enumerate() {
        for (j, c) in RTT_CONNS.iter().enumerate() {
            let (d, p) = &mut rtt[i][j];
            let (d50, d99) = d.p();
            let (p50, p99) = p.p();
            println!(
                "| {label} | {c} | {d50:.0} / {d99:.0} | {p50:.0} / {p99:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
                p50 - d50,
                d.median_rate(),
                p.median_rate(),
                p.cpu_us(0),
            );
        }
    }
    println!();
    Ok(())
}

struct Phase {
    rate: f64,
    lat: Vec<u64>,
    errors: u64,
    resumed: u64,
    cpu: [f64; 3],
}

/// CPU seconds per operation of each process since `before`.
fn cpu_per_op(pids: Pids, before: [f64; 3], ops: usize) -> Result<[f64; 3]> {
    let after = pids.cpu()?;
    let n = ops.max(1) as f64;
    Ok([0, 1, 2].map(|i| (after[i] - before[i]) / n))
}

/// HS_CONCURRENCY tasks run short WebSockets back to back for `dur`: connect, (TLS),
/// upgrade (timed), closing handshake.
async fn handshakes(t: &Target, dur: Duration, pids: Pids) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = pids.cpu()?;
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
    Ok(Phase {
        rate: lat.len() as f64 / elapsed,
        lat,
        errors,
        resumed,
        cpu,
    })
}

/// `conns` connections each send a 64-byte message and wait for its echo, back to back.
async fn echo_rtt(t: &Target, conns: usize, dur: Duration, pids: Pids) -> Result<Phase> {
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
    let cpu0 = pids.cpu()?;
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
    for c in conns_back {
        step("close", close(c)).await??;
    }
    Ok(Phase {
        rate: lat.len() as f64 / elapsed,
        lat,
        errors: 0,
        resumed: 0,
        cpu,
    })
}
