//! Connecting to nodes: raw TCP for tunnels, a pooled keep-alive client for plain HTTP.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Why a node could not be reached. Refused and reset are hard failures for passive
/// health; a timeout is a soft one.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens there: the node process is gone.
    #[error("connection refused by {addr}")]
    Refused {
        /// The node's address.
        addr: SocketAddr,
    },
    /// The connect did not complete within `backend_connect`.
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout {
        /// The node's address.
        addr: SocketAddr,
        /// The deadline that passed.
        after: Duration,
    },
    /// herdgate itself is out of descriptors, local ports or memory: not the node's fault.
    #[error("connecting to {addr}: herdgate is out of local resources: {source}")]
    Local {
        /// The node's address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Any other connect error.
    #[error("connecting to {addr}: {source}")]
    Io {
        /// The node's address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

impl ConnectError {
    /// Whether passive health should mark the node down at once (only a refused connect).
    pub fn is_hard(&self) -> bool {
        matches!(self, ConnectError::Refused { .. })
    }
}

/// Open a TCP connection to a node within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::Timeout {
            addr,
            after: timeout,
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ConnectError::Refused { addr })
        }
        Ok(Err(source)) if super::failure::NodeFailure::is_local_resource(&source) => {
            Err(ConnectError::Local { addr, source })
        }
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => {
            // Small WebSocket frames must not wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// The pooled client used for plain-HTTP forwarding; one per snapshot, see [`http_client`].
pub type HttpClient = Client<HttpConnector, super::request_body::TimedBody>;

/// A keep-alive client for plain HTTP forwarding; its pool is keyed by node address.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(connect_timeout));
    c.set_nodelay(true);
    c.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(c)
}

/// Classify a pooled-client error: was it the connect that failed, and how?
pub fn classify_client_error(e: &hyper_util::client::legacy::Error) -> ClientFailure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return match io.kind() {
                _ if super::failure::NodeFailure::is_local_resource(io) => ClientFailure::Local,
                io::ErrorKind::ConnectionRefused => ClientFailure::Refused,
                io::ErrorKind::TimedOut => ClientFailure::Timeout,
                _ if e.is_connect() => ClientFailure::ConnectOther,
                _ => ClientFailure::Other,
            };
        }
        src = s.source();
    }
    if e.is_connect() {
        // HttpConnector reports its own connect timeout without an io::Error source.
        if e.to_string().contains("timed out") || format!("{e:?}").contains("Timeout") {
            return ClientFailure::Timeout;
        }
        return ClientFailure::ConnectOther;
    }
    ClientFailure::Other
}

/// How a pooled-client request failed, as [`classify_client_error`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    /// The connect was refused.
    Refused,
    /// The connect (or an I/O operation) timed out.
    Timeout,
    /// The connect failed some other way.
    ConnectOther,
    /// The connection was made; the exchange failed afterwards.
    Other,
    /// herdgate's own descriptors, ports or memory ran out.
    Local,
}
