//! Metric names in one place, and the Prometheus exporter.
//!
//! Handles with per-node labels are resolved once (when a node's live state is made) so
//! that the hot path only does atomic adds.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Counter: TCP connections accepted, by `listener` (counted before any TLS handshake).
pub const CONNECTIONS_ACCEPTED: &str = "herdgate_connections_accepted_total";
/// Counter: TCP connections accepted by each data-plane shard (`shard`: its index, from
/// 0), over every listener: how evenly the kernel spreads connections over the shards.
pub const SHARD_ACCEPTED: &str = "herdgate_shard_connections_accepted_total";
/// Gauge: client connections currently being served, by `listener`.
pub const CONNECTIONS_OPEN: &str = "herdgate_connections_open";
/// Counter by `listener` for connections refused at accept; registered but not incremented at present
/// (over-cap connections wait in the kernel backlog instead).
pub const CONNECTIONS_REFUSED: &str = "herdgate_connections_refused_total";
/// Counter: failed `accept` calls, transient or not, by `listener`.
pub const ACCEPT_ERRORS: &str = "herdgate_accept_errors_total";
/// Counter: TLS handshakes that failed, by `listener`.
pub const TLS_HANDSHAKE_FAILURES: &str = "herdgate_tls_handshake_failures_total";
/// Counter: connections closed for not finishing the handshake in time, by `listener`.
pub const HANDSHAKE_TIMEOUTS: &str = "herdgate_handshake_timeouts_total";
/// Counter: TLS handshakes that waited for a token of the listener's handshake cap
/// (`handshakes_per_second`) after their ClientHello, by `listener`.
pub const HANDSHAKES_DEFERRED: &str = "herdgate_tls_handshakes_deferred_total";
/// Counter: tokens of the listener's handshake cap taken, one per ClientHello served, by
/// `listener` (a connect that sends no ClientHello takes none).
pub const HANDSHAKE_TOKENS: &str = "herdgate_tls_handshake_tokens_total";
/// Counter: ClientHellos closed because their client already had
/// `max_waiting_handshakes_per_client` handshakes waiting for a token, by `listener`.
pub const HANDSHAKES_REFUSED: &str = "herdgate_tls_handshakes_refused_total";
/// Counter: connections and tunnels refused by the per-client caps, by `kind`
/// (`connections`, `tunnels`).
pub const CLIENT_CAPPED: &str = "herdgate_client_capped_total";
/// Counter: forwarded request bodies cut off after `timeouts.request_body` without a byte
/// (the client got 408; the node is not blamed).
pub const REQUEST_BODY_TIMEOUTS: &str = "herdgate_request_body_timeouts_total";
/// Counter: writes that made no progress for `timeouts.write`, by `side` (`client`,
/// `node`) and `phase` (`tunnel`: the tunnel was closed; `upgrade`: the join after the
/// 101 gave up).
pub const WRITE_TIMEOUTS: &str = "herdgate_write_timeouts_total";
/// Counter: connections closed on a `proxy_protocol` listener before any TLS or HTTP, by
/// `listener` and `reason`: `untrusted` (peer not in `trusted_proxies`), `invalid` (not a
/// valid PROXY header), `timeout` (no whole header by the handshake deadline), `closed`
/// (the peer closed or the read failed first).
pub const PROXY_PROTOCOL_REFUSED: &str = "herdgate_proxy_protocol_refused_total";
/// Counter: requests from a trusted proxy whose `X-Forwarded-For` could not be used (an
/// entry that is not an IP address); the TCP peer stands for the client instead.
pub const FORWARDED_FOR_IGNORED: &str = "herdgate_forwarded_for_ignored_total";
/// Counter: responses sent, by `status` (common codes exact, others as `1xx`..`5xx`).
pub const REQUESTS: &str = "herdgate_requests_total";
/// Gauge: WebSocket tunnels currently open, by `pool` and `node`.
pub const TUNNELS_OPEN: &str = "herdgate_tunnels_open";
/// Counter: WebSocket tunnels opened, by `pool` and `node`.
pub const TUNNELS_TOTAL: &str = "herdgate_tunnels_total";
/// Counter: bytes relayed through tunnels, by `direction` (`client_to_node`, `node_to_client`).
pub const TUNNEL_BYTES: &str = "herdgate_tunnel_bytes_total";
/// Counter: failed connects or exchanges with a node, by `pool`, `node` and `kind`
/// (`refused`, `timeout`, `other`).
pub const BACKEND_ERRORS: &str = "herdgate_backend_errors_total";
/// Counter: requests admitted by the gate, by `pool`, `node` and `via`
/// (`bucket`, `promise`, `ticket`, `queue`).
pub const ADMITTED: &str = "herdgate_admission_admitted_total";
/// Counter: requests turned away by the gate, by `pool`, `node` and `reason` (`busy`, `overflow`).
pub const REJECTED: &str = "herdgate_admission_rejected_total";
/// Counter: presented tickets, by check `outcome` (valid, early, late, forged, ...).
pub const TICKETS: &str = "herdgate_admission_tickets_total";
/// Histogram: `Retry-After` given with rejections, in seconds, by `pool` and `node`.
pub const RETRY_AFTER: &str = "herdgate_retry_after_seconds";
/// Counter: rejections made because the node's schedule was full (no slot reserved).
pub const RETRY_AFTER_OVERFLOW: &str = "herdgate_retry_after_overflow_total";
/// Gauge: how far ahead the node's admission schedule is booked, in seconds, by `pool` and `node`.
pub const SCHEDULE_BACKLOG: &str = "herdgate_schedule_backlog_seconds";
/// Gauge: requests waiting in the node's queue now, by `pool` and `node`.
pub const QUEUE_LENGTH: &str = "herdgate_queue_length";
/// Counter: requests told to wait in the node's queue, by `pool` and `node`.
pub const QUEUED: &str = "herdgate_admission_queued_total";
/// Counter: reservations not claimed within their grace (tens of milliseconds after their
/// slot), released as credits any arrival may take, by `pool` and `node`.
pub const RELEASED: &str = "herdgate_admission_released_total";
/// Counter: waits of an admitted upgrade's request head before it was written to the
/// node, so that requests reach the node at its rate, by `pool` and `node`.
pub const WRITE_PACED: &str = "herdgate_admission_write_paced_total";
/// Counter: waits of a held request for a turn at the node's release gate (woken late
/// together with others, or behind others' turns), by `pool` and `node`.
pub const REPACED: &str = "herdgate_admission_repaced_total";
/// Counter: promise credits and reservations nobody claimed in their window,
/// by `pool`, `node` and `kind` (`promise`, `reservation`).
pub const UNCLAIMED: &str = "herdgate_admission_unclaimed_total";
/// Counter: requests turned away by the per-client limit.
pub const CLIENT_LIMITED: &str = "herdgate_client_limited_total";
/// Gauge: 1 while the node is considered healthy, else 0; by `pool` and `node`.
pub const NODE_HEALTHY: &str = "herdgate_node_healthy";
/// Gauge: 1 while the node is draining (no new admissions), else 0; by `pool` and `node`.
pub const NODE_DRAINING: &str = "herdgate_node_draining";
/// Counter: active health checks run, by `pool`, `node` and `result` (`ok`, `fail`).
pub const HEALTH_CHECKS: &str = "herdgate_health_checks_total";
/// Counter: admin requests and connections refused, by `reason`: `host` (the `Host`
/// header does not name the admin listener: 421), `unauthorized` (missing or wrong
/// bearer token: 401), `max_connections` (over `admin.max_connections`: closed at once).
pub const ADMIN_REFUSED: &str = "herdgate_admin_refused_total";
/// Gauge: admin connections open now.
pub const ADMIN_CONNECTIONS_OPEN: &str = "herdgate_admin_connections_open";
/// Counter: configuration reloads that were applied.
pub const RELOADS: &str = "herdgate_config_reloads_total";
/// Counter: configuration reloads that failed and left the running config in place.
pub const RELOAD_FAILURES: &str = "herdgate_config_reload_failures_total";
/// Gauge: 1 if the most recent reload succeeded, 0 if it failed.
pub const LAST_RELOAD_SUCCESS: &str = "herdgate_config_last_reload_success";
/// Counter: tunnels closed by a drain, by `pool` and `node`.
pub const DRAIN_CLOSED: &str = "herdgate_drain_closed_total";
/// Gauge: tunnels the shutdown drain still has to close (0 when done).
pub const DRAINING_TUNNELS: &str = "herdgate_drain_pending_tunnels";
/// Errors that were herdgate's own (descriptors, ports, memory), by kind; they never
/// count against a node.
pub const LOCAL_RESOURCE_ERRORS: &str = "herdgate_local_resource_errors_total";
/// Node answers to an upgrade that were not a valid 101 (no `Upgrade: websocket`, or a
/// `Sec-WebSocket-Accept` that does not match the key).
pub const BAD_NODE_HANDSHAKES: &str = "herdgate_backend_bad_handshakes_total";
/// Counter: times this instance fell back from Redis-leased shares to the static share
/// (`[fleet] redis` slow or down); one per outage, not per attempt.
pub const FLEET_FALLBACK: &str = "herdgate_fleet_fallback_total";
/// Gauge: the fleet mode: 1 shared (leases from Redis), 0 static share or fallback.
pub const FLEET_MODE: &str = "herdgate_fleet_mode";
/// Gauge: live fleet members last seen in Redis.
pub const FLEET_MEMBERS: &str = "herdgate_fleet_members";
/// Counter: lease renewals by `outcome` (`ok`, `error`, `timeout`): Redis calls this
/// instance made (one script call per lease period, all nodes batched).
pub const FLEET_RENEWALS: &str = "herdgate_fleet_renewals_total";
/// Counter: tickets refused because another instance had already admitted them (the
/// shared replay ledger, `[fleet] redis`).
pub const FLEET_TICKET_REPLAYS: &str = "herdgate_fleet_ticket_replays_total";
/// Gauge: the share of each node's rate this instance admits, by `pool` and `node`.
pub const FLEET_SHARE: &str = "herdgate_fleet_share";
/// Gauge: entries in the sticky-routing table.
pub const STICKY_ENTRIES: &str = "herdgate_sticky_entries";
/// Counter: learned sticky entries a client replaced with its own newer one because it
/// held `max_entries_per_client` already (the per-client quota firing).
pub const STICKY_CLIENT_QUOTA: &str = "herdgate_sticky_client_quota_total";
/// Counter: learned sticky entries evicted because the table was at `max_entries`.
pub const STICKY_EVICTIONS: &str = "herdgate_sticky_evictions_total";

