//! A real `redis-server` for the fleet tests: on a port from `free_addr`, no persistence,
//! killed when dropped; it can be killed and started again on the same port.

use super::eventually;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// redis-server from `PATH` or /usr/bin. Missing: fail in CI or as root (scripts/test.sh
/// installs the package there), else `None`, and the caller skips loudly.
pub fn redis_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = from_path
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir: PathBuf| dir.join("redis-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = "redis-server not found: apt-get install redis-server (scripts/test.sh does)";
        let root = rustix::process::geteuid().is_root();
        assert!(std::env::var_os("CI").is_none() && !root, "{reason}");
        eprintln!("SKIPPED: {reason}");
    }
    found
}

/// A running redis-server, killed on drop.
pub struct RedisServer {
    bin: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Start one on a free port; `None` when redis-server is missing (skip).
    pub async fn start() -> Option<RedisServer> {
        let bin = redis_binary()?;
        let mut r = RedisServer {
            bin,
            addr: super::net::free_addr(),
            child: None,
        };
        r.restart().await;
        Some(r)
    }

    /// `redis://` URL of it.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Kill it (SIGKILL: no goodbye to clients) and wait until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Start it (again) on the same port, empty; returns when it answers PING.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                &self.addr.ip().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let url = self.url();
        eventually(
            format!("redis-server on {} answers PING", self.addr),
            || {
                let url = url.clone();
                async move { ping(&url).await.is_ok() }
            },
        )
        .await;
    }

    /// `total_commands_processed` from `INFO stats`.
    pub async fn commands_processed(&self) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats has total_commands_processed")
    }
}

async fn ping(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async::<String>(&mut c).await?;
    Ok(())
}
