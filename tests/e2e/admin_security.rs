//! The admin listener against hostile clients (issue 9), over real sockets: a DNS-rebinding
//! `Host` is refused while the listener's own address is served; `protect_reads` puts
//! `/metrics` and `/admin/*` reads behind the token (`/healthz` stays open); connections
//! over `admin.max_connections` are closed at once and idle ones give their slot back; the
//! token is read at start and on reload only, and a reload that cannot read it changes
//! nothing; an admin drain is undone by `undrain`. Every refusal is counted.

use crate::support::http1::{http_get, raw_request, Reader, Resp};
use crate::support::metrics::metric;
use crate::support::nodes::{echo_nodes, land_ws, landed, Fleet};
use crate::support::proxy::{admin_node, admin_nodes, parse, start, Proxy};
use crate::support::ws::{close_code, echo_text, ws_connect, ws_connect_with};
use crate::support::{eventually, within};
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFUSED: &str = "herdgate_admin_refused_total";
const OPEN: &str = "herdgate_admin_connections_open";
const RELOAD_FAILURES: &str = "herdgate_config_reload_failures_total";
const TOKEN: &str = "first-token";

/// A config with one plain listener routing to pool `p`; `admin` goes in `[admin]`.
fn config(admin: &str, nodes: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n{admin}\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n{nodes}"
    )
}

fn node(name: &str, addr: SocketAddr) -> String {
    format!("[[pool.node]]\nname = \"{name}\"\naddr = \"{addr}\"\n")
}

/// `[admin]` lines naming the token file in `dir` (written with `token`).
fn with_token(dir: &Path, token: &str, extra: &str) -> String {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    format!("token_file = \"{}\"\n{extra}", path.display())
}