/// Counter: warning lines dropped by the per-call-site limit of `lograte::warn_limited!`
/// (at most `lograte::PER_SECOND` lines per site and second).
pub const LOG_SUPPRESSED: &str = "herdgate_log_suppressed_total";

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
            Ok(h) => {
                register_at_zero();
                h
            }
            // Another recorder is installed (embedding application): render ours anyway.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
    .clone()
}

/// Process-wide series that only move on rare events, registered at start so that a
/// scrape (a dashboard's `rate`, an alert) finds them before the first event. The config
/// that started the process loaded, so the last load succeeded.
fn register_at_zero() {
    for c in [LOG_SUPPRESSED, CLIENT_LIMITED, RELOADS, RELOAD_FAILURES] {
        let _ = counter!(c);
    }
    for kind in ["connections", "tunnels"] {
        let _ = counter!(CLIENT_CAPPED, "kind" => kind);
    }
    gauge!(DRAINING_TUNNELS).set(0.0);
    gauge!(LAST_RELOAD_SUCCESS).set(1.0);
}

#[derive(Debug, Clone, Copy)]
/// Which way tunnel bytes flow: the `direction` label of [`TUNNEL_BYTES`].
pub enum Dir {
    /// From the client towards the node.
    ClientToNode,
    /// From the node back to the client.
    NodeToClient,
}

