//! DNS-rebinding defence: a request must name the admin listener itself in `Host`.
//!
//! A web page served from `evil.example` whose name the attacker re-points at 127.0.0.1
//! makes the browser send `Host: evil.example:9900` to the admin port. Only the address
//! the connection arrived on (`ip:port`) is accepted, plus `localhost:port` and
//! `[::1]:port` when that address is loopback: names an attacker cannot own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What `Host` values a connection that arrived on `local` may send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostCheck {
    local: SocketAddr,
}

impl HostCheck {
    /// For a connection whose local (server-side) address is `local`.
    pub(crate) fn new(local: SocketAddr) -> HostCheck {
        HostCheck { local }
    }

    /// Whether `host` (a `Host` value or a request target's authority) names this
    /// listener: the port must be ours (absent only when ours is 80), the host our IP,
    /// or `localhost` / `[::1]` on a loopback address. Names compare case-insensitively.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host_port(host) else {
            return false;
        };
        let port_ok = match port {
            None => self.local.port() == 80,
            Some(p) => {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|p| p == self.local.port())
            }
        };
        if !port_ok {
            return false;
        }
        let ip = self.local.ip();
        match name {
            Name::V6(v6) => {
                let v6: Option<Ipv6Addr> = v6.parse().ok();
                v6.is_some_and(|a| {
                    IpAddr::V6(a) == ip || (a == Ipv6Addr::LOCALHOST && ip.is_loopback())
                })
            }
            Name::Other(n) => match n.parse::<Ipv4Addr>() {
                Ok(a) => IpAddr::V4(a) == ip,
                Err(_) => n.eq_ignore_ascii_case("localhost") && ip.is_loopback(),
            },
        }
    }
}

enum Name<'a> {
    /// Inside `[...]`.
    V6(&'a str),
    Other(&'a str),
}

/// `host[:port]` or `[v6][:port]`; `None` when malformed (an unbracketed IPv6 address,
/// text after `]`).
fn split_host_port(s: &str) -> Option<(Name<'_>, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':')?),
        };
        return Some((Name::V6(v6), port));
    }
    let (name, port) = match s.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    };
    if name.is_empty() || port.is_some_and(|p| p.contains(':')) {
        return None;
    }
    Some((Name::Other(name), port))
}

#[cfg(test)]
mod tests {
    use super::HostCheck;

    #[test]
    fn a_loopback_listener_accepts_its_address_and_loopback_names() {
        let c = HostCheck::new("127.0.0.1:9900".parse().unwrap());
        for ok in [
            "127.0.0.1:9900",
            "localhost:9900",
            "LocalHost:9900",
            "[::1]:9900",
            "[0:0:0:0:0:0:0:1]:9900",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "127.0.0.1",
            "evil.example:9900",
            "localhost.:9900",
            "127.0.0.1:9901",
            "127.0.0.2:9900",
            "127.0.0.1:+9900",
            "127.0.0.1:",
            "127.1:9900",
            "::1:9900",
            "[::1]9900",
            "[::1]:9900:1",
            "user@127.0.0.1:9900",
            "localhost:9900/",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
    }

    #[test]
    fn other_addresses_accept_only_themselves() {
        let c = HostCheck::new("10.1.2.3:80".parse().unwrap());
        assert!(c.allows("10.1.2.3:80"));
        assert!(c.allows("10.1.2.3"), "port 80 may be left out");
        assert!(!c.allows("localhost:80"));
        assert!(!c.allows("[::1]:80"));
        let c = HostCheck::new("[fe80::1]:9900".parse().unwrap());
        assert!(c.allows("[FE80::1]:9900"));
        assert!(!c.allows("localhost:9900"));
        assert!(!c.allows("fe80::1:9900"));
    }
}
