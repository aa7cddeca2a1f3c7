//! PROXY protocol header parser, versions 1 (text) and 2 (binary), as HAProxy specifies
//! them (`doc/proxy-protocol.txt`). A load balancer in front of herdgate writes one such
//! header at the start of each TCP connection to say who the client is.
//!
//! [`parse`] is a pure function over the bytes received so far. It never panics and never
//! claims a byte past the header, so whatever follows (a TLS ClientHello, an HTTP request)
//! is left to the next stage intact. Its contract, which the reader in the listener relies
//! on (and the fuzz target checks):
//!
//! - [`Parsed::Incomplete`]: every byte given is part of a header that may still be
//!   valid, and fewer than [`MAX_HEADER`] bytes were given. The caller may consume them all
//!   and wait for more.
//! - [`Parsed::Done`]: the header is `consumed` bytes long (never more than given, never
//!   more than [`MAX_HEADER`]). Bytes past `consumed` are not looked at.
//! - `Err`: not a valid header; no longer input makes it one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest header accepted, in bytes: version 1 is at most 107 by its specification; a
/// version 2 header (16 bytes plus its length field) longer than this is refused, so TLVs
/// cannot make the reader buffer without bound.
pub const MAX_HEADER: usize = 4096;

/// Longest version 1 header, CRLF included (the specification's bound).
pub const MAX_V1: usize = 107;

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: read more.
    Incomplete,
    /// A whole header.
    Done {
        /// The client's address as the proxy reports it; `None` when the header does not
        /// name one (v2 `LOCAL`, v1 `UNKNOWN`, a v2 family other than TCP over IPv4/IPv6):
        /// the client is then the TCP peer itself.
        client: Option<SocketAddr>,
        /// The header's length: the bytes to remove before the next stage.
        consumed: usize,
    },
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither the version 1 prefix nor the version 2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A version 1 line without CRLF within 107 bytes.
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    /// A version 1 line that does not follow the grammar.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A version 2 header whose version nibble is not 2.
    #[error("PROXY v2: unsupported version {0}")]
    V2Version(u8),
    /// A version 2 command other than LOCAL (0) or PROXY (1).
    #[error("PROXY v2: unsupported command {0}")]
    V2Command(u8),
    /// A version 2 address family or transport outside the specification.
    #[error("PROXY v2: unsupported family/transport byte {0:#04x}")]
    V2Family(u8),
    /// A version 2 length too short for the addresses its family carries.
    #[error("PROXY v2: length {0} too short for its addresses")]
    V2Short(u16),
    /// A version 2 header longer than [`MAX_HEADER`].
    #[error("PROXY v2: header of {0} bytes exceeds the limit")]
    V2Oversized(usize),
}

/// Parse a PROXY header at the start of `buf` (see the module documentation).
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(HeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(MAX_V1)];
    let stray = HeaderError::V1Malformed("stray CR or LF");
    // The first CR or LF decides: CRLF ends the line; a bare LF, or a CR followed by
    // anything but LF, can never become a valid line.
    let end = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => return Err(stray),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Some(i),
            Some(_) => return Err(stray),
            None => None,
        },
        None => None,
    };
    let Some(end) = end else {
        return if buf.len() >= MAX_V1 {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let consumed = end + 2;
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| HeaderError::V1Malformed("not ASCII"))?;
    if !line.is_ascii() {
        return Err(HeaderError::V1Malformed("not ASCII"));
    }
    let mut fields = line.split(' ');
    // The prefix was matched by the caller: "PROXY".
    let _ = fields.next();
    let proto = fields.next().unwrap_or("");
    if proto == "UNKNOWN" {
        // The rest of the line, whatever it holds, is to be ignored.
        return Ok(Parsed::Done {
            client: None,
            consumed,
        });
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(HeaderError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(HeaderError::V1Malformed(
            "expected 4 fields after the protocol",
        ));
    };
    let addr = |s: &str| -> Result<IpAddr, HeaderError> {
        let bad = HeaderError::V1Malformed("bad address");
        if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad)
        }
    };
    let src = addr(src)?;
    addr(dst)?;
    let sport = port(sport)?;
    port(dport)?;
    Ok(Parsed::Done {
        client: Some(SocketAddr::new(src, sport)),
        consumed,
    })
}

