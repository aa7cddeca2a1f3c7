//! The storm bench: a node dies and its clients reconnect. Two modes, one summary format.
//!
//! ```text
//! cargo bench --bench storm                 # sockets: 6,000 clients, ws then wss
//! cargo bench --bench storm -- --big        # sockets: 9,000 clients
//! cargo bench --bench storm -- --quick      # sockets: 1,500 clients
//! cargo bench --bench storm -- --sim        # simulation: 1,000,000 clients, 500 nodes
//! cargo bench --bench storm -- --sim --fleet 20   # the same behind 20 instances: leases, static 1/K
//! ```
//!
//! Sockets (default): herdgate (the release binary) and three echo nodes (this binary
//! started again as `examples/echo_node.rs`, see benches/common/echo.rs) run as their own
//! processes, the clients here, all on 127.0.0.1; each process has its own descriptor
//! budget. Once every client is connected, echo-0 is killed with SIGKILL and its clients
//! reconnect. Each contender gets fresh processes. Accepts are read from the echo nodes (their TCP accept times),
//! reconnect times and attempts from the clients.
//!
//! Simulation (`--sim`): [`herdgate_sim`], the real admission code and client
//! policy on a virtual clock, for storms past this machine.
//!
//! Results, commands and the SVGs' paths: benches/STORM.md.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use herdgate_client::{
    tls_client_config_with_root, ReconnectingClient, Stats, StatsSnapshot, Strategy, Target,
};
use herdgate_sim as sim;
use herdgate_sim::report::{self, StormRun, Summary};
use herdgate_sim::{policy_for, Contender, Scenario, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use common::{
    child_role, free_addr, loadavg, metrics_text, raise_fd_limit, retry, runtime, samples,
    spawn_accept_log_echo, start_herdgate, unix_nanos, until, write_cert, AcceptLogEcho, BoxError,
    Cert, Check, Launch, Proc, SPAWN_TRIES,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Ws,
    Wss,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    NodeDeath,
    FleetRestart,
    Both,
}

/// Reconnect-storm bench (see benches/STORM.md).
#[derive(Debug, Parser)]
#[command(name = "storm")]
struct Args {
    /// Simulation mode: virtual clock, no sockets.
    #[arg(long)]
    sim: bool,
    /// Smaller run (sockets: 1,500 clients; simulation: 100,000 clients over 50 nodes).
    #[arg(long)]
    quick: bool,
    /// Sockets: 9,000 clients.
    #[arg(long)]
    big: bool,
    /// Clients (sockets default 6,000; simulation default 1,000,000).
    #[arg(long)]
    clients: Option<usize>,
    /// Simulation: nodes (default 500).
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulation: which scenario.
    #[arg(long, value_enum, default_value = "both")]
    scenario: ScenarioArg,
    /// Sockets: plain ws, wss (TLS at herdgate), or both.
    #[arg(long, value_enum, default_value = "both")]
    transport: Which,
    /// admit_rate per node (default: sockets clients/12, so the killed node's third of
    /// the clients takes 2 s at the survivors' rate; simulation 500).
    #[arg(long)]
    admit_rate: Option<f64>,
    /// admit_burst per node.
    #[arg(long, default_value_t = 10)]
    burst: u32,
    /// Simulation, fleet restart: slow start of the restarted nodes (e.g. "5s").
    #[arg(long, value_parser = herdgate::config::parse_duration)]
    slow_start: Option<Duration>,
    /// Also run clients that ignore hints behind admission (immediate, fixed 1 s).
    #[arg(long)]
    extra: bool,
    /// Only the contenders whose label contains one of these (comma-separated).
    #[arg(long)]
    only: Option<String>,
    /// Client connect timeout (TCP + TLS + upgrade), sockets.
    #[arg(long, default_value = "3s", value_parser = herdgate::config::parse_duration)]
    connect_timeout: Duration,
    /// Sockets: herdgate's cap on new TLS handshakes per second (wss listener).
    #[arg(long)]
    handshakes_per_second: Option<f64>,
    /// Sockets: all clients share one rustls ClientConfig and so one session cache. It
    /// keeps at most 8 TLS 1.3 tickets per server name, so most of a herd reconnecting at
    /// once gets full handshakes. Default: each client resumes its own session, like a
    /// browser does.
    #[arg(long)]
    tls_shared_config: bool,
    /// Where the SVG charts go (default: docs/ of the crate).
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sockets: a route with no session key (no `[route.sticky]`): routing follows
    /// admission. Adds the contender that reads only `Retry-After`.
    #[arg(long)]
    keyless: bool,
    /// Sockets: queue mode, `[pool.queue] timeout` (e.g. "2s"; keep it below the clients'
    /// connect timeout).
    #[arg(long, value_parser = herdgate::config::parse_duration)]
    queue: Option<Duration>,
    /// Sockets: `max_slots_per_client` (every client of the bench shares 127.0.0.1, so the
    /// default lifts the cap; 0 is herdgate's own default, half a second of the rate).
    #[arg(long, default_value_t = 10_000_000)]
    slots_per_client: u32,
    /// Simulation: K herdgate instances in front of the nodes (fleet mode, issue 11),
    /// each client on one instance at random; runs shared leases and the static share.
    #[arg(long)]
    fleet: Option<usize>,
    /// Simulation, fleet: lease period of the shared leases.
    #[arg(long, default_value = "50ms", value_parser = herdgate::config::parse_duration)]
    lease: Duration,
    /// Simulation, fleet: share of the clients the balancer puts on instance 0 (e.g. 0.8).
    #[arg(long)]
    fleet_hot: Option<f64>,
    /// Sockets: every client makes its first attempt at once after its tunnel drops, as
    /// the immediate client does, instead of after its own backoff (a drop carries no
    /// `Retry-After`, so the `Retry-After` reader otherwise waits its jittered base,
    /// 50–750 ms). Compares what the hints do, from the same start.
    #[arg(long)]
    at_once_after_drop: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    if let Some(code) = child_role() {
        return code;
    }
    let args = Args::parse();
    if !args.bench {
        // `cargo test --benches` builds and starts us without --bench: this is a load, not
        // a test.
        println!("storm: run with `cargo bench --bench storm` (see benches/STORM.md)");
        return ExitCode::SUCCESS;
    }
    let svg_dir = args
        .svg_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    let result = if args.sim {
        simulate(&args, &svg_dir)
    } else {
        sockets(&args, &svg_dir)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn contenders(args: &Args) -> Vec<Contender> {
    let mut all = Contender::standard();
    if args.keyless && !args.sim {
        all.push(Contender::new(
            "Retry-After only, no key",
            Strategy::RetryAfterHeader,
            true,
        ));
    }
    if args.extra {
        all.extend(Contender::hint_ignorers());
    }
    if let Some(only) = &args.only {
        let want: Vec<&str> = only.split(',').map(str::trim).collect();
        all.retain(|c| want.iter().any(|w| c.label.contains(w)));
    }
    all
}

fn write_svg(dir: &Path, name: &str, svg: &str) -> Result<PathBuf, BoxError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, svg)?;
    Ok(path)
}

fn print_report(title: &str, subtitle: &str, summaries: &[Summary]) {
    println!("\n{title}\n  {subtitle}");
    print!("{}", report::table("", summaries).trim_start_matches('\n'));
    print!("{}", report::terminal_chart(summaries));
}

// ---------------------------------------------------------------------------------------
// Simulation

fn simulate(args: &Args, svg_dir: &Path) -> Result<(), BoxError> {
    let scenarios = match args.scenario {
        ScenarioArg::NodeDeath => vec![Scenario::NodeDeath],
        ScenarioArg::FleetRestart => vec![Scenario::FleetRestart],
        ScenarioArg::Both => vec![Scenario::NodeDeath, Scenario::FleetRestart],
    };
    let list = contenders(args);
    for scenario in scenarios {
        let mut cfg = SimConfig::new(scenario);
        if args.quick {
            cfg.clients = 100_000;
            cfg.nodes = 50;
        }
        cfg.clients = args.clients.unwrap_or(cfg.clients);
        cfg.nodes = args.nodes.unwrap_or(cfg.nodes);
        cfg.admit_rate = args.admit_rate.unwrap_or(cfg.admit_rate);
        cfg.admit_burst = args.burst;
        cfg.slow_start = args.slow_start.unwrap_or_default();
        cfg.seed = args.seed;
        let started = Instant::now();
        if let Some(k) = args.fleet {
            simulate_fleet(args, &cfg, &list, k, svg_dir)?;
            println!("  simulated in {:.1} s", started.elapsed().as_secs_f64());
            continue;
        }
        let rep = sim::run_scenario(&cfg, &list)?;
        print_report(&rep.title, &rep.fleet, &rep.summaries);
        let name = match scenario {
            Scenario::NodeDeath => "storm-sim-node-death.svg",
            Scenario::FleetRestart => "storm-sim-fleet-restart.svg",
        };
        let path = write_svg(
            svg_dir,
            name,
            &report::svg(&rep.title, &rep.fleet, &rep.summaries),
        )?;
        println!(
            "  simulated in {:.1} s; chart: {}",
            started.elapsed().as_secs_f64(),
            path.display()
        );
    }
    Ok(())
}

/// Fleet mode: every contender with admission behind `k` instances, with leases and with
/// the static share; the peak is per node summed over the instances.
fn simulate_fleet(
    args: &Args,
    cfg: &SimConfig,
    list: &[Contender],
    k: usize,
    svg_dir: &Path,
) -> Result<(), BoxError> {
    use sim::fleet::{run_fleet, FleetSpec, Sharing};
    let fleet = sim::Fleet::build(cfg)?;
    let mut summaries = Vec::new();
    let mut store = Vec::new();
    for c in list.iter().filter(|c| c.admission) {
        for sharing in [Sharing::Leases { lease: args.lease }, Sharing::Static] {
            let t = Instant::now();
            let spec = FleetSpec {
                instances: k,
                sharing,
                hot: args.fleet_hot,
            };
            let out = run_fleet(cfg, &fleet, c, &spec)?;
            store.push(format!(
                "  {}: store calls/s {:.0} ({} calls), on instance 0: {} clients; {:.1} s",
                out.summary.label,
                out.store_calls_per_sec,
                out.store_calls,
                out.per_instance.first().copied().unwrap_or(0),
                t.elapsed().as_secs_f64()
            ));
            summaries.push(out.summary);
        }
    }
    let title = format!(
        "simulation, fleet: {} ({} clients, {} nodes, {k} instances{}, virtual clock)",
        cfg.scenario.name(),
        cfg.clients,
        cfg.nodes,
        args.fleet_hot
            .map(|p| format!(", {:.0} % on instance 0", p * 100.0))
            .unwrap_or_default()
    );
    let sub = format!(
        "{} reconnecting clients; peak = accepts per node summed over the instances, bound rate + burst = {:.0}",
        fleet.landing.len(),
        cfg.admit_rate + f64::from(cfg.admit_burst)
    );
    print_report(&title, &sub, &summaries);
    for line in store {
        println!("{line}");
    }
    let name = match cfg.scenario {
        Scenario::NodeDeath => "storm-sim-fleet-node-death.svg",
        Scenario::FleetRestart => "storm-sim-fleet-fleet-restart.svg",
    };
    let path = write_svg(svg_dir, name, &report::svg(&title, &sub, &summaries))?;
    println!("  chart: {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sockets: processes

/// herdgate in front of the echo nodes: its one listener and its admin address.
struct Gate {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn herdgate_config(
    edge: SocketAddr,
    admin: SocketAddr,
    rc: &RoundCfg<'_>,
    rate: f64,
    burst: u32,
    nodes: &[SocketAddr],
) -> String {
    let (tls, hps) = (rc.tls, rc.hps);
    let mut s = format!(
        r#"[admin]
bind = "{admin}"

[timeouts]
close = "2s"

[shutdown]
spread = "1s"
timeout = "2s"

# Every bench client comes from 127.0.0.1: the per-client caps would count them as one.
[limits]
max_connections_per_client = 10000000
max_tunnels_per_client = 10000000

[[listener]]
name = "edge"
bind = "{edge}"
backlog = 8192
"#
    );
    if let Some(cert) = tls {
        if let Some(h) = hps {
            s.push_str(&format!("handshakes_per_second = {h}\n"));
        }
        s.push_str(&format!(
            "[[listener.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"localhost\"]\n",
            cert.cert.display(),
            cert.key.display()
        ));
    }
    // Keyless: no session key, so routing is free and follows admission (issue 10).
    let sticky = if rc.keyless {
        ""
    } else {
        "[route.sticky]\nquery = \"k\"\nfallback = \"none\"\n"
    };
    s.push_str(&format!(
        r#"
[[route]]
pool = "storm"
{sticky}
[[pool]]
name = "storm"
admit_rate = {rate}
admit_burst = {burst}
max_retry_after = "60s"
max_slots_per_client = {slots}
"#,
        slots = rc.slots_per_client
    ));
    if let Some(q) = rc.queue {
        s.push_str(&format!(
            "[pool.queue]\ntimeout = \"{}ms\"\nmax_len = 100000\n",
            q.as_millis()
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.node]]\nname = \"echo-{i}\"\naddr = \"{n}\"\n"
        ));
    }
    if std::env::var_os("HERDGATE_STORM_DUMP").is_some() {
        // For analysis (see the dump in `round`): one line per request and tunnel.
        s.insert_str(0, "[log]\naccess = true\n\n");
    }
    s
}

/// herdgate for one round, its config and log in `dir`, on fresh ports.
async fn spawn_gate(
    dir: &Path,
    round: &str,
    rc: &RoundCfg<'_>,
    (rate, burst): (f64, u32),
    nodes: &[SocketAddr],
) -> Result<Gate, BoxError> {
    retry(SPAWN_TRIES, async || {
        let (addr, admin) = (free_addr()?, free_addr()?);
        let config = herdgate_config(addr, admin, rc, rate, burst, nodes);
        let path = dir.join(format!("herdgate-{round}.toml"));
        std::fs::write(&path, config)?;
        let launch = Launch {
            log: Some(dir.join(format!("herdgate-{round}.log"))),
            ..Launch::default()
        };
        let proc = start_herdgate(&path, &launch, &[addr], Duration::from_secs(20)).await?;
        Ok(Gate { proc, addr, admin })
    })
    .await
}

/// Counters of herdgate's /metrics worth a line, each summed over every label but one.
const SCRAPED: &[(&str, Option<&str>, &str)] = &[
    ("herdgate_admission_admitted_total", Some("via"), "admitted"),
    ("herdgate_admission_queued_total", None, "held"),
    ("herdgate_admission_write_paced_total", None, "heads paced"),
    (
        "herdgate_admission_rejected_total",
        Some("reason"),
        "rejected",
    ),
    (
        "herdgate_admission_tickets_total",
        Some("outcome"),
        "tickets",
    ),
    (
        "herdgate_tls_handshakes_deferred_total",
        None,
        "handshakes deferred",
    ),
    (
        "herdgate_handshake_timeouts_total",
        None,
        "handshake timeouts",
    ),
];

/// `(metric, label value)` to value, from herdgate's admin endpoint.
async fn scrape(admin: SocketAddr) -> Result<BTreeMap<(String, String), f64>, BoxError> {
    let text = metrics_text(admin).await?;
    let mut out = BTreeMap::new();
    for s in samples(&text) {
        let Some(&(_, label, _)) = SCRAPED.iter().find(|m| m.0 == s.name) else {
            continue;
        };
        let which = label.and_then(|l| s.label(l)).unwrap_or_default();
        *out.entry((s.name.to_string(), which.to_string()))
            .or_insert(0.0) += s.value;
    }
    Ok(out)
}

/// What herdgate counted between two scrapes, e.g. "herdgate: admitted ticket 1990, ...".
fn metrics_note(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> String {
    let mut parts = Vec::new();
    for &(name, _, word) in SCRAPED {
        let items: Vec<String> = after
            .iter()
            .filter(|((n, _), _)| n == name)
            .filter_map(|(k, v)| {
                let d = v - before.get(k).copied().unwrap_or(0.0);
                (d > 0.0).then(|| {
                    if k.1.is_empty() {
                        format!("{d:.0}")
                    } else {
                        format!("{} {d:.0}", k.1)
                    }
                })
            })
            .collect();
        if !items.is_empty() {
            parts.push(format!("{word} {}", items.join(", ")));
        }
    }
    format!("herdgate: {}", parts.join("; "))
}

// ---------------------------------------------------------------------------------------
// Sockets: clients

#[derive(Default)]
struct Slot {
    dropped_at: AtomicU64,
    back_at: AtomicU64,
    attempts: AtomicU32,
}

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    hints: AtomicU64,
    tickets: AtomicU64,
}

impl Tally {
    fn add(&self, s: &StatsSnapshot) {
        let add = |a: &AtomicU64, v: u64| {
            a.fetch_add(v, Ordering::Relaxed);
        };
        add(&self.attempts, s.attempts);
        add(&self.rejected, s.rejected_status + s.rejected_close);
        add(&self.failed, s.failed);
        add(&self.timeouts, s.timeouts);
        add(&self.tls_full, s.tls_full);
        add(&self.tls_resumed, s.tls_resumed);
        add(&self.hints, s.hints_obeyed);
        add(&self.tickets, s.tickets_presented);
    }
}

struct Crowd {
    slots: Vec<Slot>,
    connected: AtomicUsize,
    dropped: AtomicUsize,
    back: AtomicUsize,
    initial: Stats,
    storm: Tally,
    stop: CancellationToken,
    /// First attempt at once after the drop (`--at-once-after-drop`).
    at_once: bool,
}

/// Reads until the connection ends; returns its close frame, if any. `None` from the
/// outer option: stopped.
async fn hold(
    ws: &mut herdgate_client::WsStream,
    stop: &CancellationToken,
) -> Option<Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            m = ws.next() => match m {
                Some(Ok(Message::Close(f))) => return Some(f),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(None),
            }
        }
    }
}

