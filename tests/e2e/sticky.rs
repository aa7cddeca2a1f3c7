//! Sticky routing over real sockets: the key from a cookie, a header, a query parameter or
//! the client IP; fallbacks; cookie insertion on 101 and plain HTTP responses; the same
//! answer from two independent proxies; reordering nodes moves nothing; removing a node
//! moves only its keys (and drops its learned entries).
//!
//! Which node took a connection is read from the echo nodes' own handshake counters.

use crate::support::http1::http_raw;
use crate::support::nodes::{land_ws, landed, Fleet, HttpNode};
use crate::support::proxy::{hash_order, hash_pick, parse, start, sticky_len, wait_no_tunnels};
use crate::support::within;
use crate::support::ws::{echo_text, ws_connect_with, ws_try};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// A proxy with admission out of the way, over `fleet` as pool `p`, and `routes`.
fn config(fleet: &Fleet, order: &[usize], routes: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n\n\
         {routes}\n\
         [[pool]]\nname = \"p\"\nadmit_rate = 100000.0\nadmit_burst = 100000\n{}",
        fleet.nodes_toml(order)
    )
}

/// (key source, request path, request headers)
type Case<'a> = (&'static str, String, Vec<(&'a str, &'a str)>);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_from_cookie_header_query_and_client_ip() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "\
[[route]]\npath_prefix = \"/cookie\"\npool = \"p\"\nsticky = { cookie = \"sid\" }\n\
[[route]]\npath_prefix = \"/header\"\npool = \"p\"\nsticky = { header = \"x-session\" }\n\
[[route]]\npath_prefix = \"/query\"\npool = \"p\"\nsticky = { query = \"room\" }\n\
[[route]]\npath_prefix = \"/ip\"\npool = \"p\"\nsticky = { client_ip = true }\n";
    let proxy = start(parse(&config(&fleet, &fleet.all(), routes), dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;

    let mut used: HashMap<&str, HashSet<usize>> = HashMap::new();
    for i in 0..12u8 {
        let key = format!("user-{i}");
        let want = fleet.index(&hash_pick(h, "p", &key));
        let cookie = format!("theme=dark; sid={key}");
        let query = format!("/query?x=1&room={}", key.replace('-', "%2D"));
        let cases: [Case; 3] = [
            (
                "cookie",
                "/cookie".into(),
                vec![("cookie", cookie.as_str())],
            ),
            (
                "header",
                "/header".into(),
                vec![("x-session", key.as_str())],
            ),
            ("query", query.clone(), vec![]),
        ];
        for (source, path, headers) in &cases {
            for round in 0..2 {
                let got = land_ws(&fleet, addr, path, headers).await;
                assert_eq!(
                    got, want,
                    "{source} key {key} (round {round}) landed on {got}, hash says {want}"
                );
                used.entry(*source).or_default().insert(got);
            }
        }
        // Client IP: each client its own loopback address, key = its text form.
        let client = ip(10 + i);
        let want = fleet.index(&hash_pick(h, "p", &client.to_string()));
        for round in 0..2 {
            let (got, _) = landed(&fleet, || async {
                let (mut w, _) = ws_try(Some(client), addr, "/ip", &[]).await.unwrap();
                echo_text(&mut w, "hi").await;
            })
            .await;
            assert_eq!(got, want, "client {client} (round {round})");
            used.entry("client_ip").or_default().insert(got);
        }
    }
    // The keys spread: stickiness is per key, not one node for everything.
    for (source, nodes) in &used {
        assert!(nodes.len() > 1, "{source}: every key on one node {nodes:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_key_falls_back_to_client_ip_or_round_robin() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "\
[[route]]\npath_prefix = \"/ipfb\"\npool = \"p\"\nsticky = { header = \"x-session\" }\n\
[[route]]\npath_prefix = \"/nofb\"\npool = \"p\"\nsticky = { header = \"x-session\", fallback = \"none\" }\n";
    let proxy = start(parse(&config(&fleet, &fleet.all(), routes), dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;

    // fallback = "client-ip" (the default): without the header, the client's address is
    // the key, exactly as if it had sent it as the header value.
    let mut spread = HashSet::new();
    for i in 0..10u8 {
        let client = ip(40 + i);
        let want = fleet.index(&hash_pick(h, "p", &client.to_string()));
        for _ in 0..2 {
            let (got, _) = landed(&fleet, || async {
                let (mut w, _) = ws_try(Some(client), addr, "/ipfb", &[]).await.unwrap();
                echo_text(&mut w, "hi").await;
            })
            .await;
            assert_eq!(got, want, "client {client} without a key");
            spread.insert(got);
        }
        let with_header =
            land_ws(&fleet, addr, "/ipfb", &[("x-session", &client.to_string())]).await;
        assert_eq!(with_header, want);
    }
    assert!(spread.len() > 1, "{spread:?}");

    // fallback = "none": no key, no stickiness: routing follows admission; with every
    // node free and equally loaded (each tunnel gone before the next), round robin.
    let mut rr = Vec::new();
    for _ in 0..6 {
        wait_no_tunnels(h).await;
        rr.push(land_ws(&fleet, addr, "/nofb", &[]).await);
    }
    for w in rr.windows(3) {
        let distinct: HashSet<_> = w.iter().collect();
        assert_eq!(distinct.len(), 3, "round robin over 3 nodes: {rr:?}");
    }
    // With the key present the same route is sticky.
    let want = fleet.index(&hash_pick(h, "p", "abc"));
    for _ in 0..3 {
        assert_eq!(
            land_ws(&fleet, addr, "/nofb", &[("x-session", "abc")]).await,
            want
        );
    }
    proxy.shutdown().await;
}

fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string())
}

fn cookie_value(set_cookie: &str, name: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    let (n, v) = first.split_once('=').unwrap();
    assert_eq!(n, name, "{set_cookie}");
    assert_eq!(v.len(), 22, "128 random bits, base64url: {set_cookie}");
    v.to_string()
}

fn assert_cookie_attributes(sc: &str) {
    for attr in ["Path=/", "Max-Age=600", "HttpOnly", "SameSite=Lax"] {
        assert!(sc.contains(attr), "{attr} missing in {sc}");
    }
    assert!(!sc.contains("Secure"), "plain listener: no Secure: {sc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserted_cookie_pins_websocket_and_http_clients() {
    let fleet = Fleet::start(&["n1", "n2", "n3"]).await;
    let web = [
        HttpNode::start("w1").await,
        HttpNode::start("w2").await,
        HttpNode::start("w3").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut toml = config(
        &fleet,
        &fleet.all(),
        "\
[[route]]\npath_prefix = \"/ws\"\npool = \"p\"\nsticky = { cookie = \"hg\", insert = true, ttl = \"10m\" }\n\
[[route]]\npath_prefix = \"/web\"\npool = \"web\"\nsticky = { cookie = \"hg\", insert = true, ttl = \"10m\" }\n",
    );
    toml.push_str("\n[[pool]]\nname = \"web\"\n");
    for n in &web {
        toml.push_str(&format!(
            "[[pool.node]]\nname = \"{}\"\naddr = \"{}\"\n",
            n.name, n.addr
        ));
    }
    let proxy = start(parse(&toml, dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;

    // WebSocket: the 101 carries the cookie; coming back with it lands on the same node.
    let mut ws_nodes = HashSet::new();
    for _ in 0..10 {
        let (first, sc) = landed(&fleet, || async {
            let (mut w, resp) = ws_connect_with(addr, "/ws", &[]).await;
            echo_text(&mut w, "hi").await;
            let sc = resp
                .headers()
                .get("set-cookie")
                .expect("Set-Cookie on the 101")
                .to_str()
                .unwrap()
                .to_string();
            sc
        })
        .await;
        assert_cookie_attributes(&sc);
        let value = cookie_value(&sc, "hg");
        assert_eq!(first, fleet.index(&hash_pick(h, "p", &value)));
        let cookie = format!("hg={value}");
        for _ in 0..3 {
            let (again, resp) = landed(&fleet, || async {
                let (mut w, resp) = ws_connect_with(addr, "/ws", &[("cookie", &cookie)]).await;
                echo_text(&mut w, "hi").await;
                resp
            })
            .await;
            assert_eq!(again, first, "returning with {cookie}");
            assert!(
                resp.headers().get("set-cookie").is_none(),
                "a client that has the cookie gets no new one"
            );
        }
        ws_nodes.insert(first);
    }
    assert!(ws_nodes.len() > 1, "new clients spread: {ws_nodes:?}");

    // Plain HTTP: the same on an ordinary response (the body names the node).
    let get = |cookie: Option<String>| async move {
        let c = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
        let req = format!("GET /web/x HTTP/1.1\r\nHost: localhost\r\n{c}Connection: close\r\n\r\n");
        http_raw(addr, req.as_bytes()).await
    };
    let mut web_nodes = HashSet::new();
    for _ in 0..10 {
        let (status, head, body) = get(None).await;
        assert_eq!(status, 200, "{head}");
        let sc = set_cookie(&head).expect("Set-Cookie on the HTTP response");
        assert_cookie_attributes(&sc);
        let value = cookie_value(&sc, "hg");
        assert_eq!(body, hash_pick(h, "web", &value));
        for _ in 0..3 {
            let (status, head, again) = get(Some(format!("hg={value}"))).await;
            assert_eq!(status, 200);
            assert_eq!(again, body, "returning with hg={value}");
            assert_eq!(set_cookie(&head), None);
        }
        web_nodes.insert(body);
    }
    assert!(web_nodes.len() > 1, "{web_nodes:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_independent_proxies_agree() {
    let fleet = Fleet::start(&["n1", "n2", "n3", "n4", "n5"]).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[route]]\npool = \"p\"\nsticky = { header = \"x-session\" }\n";
    let text = config(&fleet, &fleet.all(), routes);
    let a = start(parse(&text, dir.path())).await;
    let b = start(parse(&text, dir.path())).await;
    let mut used = HashSet::new();
    for i in 0..40 {
        let key = format!("session-{i}");
        let on_a = land_ws(&fleet, a.addr("plain"), "/", &[("x-session", &key)]).await;
        let on_b = land_ws(&fleet, b.addr("plain"), "/", &[("x-session", &key)]).await;
        assert_eq!(
            on_a, on_b,
            "{key}: instance A chose {on_a}, instance B {on_b}"
        );
        used.insert(on_a);
    }
    assert!(used.len() >= 4, "40 keys over 5 nodes: {used:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_nodes_in_the_file_moves_nothing() {
    let fleet = Fleet::start(&["n1", "n2", "n3", "n4", "n5"]).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[route]]\npool = \"p\"\nsticky = { header = \"x-session\" }\n";
    let proxy = start(parse(&config(&fleet, &fleet.all(), routes), dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;

    // Keys learned before the reload, and keys never seen (only the hash decides them).
    let mut learned = Vec::new();
    for i in 0..30 {
        let key = format!("old-{i}");
        learned.push((
            key.clone(),
            land_ws(&fleet, addr, "/", &[("x-session", &key)]).await,
        ));
    }
    let fresh: Vec<(String, String)> = (0..60)
        .map(|i| {
            let k = format!("fresh-{i}");
            let n = hash_pick(h, "p", &k);
            (k, n)
        })
        .collect();
    let old_snap = h.snapshot();

    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, config(&fleet, &[4, 2, 0, 3, 1], routes)).unwrap();
    within(h.reload_file(&path)).await.unwrap();
    let new_snap = h.snapshot();
    assert!(new_snap.generation > old_snap.generation);
    assert_eq!(
        &*new_snap.pools[0].nodes[0].key.name, "n5",
        "the file order changed"
    );

    // The whole table, in process: not one key moves.
    let (op, np) = (&old_snap.pools[0], &new_snap.pools[0]);
    for k in 0..20_000u64 {
        let kh = herdgate::routing::key_hash(&k.to_le_bytes());
        let o = op.ring.pick(kh, |_| true).map(|i| &op.nodes[i].key.name);
        let n = np.ring.pick(kh, |_| true).map(|i| &np.nodes[i].key.name);
        assert_eq!(o, n, "key {k} moved");
    }
    // And over real connections.
    for (key, was) in &learned {
        assert_eq!(
            land_ws(&fleet, addr, "/", &[("x-session", key)]).await,
            *was,
            "{key}"
        );
    }
    for (key, want) in &fresh {
        let got = land_ws(&fleet, addr, "/", &[("x-session", key)]).await;
        assert_eq!(fleet.names[got], *want, "{key}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_moves_only_its_keys() {
    let fleet = Fleet::start(&["n1", "n2", "n3", "n4"]).await;
    let dir = tempfile::tempdir().unwrap();
    // 200 keys from one client address: above the default per-client quota.
    let routes = "[[route]]\npool = \"p\"\nsticky = { header = \"x-session\", max_entries_per_client = 1000 }\n";
    let proxy = start(parse(&config(&fleet, &fleet.all(), routes), dir.path())).await;
    let addr = proxy.addr("plain");
    let h = &proxy.handle;
    let gone = fleet.index("n4");

    let mut before = Vec::new();
    for i in 0..200 {
        let key = format!("k-{i}");
        let order = hash_order(h, "p", &key);
        let got = land_ws(&fleet, addr, "/", &[("x-session", &key)]).await;
        assert_eq!(fleet.names[got], order[0]);
        before.push((key, got, order));
    }
    let on_gone = before.iter().filter(|(_, n, _)| *n == gone).count();
    assert!(on_gone > 20, "about a quarter of 200 keys on n4: {on_gone}");
    assert_eq!(sticky_len(h, "p"), 200);
    let fresh: Vec<(String, Vec<String>)> = (0..100)
        .map(|i| {
            let k = format!("f-{i}");
            let o = hash_order(h, "p", &k);
            (k, o)
        })
        .collect();

    let path = dir.path().join("herdgate.toml");
    std::fs::write(&path, config(&fleet, &[0, 1, 2], routes)).unwrap();
    within(h.reload_file(&path)).await.unwrap();
    // The removed node's learned entries are dropped, the others stay.
    assert_eq!(sticky_len(h, "p"), 200 - on_gone);

    let mut moved = 0;
    for (key, was, order) in &before {
        let got = land_ws(&fleet, addr, "/", &[("x-session", key)]).await;
        if *was == gone {
            // Next node in hash order.
            assert_eq!(fleet.names[got], order[1], "{key}");
            moved += 1;
        } else {
            assert_eq!(got, *was, "{key} was on {} and moved", fleet.names[*was]);
        }
    }
    assert_eq!(moved, on_gone);
    let mut fresh_moved = 0;
    for (key, order) in &fresh {
        let got = &fleet.names[land_ws(&fleet, addr, "/", &[("x-session", key)]).await];
        if order[0] == "n4" {
            assert_eq!(got, &order[1], "{key}");
            fresh_moved += 1;
        } else {
            assert_eq!(got, &order[0], "{key} moved");
        }
    }
    assert!(fresh_moved > 0 && fresh_moved < 50, "{fresh_moved}");
    proxy.shutdown().await;
}
