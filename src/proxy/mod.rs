//! The request pipeline: route ─► pick a node ─► admit ─► forward (HTTP or tunnel).

pub mod body;
pub mod headers;
mod http_fwd;
pub mod respond;
mod upgrade;

use crate::backend::Node;
use crate::listener::ConnInfo;
use crate::server::Shared;
use crate::snapshot::{Pool, Route, Snapshot};
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
    let node = pick_node(pool, route, &req)?;
    if ws {
        upgrade::forward(req, node, ctx).await
    } else {
        http_fwd::forward(req, node, ctx, host.as_deref()).await
    }
}

fn pick_node<'a>(
    pool: &'a Pool,
    _route: &Route,
    _req: &Request<Incoming>,
) -> Result<&'a Arc<Node>, ProxyError> {
    pool.next_rr()
        .ok_or_else(|| ProxyError::NoNode(pool.name.to_string()))
}