/// One admin request on a fresh connection: `host` None sends no Host header at all.
async fn req(
    admin: SocketAddr,
    method: &str,
    target: &str,
    host: Option<&str>,
    auth: Option<&str>,
) -> Resp {
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let r = format!(
        "{method} {target} HTTP/1.1\r\n{host}{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw_request(admin, r.as_bytes()).await
}

/// A request with the honest Host (the admin address itself).
async fn honest(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    req(
        admin,
        method,
        path,
        Some(&admin.to_string()),
        auth.as_deref(),
    )
    .await
}

fn refused(text: &str, reason: &str) -> f64 {
    metric(text, REFUSED, &[&format!("reason=\"{reason}\"")])
}

#[tokio::test]
async fn a_rebinding_host_is_refused_while_the_admin_address_is_served() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_cfg = with_token(dir.path(), TOKEN, "");
    let proxy = start(parse(
        &config(&admin_cfg, &node("a", nodes[0].addr)),
        dir.path(),
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let port = admin.port();

    // Honest: the address itself, and the loopback names, in any case.
    for host in [
        admin.to_string(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
    ] {
        for path in ["/healthz", "/metrics", "/admin/nodes"] {
            let r = req(admin, "GET", path, Some(&host), None).await;
            assert_eq!(r.status, 200, "GET {path} with Host {host}: {}", r.text());
        }
    }

    // Hostile: a page whose name was re-pointed at 127.0.0.1, and other misses.
    let hostile: Vec<(String, Option<String>)> = vec![
        ("/healthz".into(), Some(format!("evil.example:{port}"))),
        ("/metrics".into(), Some(format!("evil.example:{port}"))),
        ("/admin/nodes".into(), Some("evil.example".into())),
        ("/metrics".into(), Some("localhost".into())),
        ("/metrics".into(), Some(format!("127.0.0.2:{port}"))),
        ("/metrics".into(), Some(format!("localhost:{}", port ^ 1))),
        ("/metrics".into(), None),
        // An absolute-form target naming another host, with an honest Host header.
        (
            format!("http://evil.example:{port}/metrics"),
            Some(admin.to_string()),
        ),
    ];
    for (target, host) in &hostile {
        let r = req(admin, "GET", target, host.as_deref(), None).await;
        assert_eq!(
            r.status,
            421,
            "GET {target} with Host {host:?}: {}",
            r.text()
        );
        assert!(
            !r.text().contains("herdgate_"),
            "no metrics leak: {}",
            r.text()
        );
    }
    // A write with the right token but a rebinding Host changes nothing.
    let bearer = format!("Bearer {TOKEN}");
    let r = req(
        admin,
        "POST",
        "/admin/nodes/p/a/drain",
        Some(&format!("evil.example:{port}")),
        Some(&bearer),
    )
    .await;
    assert_eq!(r.status, 421);
    assert!(!admin_node(admin, "a").await.draining);

    // The honest ones keep working, and every refusal was counted.
    let mut ws = ws_connect(proxy.addr("plain"), "/x").await;
    echo_text(&mut ws, "unharmed").await;
    let m = proxy.metrics().await;
    assert_eq!(refused(&m, "host"), (hostile.len() + 1) as f64, "{m}");
    assert_eq!(refused(&m, "unauthorized"), 0.0);
}

#[tokio::test]
async fn protect_reads_puts_metrics_and_admin_reads_behind_the_token() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_cfg = with_token(dir.path(), TOKEN, "protect_reads = true");
    let proxy = start(parse(
        &config(&admin_cfg, &node("a", nodes[0].addr)),
        dir.path(),
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let host = admin.to_string();

    // Liveness probes carry no token: /healthz stays open.
    assert_eq!(honest(admin, "GET", "/healthz", None).await.status, 200);

    // Without the token (or with a wrong one, or another scheme) every read is refused,
    // unknown paths included (nothing to enumerate).
    let mut refusals = 0;
    for path in ["/metrics", "/admin/nodes", "/admin/nope"] {
        for auth in [
            None,
            Some("Bearer wrong-token".to_string()),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer {TOKEN}x")),
        ] {
            let r = req(admin, "GET", path, Some(&host), auth.as_deref()).await;
            assert_eq!(r.status, 401, "GET {path} with {auth:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(!r.text().contains("herdgate_") && !r.text().contains("\"pool\""));
            refusals += 1;
        }
    }

    // With it, they are served (the scheme's case does not matter).
    let r = honest(admin, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("herdgate_"), "{}", r.text());
    let r = req(
        admin,
        "GET",
        "/admin/nodes",
        Some(&host),
        Some(&format!("bearer {TOKEN}")),
    )
    .await;
    assert_eq!(r.status, 200);
    let nodes_seen: Vec<herdgate::admin::NodeReport> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(nodes_seen.len(), 1);
    assert_eq!(
        honest(admin, "GET", "/admin/nope", Some(TOKEN))
            .await
            .status,
        404
    );

    // Traffic through the proxy is unaffected; every refusal is counted.
    let mut ws = ws_connect(proxy.addr("plain"), "/x").await;
    echo_text(&mut ws, "unharmed").await;
    let m = honest(admin, "GET", "/metrics", Some(TOKEN)).await.text();
    assert_eq!(refused(&m, "unauthorized"), refusals as f64, "{m}");
    assert_eq!(refused(&m, "host"), 0.0);
}

/// Whether the peer closed (EOF) or reset `s` (what a refused connection sees).
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => return true,
            // Whatever hyper writes before closing (nothing, or an error response).
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn admin_connections_over_the_cap_are_closed_at_once_and_counted() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    // The idle deadline is above every wait of the test: only the cap closes anything.
    let admin_cfg = "max_connections = 4\nidle_timeout = \"60s\"";
    let proxy = start(parse(
        &config(admin_cfg, &node("a", nodes[0].addr)),
        dir.path(),
    ))
    .await;
    let admin = proxy.admin.unwrap();
    // Scraped in process: over HTTP the scrape would need a slot of its own.
    let gauge = || metric(&proxy.handle.render_metrics(), OPEN, &[]);

    // Four clients connect and send nothing: they hold every slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(within(TcpStream::connect(admin)).await.unwrap());
    }
    eventually("4 admin connections held", || async { gauge() == 4.0 }).await;

    // The fifth is closed at once (well before the idle deadline) and counted.
    let mut fifth = within(TcpStream::connect(admin)).await.unwrap();
    let get = format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    let _ = fifth.write_all(get.as_bytes()).await;
    assert!(closed_by_peer(&mut fifth).await);
    eventually("the refusal is counted", || async {
        refused(&proxy.handle.render_metrics(), "max_connections") == 1.0
    })
    .await;

    // A holder is still served on its slot (keep-alive).
    held[0].write_all(get.as_bytes()).await.unwrap();
    let mut r = Reader::new(held.remove(0));
    let resp = within(r.response()).await.unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
    held.insert(0, r.s);

    // One leaves: a new client is served.
    drop(held.pop());
    eventually("a slot is free", || async { gauge() == 3.0 }).await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(refused(&body, "max_connections"), 1.0, "{body}");
    // The proxy's own traffic never competed for admin slots.
    let mut ws = ws_connect(proxy.addr("plain"), "/x").await;
    echo_text(&mut ws, "unharmed").await;
}

#[tokio::test]
async fn idle_admin_connections_give_their_slot_back() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_cfg = "max_connections = 3\nidle_timeout = \"300ms\"";
    let proxy = start(parse(
        &config(admin_cfg, &node("a", nodes[0].addr)),
        dir.path(),
    ))
    .await;
    let admin = proxy.admin.unwrap();
    let gauge = || metric(&proxy.handle.render_metrics(), OPEN, &[]);

    // One sends nothing, one half a head (slowloris), one a request and then idles on
    // keep-alive: all three slots taken.
    let mut silent = within(TcpStream::connect(admin)).await.unwrap();
    let mut partial = within(TcpStream::connect(admin)).await.unwrap();
    partial
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n").as_bytes())
        .await
        .unwrap();
    let keepalive = within(TcpStream::connect(admin)).await.unwrap();
    let mut keepalive = Reader::new(keepalive);
    keepalive
        .s
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(within(keepalive.response()).await.unwrap().status, 200);

    // herdgate closes each of them by itself, and the slots come back.
    assert!(closed_by_peer(&mut silent).await);
    assert!(closed_by_peer(&mut partial).await);
    assert!(closed_by_peer(&mut keepalive.s).await);
    eventually("every slot given back", || async { gauge() == 0.0 }).await;

    // An honest client is served; nobody was refused for the cap.
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(refused(&body, "max_connections"), 0.0);
}

