//! Choosing the node for a request: learned sticky entry, else consistent hash over the
//! eligible nodes, else (no key) round robin.

use crate::backend::Node;
use crate::config::StickyFallback;
use crate::routing::{extract_hash, key, key_hash, Learned, StickySource};
use crate::snapshot::{Pool, Route, Snapshot};
use crate::state::Shared;
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
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

/// Pick the node: learned entry if its node is eligible, else the hash's node if it is
/// eligible; where routing is free (no key, or the key's node is down or draining) the node
/// that can admit soonest ([`by_admission`]). Nothing is learned here: only a session the
/// node accepted is ([`learn`]).
pub fn choose<'a>(
    pool: &'a Pool,
    key_hash: Option<u64>,
    set_cookie: Option<HeaderValue>,
    owner: u64,
) -> Option<Choice<'a>> {
    let choice = |node| Choice {
        node,
        key_hash,
        set_cookie,
    };
    let Some(h) = key_hash else {
        return by_admission(pool, Some(owner)).map(choice);
    };
    if let Some(table) = &pool.sticky {
        if let Some(name) = table.get(h, Instant::now()) {
            if let Some(node) = pool.node_by_name(&name).filter(|n| n.is_eligible()) {
                return Some(choice(node));
            }
        }
    }
    // The key's own node while it is eligible; failover follows admission.
    let node = match pool.ring.pick(h, |_| true).map(|i| &pool.nodes[i]) {
        Some(n) if n.is_eligible() => n,
        _ => by_admission(pool, Some(owner))?,
    };
    Some(choice(node))
}

/// Where routing is free, the schedule decides (issue 10):
/// 1. the node that holds this client's promise (its earliest), so that a client back
///    at its slot, with nothing but its address, finds it;
/// 2. else the eligible node that can admit soonest ([`NodeAdmission::free_at`]): a dead
///    node's clients then spread over the survivors in proportion to their rates, whatever
///    the file order or the weights, and each rejected client's slot is the earliest in
///    the pool;
/// 3. ties (several nodes free now) go to the fewest open tunnels per unit of rate, then
///    round robin.
///
/// [`NodeAdmission::free_at`]: herdgate_core::admission::NodeAdmission::free_at
pub fn by_admission(pool: &Pool, owner: Option<u64>) -> Option<&Arc<Node>> {
    let now = crate::clock::now();
    let eligible = || pool.nodes.iter().filter(|n| n.is_eligible());
    if let Some(o) = owner {
        let held = eligible()
            .filter_map(|n| n.admission.owner_promise(o, now).map(|slot| (slot, n)))
            .min_by_key(|&(slot, _)| slot);
        if let Some((_, n)) = held {
            return Some(n);
        }
    }
    // One pass from a rotating start: among equals the first wins, so equals take turns
    // (round robin, as HAProxy's leastconn does among servers of equal load).
    let n = pool.nodes.len();
    let start = pool.rr_start();
    let mut best: Option<(&Arc<Node>, u64, f64)> = None;
    for node in (0..n).map(|i| &pool.nodes[(start + i) % n]) {
        if !node.is_eligible() {
            continue;
        }
        let free = node.admission.free_at().max(now);
        let load = node.open_tunnels.load(Ordering::Relaxed) as f64 / node.admission.rate();
        match best {
            Some((_, f, l)) if free > f || (free == f && load >= l) => {}
            _ => best = Some((node, free, load)),
        }
    }
    best.map(|(node, ..)| node)
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

/// Where a client with this key would land now (drain hints): as [`choose`] would send it,
/// less the learned table and the client's own promises.
pub fn landing(pool: &Pool, key_hash: Option<u64>) -> Option<&Arc<Node>> {
    match key_hash.and_then(|h| pool.ring.pick(h, |_| true)) {
        Some(i) if pool.nodes[i].is_eligible() => Some(&pool.nodes[i]),
        _ => by_admission(pool, None),
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
