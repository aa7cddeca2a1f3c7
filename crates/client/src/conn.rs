//! One connection attempt: TCP, TLS (with session resumption), WebSocket upgrade, and
//! the classification of how it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, Uri};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::hint::{self, Hint};
use crate::{ClientError, Outcome, RejectedBy, Rejection};

/// A WebSocket over plain TCP or TLS.
pub type WsStream = WebSocketStream<ClientStream>;

/// The transport under a [`WsStream`]: `ws://` or `wss://`.
/// TLS is boxed so that a plain connection does not pay for a rustls connection's size.
pub type ClientStream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// For TLS, whether the handshake was full or resumed (rustls 0.23); `None` for plain TCP.
pub fn tls_handshake_kind(stream: &ClientStream) -> Option<HandshakeKind> {
    match stream {
        Either::Left(_) => None,
        Either::Right(tls) => tls.get_ref().1.handshake_kind(),
    }
}

/// Where and how to connect. Share one `Arc<Target>` between many clients: it is
/// read-only, and sharing its `Arc<ClientConfig>` shares rustls' session cache, which is
/// what makes the second handshake a resumption.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host[:port]/path?query` or `wss://...`.
    pub url: String,
    /// Required for `wss://`. Keep reusing the same `Arc` (session resumption).
    pub tls: Option<Arc<ClientConfig>>,
    /// Bound on TCP connect + TLS handshake + upgrade, together.
    pub connect_timeout: Duration,
    /// Extra request headers (auth, sticky key...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Connect to this address instead of resolving the URL's host, which then only
    /// names the server (Host, SNI). Saves a blocking-pool DNS lookup per attempt.
    pub addr: Option<SocketAddr>,
    /// Connect from this local address (a client among many on one test machine: any
    /// 127.0.0.0/8 address works on Linux loopback). `None`: the system's choice.
    pub local_ip: Option<std::net::IpAddr>,
    /// If set, [`super::run_until_connected`] uses [`connect_and_confirm`] with this wait,
    /// for routes where the server rejects by completing the upgrade and closing (1013).
    pub confirm_within: Option<Duration>,
    /// WebSocket buffers. The default here is small (4 KiB read buffer, writes not
    /// held back) because tungstenite's own default eagerly allocates 128 KiB per
    /// connection, too much for a storm of thousands.
    pub ws_config: WebSocketConfig,
}

impl Target {
    /// A target with a 10 s connect timeout, no TLS config, no confirmation wait.
    pub fn new(url: impl Into<String>) -> Target {
        Target {
            url: url.into(),
            tls: None,
            connect_timeout: Duration::from_secs(10),
            headers: Vec::new(),
            addr: None,
            local_ip: None,
            confirm_within: None,
            ws_config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0),
        }
    }

    /// Use this TLS client config for `wss://`.
    pub fn with_tls(mut self, tls: Arc<ClientConfig>) -> Target {
        self.tls = Some(tls);
        self
    }

    /// Connect to `addr` rather than resolving the URL's host.
    pub fn with_addr(mut self, addr: SocketAddr) -> Target {
        self.addr = Some(addr);
        self
    }

    /// Connect from `ip` (see [`Target::local_ip`]).
    pub fn with_local_ip(mut self, ip: std::net::IpAddr) -> Target {
        self.local_ip = Some(ip);
        self
    }

    /// Bound the whole handshake.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Target {
        self.connect_timeout = timeout;
        self
    }

    /// After the upgrade, wait up to `wait` for an immediate 1013/1012 close.
    pub fn with_confirm_within(mut self, wait: Duration) -> Target {
        self.confirm_within = Some(wait);
        self
    }

    /// Add a request header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Target {
        self.headers.push((name, value));
        self
    }
}

/// A completed upgrade.
#[derive(Debug)]
pub struct Connected {
    /// The stream, ready to read and write.
    pub ws: WsStream,
    /// A message [`connect_and_confirm`] had to read to know the upgrade stuck; hand it
    /// to the application before reading `ws` further.
    pub first: Option<Message>,
}

impl Connected {
    /// For TLS, whether the handshake was full or resumed.
    pub fn tls_handshake_kind(&self) -> Option<HandshakeKind> {
        tls_handshake_kind(self.ws.get_ref())
    }
}

/// One attempt: connect, upgrade, classify. Never panics on what the server sends.
///
/// With `accept_tickets` the request carries `herdgate-accept-ticket: 1`; a `ticket`
/// (from the previous rejection) is sent as `herdgate-ticket`.
pub async fn connect_once(target: &Target, ticket: Option<&str>, accept_tickets: bool) -> Outcome {
    // Boxed: the handshake state (TLS + upgrade) is ~2 KiB and only lives during the
    // attempt, while a storm client spends most of its life sleeping between attempts.
    // Inline, every sleeping client's future would carry that space too.
    let attempt = Box::pin(handshake(target, ticket, accept_tickets));
    match tokio::time::timeout(target.connect_timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(ClientError::Timeout {
            after: target.connect_timeout,
        }),
    }
}

