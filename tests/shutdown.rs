//! The herdgate binary as a process (issue 5): SIGTERM (listeners closed, in-flight HTTP
//! finished, tunnels funnelled with 1012, exit 0), a second SIGTERM or a SIGINT (1001 at
//! once), sd_notify datagrams on a NOTIFY_SOCKET of ours, and socket activation under
//! systemd-socket-activate.
// Tests and load harnesses may panic on a broken fixture: unwrap/expect are denied only
// in the shipped code (Cargo.toml [workspace.lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod support_drain;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use support::{echo_nodes, within, DEADLINE};
use support_drain::*;
use tokio::net::UnixDatagram;
use tokio_tungstenite::tungstenite::Message;

/// A herdgate process with its files and its notification socket.
struct Proc {
    child: Child,
    dir: tempfile::TempDir,
    notify: UnixDatagram,
    plain: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.pid()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {}", self.pid());
    }

    /// The next state datagram on the notification socket. Progress lines
    /// (`STATUS=...`, shown by `systemctl status`) are skipped, except the final
    /// `STATUS=stopped`.
    async fn next_notification(&self) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = within(self.notify.recv(&mut buf))
                .await
                .unwrap_or_else(|e| panic!("recv notification: {e}\n{}", self.log()));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !msg.starts_with("STATUS=") || msg == "STATUS=stopped" {
                return msg;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Wait (bounded) for the process to exit.
    async fn exit(&mut self) -> ExitStatus {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "herdgate did not exit within {DEADLINE:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.plain)
    }

    async fn metric(&self, name: &str, fragments: &[&str]) -> f64 {
        support::metric(
            &support::http_get(self.admin, "/metrics").await.1,
            name,
            fragments,
        )
    }
}

fn config(
    plain: SocketAddr,
    admin: SocketAddr,
    echo: SocketAddr,
    slow: SocketAddr,
    shutdown: &str,
) -> String {
    format!(
        r#"
[admin]
bind = "{admin}"

[shutdown]
{shutdown}

[[listener]]
name = "plain"
bind = "{plain}"

[[route]]
path_prefix = "/slow"
pool = "http"

[[route]]
pool = "ws"

[[pool]]
name = "http"
[[pool.node]]
name = "slow"
addr = "{slow}"

[[pool]]
name = "ws"
admit_rate = 100000.0
admit_burst = 10000
[[pool.node]]
name = "echo"
addr = "{echo}"
"#
    )
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_herdgate")
}

fn notify_socket(dir: &Path) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notification socket");
    (path, sock)
}

/// Start `herdgate run` with `toml` (the listener and admin addresses in it) and wait for
/// READY=1.
async fn spawn(toml_for: impl Fn(SocketAddr, SocketAddr) -> String) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let (plain, admin) = (free_addr(), free_addr());
    let cfg = dir.path().join("herdgate.toml");
    std::fs::write(&cfg, toml_for(plain, admin)).unwrap();
    let (npath, notify) = notify_socket(dir.path());
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &npath)
        .env("HERDGATE_LOG", "info")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn herdgate");
    let p = Proc {
        child,
        dir,
        notify,
        plain,
        admin,
    };
    let ready = p.next_notification().await;
    assert_eq!(ready, "READY=1", "{}", p.log());
    // READY=1 comes once the listeners are bound: a connection is accepted right away.
    tokio::net::TcpStream::connect(p.plain)
        .await
        .expect("listener bound at READY=1");
    p
}

/// Open `n` tunnels, each proven by one echo.
async fn tunnels(p: &Proc, n: usize) -> Vec<Ws> {
    let mut v = Vec::new();
    for i in 0..n {
        let mut ws = ws_connect(&p.ws_url("/ws")).await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("hello {i}")),
            other => panic!("echo: {other:?}"),
        }
        v.push(ws);
    }
    v
}

/// Read until the close frame: (code, reason); then read on until the connection ends.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    let close = loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(f))) => {
                break f.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                })
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    while let Some(Ok(_)) = within(ws.next()).await {}
    close
}

