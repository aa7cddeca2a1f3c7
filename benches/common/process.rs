//! Child processes (killed on drop), child roles of the bench binary, ports for children,
//! and waits.

use super::{Result, STEP};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Set in a child started by [`spawn_role`] to the role it plays.
pub const ROLE_ENV: &str = "HERDGATE_BENCH_ROLE";

/// If this process was started as a child role, run it and return its exit code. Each
/// bench's `main` calls this first. The roles are the echo nodes of `echo.rs`.
pub fn child_role() -> Option<ExitCode> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, res) = match role.as_str() {
        "echo" => ("bench echo node", super::echo::lean_echo_role(&args)),
        "echo-node" => ("echo node", super::echo::accept_log_role(&args)),
        "ws-load" => ("ws load", super::load::ws_load_role(&args)),
        other => {
            eprintln!("unknown {ROLE_ENV}={other}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    })
}

/// Start this bench binary again as `role` with `args`, and return it with the one line it
/// prints on stdout once it is ready (within [`STEP`]). Its stdin is a pipe from us: a
/// role that reads it to the end lives exactly as long as this process.
pub fn spawn_role(name: &'static str, role: &str, args: &[String]) -> Result<(Proc, String)> {
    spawn_role_within(name, role, args, STEP)
}

/// [`spawn_role`] for a role whose ready line may take up to `within`.
pub fn spawn_role_within(
    name: &'static str,
    role: &str,
    args: &[String],
    within: Duration,
) -> Result<(Proc, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, role)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut proc = Proc::new(name, child, None);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(within)
        .map_err(|_| format!("{name} did not say it was ready within {within:?}"))?;
    proc.alive()?;
    if line.is_empty() {
        return Err(format!("{name} closed its stdout before it was ready").into());
    }
    Ok((proc, line))
}

/// A child process that is killed (and reaped) when dropped: on success, error or panic.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    /// Where its stderr goes, if to a file: quoted when it fails.
    log: Option<PathBuf>,
    /// Killed and reaped by [`Proc::kill`]: its pid may be another process's by now.
    reaped: bool,
}

impl Proc {
    pub fn new(name: &'static str, child: Child, log: Option<PathBuf>) -> Proc {
        Proc {
            name,
            child,
            log,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err when the process has exited (it should not have).
    pub fn alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(st) => Err(match &self.log {
                None => format!("{} exited early: {st}", self.name),
                Some(path) => format!(
                    "{} exited early: {st}; its log ({}) ends with:\n{}",
                    self.name,
                    path.display(),
                    self.log_tail(10)
                ),
            }
            .into()),
        }
    }

    /// The last `n` lines of its log file (empty without one).
    pub fn log_tail(&self, n: usize) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGKILL now, then reap: a crash (the kernel closes every socket). Unlike the drop,
    /// it does not walk /proc for the process's own children first: the echo nodes the
    /// storm kills mid-run have none, and that kill is timed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // nginx's workers are children of its master and outlive a killed master: note
        // them first, kill the master (so it cannot respawn them), then them.
        let kids = children_of(self.child.id());
        self.kill();
        for pid in kids {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Pids of the live direct children of `pid` (from /proc/*/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // After the parenthesised command name: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids.sort_unstable();
    kids
}

/// The lowest port [`free_addr`] hands out: below it live the well-known and registered
/// ports of services a machine may run.
const LOWEST: u16 = 10_000;

/// A loopback address for a child process to listen on: its port is outside the kernel's
/// ephemeral range and was free a moment ago (bound and released here), and this process
/// never hands it out twice.
///
/// Why not a port bound at 0 and released (or one the child binds at 0): such a port is
/// from the ephemeral range, so the kernel may pick it as the source port of any outgoing
/// connection, and on loopback a connect to a port nobody listens on (the child not up
/// yet, or the storm's killed node) that gets its own port as source meets itself (TCP
/// simultaneous open) and looks like a listener. A port outside the range is never chosen
/// as a source port. The child may still lose the port to another process between our
/// release and its bind: the spawn helpers [`retry`] with fresh ports.
pub fn free_addr() -> Result<SocketAddr> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = ephemeral_range()?;
    let below = LOWEST..low.max(LOWEST);
    let above = high.saturating_add(1).max(LOWEST)..u16::MAX;
    let total = below.len() + above.len();
    if total == 0 {
        return Err(format!("no port outside the ephemeral range {low}-{high}").into());
    }
    for _ in 0..1000 {
        let i = rand::random::<usize>() % total;
        let port = if i < below.len() {
            below.start + i as u16
        } else {
            above.start + (i - below.len()) as u16
        };
        let fresh = GIVEN
            .lock()
            .map_err(|_| "free_addr: poisoned")?
            .get_or_insert_with(HashSet::new)
            .insert(port);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if fresh && std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(format!("no free loopback port outside the ephemeral range {low}-{high}").into())
}

/// The kernel's ephemeral port range (inclusive).
fn ephemeral_range() -> Result<(u16, u16)> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(PATH).map_err(|e| format!("{PATH}: {e}"))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(low)), Some(Ok(high))) => Ok((low, high)),
        _ => Err(format!("{PATH}: expected two ports, got {text:?}").into()),
    }
}

/// What one look of [`until`] found.
pub enum Check {
    Done,
    /// Not yet, and what to say if it stays so.
    NotYet(String),
}

/// Look with `check` every `every` until it says [`Check::Done`]; after `within`, the last
/// [`Check::NotYet`] is the error. An error of `check` ends the wait at once.
pub async fn until(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<Check>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match check().await? {
            Check::Done => return Ok(()),
            Check::NotYet(why) if Instant::now() > deadline => return Err(why.into()),
            Check::NotYet(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Until `proc` accepts TCP connections on each of `addrs` (each connected once), or Err
/// when it exits or `within` passes.
pub async fn wait_listening(proc: &mut Proc, addrs: &[SocketAddr], within: Duration) -> Result<()> {
    let mut next = 0;
    until(within, Duration::from_millis(20), async || {
        proc.alive()?;
        while let Some(&addr) = addrs.get(next) {
            if TcpStream::connect(addr).await.is_err() {
                return Ok(Check::NotYet(format!(
                    "{} did not listen on {addr} within {within:?}",
                    proc.name
                )));
            }
            next += 1;
        }
        Ok(Check::Done)
    })
    .await
}

/// How many times the spawn helpers try a child on fresh ports.
pub const SPAWN_TRIES: u32 = 3;

/// `f` again (up to `times` in all) while it fails: for starting a child on ports from
/// [`free_addr`], which another process may take before the child binds them.
pub async fn retry<T>(times: u32, mut f: impl AsyncFnMut() -> Result<T>) -> Result<T> {
    let mut tried = 1;
    loop {
        match f().await {
            Err(_) if tried < times => tried += 1,
            r => return r,
        }
    }
}
