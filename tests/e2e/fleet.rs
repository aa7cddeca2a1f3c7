//! Fleet admission (issue 11), static share: three herdgate processes with
//! `[fleet] instances = 3` in front of one echo node. A storm over the three (honest
//! reference clients on every instance, a hostile client hammering one instance and
//! ignoring every hint): summed over the instances, the node never gets more than
//! `rate × 1 s + burst` in any 1 s window, every honest client gets in, and the hostile
//! one is refused and counted. Without `[fleet]` nothing changes. Helpers here are shared
//! with `fleet_redis.rs`.

use crate::support::client::{run_until_connected, ReconnectPolicy, Stats, Strategy, Target};
use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::echo_nodes;
use crate::support::process::Herdgate;
use crate::support::proxy::{admin_nodes, parse, start};
use crate::support::within;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The node's rate and burst in every fleet test.
pub const RATE: f64 = 20.0;
pub const BURST: u32 = 6;

/// One instance of the fleet: the process, its listener and its admin address.
pub struct Instance {
    /// Held: dropping it kills the process.
    pub _proc: Herdgate,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Instance {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.listen)
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

/// The config of one instance in front of `node`; `fleet` is the `[fleet]` table's body
/// (`None`: no section at all).
pub fn instance_toml(
    node: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
    fleet: Option<&str>,
) -> String {
    let fleet = fleet.map(|f| format!("[fleet]\n{f}\n")).unwrap_or_default();
    format!(
        r#"{fleet}
[admin]
bind = "{admin}"

[[listener]]
name = "plain"
bind = "{listen}"

[[route]]
pool = "p"

[[pool]]
name = "p"
admit_rate = {RATE:.1}
admit_burst = {BURST}
# Turned away, never held: the tests count rejections and claim tickets.
queue = {{ timeout = "0s" }}
[[pool.node]]
name = "n"
addr = "{node}"
"#
    )
}

/// Start `k` instances in front of `node` with the same `[fleet]` body.
pub async fn start_fleet(k: usize, node: SocketAddr, fleet: &str) -> Vec<Instance> {
    let mut out = Vec::new();
    for _ in 0..k {
        let (listen, admin) = (free_addr(), free_addr());
        let proc = Herdgate::start(&instance_toml(node, listen, admin, Some(fleet))).await;
        out.push(Instance {
            _proc: proc,
            listen,
            admin,
        });
    }
    out
}

/// What a storm saw: when each admission happened (seen by the client at its 101).
#[derive(Default)]
pub struct StormLog {
    pub admitted: Mutex<Vec<Instant>>,
    pub hostile_admitted: Mutex<Vec<Instant>>,
}

/// The most admissions in any window of `w` among `times`.
pub fn max_in_window(times: &[Instant], w: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..t.len() {
        while t[i].duration_since(t[j]) >= w {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// A hostile client on `url` from `ip`: retries every 2 ms whatever it is told, and
/// starts again (closing its socket) each time it gets in, until `stop`.
pub fn spawn_hostile(
    url: String,
    ip: IpAddr,
    stop: Arc<AtomicBool>,
    log: Arc<StormLog>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let target = Target::new(url).with_local_ip(ip);
        let stats = Stats::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64_compat(7);
        let mut got = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut policy =
                ReconnectPolicy::new(Strategy::Fixed(Duration::from_millis(2)), &mut rng);
            // Fixed never gives up; each round ends with a connection.
            let stop2 = stop.clone();
            let r = tokio::select! {
                r = run_until_connected(&target, &mut policy, &mut rng, &stats) => r,
                _ = async move { while !stop2.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(20)).await } } => break,
            };
            if r.is_ok() {
                let now = Instant::now();
                log.admitted.lock().unwrap().push(now);
                log.hostile_admitted.lock().unwrap().push(now);
                got += 1;
            }
        }
        got
    })
}

