//! HTTP/1.1 by hand over raw sockets: requests as bytes, responses read and parsed here,
//! so a test sees exactly what went over the wire.

use super::within;
use bytes::Bytes;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Minimal HTTP/1.1 GET over a raw socket: (status, body). `Host` names `addr` itself,
/// as a browser would: the admin listener refuses any other (DNS-rebinding defence).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    (status, body)
}

/// Send raw bytes, read until EOF: (status, head, body).
pub async fn http_raw(addr: SocketAddr, req: &[u8]) -> (u16, String, String) {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    within(s.read_to_end(&mut buf)).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Read an HTTP head (through the blank line).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.push(b[0]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The value of header `name` in a head read by [`read_head`].
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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

/// What a [`scripted_node`] does once it has answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Close the connection.
    Close,
    /// Read (and drop) until the other side closes.
    Hold,
    /// Echo what it reads (a tunnel) until the other side closes.
    Echo,
}

/// A [`scripted_node`]'s answer to a path: the bytes and what then, or `None`: close.
pub type Script = fn(&str, &str) -> Option<(Vec<u8>, Then)>;

/// A node whose answer to an upgrade depends on its path: `script(path, accept)` (accept:
/// the `Sec-WebSocket-Accept` for the request's key) gives the bytes to write and what to
/// do next, or `None` to close without an answer.
pub async fn scripted_node(script: Script) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let key = header(&head, "sec-websocket-key").unwrap_or_default();
                let accept = herdgate::websocket::handshake::accept_key(key.as_bytes());
                let Some((answer, then)) = script(&path, &accept) else {
                    return;
                };
                let _ = tcp.write_all(&answer).await;
                if then == Then::Close {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || (then == Then::Echo && tcp.write_all(&buf[..n]).await.is_err()) {
                        break;
                    }
                }
            });
        }
    });
    addr
}
