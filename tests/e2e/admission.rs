//! Admission end to end over real sockets (issue 3): rejections read by real WebSocket
//! clients (503 and the 1013 close), tickets presented by header, cookie and query, a
//! ticketless herd obeying the hints, queue mode, slow start, per-client limits, metrics.

use crate::support::client::{
    self, connect_once, run_until_connected, HintSource, Outcome, ReconnectPolicy, RejectedBy,
    Rejection, Stats, Strategy, Target,
};
use crate::support::http1::http_get;
use crate::support::metrics::metric;
use crate::support::nodes::echo_nodes;
use crate::support::proxy::{parse, pool_toml, start};
use crate::support::tls::{cert_toml, certs};
use crate::support::{eventually, now, within};
use http::{HeaderName, HeaderValue};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// One node, one route; `pool_extra` and `route_extra` are TOML lines for those tables.
fn one_node(node: std::net::SocketAddr, pool_extra: &str, route_extra: &str, top: &str) -> String {
    format!(
        r#"{top}
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "plain"
bind = "127.0.0.1:0"

[[route]]
pool = "p"
{route_extra}

[[pool]]
name = "p"
{pool_extra}
[[pool.node]]
name = "n"
addr = "{node}"
"#
    )
}

fn rejected(o: Outcome) -> Rejection {
    match o {
        Outcome::Rejected(r) => r,
        Outcome::Connected(_) => panic!("expected a rejection, got a connection"),
        Outcome::Failed(e) => panic!("expected a rejection, got {e}"),
    }
}

fn connected(o: Outcome) -> client::Connected {
    match o {
        Outcome::Connected(c) => c,
        Outcome::Rejected(r) => panic!("expected a connection, got {r}"),
        Outcome::Failed(e) => panic!("expected a connection, got {e}"),
    }
}

/// The raw 503 of a tungstenite client: (headers, body).
async fn http_rejection(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Err(WsError::Http(resp)) => {
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            (resp.status().as_u16(), resp.headers().clone(), body)
        }
        Ok(_) => panic!("expected an HTTP rejection, the upgrade went through"),
        Err(e) => panic!("expected an HTTP rejection, got {e}"),
    }
}

fn h<'a>(m: &'a http::HeaderMap, name: &str) -> &'a str {
    m.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {m:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_503_carries_every_hint_and_the_node_is_never_contacted() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_node(nodes[0].addr, "admit_rate = 0.05\nadmit_burst = 1", "", "");
    let proxy = start(parse(&toml, dir.path())).await;
    let url = proxy.url("plain", "/");
    let target = Target::new(url.clone());
    let first = connected(connect_once(&target, None, false).await);
    // The echo node counts a client after writing its 101, which the client may see first.
    eventually("the node counted the first client", || async {
        nodes[0].stats.accepted.load(Ordering::Relaxed) == 1
    })
    .await;

    // A tungstenite client reads the 503 itself.
    let (status, hd, body) = http_rejection(&url, &[]).await;
    assert_eq!(status, 503);
    let ms: u64 = h(&hd, "retry-after-ms").parse().unwrap();
    let secs: u64 = h(&hd, "retry-after")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(ms > 0);
    // A ticketless client's slot is held for it up to a second early: whole seconds round
    // down (at least 1), so a client reading only Retry-After is back at or before it.
    assert_eq!(secs, (ms / 1000).max(1), "Retry-After rounds down");
    assert_eq!(h(&hd, "connection"), "close");
    assert_eq!(h(&hd, "ratelimit-policy"), "\"node\";q=1;w=1");
    assert_eq!(h(&hd, "ratelimit"), format!("\"node\";r=0;t={secs}"));
    assert!(
        hd.get("herdgate-ticket").is_none(),
        "no ticket unless asked"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["retry_after_ms"], ms);

    // Asking for a ticket: header and cookie.
    let (status, hd, _) = http_rejection(&url, &[("herdgate-accept-ticket", "1")]).await;
    assert_eq!(status, 503);
    let ticket = h(&hd, "herdgate-ticket").to_string();
    assert!(h(&hd, "set-cookie").starts_with(&format!("herdgate_ticket={ticket};")));

    // The reference client classifies it, with the exact delay and the ticket first.
    let r = rejected(connect_once(&target, None, true).await);
    assert_eq!(r.by, RejectedBy::Status(503));
    let hint = r.hint.expect("a hint");
    assert_eq!(hint.source, HintSource::TicketMs);
    assert!(hint.ticket.is_some() && hint.retry_after > Duration::ZERO);

    assert_eq!(
        nodes[0].stats.accepted.load(Ordering::Relaxed),
        1,
        "a rejected upgrade never reaches the node"
    );
    drop(first);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_rejection_is_1013_with_a_short_json_reason() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 0.05\nadmit_burst = 1",
        "reject = \"websocket-close\"",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let url = proxy.url("plain", "/");
    let target = Target::new(url.clone()).with_confirm_within(Duration::from_secs(5));
    let first = connected(connect_once(&target, None, false).await);

    // Without a ticket; with one asked by header; with one asked by query parameter.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 3] = [
        ("/", &[], false),
        ("/", &[("herdgate-accept-ticket", "1")], true),
        ("/?herdgate_accept_ticket=1", &[], true),
    ];
    for (path, headers, wants) in cases {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = proxy.url("plain", path).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let (mut ws, resp) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
        assert_eq!(resp.status(), 101, "the upgrade completes locally");
        let (code, reason) = match within(ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected a close at once, got {other:?}"),
        };
        assert_eq!(code, 1013);
        assert!(reason.len() <= 123, "{} bytes: {reason}", reason.len());
        let v: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert!(
            v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{reason}"
        );
        assert_eq!(
            v.get("ticket").is_some(),
            wants,
            "{path} {headers:?}: {reason}"
        );
        while let Some(Ok(_)) = within(ws.next()).await {}
    }
    // The reference client sees a rejection with the hint.
    let r =
        rejected(client::connect_and_confirm(&target, None, true, Duration::from_secs(5)).await);
    assert_eq!(r.by, RejectedBy::Close(1013));
    assert!(r.hint.is_some_and(|h| h.ticket.is_some()));
    assert_eq!(
        nodes[0].stats.accepted.load(Ordering::Relaxed),
        1,
        "node not contacted"
    );
    drop(first);
    proxy.shutdown().await;
}

