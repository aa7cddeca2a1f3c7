//! Hot reload over real sockets: a bad file keeps the running config (and is counted); a
//! good one swaps routes, pools, nodes, limits, TLS certificates and sticky settings while
//! live node state carries over and open tunnels are never touched; a removed node is
//! drained with 1012; listeners are bound and closed; the real binary reloads on SIGHUP
//! sent by `herdgate reload --pidfile`.

use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::{land_ws, landed, Fleet};
use crate::support::process::{bin, Herdgate};
use crate::support::proxy::{
    admin_node, admin_nodes, hash_pick, key_for, parse, start, sticky_len, wait_no_tunnels, Proxy,
};
use crate::support::tls::{certs, tls_client, try_tls_connect, TlsStream};
use crate::support::ws::{close_code, echo_text, ws_connect_with, ws_status, ws_try, Ws};
use crate::support::{eventually, within};
use herdgate::server::Handle;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reload metrics are process-wide. Under `cargo test` (one process for every test of
/// this binary) the reload tests take turns; nextest runs each test in its own process.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RELOAD_FAILURES: &str = "herdgate_config_reload_failures_total";
const LAST_SUCCESS: &str = "herdgate_config_last_reload_success";
const RELOADS: &str = "herdgate_config_reloads_total";

/// The pieces of a test config.
#[derive(Clone)]
struct Cfg {
    /// Extra top-level TOML before the listeners (timeouts, limits).
    top: String,
    listeners: String,
    routes: String,
    pools: String,
}

impl Cfg {
    fn new(routes: &str, pools: &str) -> Cfg {
        Cfg {
            top: String::new(),
            listeners: plain_listener(),
            routes: routes.to_string(),
            pools: pools.to_string(),
        }
    }

    fn text(&self) -> String {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n{}\n{}\n{}\n{}",
            self.top, self.listeners, self.routes, self.pools
        )
    }
}

fn plain_listener() -> String {
    "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n".to_string()
}

fn pool(name: &str, fleet: &Fleet, order: &[usize], extra: &str) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n{extra}\n{}\n",
        fleet.nodes_toml(order)
    )
}

const STICKY_ROUTE: &str = "[[route]]\npool = \"p\"\nsticky = { header = \"x-session\" }\n";

struct Files {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herdgate.toml");
        Files { dir, path }
    }

    async fn start(&self, cfg: &Cfg) -> Proxy {
        std::fs::write(&self.path, cfg.text()).unwrap();
        start(parse(&cfg.text(), self.dir.path())).await
    }

    async fn reload(&self, h: &Handle, text: &str) -> Result<(), String> {
        std::fs::write(&self.path, text).unwrap();
        within(h.reload_file(&self.path))
            .await
            .map_err(|e| e.to_string())
    }
}

