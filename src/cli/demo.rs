//! `herdgate demo`: the embedded default. Three echo nodes, herdgate in front of them
//! (ws on 127.0.0.1:8080, wss on 127.0.0.1:8443 with a certificate made at start), and
//! simulated clients that chat through it, with live counters. `--storm` kills a node
//! once everyone is connected and shows the herd coming back at the admitted rate.

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use herdgate::config::Config;
use herdgate::server::{Handle, Server};
use herdgate_client::tungstenite::Message;
use herdgate_client::{tls_client_config_with_root, ReconnectingClient, Stats, Strategy, Target};
use herdgate_echo::EchoNode;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated clients (default 300; 3000 with --storm).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Kill one node once everyone is connected and watch the herd come back.
    #[arg(long)]
    pub storm: bool,
    /// New connections per second each node admits.
    #[arg(long, default_value_t = 100.0)]
    pub admit_rate: f64,
    /// Stop after this long (e.g. "30s"); default: run until Ctrl-C.
    #[arg(long, value_parser = herdgate::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Plain WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub ws: SocketAddr,
    /// TLS WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub wss: SocketAddr,
    /// Admin listener (/metrics, /admin/nodes).
    #[arg(long, default_value = "127.0.0.1:9900")]
    pub admin: SocketAddr,
    /// Share of the clients that use wss (0.0–1.0).
    #[arg(long, default_value_t = 0.2)]
    pub tls_share: f64,
    /// Run this many herdgate instances sharing each node's admission budget (`[fleet]`);
    /// clients are spread over them. The first uses --ws/--wss/--admin, the others
    /// ports the system picks (printed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub fleet: u32,
    /// With --fleet: share through this Redis (`redis://host:port/db`) instead of the
    /// static share rate/K.
    #[arg(long, requires = "fleet")]
    pub fleet_redis: Option<String>,
}

/// What a demo run saw (returned for tests; printed by the CLI).
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub clients: usize,
    pub connected_at_end: u64,
    pub messages_echoed: u64,
    pub storm: Option<StormReport>,
}

#[derive(Debug, Clone, Default)]
pub struct StormReport {
    /// Clients the killed node held.
    pub displaced: u64,
    pub ideal: Duration,
    pub to_99: Option<Duration>,
    pub to_100: Option<Duration>,
    /// Highest accepts in any 1 s window on one surviving node.
    pub peak_node_rate: f64,
    pub attempts_per_client: f64,
}

struct Shared {
    stats: Stats,
    connected: AtomicU64,
    echoed: AtomicU64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s2.cancel();
    });
    let report = run_with(args, stop, true).await?;
    println!(
        "\nherdgate demo: {} clients, {} connected at the end, {} messages echoed",
        report.clients, report.connected_at_end, report.messages_echoed
    );
    Ok(())
}

