//! The probe child process of the systemd tests: examples/listenfd_probe.rs, compiled
//! into this test binary (so no cargo-built example is needed), run by re-executing the
//! binary with a filter that names only [`entry`], directly or under
//! systemd-socket-activate(1).
//!
//! Environment variables are process-global and tests run on parallel
//! threads, so nothing here touches the test process's own environment:
//! every LISTEN_* / NOTIFY_SOCKET setting lives in a child.

// The example's `main` is not called here: only its `run`.
#[allow(dead_code)]
#[path = "../../examples/listenfd_probe.rs"]
mod listenfd_probe;

use crate::support::net::free_addr;
use crate::support::process::socket_activate_binary;
use crate::support::DEADLINE;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

/// The full name (module path) of [`entry`], as the test binary's filter must give it:
/// moving `entry` to another module means changing this.
const ENTRY: &str = "probe::entry";
const OUT_VAR: &str = "HERDGATE_PROBE_OUT";

/// The probe's entry point in the child: a no-op in an ordinary test run (it is ignored
/// anyway), the probe when a parent set OUT_VAR.
#[test]
#[ignore = "entry point of the probe child process; the other tests run it"]
fn entry() {
    if std::env::var_os(OUT_VAR).is_some() {
        std::process::exit(listenfd_probe::run());
    }
}

/// What one probe run printed.
#[derive(Debug)]
pub struct ProbeRun {
    pub status: ExitStatus,
    /// Listener lines, in fd order.
    pub listeners: Vec<Value>,
    pub summary: Option<Value>,
    pub error: Option<String>,
    /// `env_left` of the error line.
    pub error_env_left: Option<Value>,
    /// systemd-socket-activate's and the child's stderr, for failure messages.
    #[allow(dead_code)] // read through the derived Debug, which dead-code analysis ignores
    pub stderr: String,
}

/// The command line that makes this test binary run only [`entry`].
fn entry_args() -> [&'static str; 5] {
    [
        ENTRY,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

fn current_exe() -> PathBuf {
    std::env::current_exe().expect("test binary path")
}

/// Runs the probe directly (no inherited sockets) with `env` set and
/// `remove` removed in the child.
pub fn run_direct(env: &[(&str, &str)], remove: &[&str]) -> ProbeRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("probe.jsonl");
    let mut cmd = Command::new(current_exe());
    cmd.args(entry_args())
        .env(OUT_VAR, &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("spawn probe");
    let rx = stderr_lines(take_stderr(&mut child));
    finish(child, rx, &out, String::new())
}

/// A socket for systemd-socket-activate to listen on.
pub enum Spec {
    /// 127.0.0.1 on a port picked free just before the run (outside the ephemeral
    /// range: see `free_addr`).
    Tcp,
    Unix(PathBuf),
}

/// Where the activation listened, so the test can connect.
pub enum Bound {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// Runs the probe under systemd-socket-activate listening on `specs`,
/// triggers the activation by connecting to `specs[connect]`, and waits for
/// the probe to finish. `None` when systemd-socket-activate is unavailable
/// outside CI.
pub fn run_activated(
    specs: &[Spec],
    fdnames: Option<&str>,
    extra_env: &[(&str, &str)],
    connect: usize,
) -> Option<(ProbeRun, Vec<Bound>)> {
    let activate = socket_activate_binary()?;
    // A port picked free can be taken by someone else before
    // systemd-socket-activate binds it: retry with fresh ports.
    let mut last_failure = String::new();
    for _ in 0..5 {
        match try_activated(&activate, specs, fdnames, extra_env, connect) {
            Ok(run) => return Some(run),
            Err(failure) => last_failure = failure,
        }
    }
    panic!("systemd-socket-activate never started listening: {last_failure}");
}

fn try_activated(
    activate: &Path,
    specs: &[Spec],
    fdnames: Option<&str>,
    extra_env: &[(&str, &str)],
    connect: usize,
) -> Result<(ProbeRun, Vec<Bound>), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("probe.jsonl");
    let bound: Vec<Bound> = specs
        .iter()
        .map(|s| match s {
            Spec::Tcp => Bound::Tcp(free_addr()),
            Spec::Unix(p) => Bound::Unix(p.clone()),
        })
        .collect();
    let mut cmd = Command::new(activate);
    for b in &bound {
        match b {
            Bound::Tcp(addr) => cmd.arg(format!("--listen={addr}")),
            Bound::Unix(path) => cmd.arg(format!("--listen={}", path.display())),
        };
    }
    if let Some(names) = fdnames {
        cmd.arg(format!("--fdname={names}"));
    }
    cmd.arg(format!("--setenv={OUT_VAR}={}", out.display()));
    for (k, v) in extra_env {
        cmd.arg(format!("--setenv={k}={v}"));
    }
    cmd.arg(current_exe())
        .args(entry_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {activate:?}: {e}"))?;
    let rx = stderr_lines(take_stderr(&mut child));

    // "Listening on ADDR as FD." once per socket, then it waits for a client.
    let mut log = String::new();
    let start = Instant::now();
    let mut listening = 0;
    while listening < bound.len() {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                listening += usize::from(line.starts_with("Listening on"));
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(log);
            }
        }
    }
    // The triggering connection stays open until the probe has finished.
    let _client: OwnedFd = match &bound[connect] {
        Bound::Tcp(addr) => TcpStream::connect(addr).map_err(|e| e.to_string())?.into(),
        Bound::Unix(path) => UnixStream::connect(path).map_err(|e| e.to_string())?.into(),
    };
    Ok((finish(child, rx, &out, log), bound))
}

fn take_stderr(child: &mut Child) -> ChildStderr {
    child
        .stderr
        .take()
        .expect("stderr is piped by every caller")
}

/// Forwards the child's stderr lines to a channel from a thread; the channel
/// closes when the child (the only writer of the pipe) exits.
fn stderr_lines(reader: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for the child to close its stderr, then collects output.
fn finish(mut child: Child, rx: mpsc::Receiver<String>, out: &Path, mut log: String) -> ProbeRun {
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("probe did not finish within {DEADLINE:?}; stderr:\n{log}");
            }
        }
    }
    let status = child.wait().expect("wait probe");
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut run = ProbeRun {
        status,
        listeners: Vec::new(),
        summary: None,
        error: None,
        error_env_left: None,
        stderr: log,
    };
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("probe printed non-JSON {line:?}: {e}"));
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            run.error = Some(err.to_owned());
            run.error_env_left = v.get("env_left").cloned();
        } else if v.get("summary").is_some() {
            run.summary = Some(v);
        } else {
            run.listeners.push(v);
        }
    }
    run
}