async fn metrics(p: &Proxy) -> String {
    p.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_keeps_the_running_config_and_is_counted() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let files = Files::new();
    let good = Cfg::new(STICKY_ROUTE, &pool("p", &fleet, &[0, 1], ""));
    let proxy = files.start(&good).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let gen = h.snapshot().generation;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();

    let mut with_n3 = good.clone();
    with_n3.pools = pool("p", &fleet, &[0, 1, 2], "");
    let mut bad_route = with_n3.clone();
    bad_route.routes = "[[route]]\npool = \"nope\"\n".into();
    let mut bad_cert = with_n3.clone();
    bad_cert.listeners += "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
                           [[listener.tls.cert]]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n";
    let mut bad_bind = with_n3.clone();
    bad_bind.listeners += &format!(
        "[[listener]]\nname = \"busy\"\nbind = \"{}\"\n",
        busy.local_addr().unwrap()
    );
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "syntax",
            format!("{}\n[[pool]\n", with_n3.text()),
            &["line"],
        ),
        (
            "missing pool",
            bad_route.text(),
            &["route[0].pool", "line", "nope"],
        ),
        ("missing certificate", bad_cert.text(), &["missing.pem"]),
        ("address in use", bad_bind.text(), &["busy", "cannot bind"]),
    ];
    let failures0 = metric(&metrics(&proxy).await, RELOAD_FAILURES, &[]);
    for (i, (what, text, needles)) in cases.iter().enumerate() {
        let err = files.reload(h, text).await.expect_err(what);
        for n in *needles {
            assert!(err.contains(n), "{what}: {n:?} not in the error: {err}");
        }
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(&m, RELOAD_FAILURES, &[]),
            failures0 + i as f64 + 1.0,
            "{what}"
        );
        assert_eq!(metric(&m, LAST_SUCCESS, &[]), 0.0, "{what}");
        // Still the old config, still serving.
        assert_eq!(h.snapshot().generation, gen, "{what}");
        let nodes: Vec<String> = admin_nodes(admin)
            .await
            .into_iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(nodes, ["n1", "n2"], "{what}");
        let got = land_ws(&fleet, addr, "/", &[("x-session", what)]).await;
        assert_eq!(fleet.names[got], hash_pick(h, "p", what));
        assert!(h.listener_addrs().keys().all(|l| l == "plain"), "{what}");
    }

    files.reload(h, &with_n3.text()).await.unwrap();
    let m = metrics(&proxy).await;
    assert_eq!(metric(&m, LAST_SUCCESS, &[]), 1.0);
    assert_eq!(metric(&m, RELOAD_FAILURES, &[]), failures0 + 4.0);
    assert!(metric(&m, RELOADS, &[]) >= 1.0);
    assert!(h.snapshot().generation > gen);
    let nodes: Vec<String> = admin_nodes(admin)
        .await
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_pools_nodes_limits_and_sticky_settings() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2", "n3", "m1"]).await;
    let files = Files::new();
    let a = Cfg::new(STICKY_ROUTE, &pool("p", &fleet, &[0, 1], ""));
    let proxy = files.start(&a).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let m1 = fleet.index("m1");
    // Before: "/q" is served by pool p like everything else.
    assert_ne!(land_ws(&fleet, addr, "/q", &[("x-session", "x")]).await, m1);

    let mut b = a.clone();
    b.top = "[limits]\nmax_connections = 5000\n".into();
    b.routes = "[[route]]\npath_prefix = \"/q\"\npool = \"q\"\n\
                client_limit = { rate = 0.001, burst = 1 }\n\
                [[route]]\npool = \"p\"\nsticky = { query = \"room\", fallback = \"none\" }\n"
        .into();
    b.pools = pool("p", &fleet, &[0, 1, 2], "") + &pool("q", &fleet, &[3], "");
    b.pools = b
        .pools
        .replacen("admit_rate = 100000.0", "admit_rate = 7000.0", 1);
    files.reload(h, &b.text()).await.unwrap();

    // Pools and nodes.
    let r = admin_nodes(admin).await;
    let names: Vec<(&str, &str)> = r
        .iter()
        .map(|n| (n.pool.as_str(), n.node.as_str()))
        .collect();
    assert_eq!(names, [("p", "n1"), ("p", "n2"), ("p", "n3"), ("q", "m1")]);
    assert!(r
        .iter()
        .filter(|n| n.pool == "p")
        .all(|n| n.admit_rate == 7000.0));
    // Routes, and the new route's per-client limit.
    assert_eq!(land_ws(&fleet, addr, "/q", &[]).await, m1);
    assert_eq!(ws_status(addr, "/q", &[]).await.0, 429);
    // Sticky settings: the query parameter is the key now, over three nodes...
    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("room-{i}");
        let got = land_ws(&fleet, addr, &format!("/?room={key}"), &[]).await;
        assert_eq!(fleet.names[got], hash_pick(h, "p", &key), "{key}");
        used.insert(got);
    }
    assert_eq!(used.len(), 3, "n3 takes its share");
    // ...and the header is ignored: no key, fallback "none" is round robin.
    let rr: Vec<usize> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(land_ws(&fleet, addr, "/", &[("x-session", "same")]).await);
        }
        v
    };
    let distinct: std::collections::HashSet<_> = rr.iter().collect();
    assert_eq!(distinct.len(), 3, "{rr:?}");
    // Limits.
    assert_eq!(h.snapshot().config.limits.max_connections, 5000);

    // And back: the route to q is gone with its pool.
    files.reload(h, &a.text()).await.unwrap();
    assert_ne!(land_ws(&fleet, addr, "/q", &[("x-session", "x")]).await, m1);
    assert_eq!(admin_nodes(admin).await.len(), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_node_state_carries_over_for_unchanged_nodes() {
    let _turn = TURN.lock().await;
    let mut fleet = Fleet::start(&["n1", "n2", "s1", "s1b"]).await;
    let files = Files::new();
    let slow = |fleet: &Fleet, order: &[usize]| {
        format!(
            "[[pool]]\nname = \"slow\"\nadmit_rate = 0.01\nadmit_burst = 2\n{}",
            fleet
                .nodes_toml(order)
                .replace("name = \"s1b\"", "name = \"s1\"")
        )
    };
    let routes = format!("{STICKY_ROUTE}[[route]]\npath_prefix = \"/slow\"\npool = \"slow\"\n");
    let a = Cfg::new(
        &routes,
        &(pool("p", &fleet, &[0, 1], "") + &slow(&fleet, &[2])),
    );
    let proxy = files.start(&a).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);

    // The slow node's bucket: two admissions use its burst; the next is turned away.
    for _ in 0..2 {
        let (status, _) = ws_status(addr, "/slow", &[]).await;
        assert_eq!(status, 101);
    }
    // Health: n2 dies and a client finds out (passive, no active checks).
    let k2 = key_for(h, "p", "n2", "k");
    fleet.kill(fleet.index("n2")).await;
    assert_eq!(ws_status(addr, "/", &[("x-session", &k2)]).await.0, 502);
    assert!(!admin_node(admin, "n2").await.healthy);
    // Sticky: k2 failed over to n1 and learned it; more keys learned.
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k2)]).await, 0);
    for i in 0..20 {
        land_ws(&fleet, addr, "/", &[("x-session", &format!("l{i}"))]).await;
    }
    let learned = sticky_len(h, "p");
    let old = h.snapshot();

    // A reload that changes other things (a timeout, the p pool's rate, a new route).
    let mut b = a.clone();
    b.top = "[timeouts]\nbackend_connect = \"3s\"\n".into();
    b.routes = format!("{routes}[[route]]\npath_prefix = \"/other\"\npool = \"p\"\n");
    b.pools = pool("p", &fleet, &[0, 1], "").replace("100000.0", "90000.0") + &slow(&fleet, &[2]);
    files.reload(h, &b.text()).await.unwrap();
    let new = h.snapshot();
    for (pi, name) in [(0, "n1"), (0, "n2"), (1, "s1")] {
        assert!(
            Arc::ptr_eq(
                old.pools[pi].node_by_name(name).unwrap(),
                new.pools[pi].node_by_name(name).unwrap()
            ),
            "{name} keeps its live state object"
        );
    }
    let s1 = new.pools[1].node_by_name("s1").unwrap();
    assert_eq!(s1.admission.stats().admitted_bucket, 2);
    // The bucket was not reset: still no token for a third client.
    assert_eq!(ws_status(addr, "/slow", &[]).await.0, 503);
    // Still down (a reset would have made it healthy), and the table survived.
    assert!(!admin_node(admin, "n2").await.healthy);
    assert_eq!(sticky_len(h, "p"), learned);
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k2)]).await, 0);
    assert_eq!(
        new.pools[0]
            .node_by_name("n1")
            .unwrap()
            .admission
            .params()
            .rate,
        90000.0
    );

    // A node whose address changes is a new node: fresh state (a full bucket).
    let mut c = b.clone();
    c.pools = pool("p", &fleet, &[0, 1], "") + &slow(&fleet, &[3]);
    files.reload(h, &c.text()).await.unwrap();
    let s1b = fleet.index("s1b");
    let (got, _) = landed(&fleet, || async {
        let (mut w, _) = ws_connect_with(addr, "/slow", &[]).await;
        echo_text(&mut w, "fresh bucket").await;
    })
    .await;
    assert_eq!(got, s1b);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_are_never_touched() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2"]).await;
    let files = Files::new();
    let a = Cfg::new(STICKY_ROUTE, &pool("p", &fleet, &[0, 1], ""));
    let proxy = files.start(&a).await;
    let (addr, h) = (proxy.addr("plain"), &proxy.handle);
    let mut open = Vec::new();
    for i in 0..10 {
        let (mut w, _) = ws_connect_with(addr, "/", &[("x-session", &format!("t{i}"))]).await;
        echo_text(&mut w, "before").await;
        open.push(w);
    }
    // The route they came in by is gone, sticky and rates changed, timeouts shortened.
    let mut b = a.clone();
    b.top = "[timeouts]\nidle_tunnel = \"1h\"\nclose = \"1s\"\n".into();
    b.routes =
        "[[route]]\npath_prefix = \"/elsewhere\"\npool = \"p\"\nsticky = { query = \"k\" }\n"
            .into();
    b.pools = pool("p", &fleet, &[1, 0], "admit_burst = 3").replace("admit_burst = 100000\n", "");
    for round in 0..4 {
        let text = if round % 2 == 0 { b.text() } else { a.text() };
        files.reload(h, &text).await.unwrap();
        for (i, w) in open.iter_mut().enumerate() {
            echo_text(w, &format!("tunnel {i} after reload {round}")).await;
        }
        assert_eq!(h.tunnels(), 10);
    }
    files.reload(h, &b.text()).await.unwrap();
    assert_eq!(
        ws_status(addr, "/", &[]).await.0,
        404,
        "the new routes are in force"
    );
    for w in &mut open {
        echo_text(w, "still here").await;
    }
    let closes: usize = fleet
        .nodes
        .iter()
        .flatten()
        .map(|n| n.stats.closes.lock().unwrap().len())
        .sum();
    assert_eq!(closes, 0);
    drop(open);
    wait_no_tunnels(h).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_drained_with_1012() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2"]).await;
    let files = Files::new();
    let a = Cfg::new(
        STICKY_ROUTE,
        &pool("p", &fleet, &[0, 1], "drain_spread = \"200ms\""),
    );
    let proxy = files.start(&a).await;
    let (addr, admin, h) = (proxy.addr("plain"), proxy.admin.unwrap(), &proxy.handle);
    let mut on = [Vec::new(), Vec::new()];
    for (n, name) in ["n1", "n2"].iter().enumerate() {
        for i in 0..3 {
            let k = key_for(h, "p", name, &format!("t{i}"));
            let (mut w, _) = ws_connect_with(addr, "/", &[("x-session", &k)]).await;
            echo_text(&mut w, "hi").await;
            on[n].push(w);
        }
    }
    eventually("6 tunnels registered", || async { h.tunnels() == 6 }).await;
    let mut b = a.clone();
    b.pools = pool("p", &fleet, &[0], "drain_spread = \"200ms\"");
    files.reload(h, &b.text()).await.unwrap();
    let nodes: Vec<String> = admin_nodes(admin)
        .await
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["n1"]);
    for mut w in on[1].drain(..) {
        assert_eq!(close_code(&mut w).await, Some(1012));
        // Close handshake done and the proxy's FIN seen: a client closes its socket.
    }
    for w in &mut on[0] {
        echo_text(w, "unaffected").await;
    }
    eventually("n2's tunnels ended", || async { h.tunnels() == 3 }).await;
    drop(on);
    wait_no_tunnels(h).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_bound_and_closed() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1"]).await;
    let files = Files::new();
    let a = Cfg::new("[[route]]\npool = \"p\"\n", &pool("p", &fleet, &[0], ""));
    let proxy = files.start(&a).await;
    let (plain, h) = (proxy.addr("plain"), &proxy.handle);
    let extra = free_addr();

    let mut b = a.clone();
    b.listeners += &format!("[[listener]]\nname = \"extra\"\nbind = \"{extra}\"\n");
    files.reload(h, &b.text()).await.unwrap();
    assert_eq!(h.listener_addrs().get("extra"), Some(&extra));
    let (mut via_extra, _) = ws_connect_with(extra, "/", &[]).await;
    echo_text(&mut via_extra, "new listener").await;
    let (mut via_plain, _) = ws_connect_with(plain, "/", &[]).await;
    echo_text(&mut via_plain, "old listener").await;

    // Drop "plain": its port refuses connections; its open tunnel stays.
    let mut c = b.clone();
    c.listeners = format!("[[listener]]\nname = \"extra\"\nbind = \"{extra}\"\n");
    files.reload(h, &c.text()).await.unwrap();
    eventually("the removed listener refuses", || async move {
        tokio::net::TcpStream::connect(plain).await.is_err()
    })
    .await;
    assert!(!h.listener_addrs().contains_key("plain"));
    echo_text(&mut via_plain, "tunnel outlives its listener").await;
    echo_text(&mut via_extra, "still").await;
    let (mut again, _) = ws_connect_with(extra, "/", &[]).await;
    echo_text(&mut again, "extra serves").await;
    drop((via_plain, via_extra, again));
    wait_no_tunnels(h).await;
    proxy.shutdown().await;
}