/// Ticketed clients come back at their slot and get in although fresh arrivals found the
/// bucket empty; forged and reused tickets get an ordinary decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_claim_their_reserved_token_by_header_cookie_and_query() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    // Holding off: the test claims tickets, and a near slot would otherwise be waited for.
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 4.0\nadmit_burst = 1\n[pool.queue]\ntimeout = \"0s\"",
        "",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let url = proxy.url("plain", "/");
    let plain = Target::new(url.clone());
    let first = connected(connect_once(&plain, None, false).await);

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Via {
        Header,
        Cookie,
        Query,
    }
    let mut used = Vec::new();
    let mut keep = Vec::new();
    for via in [Via::Header, Via::Cookie, Via::Query] {
        let r = rejected(connect_once(&plain, None, true).await);
        let hint = r.hint.expect("hint");
        let ticket = hint.ticket.clone().expect("a ticket");
        // Obey the hint: the ticket is good from its slot on.
        tokio::time::sleep(hint.retry_after).await;
        // A fresh arrival right at that moment finds no token: the reservation holds it.
        // (It carries tickets too: a ticketless one could claim an earlier promise.)
        let fresh = rejected(connect_once(&plain, None, true).await);
        assert_eq!(fresh.by, RejectedBy::Status(503), "{via:?}");
        let t = match via {
            Via::Header => Target::new(url.clone()).with_header(
                HeaderName::from_static("herdgate-ticket"),
                HeaderValue::from_str(&ticket).unwrap(),
            ),
            Via::Cookie => Target::new(url.clone()).with_header(
                HeaderName::from_static("cookie"),
                HeaderValue::from_str(&format!("a=b; herdgate_ticket={ticket}")).unwrap(),
            ),
            Via::Query => Target::new(format!("{url}?x=1&herdgate_ticket={ticket}")),
        };
        keep.push(connected(connect_once(&t, None, false).await));
        if via == Via::Query {
            // The ticket is for herdgate: the node sees the rest of the query only.
            let target = nodes[0].stats.last_target.lock().unwrap().clone();
            assert_eq!(target.as_deref(), Some("/?x=1"), "{via:?}");
        }
        used.push(ticket);
    }
    let text = proxy.handle.render_metrics();
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_tickets_total",
            &["outcome=\"valid\""]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_admitted_total",
            &["via=\"ticket\""]
        ),
        3.0
    );

    // Reused: an ordinary decision (the bucket is empty now: rejected, with a new hint).
    let r = rejected(connect_once(&plain, Some(&used[0]), true).await);
    assert!(r.hint.is_some());
    // Forged: one character changed.
    let mut forged = used[1].clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let r = rejected(connect_once(&plain, Some(&forged), true).await);
    assert!(r.hint.is_some());
    let text = proxy.handle.render_metrics();
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_tickets_total",
            &["outcome=\"reused\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_tickets_total",
            &["outcome=\"forged\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_admitted_total",
            &["via=\"ticket\""]
        ),
        3.0
    );
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), 4);
    drop(keep);
    drop(first);
    proxy.shutdown().await;
}

