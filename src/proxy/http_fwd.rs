//! Plain HTTP/1.1 forwarding over pooled keep-alive connections, bodies streamed.

use super::body::Body;
use super::headers::{add_forwarded, strip_hop_by_hop};
use super::respond::ProxyError;
use super::ConnCtx;
use crate::backend::connect::{classify_client_error, ClientFailure};
use crate::backend::request_body::{BodyWatch, TimedBody};
use crate::backend::{Node, NodeFailure};
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
    add_forwarded(&mut parts.headers, ctx.info.client, ctx.info.tls, host);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = super::headers::node_target(pq);
    parts.uri = Uri::try_from(format!("http://{}{}", node.key.addr, target))
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    parts.version = http::Version::HTTP_11;
    let timeouts = &ctx.snap.config.timeouts;
    // Whose fault a failed exchange is: a client that stalls or breaks its body gets 408,
    // and the node is not blamed for it.
    let watch = BodyWatch::new();
    let body = TimedBody::new(body, timeouts.request_body.0, watch.clone());
    let req = Request::from_parts(parts, body);
    let timeout = timeouts.backend_response.0;
    let resp = match tokio::time::timeout(timeout, ctx.snap.http.request(req)).await {
        Err(_) | Ok(Err(_)) if watch.client_fault() => {
            return Err(ProxyError::RequestBody);
        }
        // Still waiting on the client's body when the answer's time ran out.
        Err(_) if watch.waiting_on_client() => return Err(ProxyError::RequestBody),
        Err(elapsed) => return Err(super::node_failed(ctx, node, NodeFailure::Timeout, elapsed)),
        Ok(Err(e)) => {
            let kind = match classify_client_error(&e) {
                ClientFailure::Refused => NodeFailure::Refused,
                ClientFailure::Timeout => NodeFailure::Timeout,
                ClientFailure::ConnectOther => NodeFailure::ConnectFailed,
                ClientFailure::Other => NodeFailure::Unattributed,
                ClientFailure::Local => NodeFailure::LocalResource,
            };
            return Err(super::node_failed(ctx, node, kind, e));
        }
        Ok(Ok(r)) => r,
    };
    ctx.shared.health.passive_success(node);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::Stream(body)))
}