#[tokio::test]
async fn the_token_is_read_at_start_and_on_reload_only() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("admin.token");
    let text = config(
        &with_token(dir.path(), "old-token", ""),
        &node("a", nodes[0].addr),
    );
    let cfg_path = dir.path().join("herdgate.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let proxy = start(parse(&text, dir.path())).await;
    let (admin, h) = (proxy.admin.unwrap(), &proxy.handle);
    // A harmless write (undrain of a node that does not drain) probes the token.
    let probe = |token: &'static str| async move {
        honest(admin, "POST", "/admin/nodes/p/a/undrain", Some(token))
            .await
            .status
    };
    let mut ws = ws_connect(proxy.addr("plain"), "/x").await;
    let mut refusals = 0.0;

    assert_eq!(probe("old-token").await, 200);
    assert_eq!(probe("new-token").await, 401);
    refusals += 1.0;

    // The file changes: nothing changes until a reload.
    std::fs::write(&token_path, "new-token\n").unwrap();
    assert_eq!(probe("old-token").await, 200);
    assert_eq!(probe("new-token").await, 401);
    refusals += 1.0;

    within(h.reload_file(&cfg_path)).await.expect("reload");
    assert_eq!(probe("new-token").await, 200);
    assert_eq!(probe("old-token").await, 401);
    refusals += 1.0;

    // A reload that cannot read the token fails and keeps the token in force.
    std::fs::remove_file(&token_path).unwrap();
    let e = within(h.reload_file(&cfg_path))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("admin.token_file") && e.contains("cannot read"),
        "{e}"
    );
    assert_eq!(probe("new-token").await, 200);

    std::fs::write(&token_path, " \n").unwrap();
    let e = within(h.reload_file(&cfg_path))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("admin.token_file") && e.contains("empty"), "{e}");
    assert_eq!(probe("new-token").await, 200);

    // The same when the file goes between validation and the snapshot build.
    std::fs::write(&token_path, "third-token\n").unwrap();
    let cfg = parse(&text, dir.path());
    std::fs::remove_file(&token_path).unwrap();
    let e = within(h.reload(cfg)).await.unwrap_err().to_string();
    assert!(e.contains("admin.token_file"), "{e}");
    assert_eq!(probe("new-token").await, 200);
    assert_eq!(probe("third-token").await, 401);
    refusals += 1.0;

    // Traffic went on through every failed reload; all counted.
    echo_text(&mut ws, "unharmed").await;
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, RELOAD_FAILURES, &[]), 3.0, "{m}");
    assert_eq!(refused(&m, "unauthorized"), refusals, "{m}");
}