/// A client that trusts `roots`, for [`tls_cert`].
fn tls_trusting(roots: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    Arc::new(tls_client(rustls::DEFAULT_VERSIONS, roots))
}

/// TLS handshake with `sni`: the certificate the server presented, or the error.
async fn tls_cert(
    c: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
) -> Result<(Vec<u8>, TlsStream), String> {
    let s = try_tls_connect(addr, c.clone(), sni)
        .await
        .map_err(|e| e.to_string())?;
    let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((der, s))
}

fn tls_listener(certs: &[(&Path, &Path, &str)]) -> String {
    let mut s = "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n".to_string();
    for (cert, key, name) in certs {
        s += &format!(
            "[[listener.tls.cert]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"{name}\"]\n",
            cert.display(),
            key.display()
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_and_the_sni_set_swap() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1"]).await;
    let (_dir_a, ca) = certs(&["a.test"]);
    let (_dir_b, cb) = certs(&["b.test"]);
    let files = Files::new();
    let mut a = Cfg::new("[[route]]\npool = \"p\"\n", &pool("p", &fleet, &[0], ""));
    a.listeners = tls_listener(&[(&ca.cert, &ca.key, "a.test")]);
    let proxy = files.start(&a).await;
    let (addr, h) = (proxy.addr("tls"), &proxy.handle);
    let client = tls_trusting(&[&ca.der, &cb.der]);

    assert_eq!(tls_cert(&client, addr, "a.test").await.unwrap().0, ca.der);
    // b.test is not served yet: the default (a.test) certificate does not match it.
    let err = tls_cert(&client, addr, "b.test").await.unwrap_err();
    assert!(
        err.contains("not valid for name") || err.contains("NotValidForName"),
        "{err}"
    );

    let mut b = a.clone();
    b.listeners = tls_listener(&[(&ca.cert, &ca.key, "a.test"), (&cb.cert, &cb.key, "b.test")]);
    files.reload(h, &b.text()).await.unwrap();
    // The very next handshake sees the new SNI set.
    let (der, tls) = tls_cert(&client, addr, "b.test").await.unwrap();
    assert_eq!(der, cb.der);
    let (mut w, _) = within(tokio_tungstenite::client_async("wss://b.test/", tls))
        .await
        .unwrap();
    futures_util::SinkExt::send(
        &mut w,
        tokio_tungstenite::tungstenite::Message::text("over tls"),
    )
    .await
    .unwrap();
    let echoed = within(futures_util::StreamExt::next(&mut w))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "over tls");
    assert_eq!(tls_cert(&client, addr, "a.test").await.unwrap().0, ca.der);

    // And removed again (a fresh client: a resumed session would skip the certificate).
    files.reload(h, &a.text()).await.unwrap();
    let fresh = tls_trusting(&[&ca.der, &cb.der]);
    assert!(tls_cert(&fresh, addr, "b.test").await.is_err());
    echo_tls(&mut w).await;
    drop(w);
    wait_no_tunnels(h).await;
    proxy.shutdown().await;
}

async fn echo_tls<S>(w: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    let m = tokio_tungstenite::tungstenite::Message::text("open tunnel untouched");
    within(w.send(m.clone())).await.unwrap();
    assert_eq!(within(w.next()).await.unwrap().unwrap(), m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_no_trace() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2", "elsewhere"]).await;
    let files = Files::new();
    let a = Cfg::new(STICKY_ROUTE, &pool("p", &fleet, &[0, 1], ""));
    let proxy = files.start(&a).await;
    let (addr, h) = (proxy.addr("plain"), &proxy.handle);
    let (n1, n2) = (fleet.index("n1"), fleet.index("n2"));

    // k prefers n1, but learns n2 while n1 is drained by the config.
    let k = key_for(h, "p", "n1", "k");
    let mut drained = a.clone();
    drained.pools = pool("p", &fleet, &[0, 1], "").replacen(
        &format!("addr = \"{}\"\n", fleet.addrs[n1]),
        &format!("addr = \"{}\"\ndrain = true\n", fleet.addrs[n1]),
        1,
    );
    files.reload(h, &drained.text()).await.unwrap();
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n2);
    // Drain lifted: k stays on its learned node, across the reload.
    files.reload(h, &a.text()).await.unwrap();
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n2);
    let learned = sticky_len(h, "p");

    // A reload that fails late (its listener cannot bind) after naming n2 at another
    // address: nothing of it may stay behind.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad = a.clone();
    bad.pools = pool("p", &fleet, &[0, 1], "").replace(
        &fleet.addrs[n2].to_string(),
        &fleet.addrs[fleet.index("elsewhere")].to_string(),
    );
    bad.listeners += &format!(
        "[[listener]]\nname = \"busy\"\nbind = \"{}\"\n",
        busy.local_addr().unwrap()
    );
    files.reload(h, &bad.text()).await.unwrap_err();
    // The next good reload must not mistake the failed one's nodes for removed ones.
    files.reload(h, &a.text()).await.unwrap();
    assert_eq!(
        sticky_len(h, "p"),
        learned,
        "learned entries of n2 were dropped"
    );
    assert_eq!(land_ws(&fleet, addr, "/", &[("x-session", &k)]).await, n2);
    assert!(!h.snapshot().pools[0]
        .node_by_name("n2")
        .unwrap()
        .is_draining());
    proxy.shutdown().await;
}