async fn client(
    i: usize,
    target: Arc<Target>,
    strategy: Strategy,
    crowd: Arc<Crowd>,
    start_after: Duration,
    seed: u64,
) {
    let stop = crowd.stop.clone();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(start_after) => {}
    }
    // Everyone first gets in with the reference client; the contender's strategy is only
    // for the reconnect after the kill.
    let mut first = ReconnectingClient::new(
        target.clone(),
        Strategy::Herdgate { tickets: true },
        StdRng::seed_from_u64(seed ^ 0xf1f1),
    );
    let mut conn = tokio::select! {
        _ = stop.cancelled() => return,
        r = first.connect(&crowd.initial) => match r { Ok(c) => c, Err(_) => return },
    };
    drop(first);
    crowd.connected.fetch_add(1, Ordering::Relaxed);
    let Some(close) = hold(&mut conn.ws, &stop).await else {
        return;
    };
    drop(conn);
    let slot = &crowd.slots[i];
    slot.dropped_at.store(unix_nanos(), Ordering::Relaxed);
    crowd.dropped.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = policy_for(strategy, &mut rng);
    let mut c = ReconnectingClient::with_policy(target, policy, rng);
    let stats = Stats::new();
    let r = if crowd.at_once {
        tokio::select! {
            _ = stop.cancelled() => None,
            r = c.connect(&stats) => Some(r),
        }
    } else {
        tokio::select! {
            _ = stop.cancelled() => None,
            r = c.reconnect(close.as_ref(), &stats) => Some(r),
        }
    };
    let snap = stats.snapshot();
    slot.attempts.store(snap.attempts as u32, Ordering::Relaxed);
    crowd.storm.add(&snap);
    if let Some(Ok(mut conn)) = r {
        slot.back_at.store(unix_nanos(), Ordering::Relaxed);
        crowd.back.fetch_add(1, Ordering::Relaxed);
        let _ = hold(&mut conn.ws, &stop).await;
    }
}

