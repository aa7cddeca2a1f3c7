//! Opening-handshake checks (RFC 6455 §4.2.1) done before any node is contacted.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, Method, Request};

fn has_token(h: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An upgrade request that breaks RFC 6455 §4.2.1; the message is what the client is told
/// (a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandshakeError(pub &'static str);

/// Is this a WebSocket upgrade? `Ok(false)`: an ordinary request. An upgrade to
/// websocket that breaks §4.2.1 (not GET, not HTTP/1.1, no key, version != 13) is a 400
/// here rather than a puzzle for the node.
pub fn check_upgrade<B>(req: &Request<B>) -> Result<bool, HandshakeError> {
    let h = req.headers();
    if !has_token(h, UPGRADE, "websocket") {
        return Ok(false);
    }
    if !has_token(h, CONNECTION, "upgrade") {
        return Ok(false);
    }
    if req.method() != Method::GET {
        return Err(HandshakeError("WebSocket upgrade must be a GET"));
    }
    if req.version() != http::Version::HTTP_11 {
        return Err(HandshakeError("WebSocket upgrade needs HTTP/1.1"));
    }
    let key_ok = h
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k.len() == 24 && k.ends_with("=="));
    if !key_ok {
        return Err(HandshakeError("missing or malformed Sec-WebSocket-Key"));
    }
    // An upgrade carries no body (RFC 6455 §4.1): one that says it has one would leave
    // bytes between the head and the first frame that no side can account for.
    let has_body = h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(HandshakeError("a WebSocket upgrade carries no body"));
    }
    let mut versions = h.get_all("sec-websocket-version").iter();
    if versions.next().map(|v| v.as_bytes()) != Some(b"13") || versions.next().is_some() {
        return Err(HandshakeError(
            "unsupported Sec-WebSocket-Version (need 13)",
        ));
    }
    Ok(true)
}

/// The Sec-WebSocket-Accept value for a key (RFC 6455 §4.2.2): used when herdgate
/// completes a handshake itself (to close it at once with 1013).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request<()> {
        f(Request::builder()
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13"))
        .body(())
        .unwrap()
    }

    #[test]
    fn valid_upgrade() {
        assert!(check_upgrade(&req(|b| b)).unwrap());
    }

    #[test]
    fn not_an_upgrade() {
        let r = Request::builder().body(()).unwrap();
        assert!(!check_upgrade(&r).unwrap());
    }

    #[test]
    fn broken_upgrades_are_400() {
        assert!(check_upgrade(&req(|b| b.method("POST"))).is_err());
        assert!(check_upgrade(&req(|b| b.header("sec-websocket-version", "8"))).is_err());
        let r = Request::builder()
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        assert!(check_upgrade(&r).is_err());
    }

    #[test]
    fn upgrades_with_a_body_are_400() {
        assert!(check_upgrade(&req(|b| b.header("content-length", "5"))).is_err());
        assert!(check_upgrade(&req(|b| b.header("transfer-encoding", "chunked"))).is_err());
        assert!(check_upgrade(&req(|b| b.header("content-length", "0"))).unwrap());
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
