//! Who the client is behind trusted proxies: CIDR sets and the `X-Forwarded-For` walk.
//!
//! A proxy is trusted when its address is in one of the listener's `trusted_proxies`
//! CIDRs. Only then does what it says about the client (a PROXY protocol header, an
//! `X-Forwarded-For` list) count; anyone else could write anything there.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR block (e.g. \"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\")")]
pub struct CidrError(pub String);

impl Cidr {
    /// Whether `ip` is in the block. IPv4-mapped IPv6 addresses count as their IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Cidr, CidrError> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An `X-Forwarded-For` entry on the walk is not a bare IP address: the list is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X-Forwarded-For holds an entry that is not an IP address")]
pub struct BadForwardedFor;

/// Whether `ip` is in any of `set`.
pub fn is_trusted(set: &[Cidr], ip: IpAddr) -> bool {
    set.iter().any(|c| c.contains(ip))
}

/// The client behind `peer` per `X-Forwarded-For` (`values`: each field line, in order).
///
/// Only a `peer` in `trusted` is believed: otherwise the answer is `peer`. The list is
/// walked from the right (the entry the nearest proxy appended), skipping entries that are
/// themselves trusted proxies; the first untrusted entry is the client (the leftmost one
/// if all are trusted). Entries left of it were written by parties nobody vouches for
/// and are not looked at. An entry met on the walk that is not a bare IP address (a
/// port, `unknown`, an empty element) makes the whole list unusable: `Err`, and the
/// caller takes `peer` (never an error response).
pub fn forwarded_client<'a>(
    peer: IpAddr,
    trusted: &[Cidr],
    values: impl DoubleEndedIterator<Item = &'a str>,
) -> Result<IpAddr, BadForwardedFor> {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return Ok(peer);
    }
    let mut client = peer;
    for value in values.rev() {
        for entry in value.rsplit(',') {
            let ip = entry
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| BadForwardedFor)?;
            client = ip.to_canonical();
            if !is_trusted(trusted, client) {
                return Ok(client);
            }
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.1".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            "::ffff:10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "x",
            "10.0.0.0/0008",
            "example.com/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(c.contains(ip("::ffff:10.1.0.1")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn xff_from_an_untrusted_peer_is_ignored() {
        let t = cidrs(&["10.0.0.0/8"]);
        let untrusted =
            |peer: &str, t: &[Cidr]| forwarded_client(ip(peer), t, ["1.2.3.4"].into_iter());
        assert_eq!(untrusted("192.0.2.9", &t), Ok(ip("192.0.2.9")));
        assert_eq!(untrusted("10.0.0.1", &[]), Ok(ip("10.0.0.1")));
        // Even a malformed list is no concern of an untrusted peer's.
        assert_eq!(
            forwarded_client(ip("192.0.2.9"), &t, ["x"].into_iter()),
            Ok(ip("192.0.2.9"))
        );
    }

    #[test]
    fn xff_walk_from_the_right_skips_trusted_hops() {
        let t = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        let peer = ip("10.0.0.1");
        let walk = |v: &[&str]| forwarded_client(peer, &t, v.iter().copied()).unwrap_or(peer);
        assert_eq!(walk(&[]), peer);
        assert_eq!(walk(&["203.0.113.5"]), ip("203.0.113.5"));
        // The client's own forgery sits left of what the proxies appended.
        assert_eq!(walk(&["6.6.6.6, 203.0.113.5, 10.9.9.9"]), ip("203.0.113.5"));
        // Several field lines are one list.
        assert_eq!(
            walk(&["6.6.6.6", "203.0.113.5", "2001:db8::7"]),
            ip("203.0.113.5")
        );
        // All trusted: the leftmost.
        assert_eq!(walk(&["10.1.1.1, 10.2.2.2"]), ip("10.1.1.1"));
        // Malformed on the walk: the peer.
        assert_eq!(
            forwarded_client(peer, &t, ["203.0.113.5, unknown"].into_iter()),
            Err(BadForwardedFor)
        );
        assert_eq!(walk(&["203.0.113.5:443"]), peer);
        assert_eq!(walk(&["203.0.113.5,,10.0.0.2"]), peer);
        assert_eq!(walk(&[""]), peer);
        // Malformed left of the client: not the walk's business.
        assert_eq!(walk(&["garbage, 203.0.113.5"]), ip("203.0.113.5"));
        assert_eq!(walk(&[" ::ffff:203.0.113.5 "]), ip("203.0.113.5"));
    }
}
