//! The access log of the real binary (`[log] access = true`), text and JSON: an honest
//! WebSocket client (its tunnel's line has bytes each way and its close code), a plain
//! HTTP request from behind a trusted proxy (the real client, the query never logged), a
//! client turned away by admission (503, `rejected`, the retry-after given) and a hostile
//! client with a quote, a tab and non-ASCII bytes in its Host and path: every line stays
//! one line and the junk is escaped. Off (the default), nothing is logged.

use crate::support::http1::{http_get, http_raw};
use crate::support::metrics::metric;
use crate::support::net::free_addr;
use crate::support::nodes::{echo_nodes, HttpNode};
use crate::support::process::Herdgate;
use crate::support::ws::{echo_text, ws_try};
use crate::support::{eventually, within};
use futures_util::SinkExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;

/// Attempts the rejected client makes after its first.
const HAMMER: usize = 5;

fn config(access: &str, echo: SocketAddr, web: SocketAddr) -> (String, SocketAddr, SocketAddr) {
    let (listen, admin) = (free_addr(), free_addr());
    let text = format!(
        "[log]\n{access}\n[admin]\nbind = \"{admin}\"\n\n\
         [[listener]]\nname = \"edge\"\nbind = \"{listen}\"\ntrusted_proxies = [\"127.0.0.3\"]\n\n\
         [[route]]\npool = \"ws\"\n\n[[route]]\npath_prefix = \"/api\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"ws\"\nadmit_rate = 0.1\nadmit_burst = 1\n\
         [[pool.node]]\nname = \"e1\"\naddr = \"{echo}\"\n\n\
         [[pool]]\nname = \"web\"\n[[pool.node]]\nname = \"w1\"\naddr = \"{web}\"\n"
    );
    (text, listen, admin)
}

/// One access line as field -> value, from text (`key=value` words) or JSON.
fn parse(line: &str) -> Option<HashMap<String, String>> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["target"] != "herdgate::access" {
            return None;
        }
        let mut m: HashMap<String, String> = v["fields"]
            .as_object()?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        m.insert("kind".into(), m.get("message").cloned().unwrap_or_default());
        return Some(m);
    }
    let (_, rest) = line.split_once(" herdgate::access: ")?;
    let mut words = rest.split(' ');
    let mut m = HashMap::from([("kind".to_owned(), words.next()?.to_owned())]);
    for w in words {
        let (k, v) = w.split_once('=')?;
        m.insert(k.to_owned(), v.to_owned());
    }
    Some(m)
}

fn access_lines(log: &str) -> Vec<HashMap<String, String>> {
    log.lines().filter_map(parse).collect()
}

