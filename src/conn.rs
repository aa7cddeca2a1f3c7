//! One client connection: its stream, what it knows about where it came in, and its place
//! under the connection caps. Shared by the listener (which makes them) and the proxy
//! (which serves on them), so that neither imports the other's internals.

use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A client connection, plain or TLS.
pub type ClientIo = crate::io::MaybeTls<crate::io::tls::TlsStream>;

/// What a connection knows about where it came in.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Name of the listener that accepted it; routes may be restricted by it.
    pub listener: Arc<str>,
    /// The TCP peer: the client, or the load balancer in front of it.
    pub peer: SocketAddr,
    /// The client's address: the TCP peer, or the address a trusted proxy reported. Used
    /// for forwarding headers, per-client limits and caps, and sticky fallback.
    pub client: std::net::IpAddr,
    /// It came in over TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// The identity per-client limits and caps count by: the client address, IPv6 masked
    /// to its /64.
    pub fn client_id(&self) -> std::net::IpAddr {
        herdgate_core::admission::client_prefix(self.client)
    }
}

/// Holds a connection's place under the caps; a tunnel takes it over from the HTTP
/// connection so that caps count tunnels too.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _listener_permit: Option<OwnedSemaphorePermit>,
    _client: Option<ClientSlot>,
    open: metrics::Gauge,
}

impl ConnGuard {
    /// Take the place: the process-wide permit, the listener's own if it has a cap, and
    /// the listener's open-connections gauge (already incremented by the caller).
    pub fn new(
        permit: OwnedSemaphorePermit,
        listener_permit: Option<OwnedSemaphorePermit>,
        open: metrics::Gauge,
    ) -> ConnGuard {
        ConnGuard {
            _permit: permit,
            _listener_permit: listener_permit,
            _client: None,
            open,
        }
    }

    /// Hold the connection's place under its client's cap too
    /// (`limits.max_connections_per_client`), for as long as the connection.
    pub fn hold_client(&mut self, slot: ClientSlot) {
        self._client = Some(slot);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// Open things (connections, tunnels) per client identity ([`ConnInfo::client_id`]). An
/// entry exists only while its count is above zero: the map holds one entry per client
/// with something open, never more.
#[derive(Debug, Default)]
pub struct ClientCounter {
    open: DashMap<IpAddr, usize>,
}

impl ClientCounter {
    /// An empty counter, shared by the slots it hands out.
    pub fn new() -> Arc<ClientCounter> {
        Arc::new(ClientCounter::default())
    }

    /// A place for `client` if it holds fewer than `max`; `None` at its cap.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        if max == 0 {
            return None;
        }
        let mut n = self.open.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(n);
        Some(ClientSlot {
            counter: self.clone(),
            client,
        })
    }

    /// What `client` holds now.
    pub fn count(&self, client: IpAddr) -> usize {
        self.open.get(&client).map_or(0, |n| *n)
    }

    /// Clients holding at least one place.
    pub fn clients(&self) -> usize {
        self.open.len()
    }
}

/// One place under a [`ClientCounter`]; given back on drop (the entry goes at zero).
#[derive(Debug)]
pub struct ClientSlot {
    counter: Arc<ClientCounter>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.counter.open.remove_if_mut(&self.client, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// The per-client caps' counters, process-wide (the limits themselves come from the
/// snapshot, so a reload applies to new connections and tunnels).
#[derive(Debug)]
pub struct ClientCaps {
    /// Open connections per client (`limits.max_connections_per_client`).
    pub conns: Arc<ClientCounter>,
    /// Open tunnels per client (`limits.max_tunnels_per_client`).
    pub tunnels: Arc<ClientCounter>,
}

impl Default for ClientCaps {
    fn default() -> Self {
        ClientCaps {
            conns: ClientCounter::new(),
            tunnels: ClientCounter::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_client_and_entries_go_at_zero() {
        let c = ClientCounter::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.try_acquire(a, 2).unwrap();
        let s2 = c.try_acquire(a, 2).unwrap();
        assert!(c.try_acquire(a, 2).is_none(), "third over a cap of 2");
        let t = c.try_acquire(b, 2).unwrap();
        assert_eq!((c.count(a), c.count(b), c.clients()), (2, 1, 2));
        drop(s1);
        let s3 = c.try_acquire(a, 2).unwrap();
        drop((s2, s3, t));
        assert_eq!(c.clients(), 0, "no entry left behind");
        assert!(c.try_acquire(a, 0).is_none());
        assert_eq!(c.clients(), 0);
    }
}
