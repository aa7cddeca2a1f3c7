//! Request head → the upgrade herdgate sends a node. Any bytes a client can send as a
//! request head: parsed as hyper's server would (httparse), checked by
//! `check_upgrade`, and when it passes as a WebSocket upgrade, rebuilt by
//! `upgrade_for_node`. Whatever the input, nothing panics, and the request the node gets
//! is a well-formed handshake: one `Upgrade: websocket`, `Connection: upgrade`, the one
//! key the check validated, version 13, no hop-by-hop or body-framing field, and no
//! herdgate query parameter in the target.
#![no_main]

use herdgate::proxy::headers::{request_host, upgrade_for_node};
use herdgate::websocket::handshake::check_upgrade;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 8] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
];

fn parse(data: &[u8]) -> Option<http::Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut b = http::Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(if req.version? == 1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = parse(data) else {
        return;
    };
    if check_upgrade(&req) != Ok(true) {
        return;
    }
    let validated_key = req.headers().get("sec-websocket-key").cloned();
    let Ok(host) = request_host(&req) else {
        return;
    };
    let (mut parts, ()) = req.into_parts();
    let client = std::net::IpAddr::from([192, 0, 2, 1]);
    let Ok(key) = upgrade_for_node(&mut parts, client, false, host.as_deref()) else {
        return;
    };
    let h = &parts.headers;
    let all = |name: &str| -> Vec<&[u8]> { h.get_all(name).iter().map(|v| v.as_bytes()).collect() };
    assert_eq!(all("upgrade"), [b"websocket".as_slice()]);
    assert_eq!(all("connection"), [b"upgrade".as_slice()]);
    assert_eq!(Some(&key), validated_key.as_ref(), "the key the check validated");
    assert_eq!(all("sec-websocket-key"), [key.as_bytes()]);
    assert_eq!(all("sec-websocket-version"), [b"13".as_slice()]);
    for name in HOP_BY_HOP {
        assert!(h.get(name).is_none(), "{name} reached the node");
    }
    assert_eq!(parts.method, http::Method::GET);
    assert_eq!(parts.version, http::Version::HTTP_11);
    let target = parts.uri.to_string();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    for kv in query.split('&') {
        let k = kv.split_once('=').map_or(kv, |(k, _)| k);
        assert!(
            k != herdgate_wire::TICKET_QUERY && k != herdgate_wire::ACCEPT_TICKET_QUERY,
            "a herdgate parameter reached the node: {target}"
        );
    }
});
