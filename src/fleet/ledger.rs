//! The shared ticket replay ledger (`[fleet] redis`): a ticket spent on one instance is
//! refused on another.
//!
//! Each instance already refuses a ticket spent twice on itself (its reservation ledger
//! for its own tickets, `ForeignClaims` for the others'). Across instances, every ticket
//! admission is also recorded in Redis under `herdgate:fleet:ticket:<instance>:<node>:<seq>`
//! for the claim window: without waiting for a ticket this instance issued (the common
//! case: no admission waits on Redis), and with `SET NX`, awaited for at most one lease,
//! for a ticket another instance issued (rare: a client that moved). When that key was
//! already there the ticket was spent elsewhere: the request is turned away. While Redis is
//! not reachable, the local ledgers alone decide.

use crate::metrics as m;
use crate::state::Shared;
use herdgate_core::admission::TicketClaims;
use std::time::Duration;

/// Extra life of a ledger entry past the claim window.
const SLACK: Duration = Duration::from_secs(2);

fn key(c: &TicketClaims) -> String {
    format!(
        "herdgate:fleet:ticket:{:08x}:{:016x}:{}",
        c.instance, c.node, c.seq
    )
}

/// A ticket was admitted here. Records it in the shared ledger; `false` when it had
/// already been spent on another instance (the caller turns the request away).
pub async fn spend(shared: &Shared, ticket: &str) -> bool {
    let Some(conn) = shared.fleet_redis.load_full() else {
        return true;
    };
    let Ok(claims) = shared.signer.verify(ticket) else {
        return true;
    };
    let snap = shared.load();
    let ttl = snap.config.tickets.claim_window.0 + SLACK;
    let lease = snap.config.fleet.lease.0;
    drop(snap);
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut conn = (*conn).clone();
    if claims.instance == shared.signer.instance() {
        // Ours: this instance's ledger already made it single-use here; tell the others
        // without waiting.
        let k = key(&claims);
        tokio::spawn(async move {
            let set = redis::cmd("SET").arg(k).arg(1).arg("PX").arg(ms).clone();
            let _ = tokio::time::timeout(lease, set.query_async::<()>(&mut conn)).await;
        });
        return true;
    }
    let set = redis::cmd("SET")
        .arg(key(&claims))
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .clone();
    match tokio::time::timeout(lease, set.query_async::<Option<String>>(&mut conn)).await {
        // "OK": first spend anywhere.
        Ok(Ok(Some(_))) => true,
        // Nil: the key was there, the ticket was spent on another instance.
        Ok(Ok(None)) => {
            metrics::counter!(m::FLEET_TICKET_REPLAYS).increment(1);
            false
        }
        // Redis slow or down: the local ledgers decide.
        Ok(Err(e)) => {
            tracing::debug!("fleet ticket ledger: {e}");
            true
        }
        Err(_) => {
            tracing::debug!("fleet ticket ledger: no answer within {lease:?}");
            true
        }
    }
}
