//! The one place where a failure becomes a response, in the manner of linkerd2-proxy's
//! single error-to-response map: every path of the pipeline returns a [`ProxyError`]
//! (a rejection by admission included) and [`response`] turns it into what the client
//! sees. Bodies are short and reveal no internals (no addresses, no error chains): those
//! stay in the error's `source()` chain, for the log.

use super::body::Body;
use crate::config::Timeouts;
use crate::conn::ConnGuard;
use crate::websocket::frame::{write_close_frame, Direction, FrameTracker, CLOSE_FRAME_MAX_LEN};
use crate::websocket::handshake::{accept_key, HandshakeError};
use herdgate_wire::{
    reason_json, retry_after_ms, retry_after_secs, retry_after_secs_held, CLOSE_TRY_AGAIN_LATER,
    RETRY_AFTER_MS_HEADER, TICKET_COOKIE, TICKET_HEADER,
};
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, UPGRADE};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cause kept whole for the log (no `String` flattening).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request did not get a node's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is unusable (400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A WebSocket upgrade that breaks RFC 6455 §4.2.1 (400).
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(#[from] HandshakeError),
    /// The client stalled or broke its request body on the way to the node (408); never
    /// the node's failure.
    #[error("request body: the client stalled or broke it")]
    RequestBody,
    /// No route matches the host and path (404).
    #[error("no route for this host and path")]
    NoRoute,
    /// The route's pool has no eligible node (503).
    #[error("no eligible node in pool {0}")]
    NoNode(Arc<str>),
    /// The node failed; `kind` says how (502, or 504 for a timeout).
    #[error("node {node}: {kind}")]
    Node {
        /// The node, for the log.
        node: String,
        /// How it failed (also what was counted: see [`crate::backend::NodeFailure`]).
        kind: crate::backend::NodeFailure,
        /// What the socket or the HTTP client said.
        #[source]
        cause: BoxError,
    },
    /// Admission or a per-client limit turned the client away, with when to come back.
    #[error("turned away: {}", .0.reason)]
    Rejected(Box<Rejection>),
}

impl ProxyError {
    /// The status of the response this error becomes (a browser-close rejection is then
    /// completed as a 101 instead).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::RequestBody => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Node { kind, .. } => kind.status(),
            ProxyError::Rejected(r) => r.status,
        }
    }
}

/// Map an error to the response the client sees.
pub fn response(e: ProxyError) -> Response<Body> {
    let text = match &e {
        ProxyError::BadRequest(why) => why,
        ProxyError::BadUpgrade(HandshakeError(why)) => why,
        ProxyError::NoRoute => "no route",
        ProxyError::RequestBody => "request body timeout",
        ProxyError::NoNode(_) => "no backend available",
        ProxyError::Node { .. } if e.status() == StatusCode::GATEWAY_TIMEOUT => "gateway timeout",
        ProxyError::Node { .. } if e.status() == StatusCode::SERVICE_UNAVAILABLE => {
            "service unavailable"
        }
        ProxyError::Node { .. } => "bad gateway",
        ProxyError::Rejected(_) => "",
    };
    match e {
        ProxyError::Rejected(rej) => reject(*rej),
        ProxyError::RequestBody => {
            // The rest of the body may still come: the connection cannot be reused.
            let mut r = plain(e.status(), text);
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            r
        }
        e => plain(e.status(), text),
    }
}

/// A short `text/plain` answer of our own.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from_static(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why and how a client is turned away, with when to come back.
#[derive(Debug)]
pub struct Rejection {
    /// 503 (node busy) or 429 (per-client limit).
    pub status: StatusCode,
    /// When to come back.
    pub retry_after: Duration,
    /// A signed ticket for a reserved slot, for clients that can carry one.
    pub ticket: Option<String>,
    /// The reason word of the JSON hint.
    pub reason: &'static str,
    /// Quota for the RateLimit-Policy field: admissions per second of the node.
    pub rate: Option<f64>,
    /// How long the ticket cookie stays useful after the slot.
    pub claim_window: Duration,
    /// Set on `reject = "websocket-close"` routes for a WebSocket upgrade: complete it
    /// and close with 1013 instead of answering 503.
    pub close: Option<BrowserClose>,
    /// The client came over TLS: the ticket cookie is `Secure` (RFC 6265 §4.1.2.5), so a
    /// browser never sends it over a plain connection.
    pub secure: bool,
    /// The node holds the client's promise for it up to a second early
    /// ([`herdgate_core::admission::EARLY_HOLD`]): `Retry-After` rounds down, not up.
    pub early_hold: bool,
}

