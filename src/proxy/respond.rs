//! The one place where a failure becomes a response. Bodies are short and reveal no
//! internals (no addresses, no error chains): those go to the log.

use super::body::Body;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no eligible node in pool {0}")]
    NoNode(String),
    #[error("node refused the connection")]
    BackendRefused,
    #[error("node did not answer in time")]
    BackendTimeout,
    #[error("node failed: {0}")]
    BackendFailed(String),
    /// Per-client limit (429) with a hint.
    #[error("client over its connection rate")]
    ClientLimited { retry_after: Duration },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BackendRefused | ProxyError::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Map an error to the response the client sees.
pub fn error_response(e: &ProxyError) -> Response<Body> {
    let status = e.status();
    let text = match e {
        ProxyError::BadRequest(why) => *why,
        ProxyError::NoRoute => "no route",
        ProxyError::NoNode(_) => "no backend available",
        ProxyError::BackendRefused | ProxyError::BackendFailed(_) => "bad gateway",
        ProxyError::BackendTimeout => "gateway timeout",
        ProxyError::ClientLimited { .. } => "too many connections from this client",
    };
    let mut r = plain(status, text);
    if let ProxyError::ClientLimited { retry_after } = e {
        add_retry_after(&mut r, *retry_after);
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from_static(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `Retry-After` in whole seconds rounded up (RFC 9110 §10.2.3 allows only integers) and
/// the exact value in `retry-after-ms` for clients that can use it.
pub fn add_retry_after(r: &mut Response<Body>, after: Duration) {
    let ms = after.as_millis().max(1) as u64;
    let secs = ms.div_ceil(1000);
    let h = r.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(secs));
    h.insert("retry-after-ms", HeaderValue::from(ms));
}

/// Why and how a client is turned away, with when to come back.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub retry_after: Duration,
    pub ticket: Option<String>,
    pub reason: &'static str,
    /// Quota for the RateLimit-Policy field: admissions per second of the node.
    pub rate: Option<f64>,
    /// How long the ticket cookie stays useful after the slot.
    pub claim_window: Duration,
}

impl Rejection {
    pub fn busy(
        retry_after: Duration,
        ticket: Option<String>,
        overflow: bool,
        rate: f64,
        claim_window: Duration,
    ) -> Self {
        Rejection {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            ticket,
            reason: if overflow { "overloaded" } else { "node_busy" },
            rate: Some(rate),
            claim_window,
        }
    }

    pub fn client_limited(retry_after: Duration) -> Self {
        Rejection {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after,
            ticket: None,
            reason: "client_limit",
            rate: None,
            claim_window: Duration::ZERO,
        }
    }

    /// Milliseconds, rounded up: a client back a hair early would find its slot not due.
    pub fn retry_after_ms(&self) -> u64 {
        let ns = self.retry_after.as_nanos();
        (ns.div_ceil(1_000_000) as u64).max(1)
    }

    /// `{"retry_after_ms":N,"reason":"…","ticket":"…"}`: at most 123 bytes with a ticket
    /// (RFC 6455 §5.5: a close reason must fit a control frame).
    pub fn json(&self) -> String {
        match &self.ticket {
            Some(t) => format!(
                "{{\"retry_after_ms\":{},\"ticket\":\"{t}\"}}",
                self.retry_after_ms()
            ),
            None => format!(
                "{{\"retry_after_ms\":{},\"reason\":\"{}\"}}",
                self.retry_after_ms(),
                self.reason
            ),
        }
    }
}

/// Turn a client away. HTTP clients get 503/429 with `Retry-After`, `retry-after-ms`,
/// the httpapi RateLimit fields and the ticket; on `reject = "websocket-close"` routes a
/// WebSocket upgrade is completed here instead (the node is never contacted) and closed at
/// once with 1013 and the hint in the reason, because a browser sees only 1006 for a
/// refused handshake but can read a close reason.
pub fn reject(
    parts: &http::request::Parts,
    rej: Rejection,
    browser_close: bool,
    shared: &std::sync::Arc<crate::server::Shared>,
) -> Response<Body> {
    if browser_close {
        if let Some(r) = crate::websocket::reject::close_1013(parts, &rej, shared) {
            return r;
        }
    }
    let ms = rej.retry_after_ms();
    let mut r = Response::new(Body::from_string(rej.json()));
    *r.status_mut() = rej.status;
    add_retry_after(&mut r, Duration::from_millis(ms));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    if let Some(rate) = rej.rate {
        // draft-ietf-httpapi-ratelimit-headers: quota per 1 s window, none left now,
        // reset when the slot comes.
        let q = rate.ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&format!("\"node\";q={q};w=1")) {
            h.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"node\";r=0;t={}", ms.div_ceil(1000))) {
            h.insert("ratelimit", v);
        }
    }
    if let Some(t) = &rej.ticket {
        if let Ok(v) = HeaderValue::from_str(t) {
            h.insert(crate::admission::gate::TICKET_HEADER, v);
        }
        let max_age = (ms / 1000) + rej.claim_window.as_secs() + 1;
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}={t}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax",
            crate::admission::gate::TICKET_COOKIE
        )) {
            h.append(http::header::SET_COOKIE, v);
        }
    }
    r
}
