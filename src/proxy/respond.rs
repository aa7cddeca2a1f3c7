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