async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http_get(addr, path).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_from_herdgate_reload() {
    let _turn = TURN.lock().await;
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let (admin, listen) = (free_addr(), free_addr());
    let cfg = |order: &[usize]| {
        format!(
            "[admin]\nbind = \"{admin}\"\n[[listener]]\nname = \"plain\"\nbind = \"{listen}\"\n\
             {STICKY_ROUTE}{}",
            pool("p", &fleet, order, "")
        )
    };
    // Killed when the test ends, however it ends.
    let child = Herdgate::start(&cfg(&[0, 1])).await;
    let (path, pidfile) = (child.config_path(), child.pidfile());
    let show_log = || child.log();
    eventually("the child serves its admin endpoint", || async {
        try_get(admin, "/healthz")
            .await
            .is_some_and(|(s, _)| s == 200)
            && pidfile.exists()
    })
    .await;
    let reload = || {
        let out = std::process::Command::new(bin())
            .arg("reload")
            .arg("--pidfile")
            .arg(&pidfile)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herdgate reload: {out:?}\n{}",
            show_log()
        );
    };
    let names = || crate::support::proxy::admin_node_names(admin);
    assert_eq!(names().await, ["n1", "n2"]);

    std::fs::write(&path, cfg(&[0, 1, 2])).unwrap();
    reload();
    eventually("n3 appears after SIGHUP", || async {
        names().await.len() == 3
    })
    .await;
    let m = http_get(admin, "/metrics").await.1;
    assert_eq!(metric(&m, LAST_SUCCESS, &[]), 1.0, "{m}");

    std::fs::write(
        &path,
        cfg(&[0, 1, 2]).replace("pool = \"p\"", "pool = \"gone\""),
    )
    .unwrap();
    reload();
    eventually("the failed reload is counted", || async {
        let m = http_get(admin, "/metrics").await.1;
        metric(&m, RELOAD_FAILURES, &[]) == 1.0 && metric(&m, LAST_SUCCESS, &[]) == 0.0
    })
    .await;
    assert_eq!(names().await, ["n1", "n2", "n3"]);
    let got = land_ws(&fleet, listen, "/", &[("x-session", "still serving")]).await;
    assert!(got < 3);
    let logged = show_log();
    assert!(
        logged.contains("route[0].pool") && logged.contains("line"),
        "the error names its key and line:\n{logged}"
    );

    std::fs::write(&path, cfg(&[1, 2])).unwrap();
    reload();
    eventually("n1 removed after SIGHUP", || async {
        names().await == ["n2", "n3"]
    })
    .await;
    let m = http_get(admin, "/metrics").await.1;
    assert_eq!(metric(&m, LAST_SUCCESS, &[]), 1.0);
    assert_eq!(metric(&m, RELOADS, &[]), 2.0);
}