/// The demo as a library call: `print` shows the live view.
pub async fn run_with(
    args: DemoArgs,
    stop: CancellationToken,
    print: bool,
) -> anyhow::Result<DemoReport> {
    if let Err(e) = herdgate::fdlimit::raise() {
        tracing::warn!("could not raise the descriptor limit: {e}");
    }
    let n_clients = args.clients.unwrap_or(if args.storm { 3000 } else { 300 });
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(EchoNode::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    let dir = std::env::temp_dir().join(format!("herdgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(dir.join("cert.pem"), ck.cert.pem())?;
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem())?;
    let cert_der = ck.cert.der().clone();

    // One instance, or a fleet of them in front of the same nodes (`--fleet`).
    let proxy_stop = CancellationToken::new();
    let mut instances = Vec::new();
    for i in 0..args.fleet.max(1) {
        let toml = demo_config(&args, &nodes, i);
        let config = Config::parse(&toml, "demo.toml", &dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        let server = Server::bind(config).context("binding the demo listeners")?;
        let ws_addr = server.local_addr("ws").context("ws listener")?;
        let wss_addr = server.local_addr("wss").context("wss listener")?;
        let admin = server.admin_addr();
        let handle = server.handle();
        let ps = proxy_stop.clone();
        let proxy = tokio::spawn(server.run(async move { ps.cancelled().await }));
        instances.push((ws_addr, wss_addr, admin, handle, proxy));
    }
    let handles: Vec<Handle> = instances.iter().map(|i| i.3.clone()).collect();
    let handle = handles[0].clone();
    let (ws_addr, wss_addr, admin) = (instances[0].0, instances[0].1, instances[0].2);

    if print {
        println!("herdgate demo");
        println!("  ws:       ws://{ws_addr}/chat");
        println!(
            "  wss:      wss://localhost:{}/chat (self-signed)",
            wss_addr.port()
        );
        if let Some(a) = admin {
            println!("  metrics:  http://{a}/metrics    nodes: http://{a}/admin/nodes");
        }
        for (i, n) in nodes.iter().enumerate() {
            println!("  node demo-{}: {}", i + 1, n.addr);
        }
        if args.fleet > 1 {
            println!(
                "  fleet: {} instances share each node's admit_rate ({}); accepts/s below are summed over them",
                args.fleet,
                args.fleet_redis
                    .as_deref()
                    .map_or("static share rate/K".to_string(), |r| format!("leases from {r}"))
            );
            for (k, (ws, _, admin, _, _)) in instances.iter().enumerate().skip(1) {
                let admin = admin.map(|a| a.to_string()).unwrap_or_default();
                println!(
                    "  instance {}: ws://{ws}/chat  admin http://{admin}/admin/nodes",
                    k + 1
                );
            }
        }
        println!(
            "  {n_clients} clients ({:.0}% over TLS), admit_rate {}/s per node{}",
            args.tls_share * 100.0,
            args.admit_rate,
            if args.storm {
                ", storm after connect"
            } else {
                ""
            }
        );
        println!("  Ctrl-C to stop\n");
    }

    let tls = tls_client_config_with_root(cert_der).map_err(|e| anyhow::anyhow!("{e}"))?;
    let targets: Vec<(Target, Target)> = instances
        .iter()
        .map(|(ws, wss, ..)| {
            let plain = Target::new(format!("ws://{ws}/chat"))
                .with_addr(*ws)
                .with_connect_timeout(Duration::from_secs(5));
            let tls = Target::new(format!("wss://localhost:{}/chat", wss.port()))
                .with_addr(*wss)
                .with_tls(tls.clone())
                .with_connect_timeout(Duration::from_secs(5));
            (plain, tls)
        })
        .collect();
    let shared = Arc::new(Shared {
        stats: Stats::new(),
        connected: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
    });
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut tasks = Vec::with_capacity(n_clients);
    for c in 0..n_clients {
        // Spread over the instances as an L4 load balancer would.
        let (plain_target, tls_target) = &targets[c % targets.len()];
        let base = if rng.gen_bool(args.tls_share.clamp(0.0, 1.0)) {
            tls_target
        } else {
            plain_target
        };
        // Each user has a session id: herdgate hashes it to pick (and keep) the node.
        let session: u64 = rng.gen();
        let t = Arc::new(
            Target::clone(base).with_header(
                http::HeaderName::from_static("x-demo-session"),
                http::HeaderValue::from_str(&format!("{session:016x}"))
                    .unwrap_or(http::HeaderValue::from_static("0")),
            ),
        );
        let seed = rng.gen();
        tasks.push(tokio::spawn(client(t, shared.clone(), stop.clone(), seed)));
    }

    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut report = DemoReport {
        clients: n_clients,
        ..Default::default()
    };
    let mut storm: Option<StormState> = None;
    let mut last = admitted_per_node(&handles);
    let (mut last_table, mut last_table_at) = (super::status::live_totals(&handle), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let now = admitted_per_node(&handles);
        let per_sec: Vec<u64> = now.iter().zip(&last).map(|(a, b)| a.1 - b.1).collect();
        last = now.clone();
        let connected = shared.connected.load(Ordering::Relaxed);
        if print {
            // The same table as `herdgate status` (of the first instance), under a line of
            // the clients' view; in a fleet, a line of every node summed over the instances.
            if handles.len() > 1 {
                let mut line = format!("fleet of {}: tunnels:", handles.len());
                for (name, open) in open_per_node(&handles) {
                    let _ = write!(line, " {name}={open:<5}");
                }
                let _ = write!(line, " accepts/s:");
                for ((name, _), r) in now.iter().zip(&per_sec) {
                    let _ = write!(line, " {name}={r:<4}");
                }
                println!("{line}");
            }
            let st = shared.stats.snapshot();
            let secs = last_table_at.elapsed().as_secs_f64();
            let rows = super::status::live_rows(&handle, &last_table, secs);
            (last_table, last_table_at) = (super::status::live_totals(&handle), Instant::now());
            println!(
                "t={:>4}s  clients {connected}/{n_clients}  rejected {}\n{}",
                started.elapsed().as_secs(),
                st.rejected_status + st.rejected_close,
                super::status::render(&rows)
            );
        }
        if let Some(s) = &mut storm {
            s.observe(&per_sec, connected, n_clients as u64);
            if s.done() && print {
                println!("{}", s.summary(&shared.stats));
            }
        } else if args.storm && connected == n_clients as u64 {
            let victim = 0;
            let displaced = nodes[victim].stats.open.load(Ordering::Relaxed);
            if print {
                println!("\n*** killing node demo-1 ({displaced} clients) ***\n");
            }
            nodes[victim].stop();
            storm = Some(StormState::new(
                displaced,
                &handle,
                victim,
                args.admit_rate,
                &shared.stats,
            ));
        }
    }
    report.connected_at_end = shared.connected.load(Ordering::Relaxed);
    report.messages_echoed = shared.echoed.load(Ordering::Relaxed);
    report.storm = storm.map(|s| s.report(&shared.stats));
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    proxy_stop.cancel();
    for (.., proxy) in instances {
        let _ = tokio::time::timeout(Duration::from_secs(10), proxy).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The config of instance `i` (0: the addresses given; others: ports the system picks).
fn demo_config(args: &DemoArgs, nodes: &[EchoNode], i: u32) -> String {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (admin, ws, wss) = if i == 0 {
        (args.admin, args.ws, args.wss)
    } else {
        (any, any, any)
    };
    let mut s = String::new();
    if args.fleet > 1 || args.fleet_redis.is_some() {
        let _ = writeln!(s, "[fleet]\ninstances = {}", args.fleet);
        if let Some(r) = &args.fleet_redis {
            let _ = writeln!(s, "redis = {}", toml_string(r));
        }
    }
    let _ = write!(
        s,
        r#"[admin]
bind = "{admin}"

[timeouts]
close = "2s"

# Every simulated client comes from 127.0.0.1: the per-client caps would count them as one.
[limits]
max_connections_per_client = 1000000
max_tunnels_per_client = 1000000

[shutdown]
spread = "2s"
timeout = "5s"

[[listener]]
name = "ws"
bind = "{ws}"

[[listener]]
name = "wss"
bind = "{wss}"
handshakes_per_second = 2000
[[listener.tls.cert]]
cert = "cert.pem"
key = "key.pem"
server_names = ["localhost"]

[[route]]
pool = "demo"
path_prefix = "/"
[route.sticky]
header = "x-demo-session"
fallback = "none"

[[pool]]
name = "demo"
admit_rate = {rate}
admit_burst = 10
max_retry_after = "60s"
# The same for the per-client cap on retry slots (default: half a second of the rate).
max_slots_per_client = 1000000
"#,
        rate = args.admit_rate,
    );
    for (i, n) in nodes.iter().enumerate() {
        let _ = write!(
            s,
            "[[pool.node]]\nname = \"demo-{}\"\naddr = \"{}\"\n",
            i + 1,
            n.addr
        );
    }
    s
}

/// A string as a TOML basic string (quotes and backslashes escaped).
fn toml_string(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Per node, summed over the fleet's instances (same nodes, same order in each).
fn admitted_per_node(hs: &[Handle]) -> Vec<(String, u64)> {
    sum_nodes(hs.iter().map(admitted_one).collect())
}

fn open_per_node(hs: &[Handle]) -> Vec<(String, u64)> {
    sum_nodes(hs.iter().map(open_one).collect())
}

fn sum_nodes(per: Vec<Vec<(String, u64)>>) -> Vec<(String, u64)> {
    let mut it = per.into_iter();
    let mut out = it.next().unwrap_or_default();
    for other in it {
        for (o, (_, v)) in out.iter_mut().zip(other) {
            o.1 += v;
        }
    }
    out
}

fn admitted_one(h: &Handle) -> Vec<(String, u64)> {
    let snap = h.snapshot();
    snap.pools
        .iter()
        .flat_map(|p| p.nodes.iter())
        .map(|n| {
            let s = n.admission.stats();
            (
                n.key.name.to_string(),
                s.admitted_bucket + s.admitted_promise + s.admitted_ticket,
            )
        })
        .collect()
}

fn open_one(h: &Handle) -> Vec<(String, u64)> {
    let snap = h.snapshot();
    snap.pools
        .iter()
        .flat_map(|p| p.nodes.iter())
        .map(|n| {
            (
                n.key.name.to_string(),
                n.open_tunnels.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// One simulated user: connect, chat every few seconds, reconnect as the server says.
async fn client(target: Arc<Target>, shared: Arc<Shared>, stop: CancellationToken, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = ReconnectingClient::new(
        target,
        Strategy::Herdgate { tickets: true },
        rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed),
    );
    let mut conn = tokio::select! {
        _ = stop.cancelled() => return,
        r = c.connect(&shared.stats) => match r { Ok(c) => c, Err(_) => return },
    };
    loop {
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let mut close = None;
        let mut every = tokio::time::interval(Duration::from_millis(rng.gen_range(2000..6000)));
        every.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = conn.ws.close(None).await;
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ = every.tick() => {
                    if conn.ws.send(Message::text("hello herd")).await.is_err() {
                        break;
                    }
                }
                m = conn.ws.next() => match m {
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                        shared.echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(Message::Close(f))) => { close = f; break; }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        conn = tokio::select! {
            _ = stop.cancelled() => return,
            r = c.reconnect(close.as_ref(), &shared.stats) => match r { Ok(c) => c, Err(_) => return },
        };
    }
}

struct StormState {
    start: Instant,
    displaced: u64,
    victim: usize,
    surviving_rate: f64,
    attempts_before: u64,
    connected_floor: u64,
    peak: f64,
    to_99: Option<Duration>,
    to_100: Option<Duration>,
}

impl StormState {
    fn new(displaced: u64, h: &Handle, victim: usize, rate: f64, stats: &Stats) -> Self {
        let nodes = h
            .snapshot()
            .pools
            .iter()
            .map(|p| p.nodes.len())
            .sum::<usize>();
        StormState {
            start: Instant::now(),
            displaced,
            victim,
            surviving_rate: rate * (nodes.saturating_sub(1)) as f64,
            attempts_before: stats.snapshot().attempts,
            connected_floor: 0,
            peak: 0.0,
            to_99: None,
            to_100: None,
        }
    }

    fn observe(&mut self, per_sec: &[u64], connected: u64, total: u64) {
        for (i, r) in per_sec.iter().enumerate() {
            if i != self.victim {
                self.peak = self.peak.max(*r as f64);
            }
        }
        self.connected_floor = connected;
        let missing = total.saturating_sub(connected);
        let back = self.displaced.saturating_sub(missing);
        if self.to_99.is_none() && back as f64 >= 0.99 * self.displaced as f64 {
            self.to_99 = Some(self.start.elapsed());
        }
        if self.to_100.is_none() && missing == 0 {
            self.to_100 = Some(self.start.elapsed());
        }
    }

    fn done(&self) -> bool {
        self.to_100
            .is_some_and(|d| d + Duration::from_millis(999) >= self.start.elapsed())
    }

    fn report(&self, stats: &Stats) -> StormReport {
        let attempts = stats.snapshot().attempts - self.attempts_before;
        StormReport {
            displaced: self.displaced,
            ideal: Duration::from_secs_f64(self.displaced as f64 / self.surviving_rate.max(1e-9)),
            to_99: self.to_99,
            to_100: self.to_100,
            peak_node_rate: self.peak,
            attempts_per_client: attempts as f64 / self.displaced.max(1) as f64,
        }
    }

    fn summary(&self, stats: &Stats) -> String {
        let r = self.report(stats);
        format!(
            // The storm bench's words (benches/STORM.md); here rates are read once a second,
            // the bench counts any 1 s sliding window.
            "\n*** storm over: {} clients displaced; 99% reconnected in {:.1} s, 100% in {:.1} s \
             (ideal N / Σrate = {:.1} s); peak accepts/s per surviving node {:.0} (admit_rate {:.0}); \
             {:.2} attempts per client ***\n",
            r.displaced,
            r.to_99.unwrap_or_default().as_secs_f64(),
            r.to_100.unwrap_or_default().as_secs_f64(),
            r.ideal.as_secs_f64(),
            r.peak_node_rate,
            self.surviving_rate / 2.0,
            r.attempts_per_client,
        )
    }
}