fn find<'a>(
    lines: &'a [HashMap<String, String>],
    want: &[(&str, &str)],
) -> Option<&'a HashMap<String, String>> {
    lines.iter().find(|l| {
        want.iter()
            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

async fn run(format: &str) {
    let nodes = echo_nodes(1).await;
    let web = HttpNode::start("w1").await;
    let access = format!("format = \"{format}\"\naccess = true");
    let (text, listen, admin) = config(&access, nodes[0].addr, web.addr);
    let h = Herdgate::start(&text).await;
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());

    // An honest WebSocket client, with a secret in its query; it closes with 4000.
    let (mut ws, _) = ws_try(ip("127.0.0.2"), listen, "/chat?token=s3cret", &[])
        .await
        .unwrap();
    echo_text(&mut ws, "hello").await;
    let close = CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    };
    within(ws.send(Message::Close(Some(close)))).await.unwrap();
    while let Some(Ok(_)) = within(futures_util::StreamExt::next(&mut ws)).await {}

    // A second one right behind it: the bucket (one token per 10 s, burst 1) is empty:
    // 503.
    let refused = ws_try(ip("127.0.0.4"), listen, "/chat", &[]).await;
    assert_eq!(refused.err().as_deref(), Some("HTTP 503"));
    // It hammers on, ignoring the hint (far earlier than its slot, so never held for
    // it): past its cap of slots on the node (4 at this rate) it is told so, and nothing
    // more is booked for it.
    for _ in 0..HAMMER {
        let again = ws_try(ip("127.0.0.4"), listen, "/chat", &[]).await;
        assert_eq!(again.err().as_deref(), Some("HTTP 503"));
    }

    // Plain HTTP from behind the trusted proxy 127.0.0.3, for client 203.0.113.7.
    let mut tcp = crate::support::net::tcp_from(ip("127.0.0.3"), listen)
        .await
        .unwrap();
    tcp.write_all(
        b"GET /api/items?secret=hunter2 HTTP/1.1\r\nHost: shop.example\r\n\
          X-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    within(tcp.read_to_end(&mut answer)).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

    // A hostile client: quote, tab and non-ASCII bytes in its Host, quote and high
    // bytes where hyper lets them through.
    let (st, _, _) = http_raw(
        listen,
        b"GET /x\"y HTTP/1.1\r\nHost: ev\til\"\xff\xfe host\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 400);
    // Control bytes and an escape sequence: refused (by hyper or herdgate), and nothing
    // of it reaches a line raw.
    let (st, _, _) = http_raw(
        listen,
        b"GET /\x1b[31m\x00\x7f HTTP/1.1\r\nHost: a\x1b[2Jb\x7f\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(st, 400);

    let mut lines = Vec::new();
    eventually("an access line for each request and the tunnel", || {
        lines = access_lines(&h.log());
        let ok = find(&lines, &[("kind", "tunnel")]).is_some()
            && find(&lines, &[("status", "400")]).is_some()
            && find(&lines, &[("status", "200")]).is_some()
            && find(&lines, &[("status", "503")]).is_some();
        async move { ok }
    })
    .await;
    let log = h.log();
    assert!(
        !log.contains("s3cret") && !log.contains("hunter2"),
        "query logged:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\t') && !log.contains('\u{7f}'),
        "{log}"
    );

    let upgrade = find(&lines, &[("kind", "http"), ("status", "101")]).expect("the 101");
    assert_eq!(upgrade["client"], "127.0.0.2");
    assert_eq!(upgrade["path"], "/chat");
    assert_eq!(upgrade["node"], "ws/e1");
    assert_eq!(upgrade["admission"], "bucket");
    assert_eq!(upgrade["listener"], "edge");

    let tunnel = find(&lines, &[("kind", "tunnel")]).unwrap();
    assert_eq!(tunnel["client"], "127.0.0.2");
    assert_eq!(tunnel["node"], "ws/e1");
    assert_eq!(tunnel["status"], "101");
    assert_eq!(tunnel["close"], "4000", "{tunnel:?}");
    assert_eq!(tunnel["end"], "closed");
    // "hello" each way (masked from the client: 6 + 5, from the node: 2 + 5) and the
    // close frames (4000 + "bye": masked 6 + 5, echoed 2 + 5).
    assert_eq!(tunnel["bytes_in"], "22", "{tunnel:?}");
    assert_eq!(tunnel["bytes_out"], "14", "{tunnel:?}");

    let hammered: Vec<_> = lines.iter().filter(|l| l["status"] == "503").collect();
    assert_eq!(hammered.len(), 1 + HAMMER);
    assert!(
        hammered.iter().any(|l| l["admission"] == "slots"),
        "{hammered:?}"
    );
    let rejected = find(&lines, &[("status", "503")]).unwrap();
    assert_eq!(rejected["client"], "127.0.0.4");
    assert_eq!(rejected["admission"], "rejected");
    assert_eq!(rejected["node"], "ws/e1");
    let retry: u64 = rejected["retry_after_ms"].parse().expect("a retry-after");
    assert!(retry > 0, "{rejected:?}");

    let plain = find(&lines, &[("status", "200")]).unwrap();
    assert_eq!(plain["client"], "203.0.113.7", "the real client");
    assert_eq!(plain["path"], "/api/items");
    assert_eq!(plain["host"], "shop.example");
    assert_eq!(plain["node"], "web/w1");
    assert_eq!(plain["admission"], "-");
    assert_eq!(plain["bytes_out"], "2", "the node's body, \"w1\"");

    let hostile = find(&lines, &[("status", "400")]).unwrap();
    assert_eq!(
        hostile["host"], "ev\\x09il\\x22\\xff\\xfe\\x20host",
        "{hostile:?}"
    );
    assert_eq!(hostile["node"], "-");
    if format == "text" {
        for line in log.lines().filter(|l| l.contains("herdgate::access")) {
            assert!(
                line.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{line}"
            );
        }
    }

    // The honest are unharmed and the refusal and the junk are counted.
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "herdgate_requests_total", &["status=\"400\""]),
        1.0
    );
    assert_eq!(
        metric(&metrics, "herdgate_requests_total", &["status=\"503\""]),
        (1 + HAMMER) as f64
    );
    let capped = &["reason=\"client_slots\""];
    assert!(metric(&metrics, "herdgate_admission_rejected_total", capped) >= 1.0);
    assert_eq!(
        metric(&metrics, "herdgate_requests_total", &["status=\"200\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_text() {
    run("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_in_json() {
    run("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_log_by_default() {
    let nodes = echo_nodes(1).await;
    let web = HttpNode::start("w1").await;
    let (text, listen, _) = config("", nodes[0].addr, web.addr);
    let h = Herdgate::start(&text).await;
    let (status, _) = http_get(listen, "/api/x?q=1").await;
    assert_eq!(status, 200);
    eventually("the node served it", || async {
        web.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(!h.log().contains("herdgate::access"), "{}", h.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_access_log_on_for_new_connections() {
    let nodes = echo_nodes(1).await;
    let web = HttpNode::start("w1").await;
    let (text, listen, _) = config("", nodes[0].addr, web.addr);
    let h = Herdgate::start(&text).await;
    let (status, _) = http_get(listen, "/api/before").await;
    assert_eq!(status, 200);
    std::fs::write(
        h.config_path(),
        text.replace("[log]\n", "[log]\naccess = true\n"),
    )
    .unwrap();
    h.signal("HUP");
    eventually("the reload", || async {
        h.log().contains("configuration reloaded")
    })
    .await;
    let (status, _) = http_get(listen, "/api/after").await;
    assert_eq!(status, 200);
    let lines = access_lines(&h.log());
    assert_eq!(lines.len(), 1, "{}", h.log());
    assert_eq!(lines[0]["path"], "/api/after");
}