/// 300 ticketless clients at once on one node (admit_rate 100, burst 5): obeying the
/// hints, all get in, each in a few attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticketless_herd_obeying_the_hints_all_gets_back_in() {
    // 300 clients, each from its own loopback address.
    let (s, text) = ticketless_herd(300, true).await;
    let per_client = s.attempts as f64 / 300.0;
    assert!(
        per_client <= 2.5,
        "{per_client:.2} attempts per client: {s:?}"
    );
    let promise = metric(
        &text,
        "herdgate_admission_admitted_total",
        &["via=\"promise\""],
    );
    assert!(promise > 0.0, "returning clients claimed their promises");
}

/// The same herd behind one address (a NAT, or a load generator on one machine): one
/// client as far as herdgate can tell, so its slots are capped (half a second of the rate
/// at once) and the rest get places in that address's own queue, one interval apart,
/// booking nothing. Everyone still gets in, in about as many attempts, and the cap is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_behind_one_address_all_gets_back_in_under_its_slot_cap() {
    let (s, text) = ticketless_herd(300, false).await;
    let capped = metric(
        &text,
        "herdgate_admission_rejected_total",
        &["reason=\"client_slots\""],
    );
    assert!(capped > 0.0, "the cap fired and was counted");
    // A queued client comes back at its place and books its slot then: one more
    // attempt at most.
    let per_client = s.attempts as f64 / 300.0;
    assert!(
        per_client <= 3.5,
        "{per_client:.2} attempts per client: {s:?}"
    );
}

/// `n` ticketless reference clients against one node at 100/s; `distinct`: each from its
/// own loopback address, else all from 127.0.0.1. Returns their stats and the metrics.
async fn ticketless_herd(n: u64, distinct: bool) -> (client::StatsSnapshot, String) {
    let limit = herdgate::fdlimit::raise().unwrap();
    assert!(limit > 2000);
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_node(nodes[0].addr, "admit_rate = 100.0\nadmit_burst = 5", "", "");
    let proxy = start(parse(&toml, dir.path())).await;
    let stats = Arc::new(Stats::new());
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut target = Target::new(proxy.url("plain", "/"));
        if distinct {
            let ip = std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 2 + (i % 250) as u8);
            target = target.with_local_ip(ip.into());
        }
        let stats = stats.clone();
        tasks.push(tokio::spawn(async move {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(i);
            let mut policy = ReconnectPolicy::new(Strategy::Herdgate { tickets: false }, &mut rng);
            // Held until everyone is in.
            run_until_connected(&target, &mut policy, &mut rng, &stats)
                .await
                .expect("never gives up")
        }));
    }
    let conns = within(futures_util::future::join_all(tasks)).await;
    assert!(conns.iter().all(|c| c.is_ok()));
    let s = stats.snapshot();
    assert_eq!(s.connected, n);
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), n);
    eprintln!(
        "herd of {n} (distinct addresses: {distinct}): {s:?}, {:.2} attempts per client",
        s.attempts as f64 / n as f64
    );
    assert_eq!(s.failed, 0, "{s:?}");
    let text = proxy.handle.render_metrics();
    drop(conns);
    proxy.shutdown().await;
    (s, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_holds_then_forwards_and_rejects_beyond_its_bounds() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 2.0\nadmit_burst = 1\n[pool.queue]\ntimeout = \"2s\"\nmax_len = 1",
        "",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let url = proxy.url("plain", "/");
    let target = Target::new(url.clone());
    let node = proxy.handle.snapshot().pools[0].nodes[0].clone();
    let first = connected(connect_once(&target, None, false).await);

    // Over the bucket: held until its slot (~0.5 s), then forwarded; no rejection seen.
    let t2 = target.clone();
    let queued = tokio::spawn(async move { connect_once(&t2, None, false).await });
    eventually("one request queued", || async {
        node.queue_len.load(Ordering::Relaxed) == 1
    })
    .await;
    // The queue holds one: the next is turned away with a hint.
    let r = rejected(connect_once(&target, None, false).await);
    assert_eq!(r.by, RejectedBy::Status(503));
    assert!(r.hint.is_some());
    let second = connected(within(queued).await.unwrap());
    assert_eq!(node.queue_len.load(Ordering::Relaxed), 0);
    let text = proxy.handle.render_metrics();
    assert_eq!(
        metric(
            &text,
            "herdgate_admission_admitted_total",
            &["via=\"queue\""]
        ),
        1.0
    );
    assert_eq!(metric(&text, "herdgate_admission_queued_total", &[]), 1.0);
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), 2);
    drop((first, second));
    proxy.shutdown().await;
}