fn port(s: &str) -> Result<u16, HeaderError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::V1Malformed("bad port"));
    }
    s.parse::<u16>()
        .map_err(|_| HeaderError::V1Malformed("bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    // Check what has arrived of the fixed part before waiting for the rest of it, so
    // that garbage after a valid signature is refused at once.
    if let Some(&vc) = buf.get(12) {
        let (version, command) = (vc >> 4, vc & 0x0F);
        if version != 2 {
            return Err(HeaderError::V2Version(version));
        }
        if command > 1 {
            return Err(HeaderError::V2Command(command));
        }
    }
    if let Some(&ft) = buf.get(13) {
        let (family, transport) = (ft >> 4, ft & 0x0F);
        if family > 3 || transport > 2 {
            return Err(HeaderError::V2Family(ft));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = V2_FIXED + usize::from(len);
    if total > MAX_HEADER {
        return Err(HeaderError::V2Oversized(total));
    }
    let (local, ft) = (buf[12] & 0x0F == 0, buf[13]);
    let need = match (local, ft) {
        (true, _) => 0,
        (false, 0x11) => 12,
        (false, 0x21) => 36,
        // UNSPEC, UNIX or UDP: nothing herdgate can use; the client is the TCP peer.
        (false, _) => 0,
    };
    if usize::from(len) < need {
        return Err(HeaderError::V2Short(len));
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let a = &buf[V2_FIXED..total];
    let client = match (local, ft) {
        (false, 0x11) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            u16::from_be_bytes([a[8], a[9]]),
        )),
        (false, 0x21) => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // TLVs past the addresses are skipped: herdgate uses none of them.
        _ => None,
    };
    Ok(Parsed::Done {
        client,
        consumed: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, ft: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(ft);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v4_body(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&[10, 0, 0, 1]);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn done(client: Option<&str>, consumed: usize) -> Result<Parsed, HeaderError> {
        Ok(Parsed::Done {
            client: client.map(|c| c.parse().unwrap()),
            consumed,
        })
    }

    /// Every strict prefix is Incomplete, the whole is `want`, and bytes after the header
    /// change nothing.
    fn check_stream(header: &[u8], want: Result<Parsed, HeaderError>) {
        for k in 0..header.len() {
            assert_eq!(
                parse(&header[..k]),
                Ok(Parsed::Incomplete),
                "prefix {k} of {header:?}"
            );
        }
        assert_eq!(parse(header), want);
        let mut more = header.to_vec();
        more.extend_from_slice(b"\x16\x03\x01GET / HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&more), want);
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n";
        check_stream(h, done(Some("203.0.113.7:56324"), h.len()));
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n";
        check_stream(h, done(Some("[2001:db8::7]:65535"), h.len()));
    }

    #[test]
    fn v1_unknown_means_the_peer() {
        let h = b"PROXY UNKNOWN\r\n";
        check_stream(h, done(None, h.len()));
        let h = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        check_stream(h, done(None, h.len()));
    }

    #[test]
    fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
        let src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY TCP6 {src} {src} 65535 65535\r\n");
        check_stream(h.as_bytes(), done(Some(&format!("[{src}]:65535")), h.len()));
        // The specification's worst case.
        let h = format!("PROXY UNKNOWN {src} {src} 65535 65535\r\n");
        assert_eq!(h.len(), MAX_V1);
        check_stream(h.as_bytes(), done(None, MAX_V1));
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(MAX_V1));
        assert_eq!(parse(long.as_bytes()), Err(HeaderError::V1TooLong));
        assert_eq!(
            parse(&long.as_bytes()[..MAX_V1]),
            Err(HeaderError::V1TooLong)
        );
        assert_eq!(
            parse(&long.as_bytes()[..MAX_V1 - 1]),
            Ok(Parsed::Incomplete)
        );
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4\n",
            b"PROXY TCP4 1.2\r3",
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
            // Found by the fuzz target: a bare LF before a CRLF is the error, whatever
            // comes after it.
            b"PROXY \0\x88\n\r\n\0",
            b"PROXY \0\x88\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::V1Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn v2_proxy_ipv4() {
        let h = v2(1, 0x11, &v4_body([198, 51, 100, 7], 40000));
        check_stream(&h, done(Some("198.51.100.7:40000"), 28));
    }

    #[test]
    fn v2_proxy_ipv6() {
        let mut body = "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x21, &body);
        check_stream(&h, done(Some("[2001:db8::9]:1234"), 16 + 36));
    }

    #[test]
    fn v2_local_means_the_peer() {
        let h = v2(0, 0x00, &[]);
        check_stream(&h, done(None, 16));
        // LOCAL may still carry addresses (health checks): ignored, skipped.
        let h = v2(0, 0x11, &v4_body([1, 2, 3, 4], 5));
        check_stream(&h, done(None, 28));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut body = v4_body([192, 0, 2, 1], 8080);
        // PP2_TYPE_AUTHORITY "example.com", then a NOOP of 5 bytes.
        body.extend_from_slice(&[0x02, 0x00, 0x0B]);
        body.extend_from_slice(b"example.com");
        body.extend_from_slice(&[0x04, 0x00, 0x05, 0, 0, 0, 0, 0]);
        let h = v2(1, 0x11, &body);
        check_stream(&h, done(Some("192.0.2.1:8080"), h.len()));
    }

    #[test]
    fn v2_other_families_mean_the_peer() {
        check_stream(&v2(1, 0x00, &[]), done(None, 16));
        check_stream(&v2(1, 0x31, &[0u8; 216]), done(None, 16 + 216));
        check_stream(&v2(1, 0x12, &v4_body([1, 2, 3, 4], 5)), done(None, 28));
    }

    #[test]
    fn v2_errors() {
        let good = v2(1, 0x11, &v4_body([1, 2, 3, 4], 5));
        let mut h = good.clone();
        h[12] = 0x11;
        assert_eq!(parse(&h[..13]), Err(HeaderError::V2Version(1)));
        h[12] = 0x22;
        assert_eq!(parse(&h[..13]), Err(HeaderError::V2Command(2)));
        let mut h = good.clone();
        h[13] = 0x41;
        assert_eq!(parse(&h[..14]), Err(HeaderError::V2Family(0x41)));
        h[13] = 0x13;
        assert_eq!(parse(&h), Err(HeaderError::V2Family(0x13)));
        // Too short for the IPv4 addresses, and for IPv6 ones.
        assert_eq!(parse(&v2(1, 0x11, &[0; 11])), Err(HeaderError::V2Short(11)));
        assert_eq!(
            parse(&v2(1, 0x21, &v4_body([1, 2, 3, 4], 5))),
            Err(HeaderError::V2Short(12))
        );
        // The short length is refused before its body arrives.
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 12])[..16]),
            Err(HeaderError::V2Short(12))
        );
    }

    #[test]
    fn v2_oversized_is_refused_from_the_length_field() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&h), Err(HeaderError::V2Oversized(16 + 0xFFFF)));
        let max = v2(1, 0x11, &vec![0u8; MAX_HEADER - 16]);
        assert_eq!(parse(&max), done(Some("0.0.0.0:0"), MAX_HEADER));
        let over = v2(1, 0x11, &vec![0u8; MAX_HEADER - 15]);
        assert_eq!(
            parse(&over[..16]),
            Err(HeaderError::V2Oversized(MAX_HEADER + 1))
        );
    }

    #[test]
    fn garbage_and_plain_traffic_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01",
            b"proxy TCP4",
            b"PROXYTCP4",
            b"\r\n\r\n\0\r\nQUIX",
            b"\0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncated_input_is_incomplete() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
            Ok(Parsed::Incomplete)
        );
        assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(Parsed::Incomplete));
        let h = v2(1, 0x11, &v4_body([1, 2, 3, 4], 5));
        assert_eq!(parse(&h[..27]), Ok(Parsed::Incomplete));
    }
}