/// The [`TUNNEL_BYTES`] handle for one direction.
pub fn bytes_counter(d: Dir) -> Counter {
    match d {
        Dir::ClientToNode => counter!(TUNNEL_BYTES, "direction" => "client_to_node"),
        Dir::NodeToClient => counter!(TUNNEL_BYTES, "direction" => "node_to_client"),
    }
}

/// Per-listener handles.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// [`CONNECTIONS_ACCEPTED`] for this listener.
    pub accepted: Counter,
    /// [`CONNECTIONS_OPEN`] for this listener.
    pub open: Gauge,
    /// [`TLS_HANDSHAKE_FAILURES`] for this listener.
    pub tls_failures: Counter,
    /// [`HANDSHAKE_TIMEOUTS`] for this listener.
    pub handshake_timeouts: Counter,
    /// [`HANDSHAKES_DEFERRED`] for this listener.
    pub deferred: Counter,
    /// [`HANDSHAKE_TOKENS`] for this listener.
    pub handshake_tokens: Counter,
    /// [`HANDSHAKES_REFUSED`] for this listener.
    pub handshakes_refused: Counter,
    /// [`CONNECTIONS_REFUSED`] for this listener.
    pub refused: Counter,
    /// [`ACCEPT_ERRORS`] for this listener.
    pub accept_errors: Counter,
}

impl ListenerMetrics {
    /// Resolve the handles for the listener named `listener`.
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, "listener" => l.clone()),
            open: gauge!(CONNECTIONS_OPEN, "listener" => l.clone()),
            tls_failures: counter!(TLS_HANDSHAKE_FAILURES, "listener" => l.clone()),
            handshake_timeouts: counter!(HANDSHAKE_TIMEOUTS, "listener" => l.clone()),
            deferred: counter!(HANDSHAKES_DEFERRED, "listener" => l.clone()),
            handshake_tokens: counter!(HANDSHAKE_TOKENS, "listener" => l.clone()),
            handshakes_refused: counter!(HANDSHAKES_REFUSED, "listener" => l.clone()),
            refused: counter!(CONNECTIONS_REFUSED, "listener" => l.clone()),
            accept_errors: counter!(ACCEPT_ERRORS, "listener" => l),
        }
    }
}

