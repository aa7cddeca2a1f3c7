//! Header rules of a proxy (RFC 9110 §7.6).

use super::respond::ProxyError;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::Request;
use std::net::IpAddr;

/// Hop-by-hop fields (RFC 9110 §7.6.1), plus the legacy ones still seen in the wild.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Fields of the WebSocket opening handshake (RFC 6455 §4.1), which must reach the node
/// whatever the client's `Connection` header names.
const HANDSHAKE: [&str; 5] = [
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Remove hop-by-hop fields and every field the Connection header names.
/// With `upgrade`, the pair `Connection: upgrade` / `Upgrade: websocket` is kept, since
/// the handshake itself must cross the proxy (RFC 6455 §4.1), and so are the handshake
/// fields even when `Connection` names them: a client that names `Sec-WebSocket-Key`
/// there would otherwise have herdgate send the node a broken handshake, and the node's
/// refusal would count against the node's health. `Host` is never removed.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != HOST && !(upgrade && HANDSHAKE.contains(&n.as_str())))
        .collect();
    let up = if upgrade {
        h.get(UPGRADE).cloned()
    } else {
        None
    };
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if let Some(up) = up {
        h.insert(UPGRADE, up);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Turn a client's upgrade request (already passed by
/// [`crate::websocket::handshake::check_upgrade`]) into the one herdgate sends the node,
/// built from its validated fields: hop-by-hop fields gone (the handshake fields survive
/// whatever `Connection` names), exactly one `Upgrade: websocket`, `Connection: upgrade`,
/// the one validated `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`, no body
/// framing, the forwarding headers, and herdgate's own query parameters removed from the
/// target. Returns the key, to check the node's `Sec-WebSocket-Accept` against.
pub fn upgrade_for_node(
    parts: &mut http::request::Parts,
    client: IpAddr,
    tls: bool,
    host: Option<&str>,
) -> Result<HeaderValue, ProxyError> {
    use http::header::{CONTENT_LENGTH, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
    let key = parts
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key"))?;
    strip_hop_by_hop(&mut parts.headers, true);
    parts
        .headers
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(SEC_WEBSOCKET_KEY, key.clone());
    parts
        .headers
        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    parts.headers.remove(CONTENT_LENGTH);
    add_forwarded(&mut parts.headers, client, tls, host);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = node_target(pq);
    parts.uri = http::Uri::try_from(target.as_ref())
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    parts.method = http::Method::GET;
    parts.version = http::Version::HTTP_11;
    Ok(key)
}

/// The request target to send the node: herdgate's own query parameters (the ticket and
/// the ticket-capable flag, wire contract) removed, since they are for herdgate alone and
/// a ticket is a bearer credential the node has no use for. Everything else is kept as
/// the client wrote it.
pub fn node_target(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    use herdgate_wire::{ACCEPT_TICKET_QUERY, TICKET_QUERY};
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.into();
    };
    let ours = |kv: &&str| {
        let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
        k == TICKET_QUERY || k == ACCEPT_TICKET_QUERY
    };
    if !query.split('&').any(|kv| ours(&kv)) {
        return path_and_query.into();
    }
    let kept: Vec<&str> = query.split('&').filter(|kv| !ours(kv)).collect();
    if kept.is_empty() {
        path.to_owned().into()
    } else {
        format!("{path}?{}", kept.join("&")).into()
    }
}

/// Add X-Forwarded-For (appended to what the request carries, as nginx's
/// `$proxy_add_x_forwarded_for` does), X-Forwarded-Proto and X-Forwarded-Host. `peer` is
/// the connection's client (the TCP peer, or the client a trusted PROXY header named).
/// An X-Forwarded-For that no trusted proxy vouches for never gets here: the pipeline
/// removes it first (`client_addr::request_client`), so from an untrusted peer the node
/// sees only `peer`, and from a trusted one the list it sent plus `peer`.
pub fn add_forwarded(h: &mut HeaderMap, peer: IpAddr, tls: bool, host: Option<&str>) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<String> = h
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let mut value = prior.join(", ");
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(xff, v);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}

/// The request's Host, without port, lowercased. HTTP/1.1 requires exactly one Host
/// (RFC 9112 §3.2): none or several is a 400.
pub fn request_host<B>(req: &Request<B>) -> Result<Option<String>, ProxyError> {
    let mut all = req.headers().get_all(HOST).iter();
    let raw = match (all.next(), all.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
        (Some(h), None) => h
            .to_str()
            .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        (None, _) => match req.uri().host() {
            Some(h) => h,
            None if req.version() >= http::Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("missing Host header"))
            }
            None => return Ok(None),
        },
    };
    let name = strip_port(raw);
    if name.is_empty() {
        return Err(ProxyError::BadRequest("invalid Host header"));
    }
    Ok(Some(name.to_ascii_lowercase()))
}

fn strip_port(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or("");
    }
    match s.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get(CONNECTION).is_none());
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn keeps_upgrade_pair() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn connection_cannot_strip_the_handshake_or_host() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static(
                "Upgrade, Sec-WebSocket-Key, sec-websocket-version, Sec-WebSocket-Protocol, \
                 Sec-WebSocket-Extensions, Host, x-gone",
            ),
        );
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(HOST, HeaderValue::from_static("chat.example"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        for f in &HANDSHAKE[1..] {
            h.insert(*f, HeaderValue::from_static("v"));
        }
        strip_hop_by_hop(&mut h, true);
        for f in HANDSHAKE {
            assert!(h.get(f).is_some(), "{f} must reach the node");
        }
        assert_eq!(h.get(HOST).unwrap(), "chat.example");
        assert!(h.get("x-gone").is_none(), "other named fields still go");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn herdgate_query_parameters_stay_with_herdgate() {
        assert_eq!(node_target("/chat"), "/chat");
        assert_eq!(node_target("/chat?room=1"), "/chat?room=1");
        assert_eq!(node_target("/chat?herdgate_ticket=abc"), "/chat");
        assert_eq!(
            node_target("/chat?room=1&herdgate_ticket=abc&herdgate_accept_ticket=1&x"),
            "/chat?room=1&x"
        );
        assert_eq!(
            node_target("/chat?herdgate_ticketx=1"),
            "/chat?herdgate_ticketx=1",
            "only exact names"
        );
    }

    #[test]
    fn forwarded_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            true,
            Some("chat.example"),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "chat.example");
    }

    #[test]
    fn host_parsing() {
        let r = Request::builder()
            .header(HOST, "Chat.Example:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).unwrap().as_deref(), Some("chat.example"));
        let r = Request::builder()
            .header(HOST, "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).unwrap().as_deref(), Some("::1"));
        let r = Request::builder().body(()).unwrap();
        assert!(request_host(&r).is_err());
        let r = Request::builder()
            .header(HOST, "a")
            .header(HOST, "b")
            .body(())
            .unwrap();
        assert!(request_host(&r).is_err());
    }
}