#[tokio::test]
async fn undrain_takes_an_admin_drain_back() {
    let fleet = Fleet::start(&["a", "b"]).await;
    let (ia, ib) = (fleet.index("a"), fleet.index("b"));
    let dir = tempfile::tempdir().unwrap();
    let admin_cfg = with_token(dir.path(), TOKEN, "");
    let text = |drain_a: bool| {
        let nodes = fleet.nodes_toml(&fleet.all()).replace(
            "name = \"a\"\n",
            &format!("name = \"a\"\ndrain = {drain_a}\n"),
        );
        config(&admin_cfg, &format!("drain_rate = 1000.0\n{nodes}"))
    };
    let proxy = start(parse(&text(false), dir.path())).await;
    let (admin, addr) = (proxy.admin.unwrap(), proxy.addr("plain"));
    let post = |path: &'static str, token: Option<&'static str>| async move {
        let r = honest(admin, "POST", path, token).await;
        (r.status, r.text())
    };

    // A tunnel on a (round robin: one of two connections lands there).
    let mut on_a = None;
    for _ in 0..2 {
        let (i, ws) = landed(&fleet, || async {
            let (mut w, _) = ws_connect_with(addr, "/x", &[]).await;
            echo_text(&mut w, "hello").await;
            w
        })
        .await;
        if i == ia {
            on_a = Some(ws);
            break;
        }
    }
    let mut on_a = on_a.expect("a tunnel on a");

    // Without the token nothing drains.
    assert_eq!(post("/admin/nodes/p/a/drain", None).await.0, 401);
    assert!(!admin_node(admin, "a").await.draining);

    // The admin drain: a's tunnel is closed with 1012, a gets nothing new.
    assert_eq!(post("/admin/nodes/p/a/drain", Some(TOKEN)).await.0, 202);
    assert_eq!(close_code(&mut on_a).await, Some(1012));
    assert!(admin_node(admin, "a").await.draining);
    for _ in 0..4 {
        assert_eq!(land_ws(&fleet, addr, "/x", &[]).await, ib, "a is draining");
    }

    // Refused or misdirected undrains change nothing.
    assert_eq!(post("/admin/nodes/p/a/undrain", None).await.0, 401);
    let (s, _) = post("/admin/nodes/p/a/undrain", Some("Bearer-less")).await;
    assert_eq!(s, 401);
    assert_eq!(
        post("/admin/nodes/p/nope/undrain", Some(TOKEN)).await.0,
        404
    );
    assert_eq!(post("/admin/nodes/q/a/undrain", Some(TOKEN)).await.0, 404);
    assert!(admin_node(admin, "a").await.draining);

    // The undrain: a is eligible again and takes new WebSockets.
    assert_eq!(
        post("/admin/nodes/p/a/undrain", Some(TOKEN)).await,
        (200, "undrained\n".to_string())
    );
    let reports = admin_nodes(admin).await;
    assert!(reports.iter().all(|n| !n.draining), "{reports:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "herdgate_node_draining", &["node=\"a\""]),
        0.0,
        "{m}"
    );
    let landings: Vec<usize> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(land_ws(&fleet, addr, "/x", &[]).await);
        }
        v
    };
    assert!(landings.contains(&ia), "nothing landed on a: {landings:?}");
    assert_eq!(
        post("/admin/nodes/p/a/undrain", Some(TOKEN)).await,
        (200, "not draining\n".to_string())
    );

    // A drain the config holds (drain = true) is the config's to lift.
    within(proxy.handle.reload(parse(&text(true), dir.path())))
        .await
        .unwrap();
    assert!(admin_node(admin, "a").await.draining);
    assert_eq!(post("/admin/nodes/p/a/undrain", Some(TOKEN)).await.0, 409);
    assert!(admin_node(admin, "a").await.draining);
    assert_eq!(land_ws(&fleet, addr, "/x", &[]).await, ib);

    let m = proxy.metrics().await;
    assert_eq!(refused(&m, "unauthorized"), 3.0, "{m}");
    shutdown(proxy).await;
}

async fn shutdown(proxy: Proxy) {
    crate::support::proxy::wait_no_tunnels(&proxy.handle).await;
    proxy.shutdown().await;
}
