//! The PROXY protocol header at the start of a connection on a `proxy_protocol` listener,
//! read before TLS and under the connection's handshake deadline.
//!
//! The bytes are peeked, parsed by the pure parser (`herdgate_core::proxy_protocol`), and
//! only the header's own bytes are consumed: whatever follows it (the TLS ClientHello, an
//! HTTP request) stays in the socket for the next stage. Every peek that does not end the
//! header is consumed whole, so the next peek waits for new bytes instead of spinning.

use crate::metrics::PROXY_PROTOCOL_REFUSED;
use crate::snapshot::ListenerIdentity;
use herdgate_core::proxy_protocol::{parse, Parsed, MAX_HEADER};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a connection was closed before TLS: the `reason` label of [`PROXY_PROTOCOL_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Untrusted,
    Invalid,
    Timeout,
    Closed,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::Invalid => "invalid",
            Refused::Timeout => "timeout",
            Refused::Closed => "closed",
        }
    }
}

/// The connection's client address: the TCP peer, or, on a `proxy_protocol` listener,
/// the address the trusted proxy's header names. `None`: the connection must be closed
/// (untrusted peer, bad or missing header, deadline passed); it is counted and logged.
pub async fn client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    listener: &str,
    ident: &ListenerIdentity,
    deadline: Instant,
) -> Option<IpAddr> {
    let peer_ip = peer.ip().to_canonical();
    if !ident.proxy_protocol {
        return Some(peer_ip);
    }
    let outcome = if !herdgate_core::client_addr::is_trusted(&ident.trusted_proxies, peer_ip) {
        Err(Refused::Untrusted)
    } else {
        match tokio::time::timeout_at(deadline, read_header(stream)).await {
            Ok(r) => r,
            Err(_) => Err(Refused::Timeout),
        }
    };
    match outcome {
        Ok(client) => Some(client.map_or(peer_ip, |c| c.ip().to_canonical())),
        Err(why) => {
            metrics::counter!(
                PROXY_PROTOCOL_REFUSED,
                "listener" => listener.to_string(),
                "reason" => why.label(),
            )
            .increment(1);
            // An untrusted peer or a broken header is a misconfiguration (or an attack)
            // worth a line; a peer that closes or stalls (a balancer's TCP check) is not.
            if matches!(why.label(), "untrusted" | "invalid") {
                crate::lograte::warn_limited!(%listener, %peer, reason = why.label(), "PROXY header refused");
            } else {
                tracing::debug!(%listener, %peer, reason = why.label(), "PROXY header refused");
            }
            None
        }
    }
}

/// Read exactly one header off `stream`; `Ok(None)` when it names no client (LOCAL,
/// UNKNOWN): the peer is the client.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    // What has been consumed so far, all of it header.
    let mut header: Vec<u8> = Vec::with_capacity(256);
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER.saturating_sub(header.len());
        let n = stream
            .peek(&mut buf[..room])
            .await
            .map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let seen = header.len();
        header.extend_from_slice(&buf[..n]);
        match parse(&header) {
            Ok(Parsed::Done { client, consumed }) => {
                // `consumed` lies within what was just peeked: take exactly the rest of
                // the header, leaving what follows it in the socket.
                let rest = consumed.saturating_sub(seen);
                stream
                    .read_exact(&mut buf[..rest])
                    .await
                    .map_err(|_| Refused::Closed)?;
                return Ok(client);
            }
            Ok(Parsed::Incomplete) => {
                // All of it is header: consume it and wait for more.
                stream
                    .read_exact(&mut buf[..n])
                    .await
                    .map_err(|_| Refused::Closed)?;
            }
            Err(_) => return Err(Refused::Invalid),
        }
    }
}
