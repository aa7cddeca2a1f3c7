//! One client connection: its stream, what it knows about where it came in, and its place
//! under the connection caps. Shared by the listener (which makes them) and the proxy
//! (which serves on them), so that neither imports the other's internals.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// A client connection, plain or TLS.
pub type ClientIo = crate::io::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

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
            open,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}
