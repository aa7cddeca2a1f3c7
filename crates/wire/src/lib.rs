//! herdgate's wire contract: what the proxy and its clients agree on, and nothing else.
//!
//! Both sides of a rejection read this one module: the proxy when it writes a `503`, a
//! `429` or a 1013/1012 close frame, and the reference client (`herdgate-client`) when it
//! reads them. A name, a rounding rule or the shape of the close reason changes here or
//! nowhere. No I/O and no dependencies, so an application can depend on it alone.

#![warn(missing_docs)]

use std::fmt::Write as _;
use std::time::Duration;

/// Request header by which a client says it can carry a ticket (value `1`).
pub const ACCEPT_TICKET_HEADER: &str = "herdgate-accept-ticket";
/// Query parameter with the same meaning as [`ACCEPT_TICKET_HEADER`], for browsers, which
/// cannot set headers on a WebSocket handshake.
pub const ACCEPT_TICKET_QUERY: &str = "herdgate_accept_ticket";
/// Response header carrying a ticket, and request header presenting it.
pub const TICKET_HEADER: &str = "herdgate-ticket";
/// Cookie the proxy sets for browsers on a rejection with a ticket.
pub const TICKET_COOKIE: &str = "herdgate_ticket";
/// Query parameter presenting a ticket (browsers again).
pub const TICKET_QUERY: &str = "herdgate_ticket";
/// Response header with the exact delay in milliseconds; `Retry-After` only has seconds.
pub const RETRY_AFTER_MS_HEADER: &str = "retry-after-ms";

/// WebSocket close code 1013 "Try Again Later" (RFC 6455 §7.4.1, IANA registry): a
/// rejected browser upgrade.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// WebSocket close code 1012 "Service Restart": a tunnel drained on deploy or shutdown.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
/// WebSocket close code 1001 "Going Away": a tunnel closed with no hint to give.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Longest close reason a control frame can carry (RFC 6455 §5.5: 125-byte payload less
/// the 2-byte code).
pub const CLOSE_REASON_MAX_LEN: usize = 123;
/// Longest ticket the proxy issues, in base64url characters; it keeps
/// [`reason_json`] within [`CLOSE_REASON_MAX_LEN`].
pub const TICKET_MAX_LEN: usize = 64;

/// A delay in whole milliseconds, rounded up and at least 1: a client back a hair early
/// would find its slot not yet due.
pub fn retry_after_ms(after: Duration) -> u64 {
    let ms = after.as_nanos().div_ceil(1_000_000).max(1);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The `Retry-After` value for a delay of `ms` milliseconds: whole seconds rounded up,
/// since RFC 9110 §10.2.3 allows only integers and early is worse than late.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The `Retry-After` value for a delay of `ms` milliseconds when the server holds the
/// client's slot for it if it comes back up to a second early: whole seconds rounded down,
/// at least 1. A client reading only `Retry-After` then comes back at or before its slot
/// (and is held until it) instead of up to a second after it.
pub fn retry_after_secs_held(ms: u64) -> u64 {
    (ms / 1000).max(1)
}

/// The JSON hint a proxy puts in a rejection body or a close reason:
/// `{"retry_after_ms":N,"ticket":"…"}` with a ticket, else
/// `{"retry_after_ms":N,"reason":"…"}` (or `{"retry_after_ms":N}` with no reason).
///
/// With a ticket the reason word is left out so that the whole fits a close frame
/// ([`CLOSE_REASON_MAX_LEN`]); tickets and reason words need no JSON escaping (base64url
/// and fixed ASCII words), which keeps this allocation-light and the output byte-stable.
pub fn reason_json(retry_after_ms: u64, reason: Option<&str>, ticket: Option<&str>) -> String {
    let mut s = String::with_capacity(48 + ticket.map_or(0, str::len));
    let _ = write!(s, "{{\"retry_after_ms\":{retry_after_ms}");
    match (ticket, reason) {
        (Some(t), _) => {
            let _ = write!(s, ",\"ticket\":\"{t}\"");
        }
        (None, Some(r)) => {
            let _ = write!(s, ",\"reason\":\"{r}\"");
        }
        (None, None) => {}
    }
    s.push('}');
    s
}

/// True for a ticket's characters: base64url (RFC 4648 §5), padding allowed. A ticket with anything else
/// is not one of ours and is ignored rather than echoed anywhere.
pub fn is_ticket_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='
}

/// A ticket as it may be carried: 1 to [`TICKET_MAX_LEN`] base64url characters.
pub fn is_valid_ticket(t: &str) -> bool {
    !t.is_empty() && t.len() <= TICKET_MAX_LEN && t.bytes().all(is_ticket_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_goes_up() {
        assert_eq!(retry_after_ms(Duration::ZERO), 1);
        assert_eq!(retry_after_ms(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(retry_after_ms(Duration::from_millis(250)), 250);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(0), 0);
    }

    #[test]
    fn reason_shapes() {
        assert_eq!(reason_json(5, None, None), r#"{"retry_after_ms":5}"#);
        assert_eq!(
            reason_json(5, Some("node_busy"), None),
            r#"{"retry_after_ms":5,"reason":"node_busy"}"#
        );
        assert_eq!(
            reason_json(5, Some("node_busy"), Some("abc")),
            r#"{"retry_after_ms":5,"ticket":"abc"}"#
        );
    }

    #[test]
    fn longest_reason_fits_a_close_frame() {
        let t = "A".repeat(TICKET_MAX_LEN);
        let j = reason_json(u64::MAX, Some("overloaded"), Some(&t));
        assert!(j.len() <= CLOSE_REASON_MAX_LEN, "{} bytes", j.len());
    }

    #[test]
    fn tickets_are_base64url() {
        assert!(is_valid_ticket("aZ09-_"));
        assert!(!is_valid_ticket(""));
        assert!(!is_valid_ticket("a b"));
        assert!(!is_valid_ticket("a;b"));
        assert!(!is_valid_ticket(&"a".repeat(TICKET_MAX_LEN + 1)));
    }
}