/// `n` honest reference clients (obeying hints), client `i` on instance `i % k`, each
/// from its own loopback address; returns when every one is in (bounded).
pub async fn honest_herd(
    urls: &[String],
    n: usize,
    log: Arc<StormLog>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = urls[i % urls.len()].clone();
        let log = log.clone();
        let ip = Ipv4Addr::new(127, 0, 4 + (i / 250) as u8, 2 + (i % 250) as u8);
        tasks.push(tokio::spawn(async move {
            let target = Target::new(url).with_local_ip(ip.into());
            let stats = Stats::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64_compat(i as u64);
            let mut policy = ReconnectPolicy::new(Strategy::Herdgate { tickets: false }, &mut rng);
            let c = run_until_connected(&target, &mut policy, &mut rng, &stats)
                .await
                .expect("an honest client never gives up");
            log.admitted.lock().unwrap().push(Instant::now());
            // Held until the end of the storm, like a real session.
            let _keep = c;
            std::future::pending::<()>().await;
        }));
    }
    tasks
}

/// Seeded rngs without naming rand's trait at every call.
pub trait SeedCompat {
    fn seed_from_u64_compat(s: u64) -> Self;
}
impl SeedCompat for rand::rngs::StdRng {
    fn seed_from_u64_compat(s: u64) -> Self {
        use rand::SeedableRng;
        rand::rngs::StdRng::seed_from_u64(s)
    }
}

/// The per-window bound of the issue, summed over the fleet, with 2 admissions of slack
/// for the instant a client sees its 101 after the instance admitted it.
pub fn bound() -> usize {
    (RATE + f64::from(BURST)) as usize + 2
}

/// Sum of a metric over the fleet's instances.
pub async fn fleet_metric(fleet: &[Instance], name: &str, frags: &[&str]) -> f64 {
    let mut sum = 0.0;
    for i in fleet {
        sum += metric(&i.metrics().await, name, frags);
    }
    sum
}

