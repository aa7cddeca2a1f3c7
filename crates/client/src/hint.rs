//! Reading the server's "come back at" hints out of a rejected upgrade or a close frame.
//!
//! Everything here takes bytes from the network, so nothing may panic: a value that does
//! not parse is ignored (as if absent), and an absurdly large one is capped at
//! [`MAX_RETRY_AFTER`] so that one bad header cannot park a client for a day.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Longest wait a hint may impose; longer values are clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Longest ticket accepted (the server promises at most this many base64url characters).
pub use herdgate_wire::TICKET_MAX_LEN as MAX_TICKET_LEN;
pub use herdgate_wire::{
    ACCEPT_TICKET_HEADER, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER, RETRY_AFTER_MS_HEADER,
    TICKET_COOKIE, TICKET_HEADER,
};

/// Bodies larger than this are not worth parsing for a fallback hint.
const MAX_BODY: usize = 4096;

/// Where a hint's delay came from. The derived order is the precedence: when one
/// response carries several, the smallest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HintSource {
    /// An exact delay paired with a ticket (headers `retry-after-ms` + `herdgate-ticket`,
    /// or a close reason carrying both): the server reserved a token for that instant.
    TicketMs,
    /// An exact `retry-after-ms` (header, or the JSON body if a middlebox ate the header).
    RetryAfterMs,
    /// The standard `Retry-After` header: whole seconds or an HTTP-date (RFC 9110 §10.2.3).
    RetryAfterHeader,
    /// `retry_after_ms` from the reason of a 1013/1012 close frame, without a ticket.
    CloseReason,
}

/// A server's instruction to come back after `retry_after`, optionally with a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Delay counted from when the rejection was received; at most [`MAX_RETRY_AFTER`].
    pub retry_after: Duration,
    /// Opaque ticket to present on the next attempt (already validated as base64url).
    pub ticket: Option<String>,
    /// Which field the delay came from.
    pub source: HintSource,
    /// The standard `Retry-After` header's own delay when the response carried one,
    /// whatever else it carried: what a client that reads only that header waits.
    pub header: Option<Duration>,
}

impl Hint {
    /// Hint from the head (and possibly the first bytes of the body) of a rejected
    /// upgrade. `now` is only used for an HTTP-date `Retry-After` when the response has
    /// no usable `Date` header.
    pub fn from_response(
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: SystemTime,
    ) -> Option<Hint> {
        let ticket = ticket_from_headers(headers);
        // The server's own Date is the reference for an HTTP-date Retry-After: a
        // client whose clock is off still waits the interval the server meant.
        let now = unix_secs(now);
        let reference = first_valid(headers, "date", |v| parse_http_date(v, now)).unwrap_or(now);
        let header = first_valid(headers, "retry-after", |v| parse_retry_after(v, reference));
        if let Some(ms) = first_valid(headers, RETRY_AFTER_MS_HEADER, parse_millis) {
            let source = if ticket.is_some() {
                HintSource::TicketMs
            } else {
                HintSource::RetryAfterMs
            };
            return Some(Hint {
                retry_after: ms,
                ticket,
                source,
                header,
            });
        }
        if let Some(delay) = header {
            return Some(Hint {
                retry_after: delay,
                ticket,
                source: HintSource::RetryAfterHeader,
                header,
            });
        }
        let ms = body.and_then(retry_after_from_body)?;
        Some(Hint {
            retry_after: ms,
            ticket,
            source: HintSource::RetryAfterMs,
            header: None,
        })
    }

    /// Hint from a close frame. Only 1013 (Try Again Later) and 1012 (Service Restart)
    /// carry one, as JSON `{"retry_after_ms":N,"ticket":"..."}` in the reason
    /// (RFC 6455 §5.5.1: at most 123 bytes of UTF-8). Any other code gives `None`.
    pub fn from_close(code: u16, reason: &str) -> Option<Hint> {
        if code != CLOSE_TRY_AGAIN_LATER && code != CLOSE_SERVICE_RESTART {
            return None;
        }
        let value: serde_json::Value = serde_json::from_str(reason).ok()?;
        let retry_after = json_millis(value.get("retry_after_ms")?)?;
        let ticket = value
            .get("ticket")
            .and_then(serde_json::Value::as_str)
            .and_then(valid_ticket);
        let source = if ticket.is_some() {
            HintSource::TicketMs
        } else {
            HintSource::CloseReason
        };
        Some(Hint {
            retry_after,
            ticket,
            source,
            header: None,
        })
    }

