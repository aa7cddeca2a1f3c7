//! How a node failed, and the one place that records it: the node's error counter and
//! passive health. Every forward path (HTTP and upgrade) reports through
//! [`NodeFailure::record`], so what counts against a node is decided here alone.

use super::health::Health;
use super::Node;
use http::StatusCode;
use std::net::IpAddr;
use std::sync::Arc;

/// How a node failed one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeFailure {
    /// The TCP connect was refused (a hard failure for passive health).
    #[error("connection refused")]
    Refused,
    /// Connecting, or waiting for the answer, took longer than its timeout (soft).
    #[error("timed out")]
    Timeout,
    /// The TCP connect failed otherwise (unreachable, reset during connect: hard).
    #[error("connect failed")]
    ConnectFailed,
    /// The connection was made, but the exchange on it failed (soft).
    #[error("exchange failed")]
    ExchangeFailed,
    /// The node answered an upgrade with a 101 that is not a WebSocket handshake (no
    /// `Upgrade: websocket`, or a `Sec-WebSocket-Accept` that does not match the key
    /// herdgate sent): the tunnel is not joined (soft).
    #[error("invalid WebSocket handshake from the node")]
    BadHandshake,
    /// A failure the pooled HTTP client cannot attribute to the node's connect: counted,
    /// never held against the node's health.
    #[error("request failed")]
    Unattributed,
    /// herdgate itself ran out of something (descriptors, local ports, memory) while
    /// connecting: herdgate's failure, counted and logged as such, never the node's (503).
    #[error("herdgate is out of local resources")]
    LocalResource,
}

impl NodeFailure {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            NodeFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            NodeFailure::LocalResource => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Is this OS error herdgate's own exhaustion rather than anything the node did?
    pub fn is_local_resource(e: &std::io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
        ) || e.kind() == std::io::ErrorKind::OutOfMemory
    }

    /// Count it on the node and tell passive health. `client` is the identity whose
    /// request met the failure: a soft failure counts once per client (see
    /// [`Health::passive_failure`]). What counts is only what no client can cause:
    /// - connect refused or failed: hard, whoever asked;
    /// - the node timing out, breaking the exchange, or answering with a broken 101 on a
    ///   request herdgate built from validated fields: soft;
    /// - never a 4xx/5xx answer (the proxy does not report those), never herdgate's own
    ///   resource exhaustion, never what the pooled client cannot attribute.
    pub fn record(self, node: &Arc<Node>, health: &Health, client: Option<IpAddr>) {
        let m = &node.metrics;
        match self {
            NodeFailure::Refused => m.backend_refused.increment(1),
            NodeFailure::Timeout => m.backend_timeout.increment(1),
            NodeFailure::ConnectFailed
            | NodeFailure::ExchangeFailed
            | NodeFailure::Unattributed => m.backend_other.increment(1),
            NodeFailure::BadHandshake => {
                metrics::counter!(crate::metrics::BAD_NODE_HANDSHAKES, "pool" => node.key.pool.to_string(), "node" => node.key.name.to_string())
                    .increment(1)
            }
            NodeFailure::LocalResource => {
                metrics::counter!(crate::metrics::LOCAL_RESOURCE_ERRORS, "kind" => "connect")
                    .increment(1);
                crate::lograte::warn_limited!(node = %node.key, "herdgate is out of local resources (descriptors, ports or memory) connecting to the node; not counted against it");
            }
        }
        match self {
            NodeFailure::Refused | NodeFailure::ConnectFailed => {
                health.passive_failure(node, true, None)
            }
            NodeFailure::Timeout | NodeFailure::ExchangeFailed | NodeFailure::BadHandshake => {
                health.passive_failure(node, false, client)
            }
            NodeFailure::Unattributed | NodeFailure::LocalResource => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herdgates_own_exhaustion_is_not_the_nodes_failure() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert!(NodeFailure::is_local_resource(&e), "{e}");
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ETIMEDOUT,
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert!(!NodeFailure::is_local_resource(&e), "{e}");
        }
        assert_eq!(
            NodeFailure::LocalResource.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