/// With no `[pool.queue]`, a request whose slot is within a second (the smallest
/// `Retry-After`) is held for it instead of turned away; a slot further off gets a hint.
/// A client opening many requests at once holds at most `max_slots_per_client` of them
/// (held requests count against its cap) and is turned away past it, while an honest
/// client beside it gets a slot of its own and a hint to it, never a cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_near_slot_is_waited_for_and_one_client_holds_at_most_its_cap() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    // One token every 500 ms, none kept for fresh arrivals: the next two slots fit in the
    // default hold of one second, the third (1.5 s off) does not.
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 2.0\nadmit_burst = 1\nfresh_share = 0.0\nmax_slots_per_client = 2",
        "",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let url = proxy.url("plain", "/");
    let from = |last: u8| Target::new(url.clone()).with_local_ip([127, 0, 9, last].into());
    let node = proxy.handle.snapshot().pools[0].nodes[0].clone();
    let first = connected(connect_once(&from(2), None, false).await);

    // The hostile client: eight requests at once from one address.
    let hostile: Vec<_> = (0..8)
        .map(|_| {
            let t = from(3);
            tokio::spawn(async move { connect_once(&t, None, false).await })
        })
        .collect();
    eventually("the hostile client's cap of requests held", || async {
        node.queue_len.load(Ordering::Relaxed) == 2
    })
    .await;
    // An honest client beside it: its slot is beyond the hold: a hint, not a cap.
    let r = rejected(connect_once(&from(4), None, false).await);
    assert_eq!(r.by, RejectedBy::Status(503));
    let hint = r.hint.expect("hint");
    assert!(hint.retry_after >= Duration::from_secs(1), "{hint:?}");
    let (mut held, mut capped) = (0, 0);
    for h in hostile {
        match within(h).await.unwrap() {
            Outcome::Connected(c) => {
                held += 1;
                drop(c);
            }
            Outcome::Rejected(r) => {
                assert_eq!(r.by, RejectedBy::Status(503));
                assert!(r.hint.is_some(), "a capped request gets a hint");
                capped += 1;
            }
            Outcome::Failed(e) => panic!("hostile request failed: {e}"),
        }
    }
    assert_eq!((held, capped), (2, 6));

    let text = proxy.handle.render_metrics();
    let count = |name: &str, label: &str| metric(&text, name, &[label]);
    assert_eq!(
        count("herdgate_admission_admitted_total", "via=\"queue\""),
        2.0
    );
    assert_eq!(
        count(
            "herdgate_admission_rejected_total",
            "reason=\"client_slots\""
        ),
        6.0
    );
    assert_eq!(
        count("herdgate_admission_rejected_total", "reason=\"busy\""),
        1.0
    );
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), 3);
    drop(first);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_rejects_when_the_slot_is_beyond_the_queue_timeout() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    // One token every 4 s: the next slot is beyond the 2 s queue timeout.
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 0.25\nadmit_burst = 1\n[pool.queue]\ntimeout = \"2s\"",
        "",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let target = Target::new(proxy.url("plain", "/"));
    let first = connected(connect_once(&target, None, false).await);
    let r = rejected(connect_once(&target, None, false).await);
    let hint = r.hint.expect("hint");
    assert!(hint.retry_after > Duration::from_secs(2), "{hint:?}");
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), 1);
    drop(first);
    proxy.shutdown().await;
}

