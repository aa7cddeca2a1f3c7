//! Choosing the node for a request: learned sticky entry, else consistent hash over the
//! eligible nodes, else (no key) round robin.

use crate::backend::Node;
use crate::config::StickyFallback;
use crate::routing::{extract_hash, key, key_hash, Learned, StickySource};
use crate::snapshot::{Pool, Route, Snapshot};
use crate::state::Shared;
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The node picked for one request.
pub struct Choice<'a> {
    /// The node to send the request to.
    pub node: &'a Arc<Node>,
    /// The session key's hash, when the request had one (or got one).
    pub key_hash: Option<u64>,
    /// A `Set-Cookie` to add to the response (cookie insertion).
    pub set_cookie: Option<HeaderValue>,
}

/// The session key hash of a request (and a cookie to set when the route inserts one).
pub fn session_key(
    route: &Route,
    parts: &http::request::Parts,
    peer: IpAddr,
    tls: bool,
) -> (Option<u64>, Option<HeaderValue>) {
    let Some(st) = &route.sticky else {
        return (None, None);
    };
    if let Some(h) = extract_hash(&st.source, parts, peer) {
        return (Some(h), None);
    }
    if let Some(name) = &st.insert {
        let value = key::random_cookie_value();
        let cookie = key::new_sticky_cookie(name, &value, Some(st.ttl), tls).ok();
        return (Some(key_hash(value.as_bytes())), cookie);
    }
    match st.fallback {
        StickyFallback::ClientIp => (extract_hash(&StickySource::ClientIp, parts, peer), None),
        StickyFallback::None => (None, None),
    }
}

/// Pick the node: learned entry if its node is eligible, else the hash's choice among the
/// eligible nodes, else round robin when there is no key. Nothing is learned here: only a
/// session the node accepted is ([`learn`]).
pub fn choose<'a>(
    pool: &'a Pool,
    key_hash: Option<u64>,
    set_cookie: Option<HeaderValue>,
) -> Option<Choice<'a>> {
    let Some(h) = key_hash else {
        return pool.next_rr().map(|node| Choice {
            node,
            key_hash: None,
            set_cookie,
        });
    };
    let now = Instant::now();
    if let Some(table) = &pool.sticky {
        if let Some(name) = table.get(h, now) {
            if let Some(node) = pool.node_by_name(&name).filter(|n| n.is_eligible()) {
                return Some(Choice {
                    node,
                    key_hash: Some(h),
                    set_cookie,
                });
            }
        }
    }
    let idx = pool.ring.pick(h, |i| pool.nodes[i].is_eligible())?;
    let node = &pool.nodes[idx];
    Some(Choice {
        node,
        key_hash: Some(h),
        set_cookie,
    })
}

/// Learn `key_hash → node` in its pool's sticky table, charged to `client` (its per-client
/// identity): called once the node accepted the session (its 101, or a 2xx/3xx answer to
/// plain HTTP), never for a request that was turned away, so that only sessions that
/// exist take room in the table.
pub fn learn(snap: &Snapshot, node: &Node, key_hash: Option<u64>, client: IpAddr) {
    let Some(h) = key_hash else { return };
    let Some(table) = snap
        .pools
        .iter()
        .find(|p| p.name == node.key.pool)
        .and_then(|p| p.sticky.as_ref())
    else {
        return;
    };
    match table.insert(h, node.key.name.clone(), client, Instant::now()) {
        Learned::ReplacedOwn => {
            metrics::counter!(crate::metrics::STICKY_CLIENT_QUOTA).increment(1);
        }
        Learned::Evicted => metrics::counter!(crate::metrics::STICKY_EVICTIONS).increment(1),
        Learned::Added | Learned::Refreshed => {}
    }
}

/// A verified ticket steers the request to its node only inside its window (see
/// [`herdgate_core::admission::TicketClaims::in_window`]), with the node's current rate
/// and claim window.
pub fn ticket_steers(node: &Node, claims: &herdgate_core::admission::TicketClaims) -> bool {
    let p = node.admission.params();
    claims.in_window(crate::clock::now(), p.rate, p.claim_window)
}

/// Where a client with this key would land now (drain hints).
pub fn landing(pool: &Pool, key_hash: Option<u64>) -> Option<&Arc<Node>> {
    match key_hash {
        Some(h) => pool
            .ring
            .pick(h, |i| pool.nodes[i].is_eligible())
            .map(|i| &pool.nodes[i]),
        None => pool.nodes.iter().find(|n| n.is_eligible()),
    }
}

/// Drop a removed node's learned entries.
pub fn forget_node(shared: &Shared, node: &Arc<Node>) {
    let snap = shared.load();
    for pool in snap.pools.iter().filter(|p| p.name == node.key.pool) {
        if let Some(t) = &pool.sticky {
            t.remove_node(&node.key.name);
        }
    }
}