impl Rejection {
    /// The node's schedule is full now (`overflow`: beyond `max_retry_after`).
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
            close: None,
            secure: false,
            early_hold: false,
        }
    }

    /// The client is over its own connection rate.
    pub fn client_limited(retry_after: Duration) -> Self {
        Rejection {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after,
            ticket: None,
            reason: "client_limit",
            rate: None,
            claim_window: Duration::ZERO,
            close: None,
            secure: false,
            early_hold: false,
        }
    }

    /// The client has `limits.max_tunnels_per_client` tunnels open already.
    pub fn client_capped() -> Self {
        Rejection {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: CAPPED_RETRY_AFTER,
            ticket: None,
            reason: "client_tunnels",
            rate: None,
            claim_window: Duration::ZERO,
            close: None,
            secure: false,
            early_hold: false,
        }
    }

    /// The node holds the client's promise for it if it comes back early: `Retry-After`
    /// rounds down.
    pub fn held_early(mut self, on: bool) -> Self {
        self.early_hold = on;
        self
    }

    /// Answer a browser's upgrade with a 101 and a 1013 close (when it can be completed).
    pub fn closing(mut self, close: Option<BrowserClose>) -> Self {
        self.close = close;
        self
    }

    /// The client came over TLS (the ticket cookie gets `Secure`).
    pub fn over_tls(mut self, tls: bool) -> Self {
        self.secure = tls;
        self
    }

    /// Milliseconds, rounded up (the wire contract's rounding).
    pub fn retry_after_ms(&self) -> u64 {
        retry_after_ms(self.retry_after)
    }

    /// The wire contract's JSON hint: at most 123 bytes with a ticket (RFC 6455 §5.5: a
    /// close reason must fit a control frame).
    pub fn json(&self) -> String {
        reason_json(
            self.retry_after_ms(),
            Some(self.reason),
            self.ticket.as_deref(),
        )
    }
}

/// When a client over its tunnel cap should try again: a tunnel of its own must close
/// first, which nothing here can predict.
pub const CAPPED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What it takes to complete a browser's upgrade ourselves and close it at once.
pub struct BrowserClose {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
    close_timeout: Duration,
    write_timeout: Duration,
    /// The connection's places under the caps, held until the socket is closed: a client
    /// turned away this way still holds a connection while it keeps it open.
    guard: Option<ConnGuard>,
}