/// Per-node handles.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// [`TUNNELS_OPEN`] for this node.
    pub tunnels_open: Gauge,
    /// [`TUNNELS_TOTAL`] for this node.
    pub tunnels_total: Counter,
    /// [`BACKEND_ERRORS`] with `kind="refused"`.
    pub backend_refused: Counter,
    /// [`BACKEND_ERRORS`] with `kind="timeout"`.
    pub backend_timeout: Counter,
    /// [`BACKEND_ERRORS`] with `kind="other"`.
    pub backend_other: Counter,
    /// [`ADMITTED`] with `via="bucket"`: a free rate token.
    pub admitted_bucket: Counter,
    /// [`ADMITTED`] with `via="promise"`: a ticketless client back on time.
    pub admitted_promise: Counter,
    /// [`ADMITTED`] with `via="ticket"`: a valid ticket.
    pub admitted_ticket: Counter,
    /// [`ADMITTED`] with `via="queue"`: forwarded after waiting in the queue.
    pub admitted_queue: Counter,
    /// [`ADMITTED`] with `via="fresh"`: the share of the rate kept for fresh arrivals.
    pub admitted_fresh: Counter,
    /// [`RELEASED`]: reservations not claimed in their grace, released to any arrival.
    pub released: Counter,
    /// [`WRITE_PACED`] for this node.
    pub write_paced: Counter,
    /// [`REPACED`] for this node.
    pub repaced: Counter,
    /// [`UNCLAIMED`] with `kind="promise"`.
    pub unclaimed_promises: Counter,
    /// [`UNCLAIMED`] with `kind="reservation"`.
    pub unclaimed_reservations: Counter,
    /// [`REJECTED`] with `reason="busy"`.
    pub rejected_busy: Counter,
    /// [`REJECTED`] with `reason="overflow"`.
    pub rejected_overflow: Counter,
    /// [`REJECTED`] with `reason="client_slots"`: the client already held its cap of
    /// slots and was given a place in its own queue (nothing booked).
    pub rejected_capped: Counter,
    /// [`REJECTED`] with `reason="reasked"`: an early ticket, answered with itself.
    pub rejected_reasked: Counter,
    /// [`QUEUED`] for this node.
    pub queued: Counter,
    /// [`RETRY_AFTER`] for this node.
    pub retry_after: Histogram,
    /// [`SCHEDULE_BACKLOG`] for this node.
    pub backlog: Gauge,
    /// [`QUEUE_LENGTH`] for this node.
    pub queue_len: Gauge,
    /// [`NODE_HEALTHY`] for this node.
    pub healthy: Gauge,
    /// [`NODE_DRAINING`] for this node.
    pub draining: Gauge,
    /// [`DRAIN_CLOSED`] for this node.
    pub drain_closed: Counter,
}

impl NodeMetrics {
    /// Resolve the handles for node `node` of pool `pool`.
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
            admitted_fresh: counter!(ADMITTED, "pool" => p.clone(), "node" => n.clone(), "via" => "fresh"),
            released: counter!(RELEASED, &l()),
            write_paced: counter!(WRITE_PACED, &l()),
            repaced: counter!(REPACED, &l()),
            unclaimed_promises: counter!(UNCLAIMED, "pool" => p.clone(), "node" => n.clone(), "kind" => "promise"),
            unclaimed_reservations: counter!(UNCLAIMED, "pool" => p.clone(), "node" => n.clone(), "kind" => "reservation"),
            rejected_busy: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "busy"),
            rejected_overflow: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "overflow"),
            rejected_capped: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "client_slots"),
            rejected_reasked: counter!(REJECTED, "pool" => p.clone(), "node" => n.clone(), "reason" => "reasked"),
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

/// Count one refusal by a per-client cap (`kind`: `connections` or `tunnels`).
pub fn client_capped(kind: &'static str) {
    counter!(CLIENT_CAPPED, "kind" => kind).increment(1);
}

/// Count one write that made no progress in time (`side`: `client` or `node`; `phase`:
/// `tunnel` or `upgrade`).
pub fn write_timeout(side: &'static str, phase: &'static str) {
    counter!(WRITE_TIMEOUTS, "side" => side, "phase" => phase).increment(1);
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
        408 => "408",
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