/// One open tunnel that keeps talking: a numbered message every `period` (from a random
/// offset, so the tunnels do not beat in step), each echo checked; after `stop`, one last
/// exchange. Any close, error or wrong echo is the tunnel's failure.
async fn chatty_tunnel(
    i: usize,
    mut w: Ws,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    exchanged: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Ws, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut wait = period.mul_f64(rand::random::<f64>());
    let mut seq = 0u64;
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        wait = period;
        seq += 1;
        let msg = format!("tunnel {i} message {seq}");
        within(w.send(Message::text(msg.clone())))
            .await
            .map_err(|e| format!("tunnel {i}: send {seq}: {e}"))?;
        loop {
            match within(w.next()).await {
                Some(Ok(Message::Text(t))) if t.as_str() == msg => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(format!("tunnel {i}: wanted {msg:?}, got {other:?}")),
            }
        }
        exchanged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if last {
            return Ok(w);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load() {
    let _turn = TURN.lock().await;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    const WANT: usize = 2000;
    // Each tunnel costs four descriptors in this one process: client, herdgate's two
    // sides, echo node.
    let limit = herdgate::fdlimit::raise().expect("raise the fd limit");
    let n = WANT.min((limit.saturating_sub(500) / 4) as usize);
    if n < WANT {
        eprintln!("fd limit {limit}: reload_under_load scaled down to {n} tunnels");
    }
    let fleet = Fleet::start(&["n1", "n2", "q1"]).await;
    let files = Files::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = |rate: &str| pool("p", &fleet, &[0, 1], "").replace("admit_rate = 100000.0", rate);
    let mut a = Cfg::new(STICKY_ROUTE, &p("admit_rate = 1000000.0"));
    // Every tunnel comes from 127.0.0.1: lift the per-client caps.
    let per_client = "max_connections_per_client = 100000\nmax_tunnels_per_client = 100000\n";
    a.top = format!("[limits]\nmax_connections = 100000\n{per_client}");
    // B: other rates, limits and timeouts, a new route to a new pool, new sticky settings
    // (a fresh learned table).
    let mut b = a.clone();
    b.top = format!(
        "[limits]\nmax_connections = 90000\n{per_client}[timeouts]\nidle_tunnel = \"30m\"\n"
    );
    b.routes = "[[route]]\npath_prefix = \"/b\"\npool = \"q\"\n\
                [[route]]\npool = \"p\"\nsticky = { header = \"x-session\", ttl = \"30m\" }\n"
        .into();
    b.pools = p("admit_rate = 500000.0") + &pool("q", &fleet, &[2], "");
    let invalid = [
        format!("{}\n[[pool]\n", b.text()),
        b.text().replace(
            "path_prefix = \"/b\"\npool = \"q\"",
            "path_prefix = \"/b\"\npool = \"nope\"",
        ),
        b.text()
            .replace("admit_rate = 500000.0", "admit_rate = -1.0"),
        {
            let mut c = b.clone();
            c.listeners += &format!(
                "[[listener]]\nname = \"busy\"\nbind = \"{}\"\n",
                busy.local_addr().unwrap()
            );
            c.text()
        },
        {
            let mut c = b.clone();
            c.listeners += "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\n\
                            [[listener.tls.cert]]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n";
            c.text()
        },
    ];
    let proxy = files.start(&a).await;
    let (addr, h) = (proxy.addr("plain"), proxy.handle.clone());
    let m0 = metrics(&proxy).await;
    let (failures0, reloads0) = (metric(&m0, RELOAD_FAILURES, &[]), metric(&m0, RELOADS, &[]));
    let gen0 = h.snapshot().generation;

    // Open the tunnels, 64 handshakes at a time.
    let opened = std::time::Instant::now();
    let socks: Vec<Ws> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let (mut w, _) = ws_connect_with(addr, "/", &[("x-session", &format!("t{i}"))]).await;
            echo_text(&mut w, "hello").await;
            w
        })
        .buffer_unordered(64)
        .collect()
        .await;
    eprintln!("{n} tunnels open in {:?}", opened.elapsed());
    eventually("every tunnel registered", || async { h.tunnels() == n }).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let exchanged = Arc::new(AtomicU64::new(0));
    let period = std::time::Duration::from_secs(1);
    let tunnels: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, w)| tokio::spawn(chatty_tunnel(i, w, period, stop.clone(), exchanged.clone())))
        .collect();
    // A steady stream of new connections, one after another.
    let fresh_ok = Arc::new(AtomicU64::new(0));
    let streamer = {
        let (stop, ok) = (stop.clone(), fresh_ok.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut j = 0u64;
            while !stop.is_cancelled() {
                j += 1;
                let key = format!("fresh-{j}");
                match ws_try(None, addr, "/", &[("x-session", &key)]).await {
                    Ok((mut w, _)) => {
                        echo_text(&mut w, &key).await;
                        let _ = within(futures_util::SinkExt::close(&mut w)).await;
                        ok.fetch_add(1, Relaxed);
                    }
                    Err(e) => errors.push(format!("new connection {j}: {e}")),
                }
            }
            errors
        })
    };

    let started = std::time::Instant::now();
    for r in 0..20 {
        let (ok0, ex0) = (fresh_ok.load(Relaxed), exchanged.load(Relaxed));
        if r % 2 == 0 {
            let text = &invalid[(r / 2) % invalid.len()];
            files.reload(&h, text).await.expect_err("invalid config");
        } else {
            let text = if r % 4 == 1 { b.text() } else { a.text() };
            files.reload(&h, &text).await.unwrap();
        }
        // Pace by traffic, not by the clock: new connections made and messages exchanged
        // (a quarter of the tunnels had their turn) since this reload.
        eventually("traffic after a reload", || {
            let (fresh_ok, exchanged) = (fresh_ok.clone(), exchanged.clone());
            async move {
                fresh_ok.load(Relaxed) >= ok0 + 3 && exchanged.load(Relaxed) >= ex0 + n as u64 / 4
            }
        })
        .await;
    }
    let under_load = started.elapsed();
    stop.cancel();
    let errors = within(streamer).await.unwrap();
    assert!(errors.is_empty(), "failed new connections: {errors:?}");
    let mut socks = Vec::new();
    let mut failed = Vec::new();
    for t in tunnels {
        match within(t).await.unwrap() {
            Ok(w) => socks.push(w),
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{} tunnels failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(socks.len(), n);
    eventually("only the long-lived tunnels left", || async {
        h.tunnels() == n
    })
    .await;
    // The only closes the nodes see are the new connections' own.
    let fresh = fresh_ok.load(Relaxed);
    let closes = || {
        fleet
            .nodes
            .iter()
            .flatten()
            .map(|x| x.stats.closes.lock().unwrap().len() as u64)
            .sum::<u64>()
    };
    eventually("the nodes saw every new connection's close", || async {
        closes() >= fresh
    })
    .await;
    assert_eq!(closes(), fresh);

    let m = metrics(&proxy).await;
    assert_eq!(metric(&m, RELOAD_FAILURES, &[]) - failures0, 10.0);
    assert_eq!(metric(&m, RELOADS, &[]) - reloads0, 10.0);
    assert_eq!(metric(&m, LAST_SUCCESS, &[]), 1.0);
    assert_eq!(h.snapshot().generation, gen0 + 10);
    eprintln!(
        "20 reloads under load in {under_load:?}: {n} tunnels, {} messages, {fresh} new connections, 0 failures",
        exchanged.load(Relaxed)
    );
    drop(socks);
    wait_no_tunnels(&h).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_connections_holds_once_the_open_ones_end() {
    let _turn = TURN.lock().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fleet = Fleet::start(&["n1"]).await;
    let files = Files::new();
    let mut a = Cfg::new("[[route]]\npool = \"p\"\n", &pool("p", &fleet, &[0], ""));
    a.top = "[limits]\nmax_connections = 4\n".into();
    let proxy = files.start(&a).await;
    let (addr, h) = (proxy.addr("plain"), &proxy.handle);
    let mut open = Vec::new();
    for _ in 0..4 {
        let (mut w, _) = ws_connect_with(addr, "/", &[]).await;
        echo_text(&mut w, "hi").await;
        open.push(w);
    }
    // Lowered to 2 while 4 are open: the cap cannot take back slots in use...
    let mut b = a.clone();
    b.top = "[limits]\nmax_connections = 2\n".into();
    files.reload(h, &b.text()).await.unwrap();
    drop(open);
    wait_no_tunnels(h).await;
    // ...but once they are given back, 2 is the cap.
    let mut two = Vec::new();
    for _ in 0..2 {
        let (mut w, _) = ws_connect_with(addr, "/", &[]).await;
        echo_text(&mut w, "hi").await;
        two.push(w);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // A bounded wait for something that must not happen: a cap that held passes whatever
    // the machine's speed; a broken one answers at once.
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served with max_connections = 2: {early:?}"
    );
    // One ends: the waiting connection is served.
    drop(two.pop());
    let n = within(third.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
    drop(two);
    wait_no_tunnels(h).await;
    proxy.shutdown().await;
}