/// A client that goes away while queued must not be forwarded, and its token is given
/// back (refund). Whether this holds depends on hyper dropping the service future when
/// the client disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_queued_is_not_forwarded() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_node(
        nodes[0].addr,
        "admit_rate = 2.0\nadmit_burst = 1\n[pool.queue]\ntimeout = \"2s\"",
        "",
        "",
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let target = Target::new(proxy.url("plain", "/"));
    let node = proxy.handle.snapshot().pools[0].nodes[0].clone();
    let first = connected(connect_once(&target, None, false).await);

    let (s, _) = {
        // The upgrade request, then hang up before the slot comes.
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(proxy.addr("plain"))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
        (s, ())
    };
    eventually("queued", || async {
        node.queue_len.load(Ordering::Relaxed) == 1
    })
    .await;
    drop(s);
    // Wait past the slot: the queue empties either way.
    eventually("queue empty", || async {
        node.queue_len.load(Ordering::Relaxed) == 0
    })
    .await;
    // Give a forwarded request time to reach the node: a new client is admitted only
    // after the gone one's slot, so once it is in, the gone one was decided.
    let third = {
        let mut policy = ReconnectPolicy::new(
            Strategy::Herdgate { tickets: false },
            &mut rand::thread_rng(),
        );
        within(run_until_connected(
            &target,
            &mut policy,
            &mut rand::thread_rng(),
            &Stats::new(),
        ))
        .await
        .unwrap()
    };
    let stats = node.admission.stats();
    assert_eq!(
        nodes[0].stats.accepted.load(Ordering::Relaxed),
        2,
        "the client that hung up was forwarded to the node (refunded: {})",
        stats.refunded
    );
    assert_eq!(stats.refunded, 1, "{stats:?}");
    drop((first, third));
    proxy.shutdown().await;
}

