//! How a node failed, and the one place that records it: the node's error counter and
//! passive health. Every forward path (HTTP and upgrade) reports through
//! [`NodeFailure::record`], so what counts against a node is decided here alone.

use super::health::Health;
use super::Node;
use http::StatusCode;
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
    /// A failure the pooled HTTP client cannot attribute to the node's connect: counted,
    /// never held against the node's health.
    #[error("request failed")]
    Unattributed,
}

impl NodeFailure {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            NodeFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Count it on the node and tell passive health.
    pub fn record(self, node: &Arc<Node>, health: &Health) {
        let m = &node.metrics;
        match self {
            NodeFailure::Refused => m.backend_refused.increment(1),
            NodeFailure::Timeout => m.backend_timeout.increment(1),
            NodeFailure::ConnectFailed
            | NodeFailure::ExchangeFailed
            | NodeFailure::Unattributed => m.backend_other.increment(1),
        }
        match self {
            NodeFailure::Refused | NodeFailure::ConnectFailed => health.passive_failure(node, true),
            NodeFailure::Timeout | NodeFailure::ExchangeFailed => {
                health.passive_failure(node, false)
            }
            NodeFailure::Unattributed => {}
        }
    }
}
