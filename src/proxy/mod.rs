//! The request pipeline: route ─► pick a node ─► admit ─► forward (HTTP or tunnel).

pub mod body;
pub mod headers;
mod http_fwd;
pub mod respond;
mod upgrade;

use crate::listener::ConnInfo;
use crate::server::Shared;
use crate::routing;
use crate::snapshot::Snapshot;
use body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use respond::{error_response, ProxyError};
use std::sync::Arc;

/// Per-connection context: the snapshot is loaded once and kept for the connection's life.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub snap: Arc<Snapshot>,
    pub info: ConnInfo,
}

impl ConnCtx {
    pub fn new(shared: Arc<Shared>, snap: Arc<Snapshot>, info: ConnInfo) -> Self {
        ConnCtx { shared, snap, info }
    }
}

/// hyper service entry point: never fails, every error becomes a response.
pub async fn handle(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<Body> {
    let resp = match pipeline(req, &ctx).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(peer = %ctx.info.peer, "request failed: {e}");
            error_response(&e)
        }
    };
    crate::metrics::request(resp.status().as_u16());
    resp
}

async fn pipeline(req: Request<Incoming>, ctx: &ConnCtx) -> Result<Response<Body>, ProxyError> {
    let host = headers::request_host(&req)?;
    let route = ctx
        .snap
        .route(host.as_deref(), req.uri().path(), &ctx.info.listener)
        .ok_or(ProxyError::NoRoute)?;
    let pool = &ctx.snap.pools[route.pool];
    let ws = crate::websocket::handshake::check_upgrade(&req)?;
    let (parts, body) = req.into_parts();
    let (key, cookie) = routing::session_key(route, &parts, ctx.info.peer.ip(), ctx.info.tls);
    let choice = routing::choose(pool, key, cookie)
        .ok_or_else(|| ProxyError::NoNode(pool.name.to_string()))?;
    let req = Request::from_parts(parts, body);
    let mut resp = if ws {
        upgrade::forward(req, choice.node, ctx, choice.key_hash).await?
    } else {
        http_fwd::forward(req, choice.node, ctx, host.as_deref()).await?
    };
    if let Some(c) = choice.set_cookie {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    Ok(resp)
}
