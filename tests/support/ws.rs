//! WebSocket clients: tungstenite over plain or TLS streams, and hand-made frames for
//! what tungstenite will not send or read.

use super::http1::read_head;
use super::net::tcp_from;
use super::within;
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client over a plain TCP connection (or any stream: `Ws<TlsStream>`).
pub type Ws<S = TcpStream> = WebSocketStream<S>;

/// A WebSocket client connected by URL (`ws://` or `wss://`).
pub type UrlWs = Ws<MaybeTlsStream<TcpStream>>;

/// WebSocket limits large enough for the tests' largest messages (16 MiB).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// The WebSocket handshake to `url` over an already open stream (plain or TLS), with
/// extra request headers: the socket and the 101, or the error (`WsError::Http` carries a
/// refusal's response).
pub async fn try_ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws<S>, Response), WsError> {
    let mut req = url.into_client_request()?;
    for (n, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    within(tokio_tungstenite::client_async_with_config(
        req,
        stream,
        Some(ws_config()),
    ))
    .await
}

/// [`try_ws_over`], which must succeed.
pub async fn ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> (Ws<S>, Response) {
    try_ws_over(stream, url, headers)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake to {url} {headers:?}: {e}"))
}

/// A WebSocket to `addr` + `path` from `local` (None: the default source address), with
/// extra request headers; an HTTP refusal is the error `"HTTP <status>"`.
pub async fn ws_try(
    local: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Response), String> {
    let tcp = tcp_from(local, addr).await.map_err(|e| e.to_string())?;
    try_ws_over(tcp, &format!("ws://{addr}{path}"), headers)
        .await
        .map_err(|e| match e {
            WsError::Http(r) => format!("HTTP {}", r.status().as_u16()),
            e => e.to_string(),
        })
}

/// A WebSocket to `addr` + `path` with extra request headers, which must succeed.
pub async fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (Ws, Response) {
    match ws_try(None, addr, path, headers).await {
        Ok(x) => x,
        Err(e) => panic!("WebSocket to {addr}{path} {headers:?} failed: {e}"),
    }
}

/// A WebSocket to `addr` + `path`, which must succeed.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    ws_connect_with(addr, path, &[]).await.0
}

/// A WebSocket to `url` (`ws://` or `wss://`), which must succeed with a 101.
pub async fn ws_connect_url(url: &str) -> UrlWs {
    let (ws, resp) = within(tokio_tungstenite::connect_async_with_config(
        url,
        Some(ws_config()),
        false,
    ))
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Status of an upgrade attempt: 101 (and the open socket) or the HTTP error status.
pub async fn ws_status(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<Ws>) {
    match ws_try(None, addr, path, headers).await {
        Ok((w, _)) => (101, Some(w)),
        Err(e) => match e.strip_prefix("HTTP ").and_then(|s| s.parse().ok()) {
            Some(code) => (code, None),
            None => panic!("upgrade to {addr}{path} failed below HTTP: {e}"),
        },
    }
}

/// Send one text message and expect it back unchanged (proves the tunnel is alive end to
/// end, and that the node has counted the handshake).
pub async fn echo_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, text: &str) {
    within(ws.send(Message::text(text))).await.unwrap();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text, "echo corrupted");
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// The close code the server sends next (after draining data messages). Completes the
/// close handshake: reading on after the Close sends tungstenite's reply.
pub async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<u16> {
    let mut code = None;
    while let Some(m) = within(ws.next()).await {
        match m {
            Ok(Message::Close(f)) => code = Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    code
}

/// Parse `{"retry_after_ms":N,...}` (the reason of herdgate's 1012 and 1013 closes).
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(reason).ok()?;
    v.get("retry_after_ms")?.as_u64()
}

// ---------------------------------------------------------------------------
// Hand-made frames
// ---------------------------------------------------------------------------

/// An unmasked server frame.
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(n as u8);
    } else if n <= 0xFFFF {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// Read one frame: (fin, opcode, masked, unmasked payload).
pub async fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, bool, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let fin = h[0] & 0x80 != 0;
    let opcode = h[0] & 0x0F;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7F);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut key = [0u8; 4];
    if masked {
        s.read_exact(&mut key).await?;
    }
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).await?;
    if masked {
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((fin, opcode, masked, p))
}

/// Read one client frame (it must be masked): (fin, opcode, payload).
pub async fn read_client_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let (fin, op, masked, p) = read_frame(s).await?;
    if !masked {
        return Err(std::io::Error::other("unmasked client frame"));
    }
    Ok((fin, op, p))
}

/// A hand-made WebSocket client: the upgrade over a raw socket, then raw frames.
pub async fn raw_ws_client(
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// (code, reason) of a close frame payload.
pub fn close_payload(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (1005, String::new());
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

/// What a client that reads only `Retry-After` went through to get back in.
pub struct RetryAfterOnly {
    /// The tunnel it got.
    pub ws: Ws,
    /// Seconds it was told to wait (or waited on its own), in all.
    pub waited: f64,
    /// 503s it was turned away with.
    pub rejected: u32,
}

/// Connects from `ip` like most WebSocket libraries: it reads only the whole-second
/// `Retry-After` of a refusal, sends no key and keeps no cookie; without a hint (a 502
/// while a dead node is not yet known down, a refused connect) it waits 0.2 s, or a second
/// after an HTTP answer.
pub async fn retry_after_only(ip: IpAddr, addr: SocketAddr) -> RetryAfterOnly {
    let (mut waited, mut rejected) = (0.0, 0);
    loop {
        let Ok(tcp) = tcp_from(Some(ip), addr).await else {
            waited += 0.2;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        let req = format!("ws://{addr}/").into_client_request().unwrap();
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, _)) => {
                return RetryAfterOnly {
                    ws,
                    waited,
                    rejected,
                }
            }
            Err(WsError::Http(resp)) => {
                if resp.status() == 503 {
                    rejected += 1;
                }
                let secs: u64 = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                waited += secs as f64;
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
            }
            Err(_) => {
                waited += 0.2;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

/// `len` bytes of a position-dependent pseudo-random pattern (xorshift64) from `seed`:
/// a dropped, repeated, shifted or truncated piece of it cannot go unseen.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
