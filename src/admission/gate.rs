//! Admission wired into the proxy: parameters from the config, the request's ticket,
//! per-decision metrics, drain hints, slow start on recovery.

use super::{
    AdmitInput, AdmitVia, ClientKey, ClientLimiter, Decision, TicketCheck, TicketKey, TicketSigner,
};
use crate::backend::Node;
use crate::config::Config;
use crate::metrics as m;
use crate::snapshot::Snapshot;
use crate::state::Shared;
use std::sync::Arc;
use std::time::Duration;

/// Where a ticket travels and how a client asks for one: the wire contract's names.
pub use herdgate_wire::{
    ACCEPT_TICKET_HEADER, ACCEPT_TICKET_QUERY, TICKET_COOKIE, TICKET_HEADER, TICKET_QUERY,
};

pub use crate::clock::{clock, now};

/// The ticket signer: key from `tickets.key_file` (shared by every instance that must
/// accept the others' tickets) or random; a random instance id per process.
pub fn signer(config: &Config) -> Result<Arc<TicketSigner>, super::AdmissionError> {
    let key = match &config.tickets.key_file {
        Some(p) => TicketKey::from_file(p)?,
        None => TicketKey::random(),
    };
    Ok(Arc::new(TicketSigner::with_random_instance(key)))
}

pub use crate::snapshot::{node_admission, params};

/// After a reload: new parameters for every node, keeping its schedule and bucket.
pub fn apply_snapshot(snap: &Snapshot) {
    let t = now();
    for pool in &snap.pools {
        for (node, cfg) in pool.nodes.iter().zip(&pool.cfg.nodes) {
            let p = params(&snap.config, &pool.cfg, cfg);
            if let Err(e) = node.admission.update_params(p, t) {
                tracing::error!(node = %node.key, "admission parameters rejected: {e}");
            }
        }
    }
}

/// A node came back up: ramp its rate.
pub fn on_node_up(node: &Node) {
    node.admission.begin_slow_start(now());
}

/// (effective rate now, schedule backlog) for reports.
pub fn node_rate_backlog(node: &Node) -> (f64, Duration) {
    let t = now();
    (node.admission.effective_rate(t), node.admission.backlog(t))
}

/// Gauges that are read rather than pushed: schedule backlog and unclaimed capacity.
pub fn refresh_gauges(shared: &Shared) {
    let t = now();
    let snap = shared.load();
    for pool in &snap.pools {
        for node in &pool.nodes {
            node.metrics
                .backlog
                .set(node.admission.backlog(t).as_secs_f64());
            let s = node.admission.stats();
            node.metrics
                .unclaimed_promises
                .absolute(s.unclaimed_promises);
            node.metrics
                .unclaimed_reservations
                .absolute(s.unclaimed_reservations);
            node.metrics.released.absolute(s.released);
        }
    }
    if let Some(n) = shared.sticky_entries() {
        metrics::gauge!(m::STICKY_ENTRIES).set(n as f64);
    }
}

/// What the request says about tickets.
pub struct TicketInfo<'a> {
    /// The ticket presented (header, cookie or query parameter), if any and non-empty.
    pub ticket: Option<&'a str>,
    /// The client can carry tickets, so a rejection should hand it one.
    pub wants: bool,
}

/// Read the ticket and the ticket capability from a request's headers and query.
pub fn ticket_info(parts: &http::request::Parts) -> TicketInfo<'_> {
    let h = &parts.headers;
    let query = parts.uri.query().unwrap_or("");
    let ticket = h
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| herdgate_core::routing::key::request_cookie(h, TICKET_COOKIE))
        .or_else(|| query_value(query, TICKET_QUERY))
        .filter(|t| !t.is_empty());
    let wants = h
        .get(ACCEPT_TICKET_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
        || query_value(query, ACCEPT_TICKET_QUERY) == Some("1")
        // Presenting a ticket is the strongest way of saying one can carry one.
        || ticket.is_some();
    TicketInfo { ticket, wants }
}

/// Tickets are base64url and flags are "1": neither needs percent-decoding.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Ask the node, and count the answer.
pub fn decide(node: &Node, input: &AdmitInput<'_>) -> Decision {
    let d = node.admission.check(now(), input);
    let nm = &node.metrics;
    match &d {
        Decision::Admit { via, .. } => count_forwarded(node, *via),
        // Counted as admitted (by `via`) when the held request is forwarded.
        Decision::Queue { via, .. } => {
            if *via == AdmitVia::Queue {
                nm.queued.increment(1);
            }
        }
        Decision::Reject {
            retry_after,
            overflow,
            capped,
            ticket_check,
            ..
        } => {
            if *overflow {
                nm.rejected_overflow.increment(1);
                metrics::counter!(m::RETRY_AFTER_OVERFLOW).increment(1);
            } else if *capped {
                nm.rejected_capped.increment(1);
            } else if *ticket_check == TicketCheck::Early {
                nm.rejected_reasked.increment(1);
            } else {
                nm.rejected_busy.increment(1);
            }
            nm.retry_after.record(retry_after.as_secs_f64());
        }
    }
    let tc = d.ticket_check();
    if tc != TicketCheck::None {
        metrics::counter!(m::TICKETS, "outcome" => tc.as_str()).increment(1);
    }
    d
}

/// A route's per-client limiter.
pub type RouteLimiter = ClientLimiter<ClientKey>;

/// Sweep per-client limiters now and then: keyed stores never evict by themselves.
pub fn spawn_limiter_sweeper(shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = shared.lifecycle.stop_all.cancelled() => return,
                _ = tick.tick() => {}
            }
            let snap = shared.load();
            for r in &snap.routes {
                if let Some(l) = &r.client_limiter {
                    l.retain_recent();
                }
            }
            let now = std::time::Instant::now();
            for p in &snap.pools {
                if let Some(t) = &p.sticky {
                    t.sweep(now);
                }
            }
        }
    });
}

/// Waits until the head of an admitted upgrade may be written to `node`: the writes are
/// paced like the admissions ([`NodeAdmission::pace_write`](herdgate_core::admission::NodeAdmission::pace_write)), so that the requests a
/// busy runtime would write in one turn reach the node at its rate.
pub async fn pace_write(node: &Node) {
    let mut turn = None;
    loop {
        let now = now();
        match node.admission.pace_write(now, turn) {
            Ok(()) => return,
            Err(at) => {
                node.metrics.write_paced.increment(1);
                turn = Some(at);
                tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now))).await;
            }
        }
    }
}

/// Count an admission of a request that was held ([`Decision::Queue`]) and is now forwarded.
pub fn count_forwarded(node: &Node, via: AdmitVia) {
    let nm = &node.metrics;
    match via {
        AdmitVia::Bucket => nm.admitted_bucket.increment(1),
        AdmitVia::Promise => nm.admitted_promise.increment(1),
        AdmitVia::Ticket => nm.admitted_ticket.increment(1),
        AdmitVia::Queue => nm.admitted_queue.increment(1),
        AdmitVia::Fresh => nm.admitted_fresh.increment(1),
    }
}

/// The owner admission binds a client's slots to: a hash of its identity (the address
/// limits count by, IPv6 /64). Process-local, so a fixed-key hasher is enough.
pub fn owner_of(client_id: std::net::IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    h.finish()
}
