//! The herdgate binary as a process (issue 5): SIGTERM (listeners closed, in-flight HTTP
//! finished, tunnels funnelled with 1012, exit 0), a second SIGTERM or a SIGINT (1001 at
//! once), sd_notify datagrams on a NOTIFY_SOCKET of ours, and socket activation under
//! systemd-socket-activate.

use crate::support::http1::{http_get, http_raw};
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::{echo_nodes, slow_http_node};
use crate::support::process::{socket_activate_binary, Herdgate};
use crate::support::ws::{retry_after_ms, ws_connect_url, UrlWs};
use crate::support::{eventually, within};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

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

/// Start `herdgate run` on `toml_for(plain, admin)` (addresses picked here); returns at
/// READY=1.
async fn spawn(toml_for: impl Fn(SocketAddr, SocketAddr) -> String) -> (Herdgate, Ports) {
    let ports = Ports {
        plain: free_addr(),
        admin: free_addr(),
    };
    let p = Herdgate::start(&toml_for(ports.plain, ports.admin)).await;
    // READY=1 comes once the listeners are bound: a connection is accepted right away.
    tokio::net::TcpStream::connect(ports.plain)
        .await
        .expect("listener bound at READY=1");
    (p, ports)
}

/// Where a herdgate process listens.
#[derive(Clone, Copy)]
struct Ports {
    plain: SocketAddr,
    admin: SocketAddr,
}

impl Ports {
    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.plain)
    }

    async fn metric(&self, name: &str, fragments: &[&str]) -> f64 {
        metric(&http_get(self.admin, "/metrics").await.1, name, fragments)
    }
}

/// Open `n` tunnels, each proven by one echo.
async fn tunnels(p: Ports, n: usize) -> Vec<UrlWs> {
    let mut v = Vec::new();
    for i in 0..n {
        let mut ws = ws_connect_url(&p.ws_url("/ws")).await;
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
async fn close_of(ws: &mut UrlWs) -> (u16, String) {
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
    let (mut p, ports) =
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
    let mut ws = tunnels(ports, n).await;
    // A slow HTTP request is in flight when SIGTERM arrives.
    let arrived = slow.arrived.notified();
    let plain = ports.plain;
    let request = tokio::spawn(async move {
        http_raw(
            plain,
            b"GET /slow/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    within(arrived).await;

    p.signal("TERM");
    assert_eq!(p.next_notification().await, "STOPPING=1");
    eventually("the listener refuses connections", || refused(plain)).await;

    // Tunnels: 1012 with a hint, spread over shutdown.spread (when the first close has
    // arrived, the funnel has not closed all of them).
    let mut pending: futures_util::stream::FuturesUnordered<_> =
        ws.iter_mut().map(close_of).collect();
    let mut closes = vec![within(pending.next()).await.unwrap()];
    let drained = ports.metric("herdgate_drain_closed_total", &[]).await;
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
        p.running(),
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
    let (mut p, ports) =
        spawn(|plain, admin| config(plain, admin, e, s, "spread = \"60s\"\ntimeout = \"120s\""))
            .await;
    let n = 10;
    let mut ws = tunnels(ports, n).await;
    let mut codes = Vec::new();
    if let Some(sig) = first {
        p.signal(sig);
        assert_eq!(p.next_notification().await, "STOPPING=1");
        // The funnel closes one tunnel at once, the next one 6 s later.
        eventually("the first funnel close", || async {
            ports.metric("herdgate_drain_closed_total", &[]).await >= 1.0
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
    let Some(activate) = socket_activate_binary() else {
        return;
    };
    let echo = echo_nodes(1).await;
    let slow = slow_http_node().await;
    let (activated, configured, admin) = (free_addr(), free_addr(), free_addr());
    let cfg = config(configured, admin, echo[0].addr, slow.addr, "");
    // It listens before it execs herdgate; the first connection attempt triggers the exec
    // and waits in the backlog of the inherited socket.
    let mut p = Herdgate::start_activated(&activate, activated, "plain", &cfg).await;
    let ports = Ports {
        plain: activated,
        admin,
    };
    let mut ws = tunnels(ports, 1).await;
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