    /// [`Hint::from_close`] for a tungstenite close frame.
    pub fn from_close_frame(frame: &CloseFrame) -> Option<Hint> {
        Hint::from_close(u16::from(frame.code), frame.reason.as_str())
    }

    /// Of two hints for the same attempt, the one with the higher precedence
    /// (see [`HintSource`]); on a tie the first.
    pub fn prefer(a: Option<Hint>, b: Option<Hint>) -> Option<Hint> {
        match (a, b) {
            (Some(a), Some(b)) if b.source < a.source => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

/// A ticket worth echoing back: non-empty, at most [`MAX_TICKET_LEN`] characters of the
/// base64url alphabet (RFC 4648 §5, padding allowed). Anything else could smuggle bytes
/// into our next request's header or query string, so it is dropped.
pub fn valid_ticket(raw: &str) -> Option<String> {
    herdgate_wire::is_valid_ticket(raw).then(|| raw.to_owned())
}

fn ticket_from_headers(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = first_valid(headers, TICKET_HEADER, valid_ticket) {
        return Some(t);
    }
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(ticket_from_set_cookie)
}

/// `Set-Cookie: herdgate_ticket=<t>; Path=/; ...` (RFC 6265 §4.1.1): the value is
/// everything between the first `=` and the first `;`, possibly DQUOTEd.
fn ticket_from_set_cookie(header: &str) -> Option<String> {
    let pair = header.split(';').next()?;
    let (name, value) = pair.split_once('=')?;
    if name.trim() != TICKET_COOKIE {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    valid_ticket(value)
}

fn first_valid<T>(headers: &HeaderMap, name: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| parse(v.trim()))
}

/// Non-negative integer of ASCII digits; huge values saturate (then get capped).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn capped_millis(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_RETRY_AFTER)
}

fn capped_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_RETRY_AFTER)
}

fn parse_millis(s: &str) -> Option<Duration> {
    parse_digits(s).map(capped_millis)
}

/// `Retry-After = HTTP-date / delay-seconds` (RFC 9110 §10.2.3). A date is relative to
/// `reference` (seconds since the epoch); a date in the past means "now".
fn parse_retry_after(s: &str, reference: i64) -> Option<Duration> {
    if let Some(secs) = parse_digits(s) {
        return Some(capped_secs(secs));
    }
    let at = parse_http_date(s, reference)?;
    let delta = u64::try_from(at.saturating_sub(reference)).unwrap_or(0);
    Some(capped_secs(delta))
}

/// JSON number of milliseconds: a non-negative integer, or a finite non-negative
/// float rounded up (a server writing 1.5 still means "not before 1.5 ms").
fn json_millis(v: &serde_json::Value) -> Option<Duration> {
    if let Some(ms) = v.as_u64() {
        return Some(capped_millis(ms));
    }
    let f = v.as_f64()?;
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    let cap = MAX_RETRY_AFTER.as_millis() as f64;
    Some(Duration::from_millis(f.ceil().min(cap) as u64))
}