/// [`connect_once`], then read until the first frame or until `wait` passes.
///
/// A browser cannot read a rejected handshake, so on browser routes the server
/// completes the upgrade and closes at once with 1013 (RFC 6455 §7.4). Such a close as
/// the first frame is a [`Outcome::Rejected`] (any close code counts; only 1013/1012
/// carry a hint). A data or ping frame first means we are in: it is returned in
/// [`Connected::first`]. Silence for `wait` also means we are in: servers that speak
/// only when spoken to are normal.
pub async fn connect_and_confirm(
    target: &Target,
    ticket: Option<&str>,
    accept_tickets: bool,
    wait: Duration,
) -> Outcome {
    let mut connected = match connect_once(target, ticket, accept_tickets).await {
        Outcome::Connected(c) => c,
        other => return other,
    };
    match tokio::time::timeout(wait, connected.ws.next()).await {
        Err(_) => Outcome::Connected(connected),
        Ok(None) => Outcome::Failed(ClientError::EndedAfterUpgrade),
        Ok(Some(Err(e))) => Outcome::Failed(ClientError::Handshake(Box::new(e))),
        Ok(Some(Ok(Message::Close(frame)))) => {
            // RFC 6455 §7.4.1: a close without a status is reported as 1005.
            let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
            let hint = frame.as_ref().and_then(Hint::from_close_frame);
            // tungstenite queued the close reply when it read the close; push it out so
            // the server sees a clean closing handshake (§5.5.1), without waiting long.
            let _ = tokio::time::timeout(wait, connected.ws.flush()).await;
            Outcome::Rejected(Rejection {
                by: RejectedBy::Close(code),
                hint,
            })
        }
        Ok(Some(Ok(message))) => {
            connected.first = Some(message);
            Outcome::Connected(connected)
        }
    }
}

/// A TLS client config trusting exactly `root` (a self-signed or test CA certificate),
/// offering ALPN `http/1.1` (the upgrade is HTTP/1.1, RFC 6455 §4.1). rustls' default
/// in-memory session cache is kept, so reusing the returned `Arc` resumes sessions.
pub fn tls_client_config_with_root(
    root: CertificateDer<'static>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.add(root).map_err(ClientError::RootCertificate)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientError::RootCertificate)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn handshake(target: &Target, ticket: Option<&str>, accept_tickets: bool) -> Outcome {
    let (request, uri) = match build_request(target, ticket, accept_tickets) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    let stream = match open_stream(target, &uri).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    match tokio_tungstenite::client_async_with_config(request, stream, Some(target.ws_config)).await
    {
        Ok((ws, _response)) => Outcome::Connected(Connected { ws, first: None }),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            if status == 503 || status == 429 {
                let hint = Hint::from_response(
                    response.headers(),
                    response.body().as_deref(),
                    SystemTime::now(),
                );
                Outcome::Rejected(Rejection {
                    by: RejectedBy::Status(status),
                    hint,
                })
            } else {
                Outcome::Failed(ClientError::Status { status })
            }
        }
        Err(e) => Outcome::Failed(ClientError::Handshake(Box::new(e))),
    }
}

fn build_request(
    target: &Target,
    ticket: Option<&str>,
    accept_tickets: bool,
) -> Result<(Request, Uri), ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: target.url.clone(),
        reason,
    };
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    let headers = request.headers_mut();
    for (name, value) in &target.headers {
        headers.append(name.clone(), value.clone());
    }
    if accept_tickets {
        headers.insert(
            HeaderName::from_static(hint::ACCEPT_TICKET_HEADER),
            HeaderValue::from_static("1"),
        );
    }
    // Tickets were validated as base64url when parsed; re-checking here keeps a ticket
    // from any other source out of the header if it is not a valid value.
    if let Some(value) = ticket.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(HeaderName::from_static(hint::TICKET_HEADER), value);
    }
    let uri = request.uri().clone();
    Ok((request, uri))
}

async fn open_stream(target: &Target, uri: &Uri) -> Result<ClientStream, ClientError> {
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(ClientError::UnsupportedScheme {
                url: target.url.clone(),
            })
        }
    };
    let host = uri.host().ok_or_else(|| ClientError::InvalidUrl {
        url: target.url.clone(),
        reason: "no host".to_owned(),
    })?;
    // Uri keeps IPv6 literals bracketed; neither sockets nor SNI want the brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    // Whatever can be refused without the network is refused before the SYN.
    let tls = if secure {
        let config = target
            .tls
            .clone()
            .ok_or_else(|| ClientError::MissingTlsConfig {
                url: target.url.clone(),
            })?;
        let name =
            ServerName::try_from(host.to_owned()).map_err(|_| ClientError::InvalidServerName {
                host: host.to_owned(),
            })?;
        Some((TlsConnector::from(config), name))
    } else {
        None
    };
    let tcp = match (target.addr, target.local_ip) {
        (Some(addr), Some(local)) => connect_from(local, addr).await,
        (Some(addr), None) => TcpStream::connect(addr).await,
        (None, Some(local)) => match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => connect_from(local, addr).await,
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the host resolved to no address",
                )),
            },
            Err(e) => Err(e),
        },
        (None, None) => TcpStream::connect((host, port)).await,
    }
    .map_err(|source| ClientError::Connect {
        addr: target
            .addr
            .map_or_else(|| format!("{host}:{port}"), |a| a.to_string()),
        source,
    })?;
    // Upgrade requests and small frames: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let Some((connector, name)) = tls else {
        return Ok(Either::Left(tcp));
    };
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|source| ClientError::Tls {
            host: host.to_owned(),
            source,
        })?;
    Ok(Either::Right(Box::new(tls)))
}

/// A TCP connection to `addr` from the local address `local` (any port).
async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(local, 0))?;
    sock.connect(addr).await
}
