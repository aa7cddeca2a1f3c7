//! Hint parsing from response heads and close frames: the contract with the proxy, and
//! robustness to anything else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herdgate_client::hint::MAX_RETRY_AFTER;
use herdgate_client::{Hint, HintSource};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

// 1994-11-06 08:49:37 UTC, RFC 9110's example date.
const T0: u64 = 784_111_777;

#[test]
fn full_herdgate_rejection_prefers_ticket_with_exact_ms() {
    let h = headers(&[
        ("retry-after", "2"),
        ("retry-after-ms", "1234"),
        ("herdgate-ticket", "AbC-_09"),
        (
            "set-cookie",
            "herdgate_ticket=AbC-_09; Path=/; Max-Age=10; HttpOnly",
        ),
        ("ratelimit", "limit=10, remaining=0, reset=2"),
        ("ratelimit-policy", "10;w=1"),
        ("connection", "close"),
    ]);
    let hint = Hint::from_response(
        &h,
        Some(br#"{"retry_after_ms":1234,"reason":"busy"}"#),
        at(T0),
    );
    assert_eq!(
        hint,
        Some(Hint {
            retry_after: Duration::from_millis(1234),
            ticket: Some("AbC-_09".into()),
            source: HintSource::TicketMs,
            header: Some(Duration::from_secs(2)),
        })
    );
}

#[test]
fn retry_after_ms_beats_retry_after_seconds() {
    let h = headers(&[("retry-after", "2"), ("retry-after-ms", "1501")]);
    let hint = Hint::from_response(&h, None, at(T0)).unwrap();
    assert_eq!(hint.retry_after, Duration::from_millis(1501));
    assert_eq!(hint.source, HintSource::RetryAfterMs);
    assert_eq!(hint.ticket, None);
}

#[test]
fn retry_after_seconds_alone() {
    let h = headers(&[("Retry-After", "3")]);
    let hint = Hint::from_response(&h, None, at(T0)).unwrap();
    assert_eq!(hint.retry_after, Duration::from_secs(3));
    assert_eq!(hint.source, HintSource::RetryAfterHeader);
}

#[test]
fn retry_after_http_date_is_relative_to_the_date_header() {
    // The client's clock is a day off; the server's Date header keeps the delay right.
    let h = headers(&[
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT"),
    ]);
    let hint = Hint::from_response(&h, None, at(T0 + 86_400)).unwrap();
    assert_eq!(hint.retry_after, Duration::from_secs(30));
    assert_eq!(hint.source, HintSource::RetryAfterHeader);
}

#[test]
fn retry_after_http_date_without_date_header_uses_now() {
    for date in [
        "Sun, 06 Nov 1994 08:49:47 GMT",
        "Sunday, 06-Nov-94 08:49:47 GMT",
        "Sun Nov  6 08:49:47 1994",
    ] {
        let h = headers(&[("retry-after", date)]);
        let hint = Hint::from_response(&h, None, at(T0)).unwrap();
        assert_eq!(hint.retry_after, Duration::from_secs(10), "{date}");
    }
}

#[test]
fn retry_after_date_in_the_past_means_now() {
    let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
    let hint = Hint::from_response(&h, None, at(T0 + 100)).unwrap();
    assert_eq!(hint.retry_after, Duration::ZERO);
}

#[test]
fn ticket_from_cookie_when_header_missing() {
    let h = headers(&[
        ("retry-after-ms", "10"),
        ("set-cookie", "other=1; Path=/"),
        ("set-cookie", "herdgate_ticket=\"tkt_1\"; Path=/; Secure"),
    ]);
    let hint = Hint::from_response(&h, None, at(T0)).unwrap();
    assert_eq!(hint.ticket.as_deref(), Some("tkt_1"));
    assert_eq!(hint.source, HintSource::TicketMs);
}

#[test]
fn body_is_a_fallback_when_headers_are_stripped() {
    let h = headers(&[("content-type", "application/json")]);
    let hint = Hint::from_response(
        &h,
        Some(br#"{"retry_after_ms":777,"reason":"node busy"}"#),
        at(T0),
    )
    .unwrap();
    assert_eq!(hint.retry_after, Duration::from_millis(777));
    assert_eq!(hint.source, HintSource::RetryAfterMs);
    assert_eq!(
        Hint::from_response(&h, Some(b"{\"retry_after"), at(T0)),
        None
    );
    assert_eq!(Hint::from_response(&h, None, at(T0)), None);
}

#[test]
fn junk_values_are_ignored_and_later_good_values_used() {
    let h = headers(&[
        ("retry-after-ms", "-5"),
        ("retry-after-ms", "12.5"),
        ("retry-after-ms", "soon"),
        ("retry-after", "tomorrow"),
        ("retry-after", " 4 "),
        ("herdgate-ticket", "has space"),
        ("herdgate-ticket", &"x".repeat(65)),
    ]);
    let hint = Hint::from_response(&h, None, at(T0)).unwrap();
    assert_eq!(hint.retry_after, Duration::from_secs(4));
    assert_eq!(hint.source, HintSource::RetryAfterHeader);
    assert_eq!(hint.ticket, None);
}

#[test]
fn absurd_values_are_capped() {
    let h = headers(&[("retry-after-ms", "99999999999999999999999999")]);
    assert_eq!(
        Hint::from_response(&h, None, at(T0)).unwrap().retry_after,
        MAX_RETRY_AFTER
    );
    let h = headers(&[("retry-after", "86400")]);
    assert_eq!(
        Hint::from_response(&h, None, at(T0)).unwrap().retry_after,
        MAX_RETRY_AFTER
    );
    let h = headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]);
    assert_eq!(
        Hint::from_response(&h, None, at(T0)).unwrap().retry_after,
        MAX_RETRY_AFTER
    );
    let c = Hint::from_close(1013, r#"{"retry_after_ms":1e300}"#).unwrap();
    assert_eq!(c.retry_after, MAX_RETRY_AFTER);
}

#[test]
fn close_1013_with_ticket() {
    let hint = Hint::from_close(1013, r#"{"retry_after_ms":850,"ticket":"Zm9vYmFy"}"#).unwrap();
    assert_eq!(hint.retry_after, Duration::from_millis(850));
    assert_eq!(hint.ticket.as_deref(), Some("Zm9vYmFy"));
    assert_eq!(hint.source, HintSource::TicketMs);
}

#[test]
fn close_1012_drain_without_ticket() {
    let hint = Hint::from_close(1012, r#"{"retry_after_ms":3000}"#).unwrap();
    assert_eq!(hint.retry_after, Duration::from_secs(3));
    assert_eq!(hint.ticket, None);
    assert_eq!(hint.source, HintSource::CloseReason);
}

#[test]
fn close_without_usable_hint() {
    assert_eq!(Hint::from_close(1001, r#"{"retry_after_ms":3000}"#), None);
    assert_eq!(Hint::from_close(1000, ""), None);
    assert_eq!(Hint::from_close(1013, ""), None);
    assert_eq!(Hint::from_close(1013, "try later"), None);
    assert_eq!(Hint::from_close(1013, r#"{"retry_after_ms":-1}"#), None);
    assert_eq!(Hint::from_close(1013, r#"{"retry_after_ms":"100"}"#), None);
    assert_eq!(Hint::from_close(1013, r#"[1,2]"#), None);
    // A bad ticket does not spoil the delay.
    let h = Hint::from_close(1013, r#"{"retry_after_ms":5,"ticket":"a\r\nb"}"#).unwrap();
    assert_eq!((h.retry_after, h.ticket), (Duration::from_millis(5), None));
    let h = Hint::from_close(1013, r#"{"retry_after_ms":5,"ticket":42}"#).unwrap();
    assert_eq!(h.ticket, None);
}

#[test]
fn prefer_follows_source_order() {
    let mk = |source, ms| Hint {
        retry_after: Duration::from_millis(ms),
        ticket: None,
        source,
        header: None,
    };
    let close = mk(HintSource::CloseReason, 1);
    let header = mk(HintSource::RetryAfterHeader, 2);
    let ms = mk(HintSource::RetryAfterMs, 3);
    let ticket = mk(HintSource::TicketMs, 4);
    assert_eq!(
        Hint::prefer(Some(close.clone()), Some(header.clone())),
        Some(header.clone())
    );
    assert_eq!(
        Hint::prefer(Some(ms.clone()), Some(header)),
        Some(ms.clone())
    );
    assert_eq!(Hint::prefer(Some(ms), Some(ticket.clone())), Some(ticket));
    assert_eq!(Hint::prefer(None, Some(close.clone())), Some(close));
    assert_eq!(Hint::prefer(None, None), None);
}

proptest! {
    #[test]
    fn header_parsing_never_panics(
        values in proptest::collection::vec(("[a-z-]{1,20}", "[ -~]{0,60}"), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        now in any::<u64>(),
    ) {
        let mut map = HeaderMap::new();
        for name in ["retry-after", "retry-after-ms", "herdgate-ticket", "date", "set-cookie"] {
            for (_, v) in &values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    map.append(name, v);
                }
            }
        }
        let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
        if let Some(h) = Hint::from_response(&map, Some(&body), now) {
            prop_assert!(h.retry_after <= MAX_RETRY_AFTER);
            if let Some(t) = &h.ticket {
                prop_assert!(t.len() <= 64 && HeaderValue::from_str(t).is_ok());
            }
        }
    }

    #[test]
    fn close_parsing_never_panics(code in any::<u16>(), reason in "\\PC{0,123}") {
        if let Some(h) = Hint::from_close(code, &reason) {
            prop_assert!(code == 1013 || code == 1012);
            prop_assert!(h.retry_after <= MAX_RETRY_AFTER);
        }
    }

    #[test]
    fn close_json_roundtrip(ms in 0u64..3_600_000, ticket in "[A-Za-z0-9_-]{1,64}") {
        let reason = format!(r#"{{"retry_after_ms":{ms},"ticket":"{ticket}"}}"#);
        // The contract: the whole reason fits a close frame (RFC 6455 §5.5).
        prop_assume!(reason.len() <= 123);
        let h = Hint::from_close(1013, &reason).unwrap();
        prop_assert_eq!(h.retry_after, Duration::from_millis(ms));
        prop_assert_eq!(h.ticket.as_deref(), Some(ticket.as_str()));
    }
}
