//! `herdgate drain POOL/NODE` and `herdgate undrain POOL/NODE`: the admin API's drain
//! endpoints from the command line, with the admin address and token from the config
//! file (`[admin] bind`, `token_file`), so an operator never pastes the token.

use herdgate::config::{AdminToken, Config};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// What to ask of the node.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `POST /admin/nodes/{pool}/{node}/drain`.
    Drain,
    /// `POST /admin/nodes/{pool}/{node}/undrain`.
    Undrain,
}

/// Why the command failed, and the exit code that says so.
#[derive(Debug)]
pub enum Failure {
    /// The arguments or the config (exit 2).
    Usage(String),
    /// The admin listener could not be reached, or refused (exit 1).
    Request(String),
}

/// Ask the admin listener of the herdgate configured by `config` to drain or undrain
/// `target` (`POOL/NODE`); its answer on success.
pub fn run(action: Action, target: &str, config: &Path) -> Result<String, Failure> {
    let (pool, node) = parse_target(target).map_err(Failure::Usage)?;
    let cfg = Config::load(config).map_err(|e| Failure::Usage(e.to_string()))?;
    if !cfg.admin.enabled {
        return Err(Failure::Usage(format!(
            "{}: the admin listener is disabled ([admin] enabled = false)",
            config.display()
        )));
    }
    let token_file = cfg.admin.token_file.as_ref().ok_or_else(|| {
        Failure::Usage(format!(
            "{}: admin.token_file is not set; drain and undrain need the admin token",
            config.display()
        ))
    })?;
    let token = AdminToken::load(token_file)
        .map_err(|e| Failure::Usage(format!("admin.token_file: {e}")))?;
    let addr = reachable(cfg.admin.bind);
    let verb = match action {
        Action::Drain => "drain",
        Action::Undrain => "undrain",
    };
    let mut request = format!(
        "POST /admin/nodes/{pool}/{node}/{verb} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Length: 0\r\nConnection: close\r\nAuthorization: Bearer "
    )
    .into_bytes();
    request.extend_from_slice(token.expose());
    request.extend_from_slice(b"\r\n\r\n");
    let (status, body) = exchange(addr, &request)
        .map_err(|e| Failure::Request(format!("admin listener {addr}: {e}")))?;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(Failure::Request(format!(
            "{verb} {pool}/{node}: {status} {}",
            body.trim()
        )))
    }
}

/// `POOL/NODE`, both names plain (letters, digits, `-`, `_`, `.`).
fn parse_target(target: &str) -> Result<(&str, &str), String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match target.split_once('/') {
        Some((pool, node)) if plain(pool) && plain(node) => Ok((pool, node)),
        _ => Err(format!(
            "{target:?}: expected POOL/NODE (names of letters, digits, '-', '_' and '.')"
        )),
    }
}

/// Where to reach a listener bound to `bind`: the loopback address for an unspecified one.
pub(super) fn reachable(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port())
        }
        _ => bind,
    }
}

/// One request, `Connection: close`: the status and the body.
pub(super) fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_pool_slash_node() {
        assert_eq!(parse_target("chat/chat-2"), Ok(("chat", "chat-2")));
        for bad in ["chat", "/n", "p/", "p/n/x", "p/n?x", "p n/x", ""] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unspecified_bind_is_reached_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9900".parse().unwrap();
        assert_eq!(reachable(v4), "127.0.0.1:9900".parse().unwrap());
        let v6: SocketAddr = "[::]:9900".parse().unwrap();
        assert_eq!(reachable(v6), "[::1]:9900".parse().unwrap());
        let own: SocketAddr = "10.0.0.5:9900".parse().unwrap();
        assert_eq!(reachable(own), own);
    }
}