/// Honest clients on every instance and a hostile one hammering the first; wait until
/// every honest client is in (the closure runs once admissions reach `midway`, e.g. to
/// kill Redis mid-storm). Returns the log.
pub async fn storm<F, Fut>(
    fleet: &[Instance],
    honest: usize,
    midway: usize,
    at_midway: F,
) -> Arc<StormLog>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let log = Arc::new(StormLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = spawn_hostile(
        fleet[0].url(),
        Ipv4Addr::new(127, 0, 3, 1).into(),
        stop.clone(),
        log.clone(),
    );
    let urls: Vec<String> = fleet.iter().map(|i| i.url()).collect();
    let tasks = honest_herd(&urls, honest, log.clone()).await;
    crate::support::eventually(format!("{midway} admissions"), || async {
        log.admitted.lock().unwrap().len() >= midway
    })
    .await;
    at_midway().await;
    crate::support::eventually_within(
        Duration::from_secs(60),
        format!("all {honest} honest clients in"),
        || async {
            log.admitted.lock().unwrap().len() - log.hostile_admitted.lock().unwrap().len()
                >= honest
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    within(hostile).await.unwrap();
    for t in tasks {
        t.abort();
    }
    log
}

/// Three instances with `instances = 3`: the bound holds summed over them, the honest
/// clients all get in, and the hostile client (ignoring every hint on one instance) is
/// refused, counted, and held to that instance's third.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_over_three_static_instances_keeps_the_node_under_its_rate() {
    let nodes = echo_nodes(1).await;
    let fleet = start_fleet(3, nodes[0].addr, "instances = 3").await;
    // Each instance admits a third: rate 20/3, burst 2.
    for i in &fleet {
        let n = &admin_nodes(i.admin).await[0];
        assert_eq!(n.fleet_mode, "static");
        assert_eq!(n.fleet_instances, 3);
        assert!((n.fleet_share - 1.0 / 3.0).abs() < 1e-9, "{n:?}");
        assert!((n.admit_rate - RATE / 3.0).abs() < 1e-9, "{n:?}");
    }
    let honest = 45;
    let log = storm(&fleet, honest, 1, || async {}).await;
    let all = log.admitted.lock().unwrap().clone();
    let hostile = log.hostile_admitted.lock().unwrap().clone();
    let peak = max_in_window(&all, Duration::from_secs(1));
    let hostile_peak = max_in_window(&hostile, Duration::from_secs(1));
    eprintln!(
        "static share: {} admissions ({} hostile), peak {peak}/s (bound {}), hostile peak {hostile_peak}/s",
        all.len(),
        hostile.len(),
        bound()
    );
    assert!(peak <= bound(), "peak {peak} > {}", bound());
    // The hostile client never got more than its instance's third (rate/3 + burst/3).
    assert!(
        hostile_peak <= (RATE / 3.0) as usize + 2 + 2,
        "hostile peak {hostile_peak}"
    );
    // The node saw every admission and nothing else.
    let accepted = nodes[0].stats.accepted.load(Ordering::Relaxed) as usize;
    assert_eq!(accepted, all.len());
    // Summed /metrics: admissions match, and the hostile client's rejections are counted.
    let admitted = fleet_metric(&fleet, "herdgate_admission_admitted_total", &[]).await;
    assert_eq!(admitted as usize, all.len());
    let rejected = metric(
        &fleet[0].metrics().await,
        "herdgate_admission_rejected_total",
        &[],
    );
    assert!(
        rejected > 10.0,
        "hostile client refused and counted: {rejected}"
    );
}

/// Without `[fleet]` an instance admits the node's whole rate, reports `static` with one
/// instance, and exports no fleet share; `instances = 1` is the same.
#[tokio::test]
async fn without_fleet_section_an_instance_admits_the_whole_rate() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    for fleet in [None, Some("instances = 1")] {
        let toml = instance_toml(
            nodes[0].addr,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            fleet,
        );
        let proxy = start(parse(&toml, dir.path())).await;
        let admin = proxy.admin.unwrap();
        let n = &admin_nodes(admin).await[0];
        assert_eq!((n.fleet_mode.as_str(), n.fleet_instances), ("static", 1));
        assert_eq!(n.fleet_share, 1.0);
        assert_eq!(n.admit_rate, RATE);
        // The whole burst goes through one instance.
        let mut got = Vec::new();
        for _ in 0..BURST {
            let (s, ws) = crate::support::ws::ws_status(proxy.addr("plain"), "/", &[]).await;
            assert_eq!(s, 101);
            got.push(ws);
        }
        let text = proxy.handle.render_metrics();
        assert_eq!(metric(&text, "herdgate_fleet_mode", &[]), 0.0);
        if fleet.is_none() {
            assert!(
                !text.contains("herdgate_fleet_share"),
                "no share gauge without [fleet]"
            );
        }
        drop(got);
        proxy.shutdown().await;
    }
}

/// A reload applies a new `instances`: the node's rate in force follows it, its bucket
/// and schedule are kept; a bad value is refused naming the key and changes nothing.
#[tokio::test]
async fn a_reload_changes_the_static_share() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let toml = |k: u32| instance_toml(nodes[0].addr, any, any, Some(&format!("instances = {k}")));
    let proxy = start(parse(&toml(2), dir.path())).await;
    let admin = proxy.admin.unwrap();
    let n = &admin_nodes(admin).await[0];
    assert_eq!((n.fleet_instances, n.admit_rate), (2, RATE / 2.0));
    proxy
        .handle
        .reload(parse(&toml(4), dir.path()))
        .await
        .unwrap();
    let n = &admin_nodes(admin).await[0];
    assert_eq!((n.fleet_instances, n.admit_rate), (4, RATE / 4.0));
    assert_eq!(n.fleet_share, 0.25);
    // A bad value never reaches the running proxy.
    let bad = toml(0);
    let e = herdgate::config::Config::parse(&bad, "bad.toml", dir.path()).unwrap_err();
    assert!(e.to_string().contains("fleet.instances"), "{e}");
    let n = &admin_nodes(admin).await[0];
    assert_eq!((n.fleet_instances, n.admit_rate), (4, RATE / 4.0));
    proxy.shutdown().await;
}