async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_listeners_finishes_requests_funnels_tunnels_and_exits_zero() {
    let echo = echo_nodes(1).await;
    let slow = slow_http_node().await;
    let (e, s) = (echo[0].addr, slow.addr);
    let mut p =
        spawn(|plain, admin| config(plain, admin, e, s, "spread = \"2s\"\ntimeout = \"20s\""))
            .await;

    // SIGHUP: RELOADING=1 with a fresh CLOCK_MONOTONIC reading, then READY=1.
    let before = herdgate::systemd::monotonic_usec();
    p.signal("HUP");
    let reloading = p.next_notification().await;
    let after = herdgate::systemd::monotonic_usec();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("unexpected {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(p.next_notification().await, "READY=1");

    let n = 20;
    let mut ws = tunnels(&p, n).await;
    // A slow HTTP request is in flight when SIGTERM arrives.
    let arrived = slow.arrived.notified();
    let plain = p.plain;
    let request = tokio::spawn(async move {
        support::http_raw(
            plain,
            b"GET /slow/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    within(arrived).await;

    p.signal("TERM");
    assert_eq!(p.next_notification().await, "STOPPING=1");
    wait_until_async("the listener refuses connections", DEADLINE, || {
        refused(plain)
    })
    .await;

    // Tunnels: 1012 with a hint, spread over shutdown.spread (when the first close has
    // arrived, the funnel has not closed all of them).
    let mut pending: futures_util::stream::FuturesUnordered<_> =
        ws.iter_mut().map(close_of).collect();
    let mut closes = vec![within(pending.next()).await.unwrap()];
    let drained = p.metric("herdgate_drain_closed_total", &[]).await;
    assert!(drained < n as f64, "all {n} closed at once ({drained})");
    while let Some(c) = within(pending.next()).await {
        closes.push(c);
    }
    drop(pending);
    for (code, reason) in &closes {
        assert_eq!(*code, 1012, "{reason}");
        assert!(retry_after_ms(reason).is_some_and(|ms| ms > 0), "{reason}");
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "herdgate exited with a request in flight\n{}",
        p.log()
    );
    // Only now does the slow node answer: the request in flight still gets its response.
    slow.release.send(()).unwrap();
    let (status, _, body) = within(request).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"), "{}", p.log());

    let st = p.exit().await;
    assert!(st.success(), "exit status {st:?}\n{}", p.log());
    assert_eq!(p.next_notification().await, "STATUS=stopped");
    assert_eq!(echo[0].stats.closes.lock().unwrap().len(), n);
}

async fn fast_close(sig2: &str, first: Option<&str>) {
    let echo = echo_nodes(1).await;
    let slow = slow_http_node().await;
    let (e, s) = (echo[0].addr, slow.addr);
    let mut p =
        spawn(|plain, admin| config(plain, admin, e, s, "spread = \"60s\"\ntimeout = \"120s\""))
            .await;
    let n = 10;
    let mut ws = tunnels(&p, n).await;
    let mut codes = Vec::new();
    if let Some(sig) = first {
        p.signal(sig);
        assert_eq!(p.next_notification().await, "STOPPING=1");
        // The funnel closes one tunnel at once, the next one 6 s later.
        wait_until_async("the first funnel close", DEADLINE, || async {
            p.metric("herdgate_drain_closed_total", &[]).await >= 1.0
        })
        .await;
    }
    p.signal(sig2);
    if first.is_none() {
        assert_eq!(p.next_notification().await, "STOPPING=1");
    }
    for w in ws.iter_mut() {
        codes.push(close_of(w).await.0);
    }
    let st = p.exit().await;
    assert!(st.success(), "exit status {st:?}\n{}", p.log());
    let funnelled = codes.iter().filter(|&&c| c == 1012).count();
    let at_once = codes.iter().filter(|&&c| c == 1001).count();
    assert_eq!(funnelled + at_once, n, "{codes:?}");
    if first.is_some() {
        assert!(
            (1..n).contains(&funnelled),
            "one funnelled before the second signal, the rest at once: {codes:?}"
        );
    } else {
        assert_eq!(at_once, n, "{codes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_closes_everything_at_once_with_1001() {
    fast_close("TERM", Some("TERM")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_everything_at_once_with_1001() {
    fast_close("INT", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_graceful_shutdown_closes_the_rest_with_1001() {
    fast_close("INT", Some("TERM")).await;
}

/// systemd-socket-activate holds the listening socket and execs herdgate with it as
/// fd 3 named "plain": herdgate serves on it, and does not bind the configured address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_socket_passed_by_socket_activation() {
    let Some(activate) = socket_activate() else {
        return;
    };
    let echo = echo_nodes(1).await;
    let slow = slow_http_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (activated, configured, admin) = (free_addr(), free_addr(), free_addr());
    let cfg = dir.path().join("herdgate.toml");
    std::fs::write(&cfg, config(configured, admin, echo[0].addr, slow.addr, "")).unwrap();
    let (npath, notify) = notify_socket(dir.path());
    let log = dir.path().join("stderr.log");
    let child = Command::new(activate)
        .arg(format!("--listen={activated}"))
        .arg("--fdname=plain")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", npath.display()))
        .arg("--setenv=HERDGATE_LOG=info")
        .arg(binary())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        // Only the child may notify: systemd-socket-activate itself would send READY=1.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let mut p = Proc {
        child,
        dir,
        notify,
        plain: activated,
        admin,
    };
    // It listens before it execs herdgate; the first connection attempt triggers the exec
    // and waits in the backlog of the inherited socket.
    wait_until("systemd-socket-activate listens", DEADLINE, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Listening on"))
    })
    .await;
    let mut ws = tunnels(&p, 1).await;
    assert_eq!(p.next_notification().await, "READY=1", "{}", p.log());
    assert!(
        refused(configured).await,
        "the configured address must not be bound when the socket was inherited"
    );
    // Same process (exec): SIGTERM reaches herdgate, which drains and exits 0.
    p.signal("TERM");
    assert_eq!(p.next_notification().await, "STOPPING=1");
    assert_eq!(close_of(&mut ws[0]).await.0, 1012);
    let st = p.exit().await;
    assert!(st.success(), "exit status {st:?}\n{}", p.log());
}

/// systemd-socket-activate, or None (skipped with a reason) outside CI.
fn socket_activate() -> Option<PathBuf> {
    let found = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if found.is_none() {
        let reason = "systemd-socket-activate not found: apt-get install systemd";
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        eprintln!("SKIPPED: {reason}");
    }
    found
}
