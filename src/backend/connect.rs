//! Connecting to nodes: raw TCP for tunnels, a pooled keep-alive client for plain HTTP.

use hyper::body::Incoming;
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
    #[error("connection refused by {addr}")]
    Refused { addr: SocketAddr },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

impl ConnectError {
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
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => {
            // Small WebSocket frames must not wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

pub type HttpClient = Client<HttpConnector, Incoming>;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFailure {
    Refused,
    Timeout,
    ConnectOther,
    Other,
}
