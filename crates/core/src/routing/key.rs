//! Sticky key extraction from a request head, and the cookie herdgate sets to pin a
//! session (HAProxy's `cookie insert`).
//!
//! Config shape (a route's `sticky` key), one of:
//! ```toml
//! sticky = { cookie = "sid" }        # value of the `sid` cookie
//! sticky = { header = "x-session" }  # value of a request header (first non-empty)
//! sticky = { query = "room" }        # value of a query parameter, percent-decoded
//! sticky = "client_ip"               # the peer address (IPv4-mapped IPv6 as IPv4)
//! ```
//! Names are validated when the config is read, so a bad name fails the reload, not a
//! request. Extraction never panics: malformed input (bad UTF-8, bad escapes, missing
//! `=`) is skipped and, if nothing valid remains, the key is `None` (the caller hashes
//! something else or picks any node). Empty values count as absent.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderName, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use rand::RngCore;
use serde::Deserialize;

use super::hash::key_hash;
use super::RoutingError;

/// Where a route reads its sticky key from. See the module doc for the TOML shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SourceRepr")]
pub enum StickySource {
    /// Cookie name, matched case-sensitively (RFC 6265 §5.4 compares names exactly).
    Cookie(String),
    /// Header name, already validated and lowercased.
    Header(HeaderName),
    /// Query parameter name, matched after percent-decoding.
    Query(String),
    /// The client's address: stickiness for clients that carry no cookie, header or query.
    ClientIp,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SourceRepr {
    Cookie(String),
    Header(String),
    Query(String),
    ClientIp,
}

impl TryFrom<SourceRepr> for StickySource {
    type Error = RoutingError;

    fn try_from(r: SourceRepr) -> Result<Self, RoutingError> {
        Ok(match r {
            SourceRepr::Cookie(name) => {
                if !is_token(name.as_bytes()) {
                    return Err(RoutingError::BadCookieName { name });
                }
                StickySource::Cookie(name)
            }
            SourceRepr::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => StickySource::Header(h),
                Err(_) => return Err(RoutingError::BadHeaderName { name }),
            },
            SourceRepr::Query(name) if name.is_empty() => return Err(RoutingError::EmptyQueryName),
            SourceRepr::Query(name) => StickySource::Query(name),
            SourceRepr::ClientIp => StickySource::ClientIp,
        })
    }
}

impl StickySource {
    /// Builds a source from its config parts, with the same validation as the config.
    pub fn cookie(name: &str) -> Result<Self, RoutingError> {
        SourceRepr::Cookie(name.to_owned()).try_into()
    }

    /// Like [`StickySource::cookie`], for a header name (validated, then lowercased).
    pub fn header(name: &str) -> Result<Self, RoutingError> {
        SourceRepr::Header(name.to_owned()).try_into()
    }

    /// Like [`StickySource::cookie`], for a query parameter name (must not be empty).
    pub fn query(name: &str) -> Result<Self, RoutingError> {
        SourceRepr::Query(name.to_owned()).try_into()
    }
}

/// The sticky key of a request, borrowed from the request head whenever possible (only a
/// percent-encoded query value or the client IP needs an allocation).
pub fn extract<'a>(
    source: &StickySource,
    parts: &'a http::request::Parts,
    client_ip: IpAddr,
) -> Option<Cow<'a, str>> {
    match source {
        StickySource::Cookie(name) => request_cookie(&parts.headers, name).map(Cow::Borrowed),
        StickySource::Header(name) => parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| non_empty_str(trim_ows(v.as_bytes())))
            .next()
            .map(Cow::Borrowed),
        StickySource::Query(name) => query_param(parts.uri.query()?, name),
        StickySource::ClientIp => Some(Cow::Owned(client_ip.to_canonical().to_string())),
    }
}

/// `key_hash` of the sticky key, allocation-free for the client IP too. Equals
/// `extract(..).map(|k| key_hash(k.as_bytes()))`.
pub fn extract_hash(
    source: &StickySource,
    parts: &http::request::Parts,
    client_ip: IpAddr,
) -> Option<u64> {
    if let StickySource::ClientIp = source {
        let mut buf = StackStr::default();
        // Cannot fail: the longest IPv6 text form is 45 bytes.
        write!(buf, "{}", client_ip.to_canonical()).ok()?;
        return Some(key_hash(buf.as_bytes()));
    }
    extract(source, parts, client_ip).map(|k| key_hash(k.as_bytes()))
}