fn retry_after_from_body(body: &[u8]) -> Option<Duration> {
    if body.len() > MAX_BODY {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    json_millis(value.get("retry_after_ms")?)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Seconds since the epoch for an HTTP-date in any of the three formats a recipient
/// must accept (RFC 9110 §5.6.7): IMF-fixdate, obsolete RFC 850, and asctime.
/// The weekday is not checked: it carries no information we need. `now` (seconds since
/// the epoch) only resolves the two-digit years of RFC 850 dates.
pub fn parse_http_date(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Some((_, rest)) = s.split_once(',') {
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        match fields.as_slice() {
            // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
            [day, month, year, time, "GMT"] if year.len() == 4 => {
                civil_secs(parse_digits(year)?, month, day, time)
            }
            // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
            [date, time, "GMT"] => {
                let mut parts = date.split('-');
                let (day, month, yy) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() || yy.len() != 2 {
                    return None;
                }
                civil_secs(
                    rfc850_year(parse_digits(yy)?, year_of(now)),
                    month,
                    day,
                    time,
                )
            }
            _ => None,
        }
    } else {
        // asctime: "Sun Nov  6 08:49:37 1994"
        let fields: Vec<&str> = s.split_ascii_whitespace().collect();
        match fields.as_slice() {
            [_, month, day, time, year] if year.len() == 4 => {
                civil_secs(parse_digits(year)?, month, day, time)
            }
            _ => None,
        }
    }
}

/// Two-digit years (RFC 9110 §5.6.7): read in the current century, unless that puts
/// the date more than 50 years in the future, which means the previous century.
fn rfc850_year(yy: u64, now_year: i64) -> u64 {
    let now_year = u64::try_from(now_year).unwrap_or(1970);
    let year = now_year - now_year % 100 + yy;
    if year > now_year + 50 {
        year - 100
    } else {
        year
    }
}

/// Proleptic Gregorian year of a time in seconds since the epoch (H. Hinnant's
/// civil_from_days).
fn year_of(secs: i64) -> i64 {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let year = yoe + era * 400;
    if mp >= 10 {
        year + 1
    } else {
        year
    }
}

fn civil_secs(year: u64, month: &str, day: &str, time: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    if day.is_empty() || day.len() > 2 || !(1970..=9999).contains(&year) {
        return None;
    }
    let day = parse_digits(day)?;
    let year = i64::try_from(year).ok()?;
    let month = i64::try_from(month).ok()?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut hms = time.split(':');
    let (h, m, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() || [h, m, sec].iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, m, sec) = (parse_digits(h)?, parse_digits(m)?, parse_digits(sec)?);
    // 60 admits a leap second (RFC 9110 §5.6.7 "second = 2DIGIT" allows it).
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, i64::try_from(day).ok()?);
    let secs_of_day = i64::try_from(h * 3600 + m * 60 + sec).ok()?;
    Some(days * 86_400 + secs_of_day)
}

fn days_in_month(year: i64, month: i64) -> u64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2025-01-01T00:00:00Z.
    const NOW: i64 = 1_735_689_600;

    #[test]
    fn year_of_matches_known_dates() {
        assert_eq!(year_of(0), 1970);
        assert_eq!(year_of(NOW), 2025);
        assert_eq!(year_of(NOW - 1), 2024);
        assert_eq!(year_of(951_782_400), 2000); // 2000-02-29
    }

    #[test]
    fn two_digit_years_follow_the_fifty_year_rule() {
        assert_eq!(rfc850_year(94, 2025), 1994);
        assert_eq!(rfc850_year(75, 2025), 2075);
        assert_eq!(rfc850_year(76, 2025), 1976);
        assert_eq!(rfc850_year(10, 2090), 2010);
        let in_2070 = parse_http_date("Tuesday, 01-Jan-70 00:00:00 GMT", NOW).unwrap();
        assert_eq!(year_of(in_2070), 2070);
    }

    #[test]
    fn http_date_formats_agree() {
        // RFC 9110 §5.6.7's own example, in its three spellings.
        let want = 784_111_777;
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", NOW),
            Some(want)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", NOW),
            Some(want)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994", NOW), Some(want));
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT", NOW),
            Some(0)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT", NOW),
            Some(951_782_400)
        );
    }

    #[test]
    fn http_date_rejects_junk() {
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 00:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37",
            "Sun, 06 Nov 99999 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn digits_saturate() {
        assert_eq!(parse_digits("99999999999999999999999999"), Some(u64::MAX));
        assert_eq!(parse_digits("-1"), None);
        assert_eq!(parse_digits("1.5"), None);
    }
}
