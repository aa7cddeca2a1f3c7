//! Plain HTTP/1.1 forwarding over pooled keep-alive connections, bodies streamed.

use super::body::Body;
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::respond::ProxyError;
use super::ConnCtx;
use crate::backend::connect::{classify_client_error, ClientFailure};
use crate::backend::Node;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use std::sync::Arc;

pub async fn forward(
    req: Request<Incoming>,
    node: &Arc<Node>,
    ctx: &ConnCtx,
    host: Option<&str>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    add_forwarded(&mut parts.headers, ctx.info.peer.ip(), ctx.info.tls, host);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::try_from(format!("http://{}{}", node.key.addr, pq))
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    parts.version = http::Version::HTTP_11;
    let req = Request::from_parts(parts, body);
    let timeout = ctx.snap.config.timeouts.backend_response.0;
    let resp = match tokio::time::timeout(timeout, ctx.snap.http.request(req)).await {
        Err(_) => {
            node.metrics.backend_timeout.increment(1);
            ctx.shared.health.passive_failure(node, false);
            return Err(ProxyError::BackendTimeout);
        }
        Ok(Err(e)) => {
            let kind = classify_client_error(&e);
            tracing::debug!(node = %node.key, "HTTP forward failed: {e:?}");
            return Err(match kind {
                ClientFailure::Refused => {
                    node.metrics.backend_refused.increment(1);
                    ctx.shared.health.passive_failure(node, true);
                    ProxyError::BackendRefused
                }
                ClientFailure::Timeout => {
                    node.metrics.backend_timeout.increment(1);
                    ctx.shared.health.passive_failure(node, false);
                    ProxyError::BackendTimeout
                }
                ClientFailure::ConnectOther => {
                    node.metrics.backend_other.increment(1);
                    ctx.shared.health.passive_failure(node, true);
                    ProxyError::BackendFailed(e.to_string())
                }
                ClientFailure::Other => {
                    node.metrics.backend_other.increment(1);
                    ProxyError::BackendFailed(e.to_string())
                }
            });
        }
        Ok(Ok(r)) => r,
    };
    ctx.shared.health.passive_success(node);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::Stream(body)))
}
