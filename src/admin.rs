//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/admin/nodes`,
//! and `POST /admin/nodes/{pool}/{node}/drain` (bearer token).

use crate::proxy::body::Body;
use crate::state::Shared;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serve the admin endpoints on `listener` until the process stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.lifecycle.stop_all.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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
}

async fn handle(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            crate::admission::refresh_gauges(shared);
            let mut r = Response::new(Body::from_string(shared.metrics.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/healthz") => {
            if shared.lifecycle.stop_http.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        (&Method::GET, "/admin/nodes") => json(&node_reports(shared)),
        (&Method::POST, p) if p.starts_with("/admin/nodes/") && p.ends_with("/drain") => {
            if !authorized(&req, shared) {
                let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            // admin / nodes / {pool} / {node} / drain
            if parts.len() != 5 {
                return text(StatusCode::NOT_FOUND, "not found\n");
            }
            if crate::drain::drain_node_by_name(shared, parts[2], parts[3]) {
                text(StatusCode::ACCEPTED, "draining\n")
            } else {
                text(StatusCode::NOT_FOUND, "no such node\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Constant-time comparison against the token file of the running config. Without a
/// token file, mutating endpoints are refused.
fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let snap = shared.load();
    let Some(path) = &snap.config.admin.token_file else {
        return false;
    };
    let Ok(token) = std::fs::read_to_string(path) else {
        return false;
    };
    let token = token.trim();
    if token.is_empty() {
        return false;
    }
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// One [`NodeReport`] per node of the current snapshot, in config order.
pub fn node_reports(shared: &Shared) -> Vec<NodeReport> {
    let snap = shared.load();
    let mut out = Vec::new();
    for pool in &snap.pools {
        for node in &pool.nodes {
            let (rate, backlog) = crate::admission::node_rate_backlog(node);
            out.push(NodeReport {
                pool: pool.name.to_string(),
                node: node.key.name.to_string(),
                addr: node.key.addr.to_string(),
                healthy: node.is_healthy(),
                draining: node.is_draining(),
                open_tunnels: node.open_tunnels.load(std::sync::atomic::Ordering::Relaxed),
                admit_rate: rate,
                schedule_backlog_seconds: backlog.as_secs_f64(),
            });
        }
    }
    out
}

/// Compare without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