/// A node added by a reload ramps up: its effective rate starts at a tenth and reaches
/// the full rate after slow_start; in the first moments it admits fewer than a node at
/// full rate would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_by_reload_starts_slow() {
    let nodes = echo_nodes(2).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = |name: &str, addr: std::net::SocketAddr, extra: &str| {
        format!(
            "[[route]]\npath_prefix = \"/{name}\"\npool = \"{name}\"\n[[pool]]\nname = \"{name}\"\nadmit_rate = 20.0\nadmit_burst = 10\n{extra}\n[[pool.node]]\nname = \"{name}-1\"\naddr = \"{addr}\"\n"
        )
    };
    let head =
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n";
    let old = pool("old", nodes[0].addr, "slow_start = \"2s\"");
    let proxy = start(parse(&format!("{head}{old}"), dir.path())).await;
    // Holding off: the burst past the ramp is to be turned away, not waited for.
    let new = pool(
        "new",
        nodes[1].addr,
        "slow_start = \"2s\"\n[pool.queue]\ntimeout = \"0s\"",
    );
    within(
        proxy
            .handle
            .reload(parse(&format!("{head}{old}{new}"), dir.path())),
    )
    .await
    .unwrap();
    let snap = proxy.handle.snapshot();
    let node = |name: &str| snap.pools.iter().find(|p| &*p.name == name).unwrap().nodes[0].clone();
    let (n_old, n_new) = (node("old"), node("new"));
    let now = now();
    let rate_new = n_new.admission.effective_rate(now);
    assert_eq!(
        n_old.admission.effective_rate(now),
        20.0,
        "present at start: no ramp"
    );
    assert!(rate_new < 5.0, "starts near 10% of 20/s, got {rate_new}");
    let later = now + 2_100_000_000;
    assert_eq!(
        n_new.admission.effective_rate(later),
        20.0,
        "full rate after slow_start"
    );

    // The same burst of 10 upgrades at each: the old node takes its burst, the new one
    // (burst scaled down too) far fewer.
    // Ten distinct clients (addresses): one client's second request would be held for
    // its own promise instead of turned away.
    async fn burst(url: String) -> usize {
        let tasks: Vec<_> = (0..10u8)
            .map(|i| {
                let ip = std::net::Ipv4Addr::new(127, 0, 7, 2 + i).into();
                let t = Target::new(url.clone()).with_local_ip(ip);
                tokio::spawn(async move { connect_once(&t, None, false).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if let Outcome::Connected(_) = within(t).await.unwrap() {
                ok += 1;
            }
        }
        ok
    }
    let got_new = burst(proxy.url("plain", "/new")).await;
    let got_old = burst(proxy.url("plain", "/old")).await;
    eprintln!("slow start: new node admitted {got_new}/10, old node {got_old}/10");
    assert!(got_old >= 10, "old node at full rate: {got_old}");
    assert!(got_new <= 3, "new node in slow start: {got_new}");
    assert!(got_new >= 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_answer_429_per_ip_and_per_sticky_key() {
    let nodes = echo_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let head =
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\n";
    let toml = format!(
        r#"{head}
[[route]]
path_prefix = "/ip"
pool = "p"
[route.client_limit]
rate = 0.5
burst = 2

[[route]]
path_prefix = "/user"
pool = "p"
[route.sticky]
header = "x-user"
[route.client_limit]
rate = 0.5
burst = 2
by = "sticky-key"

{}"#,
        pool_toml(
            "p",
            &[nodes[0].addr],
            "admit_rate = 1000.0\nadmit_burst = 1000"
        )
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let ip = Target::new(proxy.url("plain", "/ip"));
    let mut keep = Vec::new();
    keep.push(connected(connect_once(&ip, None, false).await));
    keep.push(connected(connect_once(&ip, None, false).await));
    let r = rejected(connect_once(&ip, None, false).await);
    assert_eq!(r.by, RejectedBy::Status(429));
    let hint = r.hint.expect("429 carries a hint");
    assert!(hint.retry_after > Duration::ZERO);
    let (status, hd, _) = http_rejection(&proxy.url("plain", "/ip"), &[]).await;
    assert_eq!(status, 429);
    let ms: u64 = h(&hd, "retry-after-ms").parse().unwrap();
    assert_eq!(
        h(&hd, "retry-after").parse::<u64>().unwrap(),
        ms.div_ceil(1000)
    );
    assert_eq!(h(&hd, "connection"), "close");

    // By sticky key: alice spends her burst; bob, same IP, still gets in.
    let user = |u: &str| {
        Target::new(proxy.url("plain", "/user")).with_header(
            HeaderName::from_static("x-user"),
            HeaderValue::from_str(u).unwrap(),
        )
    };
    keep.push(connected(connect_once(&user("alice"), None, false).await));
    keep.push(connected(connect_once(&user("alice"), None, false).await));
    assert_eq!(
        rejected(connect_once(&user("alice"), None, false).await).by,
        RejectedBy::Status(429)
    );
    keep.push(connected(connect_once(&user("bob"), None, false).await));
    let text = proxy.handle.render_metrics();
    assert_eq!(metric(&text, "herdgate_client_limited_total", &[]), 3.0);
    assert_eq!(nodes[0].stats.accepted.load(Ordering::Relaxed), 5);
    drop(keep);
    proxy.shutdown().await;
}

/// After a small storm over TLS with a handshake cap, every admission metric is there
/// with a sensible value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_metrics_after_a_small_storm() {
    let nodes = echo_nodes(1).await;
    let (dir, cert) = certs(&["localhost"]);
    let toml = format!(
        r#"
[tickets]
claim_window = "1s"

[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
handshakes_per_second = 50.0
handshake_burst = 4
[listener.tls]
{}
[[route]]
pool = "p"

{}"#,
        cert_toml(&cert),
        pool_toml(
            "p",
            &[nodes[0].addr],
            "admit_rate = 10.0\nadmit_burst = 2\n[pool.queue]\ntimeout = \"300ms\"\nmax_len = 2"
        )
    );
    let proxy = start(parse(&toml, dir.path())).await;
    let tls = client::tls_client_config_with_root(rustls::pki_types::CertificateDer::from(
        cert.der.clone(),
    ))
    .unwrap();
    let url = format!("wss://localhost:{}/", proxy.addr("tls").port());
    let target = Arc::new(Target::new(url).with_tls(tls).with_addr(proxy.addr("tls")));
    // Each client from its own address (a client's slots are capped per address).
    let from = |i: u8| {
        let ip = std::net::Ipv4Addr::new(127, 0, 2, 2 + i);
        Arc::new((*target).clone().with_local_ip(ip.into()))
    };
    // 20 at once, half of them ticket-capable; then each obeys its hint once.
    let storm: Vec<_> = (0..20u8)
        .map(|i| {
            let t = from(i);
            tokio::spawn(async move { (i, connect_once(&t, None, i % 2 == 0).await) })
        })
        .collect();
    let mut keep = Vec::new();
    let mut again = Vec::new();
    for s in storm {
        match within(s).await.unwrap() {
            (_, Outcome::Connected(c)) => keep.push(c),
            (i, Outcome::Rejected(r)) => again.push((i, r.hint.expect("hint"))),
            (_, Outcome::Failed(e)) => panic!("{e}"),
        }
    }
    assert!(
        !again.is_empty(),
        "the storm exceeded the bucket and the queue"
    );
    let scrape = || async { http_get(proxy.admin.unwrap(), "/metrics").await.1 };
    let text = scrape().await;
    let backlog = metric(&text, "herdgate_schedule_backlog_seconds", &[]);
    assert!(
        backlog > 0.0,
        "rejections booked the schedule ahead: {backlog}"
    );
    // Half of those who were turned away come back with their ticket (or at their
    // promise); the rest never return.
    // (by client index: half of each kind, whatever order the rejections came in)
    let returning: Vec<_> = again
        .iter()
        .filter(|(i, _)| (i / 2) % 2 == 0)
        .cloned()
        .collect();
    let back: Vec<_> = returning
        .into_iter()
        .map(|(i, hint)| {
            let t = from(i);
            tokio::spawn(async move {
                tokio::time::sleep(hint.retry_after).await;
                connect_once(&t, hint.ticket.as_deref(), hint.ticket.is_some()).await
            })
        })
        .collect();
    for b in back {
        match within(b).await.unwrap() {
            Outcome::Connected(c) => keep.push(c),
            other => eprintln!("a returning client: {other:?}"),
        }
    }
    // The no-shows' slots pass their grace: reservations are released to any arrival
    // (these ticketless probes take them), the rest expire unclaimed; both are counted.
    eventually("no-show capacity released or counted", || async {
        let _ = connect_once(&target, None, false).await;
        let text = scrape().await;
        metric(&text, "herdgate_admission_unclaimed_total", &[])
            + metric(&text, "herdgate_admission_released_total", &[])
            > 0.0
    })
    .await;
    let text = scrape().await;
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("herdgate_admission")
                || l.starts_with("herdgate_retry_after_seconds_count")
                || l.starts_with("herdgate_tls_handshakes_deferred")
                || l.starts_with("herdgate_queue_length")
                || l.starts_with("herdgate_schedule_backlog"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let m = |name: &str, f: &[&str]| metric(&text, name, f);
    let admitted = m("herdgate_admission_admitted_total", &[]);
    assert_eq!(
        admitted,
        nodes[0].stats.accepted.load(Ordering::Relaxed) as f64
    );
    // The first arrival always finds the bucket conforming; whether the second does too
    // depends on how far apart the TLS handshake cap (50/s) lets them in on a loaded
    // machine (one clean-clone CI run saw 1): the split is not what this test is about.
    assert!(m("herdgate_admission_admitted_total", &["via=\"bucket\""]) >= 1.0);
    assert!(m("herdgate_admission_admitted_total", &["via=\"queue\""]) >= 1.0);
    // The returning clients came in by their ticket, or (late over TLS on a loaded
    // machine, after their reservation was released) by a public credit.
    assert!(
        m("herdgate_admission_admitted_total", &["via=\"ticket\""])
            + m("herdgate_admission_admitted_total", &["via=\"promise\""])
            >= 1.0
    );
    let rejected = m("herdgate_admission_rejected_total", &["reason=\"busy\""]);
    assert!(rejected >= again.len() as f64);
    assert_eq!(
        m("herdgate_retry_after_seconds_count", &[]),
        m("herdgate_admission_rejected_total", &[]),
        "one retry-after sample per rejection"
    );
    assert!(
        m("herdgate_admission_tickets_total", &[]) >= 1.0,
        "presented tickets counted"
    );
    assert!(
        m(
            "herdgate_tls_handshakes_deferred_total",
            &["listener=\"tls\""]
        ) >= 1.0
    );
    assert!(
        text.contains("herdgate_queue_length{"),
        "queue gauge exported"
    );
    assert_eq!(m("herdgate_queue_length", &[]), 0.0, "nobody waits now");
    assert!(
        m("herdgate_admission_unclaimed_total", &[]) + m("herdgate_admission_released_total", &[])
            >= 1.0,
        "no-show capacity released or counted"
    );
    drop(keep);
    proxy.shutdown().await;
}