/// Until `done`, looked at every 10 ms; false (and a line on stderr) after `deadline`.
async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let r = until(deadline, Duration::from_millis(10), async || {
        Ok(if done() {
            Check::Done
        } else {
            Check::NotYet(String::new())
        })
    })
    .await;
    if r.is_err() {
        eprintln!("    {what}: not within {deadline:?}");
    }
    r.is_ok()
}

struct RoundCfg<'a> {
    tls: Option<&'a Cert>,
    clients: usize,
    rate: f64,
    burst: u32,
    connect_timeout: Duration,
    hps: Option<f64>,
    cache_per_client: bool,
    seed: u64,
    keyless: bool,
    queue: Option<Duration>,
    slots_per_client: u32,
    at_once_after_drop: bool,
}

async fn round(rc: &RoundCfg<'_>, contender: &Contender, tag: &str) -> Result<Summary, BoxError> {
    let dir = tempfile::tempdir()?;
    let dir_of_round = dir.path().to_path_buf();
    let mut echoes: Vec<AcceptLogEcho> = Vec::new();
    for _ in 0..3 {
        echoes.push(spawn_accept_log_echo().await?);
    }
    let admission = if contender.admission {
        (rc.rate, rc.burst)
    } else {
        // "No admission": a bucket no storm here can empty.
        (1e6, 1_000_000)
    };
    let nodes: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let gate = spawn_gate(dir.path(), tag, rc, admission, &nodes).await?;
    let port = gate.addr.port();

    let tls_cfg = match rc.tls {
        Some(t) => Some(tls_client_config_with_root(t.der.clone())?),
        None => None,
    };
    let scheme = if rc.tls.is_some() { "wss" } else { "ws" };
    let crowd = Arc::new(Crowd {
        slots: (0..rc.clients).map(|_| Slot::default()).collect(),
        connected: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        back: AtomicUsize::new(0),
        initial: Stats::new(),
        storm: Tally::default(),
        stop: CancellationToken::new(),
        at_once: rc.at_once_after_drop,
    });
    let mut rng = StdRng::seed_from_u64(rc.seed);
    // The initial connect is spread over a few seconds: it is not what is measured.
    let ramp = Duration::from_secs_f64((rc.clients as f64 / (3.0 * rc.rate)).clamp(1.0, 10.0));
    let mut tasks = Vec::with_capacity(rc.clients);
    for i in 0..rc.clients {
        let mut t = Target::new(format!("{scheme}://localhost:{port}/storm?k=c{i}"))
            .with_addr(gate.addr)
            .with_connect_timeout(rc.connect_timeout);
        if let Some(c) = &tls_cfg {
            let c = if rc.cache_per_client {
                // A real client resumes its own session: give each its own ticket cache.
                let mut own = (**c).clone();
                own.resumption = rustls::client::Resumption::in_memory_sessions(4);
                Arc::new(own)
            } else {
                c.clone()
            };
            t = t.with_tls(c);
        }
        let after = ramp.mul_f64(i as f64 / rc.clients as f64);
        tasks.push(tokio::spawn(client(
            i,
            Arc::new(t),
            contender.strategy,
            crowd.clone(),
            after,
            rng.gen(),
        )));
    }
    let all_in = wait_for("initial connect", Duration::from_secs(120), || {
        crowd.connected.load(Ordering::Relaxed) == rc.clients
    })
    .await;
    if !all_in {
        crowd.stop.cancel();
        return Err(format!(
            "only {} of {} clients connected ({:?}); herdgate's log ends with:\n{}",
            crowd.connected.load(Ordering::Relaxed),
            rc.clients,
            crowd.initial.snapshot(),
            gate.proc.log_tail(10)
        )
        .into());
    }
    // Let the last upgrades settle on the node before counting its tunnels.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim_open = echoes[0].stats().await?.open as usize;
    let ideal = Duration::from_secs_f64(victim_open as f64 / (2.0 * rc.rate));
    let before = scrape(gate.admin).await.unwrap_or_default();
    let killed_at = unix_nanos();
    echoes[0].proc.kill();
    let storm_started = Instant::now();
    let limit = Duration::from_secs(30).max(ideal * 8);
    let dropped_all = wait_for("drops seen", Duration::from_secs(10), || {
        crowd.dropped.load(Ordering::Relaxed) >= victim_open
    })
    .await;
    let _ = wait_for("everyone back", limit, || {
        let d = crowd.dropped.load(Ordering::Relaxed);
        d > 0 && crowd.back.load(Ordering::Relaxed) >= d
    })
    .await;
    let storm_time = storm_started.elapsed();
    // The last tunnels reach the node a moment before the client sees its 101.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut accepts = Vec::new();
    let mut arrivals = Vec::new();
    let since_kill = |v: Vec<u64>| {
        let mut v: Vec<u64> = v
            .into_iter()
            .filter(|&t| t >= killed_at)
            .map(|t| t - killed_at)
            .collect();
        v.sort_unstable();
        v
    };
    for e in &echoes[1..] {
        let st = e.stats().await?;
        accepts.push(since_kill(st.accepts));
        arrivals.push(since_kill(st.arrivals));
    }
    let after = scrape(gate.admin).await.unwrap_or_default();
    crowd.stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(gate);
    drop(echoes);

    let mut reconnected = Vec::new();
    let mut attempts = Vec::new();
    let mut noticed = Vec::new();
    for s in &crowd.slots {
        let dropped = s.dropped_at.load(Ordering::Relaxed);
        if dropped == 0 {
            continue;
        }
        noticed.push(dropped.saturating_sub(killed_at));
        let back = s.back_at.load(Ordering::Relaxed);
        reconnected.push((back != 0).then(|| back.saturating_sub(killed_at)));
        attempts.push(s.attempts.load(Ordering::Relaxed));
    }
    if let Ok(dir) = std::env::var("HERDGATE_STORM_DUMP") {
        // For analysis: one line per event, "kind node_or_client nanos_after_kill".
        let mut out = String::new();
        for (n, a) in accepts.iter().enumerate() {
            for t in a {
                out.push_str(&format!("accept {n} {t}\n"));
            }
        }
        for (n, a) in arrivals.iter().enumerate() {
            for t in a {
                out.push_str(&format!("arrival {n} {t}\n"));
            }
        }
        for (i, s) in crowd.slots.iter().enumerate() {
            let d = s.dropped_at.load(Ordering::Relaxed);
            let b = s.back_at.load(Ordering::Relaxed);
            if d != 0 {
                out.push_str(&format!("noticed {i} {}\n", d.saturating_sub(killed_at)));
            }
            if b != 0 {
                out.push_str(&format!("back {i} {}\n", b.saturating_sub(killed_at)));
            }
        }
        out.push_str(&format!("killed_at {killed_at}\n"));
        let name = format!("{tag}-{}", contender.label.replace([' ', ',', '/'], "_"));
        std::fs::write(Path::new(&dir).join(format!("{name}.txt")), out)?;
        let log = dir_of_round.join(format!("herdgate-{tag}.log"));
        let _ = std::fs::copy(log, Path::new(&dir).join(format!("{name}.log")));
    }
    let st = &crowd.storm;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut notes = vec![format!(
        "{} attempts: {} rejected with a hint, {} failed ({} timeouts){}",
        ld(&st.attempts),
        ld(&st.rejected),
        ld(&st.failed),
        ld(&st.timeouts),
        if rc.tls.is_some() {
            format!(
                "; TLS {} resumed / {} full",
                ld(&st.tls_resumed),
                ld(&st.tls_full)
            )
        } else {
            String::new()
        }
    )];
    noticed.sort_unstable();
    if let (Some(&mid), Some(&last)) = (noticed.get(noticed.len() / 2), noticed.last()) {
        notes.push(format!(
            "clients noticed the drop after {:.0} ms (median), {:.0} ms (last)",
            mid as f64 / 1e6,
            last as f64 / 1e6
        ));
    }
    // The peak where no scheduling of the node process can bunch it: the node's kernel
    // receive stamps of the upgrade requests. The table's peak is the node's accept loop.
    let second = 1_000_000_000;
    notes.push(format!(
        "peak in any 1 s window, by the nodes' kernel receive stamps: {} (accept loop: {})",
        arrivals
            .iter()
            .map(|a| report::max_in_window(a, second).to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        accepts
            .iter()
            .map(|a| report::max_in_window(a, second).to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    ));
    notes.push(metrics_note(&before, &after));
    if !dropped_all {
        notes.push(format!(
            "only {} of the {victim_open} clients of echo-0 saw the drop",
            crowd.dropped.load(Ordering::Relaxed)
        ));
    }
    eprintln!(
        "    {tag}: {} displaced, {} back after {:.2} s",
        reconnected.len(),
        crowd.back.load(Ordering::Relaxed),
        storm_time.as_secs_f64()
    );
    Ok(report::summarize(StormRun {
        label: contender.label.clone(),
        admit_rate: rc.rate,
        surviving_rate: 2.0 * rc.rate,
        ideal,
        // No strategy reconnects before it notices the drop: the last client to notice
        // sets the floor (the sim's is its detect_spread + rtt).
        floor: Duration::from_nanos(noticed.last().copied().unwrap_or(0)),
        tickets: contender.tickets(),
        accepts,
        reconnected,
        attempts,
        notes,
    }))
}

fn sockets(args: &Args, svg_dir: &Path) -> Result<(), BoxError> {
    let clients = args.clients.unwrap_or(if args.quick {
        1500
    } else if args.big {
        9000
    } else {
        6000
    });
    let rate = args.admit_rate.unwrap_or(clients as f64 / 12.0);
    raise_fd_limit();
    let transports: Vec<bool> = match args.transport {
        Which::Ws => vec![false],
        Which::Wss => vec![true],
        Which::Both => vec![false, true],
    };
    let list = contenders(args);
    let rt = runtime();
    let certs = tempfile::tempdir()?;
    let tls = write_cert(certs.path())?;
    for tls_on in transports {
        let scheme = if tls_on { "wss" } else { "ws" };
        let rc = RoundCfg {
            tls: tls_on.then_some(&tls),
            clients,
            rate,
            burst: args.burst,
            connect_timeout: args.connect_timeout,
            hps: args.handshakes_per_second,
            cache_per_client: !args.tls_shared_config,
            seed: args.seed,
            keyless: args.keyless,
            queue: args.queue,
            slots_per_client: args.slots_per_client,
            at_once_after_drop: args.at_once_after_drop,
        };
        let mut summaries = Vec::new();
        let started = Instant::now();
        let load_before = loadavg(1);
        for (k, c) in list.iter().enumerate() {
            eprintln!("  {scheme}: {}", c.label);
            let tag = format!("{scheme}-{k}");
            summaries.push(rt.block_on(round(&rc, c, &tag))?);
        }
        let title = format!(
            "sockets over {scheme}: {clients} clients, 3 echo nodes, echo-0 killed (SIGKILL)"
        );
        let sub = format!(
            "{} clients displaced onto 2 nodes at admit_rate {rate:.0}/s; client connect timeout {:?}; load average {load_before} before, {} after{}",
            summaries.first().map_or(0, |s| s.clients),
            args.connect_timeout,
            loadavg(1),
            if tls_on {
                if args.tls_shared_config {
                    "; one rustls ClientConfig shared by all clients"
                } else {
                    "; each client resumes its own TLS session"
                }
            } else {
                ""
            }
        );
        print_report(&title, &sub, &summaries);
        let path = write_svg(
            svg_dir,
            &if clients == 6000 {
                format!("storm-{scheme}.svg")
            } else {
                format!("storm-{scheme}-{clients}.svg")
            },
            &report::svg(&title, &sub, &summaries),
        )?;
        println!(
            "  {} rounds in {:.0} s; chart: {}",
            summaries.len(),
            started.elapsed().as_secs_f64(),
            path.display()
        );
    }
    Ok(())
}
