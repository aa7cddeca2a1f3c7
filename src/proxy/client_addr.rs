//! The client address of one request, the identity for sticky-by-address routing and the
//! per-client limit.
//!
//! The connection's client (`ConnInfo::client`: the TCP peer, or the address a trusted
//! proxy's PROXY header named) is the starting point. When it is one of the listener's
//! `trusted_proxies`, its `X-Forwarded-For` is walked to find the client
//! ([`herdgate_core::client_addr::forwarded_client`]). Otherwise the request's own
//! `X-Forwarded-For` is removed: nobody vouches for it, so the node must not see it
//! either, and `add_forwarded` then writes the connection's client alone (replace from an
//! untrusted peer, append from a trusted one).

use super::ConnCtx;
use http::header::HeaderMap;
use std::net::IpAddr;

const XFF: &str = "x-forwarded-for";

/// The request's client address (see the module documentation); removes an untrusted
/// peer's `X-Forwarded-For` from `headers`. Never fails: a malformed list from a trusted
/// peer leaves the peer as the client, counted in
/// [`crate::metrics::FORWARDED_FOR_IGNORED`].
pub(crate) fn request_client(ctx: &ConnCtx, headers: &mut HeaderMap) -> IpAddr {
    let peer = ctx.info.client;
    let trusted = match ctx.snap.listener(&ctx.info.listener) {
        Some(l) => &l.identity.trusted_proxies[..],
        None => &[],
    };
    if !herdgate_core::client_addr::is_trusted(trusted, peer) {
        headers.remove(XFF);
        return peer;
    }
    let values: Option<Vec<&str>> = headers
        .get_all(XFF)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    let walked = values
        .ok_or(herdgate_core::client_addr::BadForwardedFor)
        .and_then(|v| herdgate_core::client_addr::forwarded_client(peer, trusted, v.into_iter()));
    match walked {
        Ok(client) => client,
        Err(e) => {
            metrics::counter!(crate::metrics::FORWARDED_FOR_IGNORED).increment(1);
            crate::lograte::warn_limited!(%peer, "{e}; the peer stands for the client");
            peer
        }
    }
}
