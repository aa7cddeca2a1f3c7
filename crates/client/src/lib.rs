//! Reference reconnecting WebSocket client: the other half of herdgate's retry scheduler.
//!
//! The proxy can only spread a reconnect storm if clients do what it says. This client
//! does, and the storm bench runs thousands of it in one process (no thread per client,
//! a few hundred bytes of state each, plus the WebSocket buffers sized in
//! [`Target::ws_config`]).
//!
//! The policy in words (see [`policy`] for the reasoning):
//! 1. A rejected attempt that carries a hint — `503`/`429` with `retry-after-ms` or
//!    `Retry-After`, or an upgrade closed at once with 1013 (or 1012 on drain) and a JSON
//!    reason — is retried after exactly that delay, presenting the ticket if one came
//!    with it. A ticket plus its exact delay beats `retry-after-ms`, which beats
//!    `Retry-After`, which beats a close reason without a ticket.
//! 2. Otherwise (refused, timeout, reset, no hint) wait `min(base * 2^n, 30 s)` ±50 %,
//!    with `base` drawn once per client in 100–500 ms.
//! 3. A hint or a connection resets `n`; only blind failures grow it.
//!
//! Wire contract (shared with the proxy's `respond`): a client that can present tickets
//! sends `herdgate-accept-ticket: 1`, and presents one with `herdgate-ticket: <t>`.

#![warn(missing_docs)]

pub mod conn;
pub mod hint;
pub mod policy;
pub mod reconnect;

use std::fmt;
use std::time::Duration;

pub use conn::{
    connect_and_confirm, connect_once, tls_client_config_with_root, tls_handshake_kind,
    ClientStream, Connected, Target, WsStream,
};
pub use hint::{Hint, HintSource};
pub use policy::{Backoff, ReconnectPolicy, Strategy};
pub use reconnect::{
    run_until_connected, GaveUp, ReconnectingClient, Setback, Stats, StatsSnapshot,
};
/// The WebSocket implementation under [`WsStream`], for its `Message` and close types.
pub use tokio_tungstenite::tungstenite;

/// How one connection attempt ended. `C` is what a success hands back ([`Connected`]
/// for real attempts; tests of the pure policy use `()`).
#[derive(Debug)]
pub enum Outcome<C = Connected> {
    /// The upgrade completed (and, with confirmation, was not closed at once).
    Connected(C),
    /// The server answered but turned us away, perhaps with a hint.
    Rejected(Rejection),
    /// No answer worth reading: refused, timed out, reset, TLS or protocol failure.
    Failed(ClientError),
}

/// A server's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// How it refused.
    pub by: RejectedBy,
    /// When to come back, if it said; `None` falls back to backoff.
    pub hint: Option<Hint>,
}

/// The form of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedBy {
    /// HTTP status on the upgrade: 503 (node busy) or 429 (per-client limit).
    Status(u16),
    /// The upgrade completed, then the first frame was a close with this code
    /// (1013 Try Again Later, 1012 Service Restart, 1001 Going Away...).
    Close(u16),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.by {
            RejectedBy::Status(s) => write!(f, "HTTP {s}")?,
            RejectedBy::Close(c) => write!(f, "close {c}")?,
        }
        match &self.hint {
            Some(h) => write!(
                f,
                ", retry after {} ms ({:?}{})",
                h.retry_after.as_millis(),
                h.source,
                if h.ticket.is_some() { ", ticket" } else { "" }
            ),
            None => f.write_str(", no hint"),
        }
    }
}

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The target URL cannot be parsed: a setup error, retrying cannot fix it.
    #[error("invalid WebSocket URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What the parser objected to.
        reason: String,
    },
    /// The URL is not ws:// or wss://, the only schemes a WebSocket client can dial.
    #[error("URL {url:?}: scheme must be ws or wss")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
    },
    /// A wss:// target was built without TLS settings, so it could never connect.
    #[error("URL {url:?} is wss:// but the target has no TLS client config")]
    MissingTlsConfig {
        /// The URL as given.
        url: String,
    },
    /// The host cannot be checked against a certificate (SNI and verification need a name).
    #[error("host {host:?} is not a valid TLS server name")]
    InvalidServerName {
        /// The URL's host.
        host: String,
    },
    /// TCP connect failed: no hint came, so the policy backs off on its own.
    #[error("TCP connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed: no hint came, so the policy backs off on its own.
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        /// The server name presented.
        host: String,
        /// The TLS or socket error.
        #[source]
        source: std::io::Error,
    },
    /// The WebSocket upgrade, or the first read that confirms it, failed for a reason other
    /// than a herdgate rejection (no hint).
    #[error("WebSocket handshake: {0}")]
    Handshake(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// The upgrade got a status that is neither success nor a herdgate rejection (no hint).
    #[error("upgrade answered with HTTP {status}, not 101, 503 or 429")]
    Status {
        /// The HTTP status received.
        status: u16,
    },
    /// The attempt took too long: counted apart (`timeouts`) since it points at overload.
    #[error("no complete handshake within {after:?}")]
    Timeout {
        /// The limit that ran out.
        after: Duration,
    },
    /// The server closed at once without a close frame, so there is no reason or hint to read.
    #[error("connection ended right after the upgrade without a close frame")]
    EndedAfterUpgrade,
    /// A configured root certificate cannot be used: a setup error, retrying cannot fix it.
    #[error("TLS root certificate rejected: {0}")]
    RootCertificate(#[source] rustls::Error),
}
