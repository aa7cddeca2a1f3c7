//! A reload with a value that would panic (a connection cap above tokio's semaphore limit,
//! a rate whose interval overflows, ...) fails with the key named, changes nothing (an
//! open WebSocket and new ones are served as before), and the SIGHUP loop of the real
//! binary survives it: a later valid reload is applied.

use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::{land_ws, Fleet};
use crate::support::process::Herdgate;
use crate::support::ws::{echo_text, ws_connect};
use crate::support::{eventually, within};
use std::net::SocketAddr;

fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    fleet: &Fleet,
    order: &[usize],
    bad: &str,
) -> String {
    let (top, listener, route, pool) = match bad.split_once(':') {
        Some(("top", t)) => (t, "", "", ""),
        Some(("listener", t)) => ("", t, "", ""),
        Some(("route", t)) => ("", "", t, ""),
        Some(("pool", t)) => ("", "", "", t),
        _ => ("", "", "", ""),
    };
    format!(
        "{top}\n[admin]\nbind = \"{admin}\"\n\
         [[listener]]\nname = \"plain\"\nbind = \"{listen}\"\n{listener}\n\
         [[route]]\npool = \"p\"\nsticky = {{ header = \"x-session\" }}\n{route}\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n{pool}\n{}",
        fleet.nodes_toml(order)
    )
}

/// Read the notifications of one reload up to its READY=1, as systemd would (the
/// notification socket's queue is short: unread, it would block the sender).
async fn reloaded(child: &Herdgate) {
    assert!(child.next_notification().await.starts_with("RELOADING=1"));
    assert!(child.next_notification().await.starts_with("READY=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_panicking_value_fails_cleanly_and_the_next_one_works() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let (admin, listen) = (free_addr(), free_addr());
    let child = Herdgate::start(&config(admin, listen, &fleet, &[0, 1], "")).await;
    let path = child.config_path();
    let names = || crate::support::proxy::admin_node_names(admin);
    assert_eq!(names().await, ["n1", "n2"]);
    let mut open = ws_connect(listen, "/").await;
    echo_text(&mut open, "before").await;

    let max = tokio::sync::Semaphore::MAX_PERMITS;
    let bad = [
        (
            format!("top:[limits]\nmax_connections = {}", max + 1),
            "limits.max_connections",
        ),
        (
            format!("listener:max_connections = {}", max + 1),
            "listener[0].max_connections",
        ),
        (
            "listener:handshakes_per_second = 1e300".to_string(),
            "listener[0].handshakes_per_second",
        ),
        (
            "route:client_limit = { rate = 1e-300 }".to_string(),
            "route[0].client_limit.rate",
        ),
        ("pool:drain_rate = 1e-300".to_string(), "pool[0].drain_rate"),
    ];
    for (i, (value, key)) in bad.iter().enumerate() {
        // Each bad file also adds n3: nothing of it may be applied.
        std::fs::write(&path, config(admin, listen, &fleet, &[0, 1, 2], value)).unwrap();
        child.signal("HUP");
        reloaded(&child).await;
        let failures = (i + 1) as f64;
        eventually(format!("reload with {value:?} fails"), || async {
            let m = http_get(admin, "/metrics").await.1;
            metric(&m, "herdgate_config_reload_failures_total", &[]) == failures
        })
        .await;
        let log = child.log();
        assert!(log.contains(key), "the error names {key}:\n{log}");
        assert_eq!(names().await, ["n1", "n2"], "{value}: nothing changed");
        echo_text(&mut open, "still open").await;
        let got = land_ws(&fleet, listen, "/", &[("x-session", "new")]).await;
        assert!(got < 2, "{value}: served by the old config");
    }
    let m = http_get(admin, "/metrics").await.1;
    assert_eq!(metric(&m, "herdgate_config_last_reload_success", &[]), 0.0);
    assert_eq!(metric(&m, "herdgate_config_reloads_total", &[]), 0.0);

    // The SIGHUP loop is alive: a valid file is applied.
    std::fs::write(&path, config(admin, listen, &fleet, &[0, 1, 2], "")).unwrap();
    child.signal("HUP");
    reloaded(&child).await;
    eventually("the valid reload adds n3", || async {
        names().await == ["n1", "n2", "n3"]
    })
    .await;
    let m = http_get(admin, "/metrics").await.1;
    assert_eq!(metric(&m, "herdgate_config_last_reload_success", &[]), 1.0);
    assert_eq!(metric(&m, "herdgate_config_reloads_total", &[]), 1.0);
    echo_text(&mut open, "after").await;
    let _ = within(open.close(None)).await;
}
