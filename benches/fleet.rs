//! The fleet bench (issue 11): three herdgate instances in front of one node, a cold storm
//! of reference clients spread over the three, in three modes:
//!
//! - `none`: three instances without `[fleet]` (each admits the node's whole rate);
//! - `static`: `[fleet] instances = 3`;
//! - `redis`: `[fleet] redis = ...` (a redis-server started here, no persistence).
//!
//! ```text
//! cargo bench --bench fleet                  # 1,500 clients, rate 200/s, burst 20
//! cargo bench --bench fleet -- --clients 600 --rate 100
//! ```
//!
//! Reported per mode: the peak accepts at the node in any 1 s window (its TCP accept
//! times), against the bound rate + burst; the time until every client is in, against the
//! ideal (clients − burst) / rate; Redis script calls per second (the instances' renewals)
//! and commands per second (`INFO stats`, which counts the commands inside each script).
//!
//! One run (`-- --clients 600 --rate 100 --burst 10`, 2 shared cores, release build):
//!
//! | mode | peak/s at the node | bound | all in | ideal | Redis calls/s | commands/s |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | none | 304 | 110 | 2.05 s | 5.90 s | – | – |
//! | static | 102 | 110 | 6.13 s | 5.90 s | – | – |
//! | redis | 103 | 110 | 6.27 s | 5.90 s | 60 | 634 |
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use clap::Parser;
use common::{bench_main, free_addr, spawn_accept_log_echo, start_herdgate, Launch, Proc, Result};
use herdgate_client::{run_until_connected, ReconnectPolicy, Stats, Strategy, Target};
use rand::SeedableRng;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "fleet")]
struct Args {
    /// Clients in the storm.
    #[arg(long, default_value_t = 1500)]
    clients: usize,
    /// The node's admit_rate.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// The node's admit_burst.
    #[arg(long, default_value_t = 20)]
    burst: u32,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    bench_main("fleet", Duration::from_secs(600), || async {
        let args = Args::parse();
        println!(
            "fleet bench: 3 instances, 1 node (rate {}/s, burst {}), {} clients spread over the instances",
            args.rate, args.burst, args.clients
        );
        println!(
            "| mode | peak accepts/s at the node | bound | all in | ideal | Redis calls/s | Redis commands/s |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for mode in ["none", "static", "redis"] {
            run(&args, mode).await?;
        }
        Ok(())
    })
}

fn config(
    mode: &str,
    redis: Option<SocketAddr>,
    ws: SocketAddr,
    admin: SocketAddr,
    node: SocketAddr,
    a: &Args,
) -> String {
    let fleet = match (mode, redis) {
        ("static", _) => "[fleet]\ninstances = 3\n".to_string(),
        ("redis", Some(r)) => format!("[fleet]\ninstances = 3\nredis = \"redis://{r}/0\"\n"),
        _ => String::new(),
    };
    format!(
        r#"{fleet}
[admin]
bind = "{admin}"

[limits]
max_connections_per_client = 10000000
max_tunnels_per_client = 10000000

[[listener]]
name = "ws"
bind = "{ws}"
backlog = 4096

[[route]]
pool = "p"

[[pool]]
name = "p"
admit_rate = {rate:.1}
admit_burst = {burst}
max_slots_per_client = 1000000

[[pool.node]]
name = "n"
addr = "{node}"
"#,
        rate = a.rate,
        burst = a.burst,
    )
}

async fn redis_info(addr: SocketAddr, field: &str) -> Result<u64> {
    let client = redis::Client::open(format!("redis://{addr}/0"))?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut c).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

async fn renewals(admins: &[SocketAddr]) -> Result<f64> {
    let mut sum = 0.0;
    for a in admins {
        let text = common::metrics_text(*a).await?;
        sum += common::samples(&text)
            .filter(|s| {
                s.name == "herdgate_fleet_renewals_total" && s.label("outcome") == Some("ok")
            })
            .map(|s| s.value)
            .sum::<f64>();
    }
    Ok(sum)
}

async fn run(a: &Args, mode: &str) -> Result<()> {
    let echo = spawn_accept_log_echo().await?;
    let dir = tempfile::tempdir()?;
    let mut redis: Option<(Proc, SocketAddr)> = None;
    if mode == "redis" {
        let addr = free_addr()?;
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (apt-get install redis-server)"))?;
        let mut p = Proc::new("redis-server", child, None);
        common::wait_listening(&mut p, &[addr], common::STEP).await?;
        redis = Some((p, addr));
    }
    let mut procs = Vec::new();
    let mut wss = Vec::new();
    let mut admins = Vec::new();
    for i in 0..3 {
        let (ws, admin) = (free_addr()?, free_addr()?);
        let path = dir.path().join(format!("h{i}.toml"));
        std::fs::write(
            &path,
            config(mode, redis.as_ref().map(|r| r.1), ws, admin, echo.addr, a),
        )?;
        procs.push(start_herdgate(&path, &Launch::default(), &[ws, admin], common::STEP).await?);
        wss.push(ws);
        admins.push(admin);
    }
    if mode == "redis" {
        // Shared mode on all three before the storm.
        for adm in &admins {
            common::wait_metric(*adm, "herdgate_fleet_mode", 1.0, common::STEP).await?;
        }
    }
    let r0 = match &redis {
        Some((_, addr)) => redis_info(*addr, "total_commands_processed").await?,
        None => 0,
    };
    let c0 = renewals(&admins).await?;
    let before = echo.stats().await?.accepts.len();
    let stats = std::sync::Arc::new(Stats::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.clients {
        let target = Target::new(format!("ws://{}/", wss[i % 3]))
            .with_connect_timeout(Duration::from_secs(10));
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let mut policy = ReconnectPolicy::new(Strategy::Herdgate { tickets: true }, &mut rng);
            run_until_connected(&target, &mut policy, &mut rng, &stats)
                .await
                .ok()
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await?);
    }
    let all_in = started.elapsed();
    let secs = all_in.as_secs_f64().max(1e-9);
    let calls = (renewals(&admins).await? - c0) / secs;
    let cmds = match &redis {
        Some((_, addr)) => {
            (redis_info(*addr, "total_commands_processed")
                .await?
                .saturating_sub(r0)) as f64
                / secs
        }
        None => 0.0,
    };
    let accepts: Vec<u64> = echo.stats().await?.accepts[before..].to_vec();
    let mut peak = 0;
    let mut j = 0;
    for i in 0..accepts.len() {
        while accepts[i] - accepts[j] >= 1_000_000_000 {
            j += 1;
        }
        peak = peak.max(i - j + 1);
    }
    let connected = conns.iter().filter(|c| c.is_some()).count();
    let ideal = (a.clients as f64 - f64::from(a.burst)).max(0.0) / a.rate;
    println!(
        "| {mode} | {peak} | {:.0} | {:.2} s ({connected}/{} in) | {ideal:.2} s | {} | {} |",
        a.rate + f64::from(a.burst),
        all_in.as_secs_f64(),
        a.clients,
        if mode == "redis" {
            format!("{calls:.0}")
        } else {
            "–".into()
        },
        if mode == "redis" {
            format!("{cmds:.0}")
        } else {
            "–".into()
        },
    );
    drop(conns);
    drop(procs);
    drop(redis);
    Ok(())
}