/// The value of cookie `name` in the request's Cookie headers (RFC 6265 §4.2.1: pairs
/// separated by `;`). Several Cookie headers are read in order (HTTP/2 splits them,
/// RFC 9113 §8.2.3); the first non-empty value wins, as the user agent lists the most
/// specific cookie first (RFC 6265 §5.4 step 2).
pub fn request_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let (n, val) = split_pair(pair)?;
            if n != name.as_bytes() {
                return None;
            }
            non_empty_str(unquote(val))
        })
    })
}

/// A cookie a backend sets in a response, for learning sticky entries from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetCookie<'a> {
    /// The cookie's value: the sticky key the backend chose, learned as-is.
    pub value: &'a str,
    /// `Max-Age` in seconds when present and well-formed (RFC 6265 §5.2.2).
    pub max_age: Option<i64>,
}

impl SetCookie<'_> {
    /// The backend deletes the cookie: empty value or `Max-Age` <= 0 (RFC 6265 §5.2.2:
    /// expiry "the earliest representable date and time"). `Expires` is not parsed.
    pub fn is_removal(&self) -> bool {
        self.value.is_empty() || self.max_age.is_some_and(|a| a <= 0)
    }
}

/// The last `Set-Cookie` for `name` in a response (a later one overrides an earlier one,
/// RFC 6265 §5.3 step 11). Malformed headers are skipped.
pub fn response_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<SetCookie<'a>> {
    headers.get_all(SET_COOKIE).iter().rev().find_map(|v| {
        let mut parts = v.as_bytes().split(|&b| b == b';');
        let (n, val) = split_pair(parts.next()?)?;
        if n != name.as_bytes() {
            return None;
        }
        let value = std::str::from_utf8(unquote(val)).ok()?;
        let mut max_age = None;
        for attr in parts {
            let (an, av) = split_pair(attr).unwrap_or((trim_ows(attr), b""));
            if an.eq_ignore_ascii_case(b"max-age") {
                // §5.2.2: a leading digit or '-', then digits only; else ignore the attribute.
                max_age = parse_max_age(av).or(max_age);
            }
        }
        Some(SetCookie { value, max_age })
    })
}

/// `Set-Cookie` pinning a client to a node: `name=value; Path=/; Max-Age=N; HttpOnly;
/// SameSite=Lax[; Secure]`. `max_age = None` makes a session cookie.
pub fn new_sticky_cookie(
    name: &str,
    value: &str,
    max_age: Option<Duration>,
    secure: bool,
) -> Result<HeaderValue, RoutingError> {
    if !is_token(name.as_bytes()) {
        return Err(RoutingError::BadCookieName { name: name.into() });
    }
    if !value.bytes().all(is_cookie_octet) {
        return Err(RoutingError::BadCookieValue {
            value: value.into(),
        });
    }
    let mut s = String::with_capacity(name.len() + value.len() + 64);
    let _ = write!(s, "{name}={value}; Path=/");
    if let Some(age) = max_age {
        let _ = write!(s, "; Max-Age={}", age.as_secs());
    }
    s.push_str("; HttpOnly; SameSite=Lax");
    if secure {
        s.push_str("; Secure");
    }
    HeaderValue::try_from(s).map_err(|_| RoutingError::BadCookieValue {
        value: value.into(),
    })
}

/// A fresh random cookie value: 128 bits from the thread-local CSPRNG, base64url without
/// padding (22 characters, all RFC 6265 cookie-octets).
pub fn random_cookie_value() -> String {
    random_cookie_value_from(&mut rand::thread_rng())
}

/// [`random_cookie_value`] with a caller-chosen generator (tests use a seeded one).
pub fn random_cookie_value_from(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if !decoded_eq(k.as_bytes(), name.as_bytes()) {
            return None;
        }
        let v = decode(v)?;
        (!v.is_empty()).then_some(v)
    })
}

// application/x-www-form-urlencoded rules (WHATWG URL §5.1), which is what browsers'
// URLSearchParams and form submissions produce: `+` is a space, `%XX` a byte.
fn needs_decoding(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b'%' || b == b'+')
}

fn decoded_bytes(s: &[u8]) -> impl Iterator<Item = Option<u8>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *s.get(i)?;
        i += 1;
        Some(match b {
            b'+' => Some(b' '),
            b'%' => {
                let hi = s.get(i).and_then(|&c| hex(c));
                let lo = s.get(i + 1).and_then(|&c| hex(c));
                i += 2;
                hi.zip(lo).map(|(h, l)| h << 4 | l)
            }
            b => Some(b),
        })
    })
}

fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    if !needs_decoding(raw) {
        return raw == want;
    }
    let mut want = want.iter();
    for b in decoded_bytes(raw) {
        match (b, want.next()) {
            (Some(b), Some(&w)) if b == w => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

fn decode(raw: &str) -> Option<Cow<'_, str>> {
    if !needs_decoding(raw.as_bytes()) {
        return Some(Cow::Borrowed(raw));
    }
    let bytes: Option<Vec<u8>> = decoded_bytes(raw.as_bytes()).collect();
    String::from_utf8(bytes?).ok().map(Cow::Owned)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn parse_max_age(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Out-of-range values saturate rather than fail.
    Some(s.parse::<i64>().unwrap_or(if s.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    }))
}

fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..])))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

// RFC 6265 §4.1.1: cookie-value = *cookie-octet / ( DQUOTE *cookie-octet DQUOTE ).
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

fn non_empty_str(b: &[u8]) -> Option<&str> {
    if b.is_empty() {
        return None;
    }
    std::str::from_utf8(b).ok()
}

// RFC 9110 §5.6.2 token.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// RFC 6265 §4.1.1 cookie-octet: visible ASCII except DQUOTE, comma, semicolon, backslash.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// Fixed-capacity `fmt::Write` target, so formatting an IP needs no heap.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackStr {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn parts(uri: &str, headers: &[(&str, &[u8])]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    #[derive(Deserialize)]
    struct Route {
        sticky: StickySource,
    }

    fn route(s: &str) -> Result<StickySource, toml::de::Error> {
        toml::from_str::<Route>(s).map(|r| r.sticky)
    }

    #[test]
    fn toml_shapes() {
        assert_eq!(
            route(r#"sticky = { cookie = "sid" }"#).unwrap(),
            StickySource::Cookie("sid".into())
        );
        assert_eq!(
            route(r#"sticky = { header = "X-Session" }"#).unwrap(),
            StickySource::Header(HeaderName::from_static("x-session"))
        );
        assert_eq!(
            route(r#"sticky = { query = "room" }"#).unwrap(),
            StickySource::Query("room".into())
        );
        assert_eq!(
            route(r#"sticky = "client_ip""#).unwrap(),
            StickySource::ClientIp
        );
        let err = route(r#"sticky = { cookie = "s id" }"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"s id\""), "{err}");
        assert!(route(r#"sticky = { header = "bad header" }"#).is_err());
        assert!(route(r#"sticky = { query = "" }"#).is_err());
        assert!(route(r#"sticky = "cookie""#).is_err());
        assert!(route(r#"sticky = { cookie = "a", header = "b" }"#).is_err());
        assert!(StickySource::cookie("").is_err());
    }

    #[test]
    fn cookie_across_headers_and_pairs() {
        let src = StickySource::cookie("sid").unwrap();
        let p = parts(
            "/",
            &[
                ("cookie", b"theme=dark; sidx=no"),
                ("cookie", b"a=1;sid= \"abc123\" ; sid=later"),
            ],
        );
        assert_eq!(extract(&src, &p, IP).as_deref(), Some("abc123"));
        assert!(matches!(extract(&src, &p, IP), Some(Cow::Borrowed(_))));
        // Empty first value is skipped; names are case-sensitive.
        let p = parts("/", &[("cookie", b"SID=x; sid=; junk; =v; sid=ok")]);
        assert_eq!(extract(&src, &p, IP).as_deref(), Some("ok"));
        for bad in [
            &b""[..],
            b";;;",
            b"sid",
            b"sid=\"\"",
            b"sid=\xff\xfe",
            b"=sid",
        ] {
            let p = parts("/", &[("cookie", bad)]);
            assert_eq!(extract(&src, &p, IP), None, "{bad:?}");
        }
    }

    #[test]
    fn header_source() {
        let src = StickySource::header("x-session").unwrap();
        let p = parts("/", &[("x-session", b"  "), ("X-Session", b" u-42 ")]);
        assert_eq!(extract(&src, &p, IP).as_deref(), Some("u-42"));
        assert_eq!(extract(&src, &parts("/", &[]), IP), None);
        let p = parts("/", &[("x-session", b"\xc3\x28")]);
        assert_eq!(extract(&src, &p, IP), None);
    }

    #[test]
    fn query_source_decodes_only_when_needed() {
        let src = StickySource::query("room").unwrap();
        let p = parts("/ws?x=1&room=lobby&room=other", &[]);
        let k = extract(&src, &p, IP);
        assert_eq!(k.as_deref(), Some("lobby"));
        assert!(matches!(k, Some(Cow::Borrowed(_))));
        let p = parts("/ws?r%6Fom=caf%C3%A9+bar", &[]);
        let k = extract(&src, &p, IP);
        assert_eq!(k.as_deref(), Some("café bar"));
        assert!(matches!(k, Some(Cow::Owned(_))));
        // Malformed escapes, bad UTF-8, empty values and missing '=' yield nothing.
        for q in [
            "/?room=%zz",
            "/?room=%C3",
            "/?room=%",
            "/?room=",
            "/?room",
            "/?roo=x",
            "/?rooms=x",
            "/?room%=x",
            "/",
            "/?&&=&",
        ] {
            assert_eq!(extract(&src, &parts(q, &[]), IP), None, "{q}");
        }
        // A malformed pair does not hide a good one after it.
        let p = parts("/?room=%zz&room=ok", &[]);
        assert_eq!(extract(&src, &p, IP).as_deref(), Some("ok"));
    }

    #[test]
    fn client_ip_and_hash_agree() {
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        let p = parts("/", &[]);
        let k = extract(&StickySource::ClientIp, &p, mapped);
        assert_eq!(k.as_deref(), Some("10.1.2.3"));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
        let long = IpAddr::V6("1111:2222:3333:4444:5555:6666:7777:8888".parse().unwrap());
        for ip in [IP, mapped, v6, long] {
            let want = extract(&StickySource::ClientIp, &p, ip).map(|k| key_hash(k.as_bytes()));
            assert_eq!(extract_hash(&StickySource::ClientIp, &p, ip), want);
        }
        let src = StickySource::cookie("sid").unwrap();
        let p = parts("/", &[("cookie", b"sid=z")]);
        assert_eq!(extract_hash(&src, &p, IP), Some(key_hash(b"z")));
    }

    #[test]
    fn sticky_cookie_header() {
        let v = new_sticky_cookie("hg", "abc", Some(Duration::from_secs(3600)), true).unwrap();
        assert_eq!(
            v,
            "hg=abc; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
        );
        let v = new_sticky_cookie("hg", "abc", None, false).unwrap();
        assert_eq!(v, "hg=abc; Path=/; HttpOnly; SameSite=Lax");
        assert!(matches!(
            new_sticky_cookie("h g", "abc", None, false),
            Err(RoutingError::BadCookieName { .. })
        ));
        for bad in ["a;b", "a b", "a\"", "a,b", "é"] {
            assert!(matches!(
                new_sticky_cookie("hg", bad, None, false),
                Err(RoutingError::BadCookieValue { .. })
            ));
        }
    }

    #[test]
    fn random_values_are_128_bit_base64url() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = random_cookie_value_from(&mut rng);
        let b = random_cookie_value_from(&mut rng);
        assert_ne!(a, b);
        for v in [a, b, random_cookie_value()] {
            assert_eq!(v.len(), 22);
            assert!(v
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&v)
                .unwrap();
            assert_eq!(raw.len(), 16);
            assert!(new_sticky_cookie("hg", &v, None, true).is_ok());
        }
    }

    #[test]
    fn set_cookie_learning() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("other=1"));
        h.append(SET_COOKIE, HeaderValue::from_static("sid=old; Path=/"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("sid=\"new\"; Path=/; max-age=60; Secure; Max-Age=x"),
        );
        h.append(SET_COOKIE, HeaderValue::from_static("garbage"));
        let c = response_cookie(&h, "sid").unwrap();
        assert_eq!(
            c,
            SetCookie {
                value: "new",
                max_age: Some(60)
            }
        );
        assert!(!c.is_removal());
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("sid=x; Max-Age=0"));
        assert!(response_cookie(&h, "sid").unwrap().is_removal());
        h.append(SET_COOKIE, HeaderValue::from_static("sid=; Path=/"));
        assert!(response_cookie(&h, "sid").unwrap().is_removal());
        assert_eq!(response_cookie(&h, "nope"), None);
        assert_eq!(parse_max_age(b"-5"), Some(-5));
        assert_eq!(parse_max_age(b"99999999999999999999"), Some(i64::MAX));
        assert_eq!(parse_max_age(b"-"), None);
        assert_eq!(parse_max_age(b"+5"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let src_c = StickySource::cookie("sid").unwrap();
        let src_q = StickySource::query("room").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let alphabet = b"sid=room;&%+\" \t\x80\xffaZ09\"=";
        for _ in 0..5000 {
            let len = (rng.next_u32() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next_u32() as usize) % alphabet.len()])
                .collect();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let p = parts("/", &[("cookie", v.as_bytes())]);
                let _ = extract(&src_c, &p, IP);
                let mut h = HeaderMap::new();
                h.append(SET_COOKIE, v);
                let _ = response_cookie(&h, "sid");
            }
            let q: String = bytes
                .iter()
                .filter(|b| b.is_ascii_graphic())
                .map(|&b| b as char)
                .collect();
            if let Ok(uri) = format!("/?{q}").parse::<http::Uri>() {
                let p = http::Request::builder()
                    .uri(uri)
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0;
                let _ = extract(&src_q, &p, IP);
            }
        }
    }
}
