//! Metric names in one place, and the Prometheus exporter.
//!
//! Handles with per-node labels are resolved once (when a node's live state is made) so
//! that the hot path only does atomic adds.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const CONNECTIONS_ACCEPTED: &str = "herdgate_connections_accepted_total";
pub const CONNECTIONS_OPEN: &str = "herdgate_connections_open";
pub const CONNECTIONS_REFUSED: &str = "herdgate_connections_refused_total";
pub const ACCEPT_ERRORS: &str = "herdgate_accept_errors_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "herdgate_tls_handshake_failures_total";
pub const HANDSHAKE_TIMEOUTS: &str = "herdgate_handshake_timeouts_total";
pub const HANDSHAKES_DEFERRED: &str = "herdgate_tls_handshakes_deferred_total";
pub const REQUESTS: &str = "herdgate_requests_total";
pub const TUNNELS_OPEN: &str = "herdgate_tunnels_open";
pub const TUNNELS_TOTAL: &str = "herdgate_tunnels_total";
pub const TUNNEL_BYTES: &str = "herdgate_tunnel_bytes_total";
pub const BACKEND_ERRORS: &str = "herdgate_backend_errors_total";
pub const ADMITTED: &str = "herdgate_admission_admitted_total";
pub const REJECTED: &str = "herdgate_admission_rejected_total";
pub const TICKETS: &str = "herdgate_admission_tickets_total";
pub const RETRY_AFTER: &str = "herdgate_retry_after_seconds";
pub const RETRY_AFTER_OVERFLOW: &str = "herdgate_retry_after_overflow_total";
pub const SCHEDULE_BACKLOG: &str = "herdgate_schedule_backlog_seconds";
pub const QUEUE_LENGTH: &str = "herdgate_queue_length";
pub const QUEUED: &str = "herdgate_admission_queued_total";
pub const UNCLAIMED: &str = "herdgate_admission_unclaimed_total";
pub const CLIENT_LIMITED: &str = "herdgate_client_limited_total";
pub const NODE_HEALTHY: &str = "herdgate_node_healthy";
pub const NODE_DRAINING: &str = "herdgate_node_draining";
pub const HEALTH_CHECKS: &str = "herdgate_health_checks_total";
pub const RELOADS: &str = "herdgate_config_reloads_total";
pub const RELOAD_FAILURES: &str = "herdgate_config_reload_failures_total";
pub const LAST_RELOAD_SUCCESS: &str = "herdgate_config_last_reload_success";
pub const DRAIN_CLOSED: &str = "herdgate_drain_closed_total";
pub const DRAINING_TUNNELS: &str = "herdgate_drain_pending_tunnels";
pub const STICKY_ENTRIES: &str = "herdgate_sticky_entries";

/// Install the process-wide recorder (once) and return the handle that renders it.
pub fn install() -> PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        // The bucket list is a non-empty constant, so this cannot fail; were it to, the
        // retry-after histogram would render as a summary rather than stop the process.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(RETRY_AFTER.to_string()),
                &[
                    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(h) => h,
            // Another recorder is installed (embedding application): render ours anyway.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
    .clone()
}

#[derive(Debug, Clone, Copy)]
pub enum Dir {
    ClientToNode,
    NodeToClient,
}

pub fn bytes_counter(d: Dir) -> Counter {
    match d {
        Dir::ClientToNode => counter!(TUNNEL_BYTES, "direction" => "client_to_node"),
        Dir::NodeToClient => counter!(TUNNEL_BYTES, "direction" => "node_to_client"),
    }
}

/// Per-listener handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub accepted: Counter,
    pub open: Gauge,
    pub tls_failures: Counter,
    pub handshake_timeouts: Counter,
    pub deferred: Counter,
    pub refused: Counter,
    pub accept_errors: Counter,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, "listener" => l.clone()),
            open: gauge!(CONNECTIONS_OPEN, "listener" => l.clone()),
            tls_failures: counter!(TLS_HANDSHAKE_FAILURES, "listener" => l.clone()),
            handshake_timeouts: counter!(HANDSHAKE_TIMEOUTS, "listener" => l.clone()),
            deferred: counter!(HANDSHAKES_DEFERRED, "listener" => l.clone()),
            refused: counter!(CONNECTIONS_REFUSED, "listener" => l.clone()),
            accept_errors: counter!(ACCEPT_ERRORS, "listener" => l),
        }
    }
}

/// Per-node handles.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    pub tunnels_open: Gauge,
    pub tunnels_total: Counter,
    pub backend_refused: Counter,
    pub backend_timeout: Counter,
    pub backend_other: Counter,
    pub admitted_bucket: Counter,
    pub admitted_promise: Counter,
    pub admitted_ticket: Counter,
    pub admitted_queue: Counter,
    pub unclaimed_promises: Counter,
    pub unclaimed_reservations: Counter,
    pub rejected_busy: Counter,
    pub rejected_overflow: Counter,
    pub queued: Counter,
    pub retry_after: Histogram,
    pub backlog: Gauge,
    pub queue_len: Gauge,
    pub healthy: Gauge,
    pub draining: Gauge,
    pub drain_closed: Counter,
}

impl NodeMetrics {
    pub fn new(pool: &str, node: &str) -> Self {
        let p = pool.to_string();
        let n = node.to_string();
        let l = || [("pool", p.clone()), ("node", n.clone())];
        NodeMetrics {
            tunnels_open: gauge!(TUNNELS_OPEN, &l()),
            tunnels_total: counter!(TUNNELS_TOTAL, &l()),
            backend_refused: counter!(BACKEND_ERRORS, "pool" => p.clone(), "node" => n.clone(), "kind" => "refused"),
            backend_timeout: counter!(BACKEND_ERRORS, "pool" => p.clone(), "node" => n.clone(), "kind" => "timeout"),
            backend_other: counter!(BACKEND_ERRORS, "pool" => p.clone(), "node" => n.clone(), "kind" => "other"),
            admitted_bucket: counter!(ADMITTED, "pool" => p.clone(), "node" => n.clone(), "via" => "bucket"),
            admitted_promise: counter!(ADMITTED, "pool" => p.clone(), "node" => n.clone(), "via" => "promise"),
            admitted_ticket: counter!(ADMITTED, "pool" => p.clone(), "node" => n.clone(), "via" => "ticket"),
            admitted_queue: counter!(ADMITTED, "pool" => p.clone(), "node" => n.clone(), "via" => "queue"),
            unclaimed_promises: counter!(UNCLAIMED, "pool" => p.clone(), "node" => n.clone(), "kind" => "promise"),
            unclaimed_reservations: counter!(UNCLAIMED, "pool" => p.clone(), "node" => n.clone(), "kind" => "reservation"),
            rejected_busy: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "busy"),
            rejected_overflow: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "overflow"),
            queued: counter!(QUEUED, &l()),
            retry_after: histogram!(RETRY_AFTER, &l()),
            backlog: gauge!(SCHEDULE_BACKLOG, &l()),
            queue_len: gauge!(QUEUE_LENGTH, &l()),
            healthy: gauge!(NODE_HEALTHY, &l()),
            draining: gauge!(NODE_DRAINING, &l()),
            drain_closed: counter!(DRAIN_CLOSED, &l()),
        }
    }
}

/// Count one response by status (responses hyper writes itself, such as 400 and 431 on
/// unparseable requests, are not seen here).
pub fn request(status: u16) {
    counter!(REQUESTS, "status" => status_label(status)).increment(1);
}

fn status_label(s: u16) -> &'static str {
    match s {
        101 => "101",
        200 => "200",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