impl std::fmt::Debug for BrowserClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserClose")
            .field("close_timeout", &self.close_timeout)
            .field("holds_guard", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl BrowserClose {
    /// `None` when the request cannot be upgraded here (no key, no upgrade handle): the
    /// client then gets the HTTP answer.
    pub fn prepare(parts: &http::request::Parts, timeouts: &Timeouts) -> Option<Self> {
        let key = parts.headers.get("sec-websocket-key")?;
        let on_upgrade = parts.extensions.get::<OnUpgrade>()?.clone();
        let accept = HeaderValue::from_str(&accept_key(key.as_bytes())).ok()?;
        Some(BrowserClose {
            on_upgrade,
            accept,
            close_timeout: timeouts.close.0,
            write_timeout: timeouts.write.0,
            guard: None,
        })
    }

    /// Keep the connection's cap places until the closed socket is dropped.
    pub fn holding(mut self, guard: Option<ConnGuard>) -> Self {
        self.guard = guard;
        self
    }
}

/// Turn a client away. HTTP clients get 503/429 with `Retry-After`, `retry-after-ms`,
/// the httpapi RateLimit fields and the ticket; on `reject = "websocket-close"` routes a
/// WebSocket upgrade is completed here instead (the node is never contacted) and closed at
/// once with 1013 and the hint in the reason, because a browser sees only 1006 for a
/// refused handshake but can read a close reason.
fn reject(mut rej: Rejection) -> Response<Body> {
    if let Some(close) = rej.close.take() {
        return close_1013(close, &rej);
    }
    let ms = rej.retry_after_ms();
    let mut r = Response::new(Body::from_string(rej.json()));
    *r.status_mut() = rej.status;
    let h = r.headers_mut();
    // RFC 9110 §10.2.3 allows only whole seconds; the exact value goes beside it.
    let secs = if rej.early_hold {
        retry_after_secs_held(ms)
    } else {
        retry_after_secs(ms)
    };
    h.insert(RETRY_AFTER, HeaderValue::from(secs));
    h.insert(RETRY_AFTER_MS_HEADER, HeaderValue::from(ms));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    if let Some(rate) = rej.rate {
        // draft-ietf-httpapi-ratelimit-headers: quota per 1 s window, none left now,
        // reset when the slot comes.
        let q = rate.ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&format!("\"node\";q={q};w=1")) {
            h.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"node\";r=0;t={secs}")) {
            h.insert("ratelimit", v);
        }
    }
    if let Some(t) = &rej.ticket {
        if let Ok(v) = HeaderValue::from_str(t) {
            h.insert(TICKET_HEADER, v);
        }
        let max_age = (ms / 1000) + rej.claim_window.as_secs() + 1;
        let secure = if rej.secure { "; Secure" } else { "" };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{TICKET_COOKIE}={t}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
        )) {
            h.append(http::header::SET_COOKIE, v);
        }
    }
    r
}

/// The 101 that completes the handshake locally (1013 Try Again Later, RFC 6455 §7.4.1);
/// a task then sends the close frame and waits (bounded) for the client's close reply.
fn close_1013(close: BrowserClose, rej: &Rejection) -> Response<Body> {
    let mut frame = [0u8; CLOSE_FRAME_MAX_LEN];
    let len = write_close_frame(&mut frame, CLOSE_TRY_AGAIN_LATER, &rej.json(), None);
    let BrowserClose {
        on_upgrade,
        accept,
        close_timeout,
        write_timeout,
        guard,
    } = close;
    tokio::spawn(async move {
        // Dropped with the socket, at the end of this task.
        let _guard = guard;
        // The 101 goes out before the upgrade resolves: a client that does not read
        // holds it back, so the join is bounded like any write.
        let up = match tokio::time::timeout(write_timeout, on_upgrade).await {
            Ok(Ok(up)) => up,
            Ok(Err(_)) => return,
            Err(_) => {
                crate::metrics::write_timeout("client", "upgrade");
                return;
            }
        };
        let mut io = TokioIo::new(up);
        let write = async {
            io.write_all(&frame[..len]).await?;
            io.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                crate::metrics::write_timeout("client", "tunnel");
                return;
            }
        }
        // Wait for the client's Close (or EOF) so the close handshake completes cleanly;
        // once it is in, the server closes TCP first (RFC 6455 §7.1.1) rather than wait
        // for a FIN the client may not send until it drops its socket.
        let mut buf = [0u8; 256];
        let mut frames = FrameTracker::new(Direction::ClientToServer);
        let _ = tokio::time::timeout(close_timeout.min(Duration::from_secs(5)), async {
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if frames.advance(&buf[..n], false).is_err() || frames.close_seen() {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(write_timeout, io.shutdown()).await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert("sec-websocket-accept", accept);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(tls: bool) -> String {
        let rej = Rejection::busy(
            Duration::from_millis(1500),
            Some("abc_-123".into()),
            false,
            100.0,
            Duration::from_secs(2),
        )
        .over_tls(tls);
        let r = response(ProxyError::Rejected(Box::new(rej)));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        assert_eq!(r.headers()[RETRY_AFTER_MS_HEADER], "1500");
        r.headers()[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_ticket_cookie_is_secure_over_tls_only() {
        let tls = cookie(true);
        assert!(tls.starts_with("herdgate_ticket=abc_-123;"), "{tls}");
        assert!(tls.ends_with("; Secure"), "{tls}");
        let plain = cookie(false);
        assert!(!plain.contains("Secure"), "{plain}");
    }
}
