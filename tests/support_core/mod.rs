//! Helpers shared by the core_* tests (HTTP, WebSocket, TLS, robustness): a raw HTTP/1.1
//! response reader, a channel-fed request/response body, WebSocket clients with large
//! limits, TLS client configs, and polling with a deadline.
#![allow(dead_code)]

use crate::support::{within, DEADLINE};
use bytes::Bytes;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A pool whose admission never gets in the way of a functional test.
pub fn fast_pool(name: &str, nodes: &[SocketAddr]) -> String {
    crate::support::pool_toml(name, nodes, "admit_rate = 100000.0\nadmit_burst = 100000")
}

/// Poll `cond` until it holds; fail at the deadline. For state that has no event to wait
/// on (counters of another task, metrics).
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        if tokio::time::Instant::now() > end {
            panic!("condition never held: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`eventually`] for a metric sample of a running proxy.
pub async fn metric_reaches(
    proxy: &crate::support::Proxy,
    name: &str,
    frags: &[&str],
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let text = proxy.metrics().await;
        let v = crate::support::metric(&text, name, frags);
        if pred(v) {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("metric {name}{frags:?} stuck at {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header fields in wire order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Buffered reader over any stream, for reading heads and bodies by hand.
pub struct Reader<S> {
    pub s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    pub fn new(s: S) -> Self {
        Reader { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.s.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Read one response (head and body, by Content-Length, chunked, or to EOF).
    pub async fn response(&mut self) -> std::io::Result<Resp> {
        let status_line = self.line().await?;
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                break;
            }
            let l = String::from_utf8_lossy(&l).into_owned();
            let (n, v) = l.split_once(':').unwrap_or((&l, ""));
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut r = Resp {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(r);
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            r.chunked = true;
            loop {
                let size = self.line().await?;
                let size = String::from_utf8_lossy(&size);
                let size =
                    usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                let chunk = self.exact(size).await?;
                r.body.extend_from_slice(&chunk);
                if !self.line().await?.is_empty() {
                    return Err(std::io::Error::other("chunk not followed by CRLF"));
                }
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| std::io::Error::other("bad content-length"))?;
            r.body = self.exact(len).await?;
        } else {
            // Delimited by close.
            while self.fill().await? > 0 {}
            r.body = std::mem::take(&mut self.buf);
        }
        Ok(r)
    }

    /// Read until EOF (or a reset); what arrived.
    pub async fn rest(&mut self) -> Vec<u8> {
        while let Ok(n) = self.fill().await {
            if n == 0 {
                break;
            }
        }
        std::mem::take(&mut self.buf)
    }
}

/// Send raw bytes on a new connection and read one response.
pub async fn raw_request(addr: SocketAddr, req: &[u8]) -> Resp {
    use tokio::io::AsyncWriteExt;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut r = Reader::new(s);
    within(r.response()).await.expect("read response")
}

/// An error body herdgate wrote: short, and telling nothing about the inside.
pub fn assert_no_internals(r: &Resp) {
    let body = r.text();
    assert!(
        body.len() <= 64,
        "error body too long ({} bytes): {body:?}",
        body.len()
    );
    for needle in [
        "127.0.0.1",
        "::1",
        "refused",
        "os error",
        "error:",
        "tcp",
        "hyper",
    ] {
        assert!(
            !body.to_ascii_lowercase().contains(needle),
            "error body reveals internals ({needle}): {body:?}"
        );
    }
    assert!(
        !body.bytes().any(|b| b.is_ascii_digit()),
        "error body carries numbers (addresses, ports?): {body:?}"
    );
}

/// Request or response body fed chunk by chunk through a channel.
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl ChanBody {
    pub fn new() -> (mpsc::Sender<Bytes>, ChanBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, ChanBody(rx))
    }
}

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// WebSocket limits large enough for the 16 MiB test message.
pub fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(64 << 20);
    c.max_frame_size = Some(64 << 20);
    c
}

pub type Ws<S = TcpStream> = WebSocketStream<S>;

/// Open a WebSocket through `addr` (plain) with extra request headers.
pub async fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (Ws, http::Response<Option<Vec<u8>>>) {
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    ws_over(tcp, &format!("ws://{addr}{path}"), headers).await
}

pub async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    ws_connect_with(addr, path, &[]).await.0
}

/// The WebSocket handshake over an already open stream (plain or TLS).
pub async fn ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> (Ws<S>, http::Response<Option<Vec<u8>>>) {
    let mut req = url.into_client_request().unwrap();
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    within(tokio_tungstenite::client_async_with_config(
        req,
        stream,
        Some(ws_config()),
    ))
    .await
    .expect("WebSocket handshake through herdgate")
}

/// Send one text message and expect it back.
pub async fn echo_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within(ws.send(Message::text(text))).await.unwrap();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// rustls client side: accepts any server certificate (tests look at what was presented
/// through `peer_certificates`) but checks handshake signatures for real.
#[derive(Debug)]
pub struct AnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for the given versions that trusts `root` (a self-signed cert).
pub fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    root: &[u8],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(root.to_vec()))
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// A client config that accepts any certificate (for SNI/default-certificate checks).
pub fn tls_client_any() -> rustls::ClientConfig {
    let p = provider();
    let mut c = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TCP connect plus TLS handshake with `sni` as the server name.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream {
    let tcp = within(TcpStream::connect(addr)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    within(tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake with herdgate")
}
