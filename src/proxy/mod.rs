//! The request pipeline: route ─► pick a node ─► admit ─► forward (HTTP or tunnel).

mod access;
pub mod body;
mod client_addr;
pub mod headers;
mod http_fwd;
mod node_leg;
pub mod respond;
mod upgrade;

use crate::admission::gate::{decide, ticket_info};
use crate::admission::{AdmitInput, AdmitVia, ClientKey, Decision};
use crate::backend::{Node, NodeFailure};
use crate::config::{ClientLimitKey, RejectStyle};
use crate::conn::{ConnGuard, ConnInfo};
use crate::routing;
use crate::snapshot::{Route, Snapshot};
use crate::state::Shared;
use body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use respond::{BrowserClose, ProxyError, Rejection};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Per-connection context: the snapshot is loaded once and kept for the connection's life.
pub struct ConnCtx {
    /// Process-wide state (registry, health, signer, metrics).
    pub shared: Arc<Shared>,
    /// The routing snapshot in force when the connection was accepted.
    pub snap: Arc<Snapshot>,
    /// Where the connection came in.
    pub info: ConnInfo,
    guard: Mutex<Option<ConnGuard>>,
}

impl ConnCtx {
    /// Context for one connection, holding its place under the caps (`guard`).
    pub fn new(shared: Arc<Shared>, snap: Arc<Snapshot>, info: ConnInfo, guard: ConnGuard) -> Self {
        ConnCtx {
            shared,
            snap,
            info,
            guard: Mutex::new(Some(guard)),
        }
    }

    /// Move the connection's cap slot to a tunnel.
    pub(crate) fn take_guard(&self) -> Option<ConnGuard> {
        self.guard.lock().ok().and_then(|mut g| g.take())
    }
}

/// hyper service entry point: never fails, every error becomes a response.
pub async fn handle(req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<Body> {
    let on = ctx.snap.config.log.access;
    let mut note = access::Note::start(on, &req, &ctx.info.listener, ctx.info.client);
    let resp = match pipeline(req, &ctx, &mut note).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(peer = %ctx.info.peer, error = ?e, "request failed: {e}");
            access::failed(&mut note, &e);
            respond::response(e)
        }
    };
    crate::metrics::request(resp.status().as_u16());
    if note.is_some() {
        let size = http_body::Body::size_hint(resp.body()).exact();
        access::request(note, resp.status().as_u16(), size);
    }
    resp
}

