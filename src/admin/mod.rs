//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/admin/nodes`,
//! `POST /admin/nodes/{pool}/{node}/drain` and `.../undrain` (bearer token).
//!
//! Every request must name the listener in `Host` (421 otherwise: DNS rebinding, see
//! `host.rs`). Writes need the bearer token of `admin.token_file`, reads too with
//! `admin.protect_reads`; `/healthz` never does (liveness probes). The token is the one
//! read into the snapshot at start or at the last reload. At most `admin.max_connections`
//! connections are served at once (the rest are closed at once), and each gives its slot
//! back after `admin.idle_timeout` without a request head or without write progress.

mod conn;
mod host;

use crate::admin::conn::Slots;
use crate::admin::host::HostCheck;
use crate::drain::Undrain;
use crate::io::WriteDeadline;
use crate::metrics as m;
use crate::proxy::body::Body;
use crate::state::Shared;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest admin request head kept in memory (hyper's minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serve the admin endpoints on `listener` until the process stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for reason in ["host", "unauthorized", "max_connections"] {
        // Registered at zero, so a scrape shows them before the first refusal.
        let _ = metrics::counter!(m::ADMIN_REFUSED, "reason" => reason);
    }
    metrics::gauge!(m::ADMIN_CONNECTIONS_OPEN).set(0.0);
    let slots = Arc::new(Slots::default());
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.lifecycle.stop_all.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    crate::lograte::warn_limited!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (max, idle) = {
            let snap = shared.load();
            (
                snap.config.admin.max_connections,
                snap.config.admin.idle_timeout.0,
            )
        };
        let Some(slot) = slots.try_take(max) else {
            // Closed at once: a flood of connections costs a descriptor for a moment.
            refused("max_connections");
            drop(stream);
            continue;
        };
        // The address the client connected to (the bind address, or on a wildcard bind
        // the interface's): what its Host header must name.
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let check = HostCheck::new(local);
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &shared, check)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                // From the accept, and again after each response: covers a connection
                // that never sends anything and an idle keep-alive one.
                .header_read_timeout(idle)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(WriteDeadline::new(stream, idle)), svc)
                .await;
        });
    }
}

fn refused(reason: &'static str) {
    metrics::counter!(m::ADMIN_REFUSED, "reason" => reason).increment(1);
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from_static(body));
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            let mut r = Response::new(Body::from_string(s));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "serialisation failed\n"),
    }
}

/// What `/admin/nodes` reports for each node.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeReport {
    /// The node's pool.
    pub pool: String,
    /// The node's name.
    pub node: String,
    /// The node's address (`ip:port`).
    pub addr: String,
    /// Whether health checks currently count it up.
    pub healthy: bool,
    /// Whether it is draining (config, admin API or removal).
    pub draining: bool,
    /// WebSocket tunnels open to it now.
    pub open_tunnels: u64,
    /// Admission rate in force now, in connections per second (lower during slow start).
    pub admit_rate: f64,
    /// How far ahead its admission schedule is booked, in seconds.
    pub schedule_backlog_seconds: f64,
    /// Fleet admission mode (`[fleet]`): `static`, `shared` (Redis leases) or `fallback`.
    #[serde(default)]
    pub fleet_mode: String,
    /// The instance count the static share divides by (1 without `[fleet]`).
    #[serde(default)]
    pub fleet_instances: u32,
    /// The share of the node's configured rate this instance admits now, in (0, 1].
    #[serde(default)]
    pub fleet_share: f64,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Action<'a> {
    Healthz,
    Metrics,
    Nodes,
    Drain(&'a str, &'a str),
    Undrain(&'a str, &'a str),
    NotFound,
}

impl Action<'_> {
    fn of<'a>(method: &Method, path: &'a str) -> Action<'a> {
        match (method, path) {
            (&Method::GET, "/healthz") => Action::Healthz,
            (&Method::GET, "/metrics") => Action::Metrics,
            (&Method::GET, "/admin/nodes") => Action::Nodes,
            (&Method::POST, p) => {
                let parts: Vec<&str> = match p.strip_prefix("/admin/nodes/") {
                    Some(rest) => rest.split('/').collect(),
                    None => return Action::NotFound,
                };
                match parts[..] {
                    [pool, node, "drain"] if !pool.is_empty() && !node.is_empty() => {
                        Action::Drain(pool, node)
                    }
                    [pool, node, "undrain"] if !pool.is_empty() && !node.is_empty() => {
                        Action::Undrain(pool, node)
                    }
                    _ => Action::NotFound,
                }
            }
            _ => Action::NotFound,
        }
    }

    /// Whether the bearer token is required: always to change something, to read only
    /// with `protect_reads`, never for `/healthz`.
    fn needs_token(&self, protect_reads: bool) -> bool {
        match self {
            Action::Healthz => false,
            Action::Drain(..) | Action::Undrain(..) => true,
            Action::Metrics | Action::Nodes | Action::NotFound => protect_reads,
        }
    }
}

