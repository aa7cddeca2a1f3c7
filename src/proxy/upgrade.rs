//! WebSocket upgrades: forward the handshake to the node, and on its 101 join both sides.

use super::body::Body;
use super::headers::strip_hop_by_hop;
use super::node_leg::{Answer, LegError};
use super::respond::ProxyError;
use super::ConnCtx;
use crate::backend::connect::{connect, ConnectError};
use crate::backend::{Node, NodeFailure};
use crate::conn::{ClientIo, ClientSlot};
use crate::websocket::side::release_stale_wakers;
use crate::websocket::side::Side;
use crate::websocket::tunnel::{relay, TunnelSettings};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpStream;

pub async fn forward(
    mut req: Request<Incoming>,
    node: &Arc<Node>,
    ctx: &ConnCtx,
    key_hash: Option<u64>,
    tunnel_slot: Option<ClientSlot>,
    note: Option<Box<super::access::Note>>,
) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let host = super::headers::request_host(&req)?;
    let timeouts = &ctx.snap.config.timeouts;

    let stream = match connect(node.key.addr, timeouts.backend_connect.0).await {
        Ok(s) => s,
        Err(e) => {
            let kind = match e {
                ConnectError::Refused { .. } => NodeFailure::Refused,
                ConnectError::Timeout { .. } => NodeFailure::Timeout,
                ConnectError::Io { .. } => NodeFailure::ConnectFailed,
                ConnectError::Local { .. } => NodeFailure::LocalResource,
            };
            return Err(super::node_failed(ctx, node, kind, e));
        }
    };

    let (mut parts, _body) = req.into_parts();
    // Remembered for the tunnel's life: a drain hint for this client comes with a ticket.
    let wants_ticket = crate::admission::gate::ticket_info(&parts).wants;
    let client_key = super::headers::upgrade_for_node(
        &mut parts,
        ctx.info.client,
        ctx.info.tls,
        host.as_deref(),
    )?;
    // The node leg without an HTTP client: the head written by hand, the answer's head
    // parsed in place (see `node_leg`).
    let head = super::node_leg::request_head(&parts);
    drop(parts);
    // The node's work begins when the head reaches it: written at the node's rate.
    crate::admission::gate::pace_write(node).await;
    let answer = super::node_leg::exchange(stream, &head, timeouts.backend_response.0).await;
    let (headers, stream, rest) = match answer {
        Ok(Answer::Switching {
            headers,
            stream,
            rest,
        }) => (headers, stream, rest),
        Ok(Answer::Other(resp)) => {
            // The node said no: its answer is the client's answer. A 4xx or 5xx never
            // counts against its health: the request (its path, its credentials) is the
            // client's choice, and so is any answer an application gives to it.
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            return Ok(Response::from_parts(parts, Body::Stream(body)));
        }
        Err(e) => {
            let kind = match e {
                LegError::Timeout(_) => NodeFailure::Timeout,
                LegError::BadHead(_) => NodeFailure::BadHandshake,
                LegError::Io(_) | LegError::Answer(_) => NodeFailure::ExchangeFailed,
            };
            return Err(super::node_failed(ctx, node, kind, e));
        }
    };

    // A 101 is joined only if it completes the handshake herdgate sent: `Upgrade:
    // websocket` and the accept value for the key. Anything else would join a client to a
    // stream it cannot read.
    if let Err(why) = check_node_101(&headers, client_key.as_bytes()) {
        return Err(super::node_failed(
            ctx,
            node,
            NodeFailure::BadHandshake,
            why,
        ));
    }
    // Success for passive health is the 101, not the close.
    ctx.shared.health.passive_success(node);
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    strip_hop_by_hop(resp.headers_mut(), true);
    let settings = TunnelSettings {
        idle: Some(timeouts.idle_tunnel.0).filter(|d| !d.is_zero()),
        close_timeout: timeouts.close.0,
        write: timeouts.write.0,
    };
    // The node accepted the session: only now may its key take room in the sticky table.
    crate::routing::learn(&ctx.snap, node, key_hash, ctx.info.client_id());
    spawn_tunnel(
        client_upgrade,
        (stream, rest),
        node.clone(),
        ctx,
        key_hash,
        wants_ticket,
        settings,
        tunnel_slot,
        note,
    );
    Ok(resp)
}

/// Does the node's 101 complete the handshake sent with `key` (RFC 6455 §4.2.2)?
fn check_node_101(h: &http::HeaderMap, key: &[u8]) -> Result<(), &'static str> {
    let upgrade_ws = h
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
    if !upgrade_ws {
        return Err("the node's 101 lacks `Upgrade: websocket`");
    }
    let expected = crate::websocket::handshake::accept_key(key);
    let mut accepts = h.get_all(http::header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes() == expected.as_bytes() => Ok(()),
        _ => Err("the node's 101 has no matching Sec-WebSocket-Accept"),
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_tunnel(
    client: OnUpgrade,
    (node_tcp, node_rest): (TcpStream, Bytes),
    node: Arc<Node>,
    ctx: &ConnCtx,
    key_hash: Option<u64>,
    wants_ticket: bool,
    settings: TunnelSettings,
    tunnel_slot: Option<ClientSlot>,
    note: Option<Box<super::access::Note>>,
) {
    let shared = ctx.shared.clone();
    // The tunnel keeps the connection's slot under the connection caps.
    let conn_guard = ctx.take_guard();
    // The task's future is what an idle tunnel costs: the guards stay captures (not moved
    // into locals, which would store them twice) and the join's values are scoped to a
    // block (else they keep their room across the relay's await).
    tokio::spawn(async move {
        let (client_side, client_pre, backend_side) = {
            // The client's side resolves once the 101 is written to it: a client that does
            // not read holds it back, so the join is bounded like any write.
            let c = match tokio::time::timeout(settings.write, client).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(node = %node.key, "upgrade failed: {e}");
                    return;
                }
                Err(_) => {
                    crate::metrics::write_timeout("client", "upgrade");
                    tracing::debug!(node = %node.key, "upgrade: the 101 was not taken in time");
                    return;
                }
            };
            let Ok(c) = c.downcast::<TokioIo<crate::io::WriteDeadline<ClientIo>>>() else {
                tracing::error!("client connection of an unexpected type");
                return;
            };
            let client_side = match c.io.into_inner().into_inner() {
                ClientIo::Plain(s) => Side::Plain(s),
                ClientIo::Tls(t) => Side::tls(*t),
            };
            (client_side, c.read_buf, Side::Plain(node_tcp))
        };
        // The finished connection task's wakers would otherwise keep its memory (~4 KiB)
        // until the first byte in each direction.
        release_stale_wakers(client_side.tcp());
        release_stale_wakers(backend_side.tcp());
        let guard = shared
            .tunnels
            .register(node.clone(), key_hash, wants_ticket);
        node.open_tunnels.fetch_add(1, Ordering::Relaxed);
        node.metrics.tunnels_open.increment(1.0);
        node.metrics.tunnels_total.increment(1);
        let end = relay(
            client_side,
            client_pre,
            backend_side,
            node_rest,
            guard.ctl(),
            &settings,
            Some(&shared.health),
        )
        .await;
        node.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        node.metrics.tunnels_open.decrement(1.0);
        tracing::trace!(node = %node.key, "tunnel ended: {end:?}");
        super::access::tunnel(note, &end);
        drop(guard);
        drop((conn_guard, tunnel_slot));
    });
}