async fn pipeline(
    mut req: Request<Incoming>,
    ctx: &ConnCtx,
    note: &mut Option<access::Note>,
) -> Result<Response<Body>, ProxyError> {
    // Who the client is for this request: behind a trusted proxy, its X-Forwarded-For.
    let client = client_addr::request_client(ctx, req.headers_mut());
    access::client(note, client);
    // What per-client caps and slots count by: the address, IPv6 by its /64.
    let client_id = herdgate_core::admission::client_prefix(client);
    let host = headers::request_host(&req)?;
    let route = ctx
        .snap
        .route(host.as_deref(), req.uri().path(), &ctx.info.listener)
        .ok_or(ProxyError::NoRoute)?;
    let pool = &ctx.snap.pools[route.pool];
    let ws = crate::websocket::handshake::check_upgrade(&req)?;
    let (parts, body) = req.into_parts();
    let (key, cookie) = routing::session_key(route, &parts, client, ctx.info.tls);
    let browser_close = ws && route.cfg.reject == RejectStyle::WebsocketClose;
    // A rejection turns a browser away readably (a 101 closed with 1013) on such routes;
    // the connection keeps its places under the caps until that socket is closed.
    let turn_away = |rej: Rejection| {
        let close = browser_close
            .then(|| BrowserClose::prepare(&parts, &ctx.snap.config.timeouts))
            .flatten()
            .map(|c| c.holding(ctx.take_guard()));
        ProxyError::Rejected(Box::new(rej.closing(close).over_tls(ctx.info.tls)))
    };

    if let Some(limiter) = &route.client_limiter {
        let ck = match (route.cfg.client_limit.as_ref().map(|c| c.by), key) {
            (Some(ClientLimitKey::StickyKey), Some(h)) => ClientKey::Id(format!("{h:x}").into()),
            _ => ClientKey::Ip(client_id),
        };
        if let Err(retry_after) = limiter.check(&ck) {
            metrics::counter!(crate::metrics::CLIENT_LIMITED).increment(1);
            return Err(turn_away(Rejection::client_limited(retry_after)));
        }
    }

    // The per-client tunnel cap, before admission (a capped upgrade costs no token).
    let tunnel_slot = if ws {
        let max = ctx.snap.config.limits.max_tunnels_per_client;
        match ctx.shared.clients.tunnels.try_acquire(client_id, max) {
            Some(slot) => Some(slot),
            None => {
                crate::metrics::client_capped("tunnels");
                return Err(turn_away(Rejection::client_capped()));
            }
        }
    } else {
        None
    };

    // A valid ticket names the node that holds the client's reserved token: go there
    // (while it is eligible), whatever the key says, or the reservation would be wasted.
    let ticketed = ticket_info(&parts)
        .ticket
        .and_then(|t| ctx.shared.signer.verify(t).ok())
        .and_then(|c| {
            pool.node_by_id(c.node)
                .filter(|n| routing::ticket_steers(n, &c))
        })
        .filter(|n| n.is_eligible());
    let choice = match ticketed {
        Some(node) => routing::Choice {
            node,
            key_hash: key,
            set_cookie: cookie,
        },
        None => routing::choose(
            pool,
            key,
            cookie,
            crate::admission::gate::owner_of(client_id),
        )
        .ok_or_else(|| ProxyError::NoNode(pool.name.clone()))?,
    };
    let node = choice.node;
    let _in_flight = node.in_flight();
    access::node(note, node);

    if ws || route.cfg.admit_http {
        let owner = crate::admission::gate::owner_of(client_id);
        match admit(&ctx.shared, node, route, pool, &parts, owner).await {
            Ok(via) => access::admitted(note, via),
            Err((rej, capped)) => {
                access::rejected(note, capped);
                return Err(turn_away(rej));
            }
        }
    }

    let req = Request::from_parts(parts, body);
    let mut resp = if ws {
        upgrade::forward(
            req,
            node,
            ctx,
            choice.key_hash,
            tunnel_slot,
            note.clone().map(Box::new),
        )
        .await?
    } else {
        let r = http_fwd::forward(req, node, ctx, host.as_deref()).await?;
        // Like a 101 for a tunnel: only an answer the node served may be learned.
        if r.status().is_success() || r.status().is_redirection() {
            routing::learn(&ctx.snap, node, choice.key_hash, ctx.info.client_id());
        }
        r
    };
    if let Some(c) = choice.set_cookie {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    Ok(resp)
}

/// The one record of a node's failure: its counter and passive health
/// ([`NodeFailure::record`]), then the error the client's answer is made from, with its
/// cause kept for the log.
pub(crate) fn node_failed(
    ctx: &ConnCtx,
    node: &Arc<Node>,
    kind: NodeFailure,
    cause: impl Into<respond::BoxError>,
) -> ProxyError {
    kind.record(node, &ctx.shared.health, Some(ctx.info.client_id()));
    ProxyError::Node {
        node: node.key.to_string(),
        kind,
        cause: cause.into(),
    }
}

/// Admission of one request to `node`: how it was let through, or how to turn it away
/// (and whether the client was at its cap of slots on the node). In queue mode the
/// request may wait here for its slot.
async fn admit(
    shared: &Shared,
    node: &Arc<Node>,
    _route: &Route,
    pool: &crate::snapshot::Pool,
    parts: &http::request::Parts,
    owner: u64,
) -> Result<crate::admission::AdmitVia, (Rejection, bool)> {
    let ti = ticket_info(parts);
    let input = AdmitInput {
        ticket: ti.ticket,
        wants_ticket: ti.wants,
        may_queue: pool
            .cfg
            .queue
            .hold_for(node.queue_len.load(Ordering::Relaxed) as usize),
        owner: Some(owner),
    };
    let d = decide(node, &input);
    // `[fleet] redis`: a ticket already spent on another instance is turned away.
    let by_ticket = matches!(
        d,
        Decision::Admit {
            via: AdmitVia::Ticket,
            ..
        } | Decision::Queue {
            via: AdmitVia::Ticket,
            ..
        }
    );
    if by_ticket && !crate::fleet::ledger::spend(shared, ti.ticket.unwrap_or_default()).await {
        let p = node.admission.params();
        return Err((
            Rejection::busy(p.claim_window, None, false, p.rate, p.claim_window),
            false,
        ));
    }
    match d {
        Decision::Admit { via, .. } => Ok(via),
        Decision::Queue {
            until,
            slot,
            via,
            turn,
            ..
        } => {
            // Hold the request until its slot. If the client goes away meanwhile hyper
            // drops this future: the guard gives the token back as a promise credit.
            let _waiting = QueueGuard::new(node, slot, owner);
            let (mut until, mut turn) = (until, turn.then_some(until));
            loop {
                let now = crate::admission::gate::now();
                tokio::time::sleep(std::time::Duration::from_nanos(until.saturating_sub(now)))
                    .await;
                // Counted when it goes: woken late together with others (a loaded
                // machine), they go out at the node's rate, never as a bunch, each at a
                // turn of its own, in order.
                match node.admission.release(crate::admission::gate::now(), turn) {
                    Ok(()) => break,
                    Err(next) => {
                        node.metrics.repaced.increment(1);
                        (until, turn) = (next, Some(next));
                    }
                }
            }
            _waiting.served();
            crate::admission::gate::count_forwarded(node, via);
            Ok(via)
        }
        Decision::Reject {
            retry_after,
            ticket,
            overflow,
            capped,
            early_hold,
            ..
        } => Err((
            Rejection::busy(
                retry_after,
                ticket,
                overflow,
                node.admission.params().rate,
                node.admission.params().claim_window,
            )
            .held_early(early_hold),
            capped,
        )),
    }
}

/// A request waiting in queue mode.
struct QueueGuard<'a> {
    node: &'a Node,
    slot: crate::admission::Nanos,
    owner: u64,
    served: std::cell::Cell<bool>,
}

impl<'a> QueueGuard<'a> {
    fn new(node: &'a Node, slot: crate::admission::Nanos, owner: u64) -> Self {
        let n = node.queue_len.fetch_add(1, Ordering::Relaxed) + 1;
        node.metrics.queue_len.set(n as f64);
        QueueGuard {
            node,
            slot,
            owner,
            served: std::cell::Cell::new(false),
        }
    }

    fn served(&self) {
        self.served.set(true);
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        let n = self
            .node
            .queue_len
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        self.node.metrics.queue_len.set(n as f64);
        if !self.served.get() {
            // Abandoned: nobody to forward; the token goes back to the client (by its
            // address) as a promise it may claim at once, public after its grace.
            let now = crate::admission::gate::now();
            self.node
                .admission
                .refund_to(self.slot, Some(self.owner), now);
        }
    }
}