fn handle(req: Request<Incoming>, shared: &Arc<Shared>, check: HostCheck) -> Response<Body> {
    if !host_ok(&req, check) {
        refused("host");
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected request: Host must name this admin listener\n",
        );
    }
    let action = Action::of(req.method(), req.uri().path());
    let needs_token = action.needs_token(shared.load().config.admin.protect_reads);
    if needs_token && !authorized(&req, shared) {
        refused("unauthorized");
        let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match action {
        Action::Metrics => {
            crate::admission::refresh_gauges(shared);
            let mut r = Response::new(Body::from_string(shared.metrics.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Action::Healthz => {
            if shared.lifecycle.stop_http.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        Action::Nodes => json(&node_reports(shared)),
        Action::Drain(pool, node) => {
            if crate::drain::drain_node_by_name(shared, pool, node) {
                text(StatusCode::ACCEPTED, "draining\n")
            } else {
                text(StatusCode::NOT_FOUND, "no such node\n")
            }
        }
        Action::Undrain(pool, node) => match crate::drain::undrain_node_by_name(shared, pool, node)
        {
            Undrain::Undrained => text(StatusCode::OK, "undrained\n"),
            Undrain::NotDraining => text(StatusCode::OK, "not draining\n"),
            Undrain::HeldBy(crate::backend::DrainSource::Config) => text(
                StatusCode::CONFLICT,
                "drained by the config (drain = true): lift it there and reload\n",
            ),
            Undrain::HeldBy(_) => text(StatusCode::CONFLICT, "draining for removal\n"),
            Undrain::NoSuchNode => text(StatusCode::NOT_FOUND, "no such node\n"),
        },
        Action::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Exactly one `Host` header, naming this listener; an absolute-form target's authority
/// must name it too.
fn host_ok(req: &Request<Incoming>, check: HostCheck) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    check.allows(host)
        && req
            .uri()
            .authority()
            .is_none_or(|a| check.allows(a.as_str()))
}

/// `Authorization: Bearer <token>` against the token of the snapshot in force (read at
/// start or at the last reload), compared in constant time. Without a token file,
/// everything that needs the token is refused.
fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let snap = shared.load();
    let Some(token) = &snap.admin_token else {
        return false;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return false;
    };
    token.matches(given.as_bytes())
}

/// One [`NodeReport`] per node of the current snapshot, in config order.
pub fn node_reports(shared: &Shared) -> Vec<NodeReport> {
    let snap = shared.load();
    let mut out = Vec::new();
    for pool in &snap.pools {
        for node in &pool.nodes {
            let (rate, backlog) = crate::admission::node_rate_backlog(node);
            let (mode, instances, share) =
                crate::fleet::share_of(shared, &pool.name, &node.key.name);
            out.push(NodeReport {
                pool: pool.name.to_string(),
                node: node.key.name.to_string(),
                addr: node.key.addr.to_string(),
                healthy: node.is_healthy(),
                draining: node.is_draining(),
                open_tunnels: node.open_tunnels.load(std::sync::atomic::Ordering::Relaxed),
                admit_rate: rate,
                schedule_backlog_seconds: backlog.as_secs_f64(),
                fleet_mode: mode.as_str().to_string(),
                fleet_instances: instances,
                fleet_share: herdgate_core::fleet::clamp_share(share),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Action;
    use http::Method;

    #[test]
    fn requests_map_to_actions_and_their_token_needs() {
        let post = |p| Action::of(&Method::POST, p);
        assert_eq!(post("/admin/nodes/p/a/drain"), Action::Drain("p", "a"));
        assert_eq!(post("/admin/nodes/p/a/undrain"), Action::Undrain("p", "a"));
        for bad in [
            "/admin/nodes//a/drain",
            "/admin/nodes/p/a/drain/x",
            "/admin/nodes/p/drain",
            "/admin/nodes/p/a/redrain",
            "/metrics",
        ] {
            assert_eq!(post(bad), Action::NotFound, "{bad}");
        }
        assert_eq!(
            Action::of(&Method::GET, "/admin/nodes/p/a/drain"),
            Action::NotFound
        );
        assert!(!Action::Healthz.needs_token(true));
        assert!(Action::Metrics.needs_token(true) && !Action::Metrics.needs_token(false));
        assert!(Action::Nodes.needs_token(true) && !Action::Nodes.needs_token(false));
        assert!(Action::Undrain("p", "a").needs_token(false));
        assert!(Action::NotFound.needs_token(true) && !Action::NotFound.needs_token(false));
    }
}
