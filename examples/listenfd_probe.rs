//! Shows what socket activation handed this process, as JSON lines, then
//! reports readiness over `$NOTIFY_SOCKET` the way herdgate does at startup.
//!
//! ```text
//! cargo build --example listenfd_probe
//! systemd-socket-activate -l 127.0.0.1:8443 -l 127.0.0.1:8080 --fdname=public-tls:public \
//!     target/debug/examples/listenfd_probe
//! # then, from another shell, connect once to trigger the activation:
//! nc -z 127.0.0.1 8443
//! ```
//!
//! One line per inherited listener (`name`, `addr`, `fd`, `nonblocking`,
//! `cloexec`, `accepted`: connections already queued on it), then a line
//! with `"summary": true`. An activation error prints `{"error": …}` and
//! exits with 2. Output goes to `$HERDGATE_PROBE_OUT` when set, else stdout.
//! tests/systemd_support runs this same code inside the test binary.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;

use herdgate::systemd;
use serde_json::json;

fn main() {
    std::process::exit(run());
}

/// Runs the probe; returns the process exit code.
pub fn run() -> i32 {
    let mut out: Box<dyn Write> = match std::env::var_os("HERDGATE_PROBE_OUT") {
        Some(path) => match File::create(&path) {
            Ok(file) => Box::new(file),
            Err(e) => {
                eprintln!("listenfd_probe: cannot create {path:?}: {e}");
                return 3;
            }
        },
        None => Box::new(io::stdout()),
    };
    match probe(&mut out) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("listenfd_probe: write failed: {e}");
            3
        }
    }
}

fn probe(out: &mut dyn Write) -> io::Result<i32> {
    let listen_pid_seen = std::env::var(systemd::LISTEN_PID).ok();
    let fd3_open_before = fd_is_open(systemd::LISTEN_FDS_START);

    let listeners = match systemd::listen_fds() {
        Ok(listeners) => listeners,
        Err(e) => {
            let line = json!({ "error": e.to_string(), "env_left": env_left() });
            writeln!(out, "{line}")?;
            return Ok(2);
        }
    };

    for inherited in &listeners {
        let fd = inherited.listener.as_raw_fd();
        let (nonblocking, cloexec) = fd_flags(fd);
        let addr = inherited.local_addr().map(|a| a.to_string());
        // Accepting until WouldBlock proves at once that this is the live
        // listening socket and that it will not block the accept loop.
        let accepted = drain_accept_queue(&inherited.listener);
        writeln!(
            out,
            "{}",
            json!({
                "name": inherited.name,
                "addr": addr.unwrap_or_else(|e| format!("error: {e}")),
                "fd": fd,
                "nonblocking": nonblocking,
                "cloexec": cloexec,
                "accepted": accepted.unwrap_or_else(|e| format!("error: {e}").into()),
            })
        )?;
    }

    let notified = systemd::status(&format!("probe: {} listeners", listeners.len()))
        .and_then(|_| systemd::ready());
    writeln!(
        out,
        "{}",
        json!({
            "summary": true,
            "pid": std::process::id(),
            "listen_pid_seen": listen_pid_seen,
            "fd3_open_before": fd3_open_before,
            "fd3_open_after": fd_is_open(systemd::LISTEN_FDS_START),
            "env_left": env_left(),
            "listeners": listeners.len(),
            "notified": match notified {
                Ok(sent) => json!(sent),
                Err(e) => json!(format!("error: {e}")),
            },
        })
    )?;
    out.flush()?;
    Ok(0)
}

/// The socket-activation variables still set: `listen_fds` only reads the
/// environment, so these are the ones the service manager set.
fn env_left() -> Vec<&'static str> {
    [
        systemd::LISTEN_PID,
        systemd::LISTEN_FDS,
        systemd::LISTEN_FDNAMES,
    ]
    .into_iter()
    .filter(|var| std::env::var_os(var).is_some())
    .collect()
}

fn drain_accept_queue(listener: &std::net::TcpListener) -> io::Result<serde_json::Value> {
    let mut accepted = 0u32;
    loop {
        match listener.accept() {
            Ok(_) => accepted += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(json!(accepted)),
            Err(e) => return Err(e),
        }
    }
}

fn fd_is_open(fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()
}

/// (O_NONBLOCK, O_CLOEXEC) read from /proc/self/fdinfo, which needs no unsafe.
fn fd_flags(fd: i32) -> (Option<bool>, Option<bool>) {
    const O_NONBLOCK: u32 = 0o4000;
    const O_CLOEXEC: u32 = 0o2_000_000;
    let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    match flags {
        Some(f) => (Some(f & O_NONBLOCK != 0), Some(f & O_CLOEXEC != 0)),
        None => (None, None),
    }
}
