//! The node's side of an upgrade without an HTTP client connection: the request head is
//! written by hand, the response head read into one small buffer and parsed with
//! httparse. On a 101 the socket and the bytes read past the head are the tunnel's node
//! side; the hyper client (a connection task, its buffers, a dispatcher and an upgrade
//! hand-over per tunnel) is used only for the rare answer that is not a 101, whose body
//! framing (Content-Length, chunked, until close) it then decodes from the bytes already
//! read and the rest of the socket.

use super::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Largest response head accepted from a node (status line and fields).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields accepted in a node's response head.
const MAX_FIELDS: usize = 64;
/// Most interim (1xx other than 101) responses skipped before the final one.
const MAX_INTERIM: usize = 8;

/// What the node answered to the upgrade.
pub enum Answer {
    /// A 101: its fields, the socket, and what the node sent after the head (the first
    /// tunnel bytes).
    Switching {
        /// The 101's header fields.
        headers: HeaderMap,
        /// The connection to the node, now a tunnel.
        stream: TcpStream,
        /// Bytes the node sent right after the head.
        rest: Bytes,
    },
    /// Any final answer other than 101: passed to the client (body streamed).
    Other(Response<hyper::body::Incoming>),
}

/// Why the node leg failed.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    /// No complete answer within `timeouts.backend_response`.
    #[error("no response head from the node within {0:?}")]
    Timeout(Duration),
    /// The socket failed, or the node closed before its head was complete.
    #[error("node exchange: {0}")]
    Io(#[from] io::Error),
    /// The node's head is not HTTP/1.1, is malformed or too large.
    #[error("invalid response head from the node: {0}")]
    BadHead(String),
    /// The non-101 answer could not be read (hyper's parse of it).
    #[error("node answer: {0}")]
    Answer(#[from] hyper::Error),
}

/// Serialise the request head herdgate sends the node (`parts` as
/// [`super::headers::upgrade_for_node`] left it).
pub fn request_head(parts: &http::request::Parts) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut len = target.len() + 32;
    for (n, v) in &parts.headers {
        len += n.as_str().len() + v.len() + 4;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in &parts.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parsed head: status, fields, and the head's length in the buffer; `None` while
/// incomplete.
type Head = Option<(u16, HeaderMap, usize)>;

/// Parse a response head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Head, LegError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(LegError::BadHead(format!(
                "the head exceeds {MAX_HEAD} bytes"
            )))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(LegError::BadHead(e.to_string())),
    };
    if n > MAX_HEAD {
        return Err(LegError::BadHead(format!(
            "the head exceeds {MAX_HEAD} bytes"
        )));
    }
    let code = r.code.unwrap_or(0);
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| LegError::BadHead(format!("invalid field name {:?}", f.name)))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| LegError::BadHead(format!("invalid value of {name}")))?;
        headers.append(name, value);
    }
    Ok(Some((code, headers, n)))
}

/// Send the upgrade `head` on `stream` and read the node's answer, all within `timeout`.
pub async fn exchange(
    mut stream: TcpStream,
    head: &[u8],
    timeout: Duration,
) -> Result<Answer, LegError> {
    let deadline = Instant::now() + timeout;
    let read_head = async {
        stream.write_all(head).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut interim = 0;
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(LegError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the node closed before its response head was complete",
                )));
            }
            // Interim answers (100, 103) are skipped; a 101 or a final answer ends it.
            while let Some((code, headers, n)) = parse_head(&buf)? {
                if code == 101 || code >= 200 {
                    return Ok((code, headers, n, buf));
                }
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(LegError::BadHead("too many interim answers".into()));
                }
                let _ = buf.split_to(n);
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(buf.len().min(MAX_HEAD));
            }
        }
    };
    let (code, headers, n, buf) = tokio::time::timeout_at(deadline, read_head)
        .await
        .map_err(|_| LegError::Timeout(timeout))??;
    if code == 101 {
        // A copy of what follows the head (usually nothing): a view into `buf` would keep
        // the whole head buffer alive for the tunnel's life.
        let rest = match buf.get(n..) {
            Some(r) if !r.is_empty() => Bytes::copy_from_slice(r),
            _ => Bytes::new(),
        };
        return Ok(Answer::Switching {
            headers,
            stream,
            rest,
        });
    }
    // Not a 101: hyper's client reads it again from the bytes already read, then from the
    // socket, so its body framing is decoded as for any forwarded answer.
    let replay = Replay {
        pre: buf.freeze(),
        stream,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        sent: false,
        reader: None,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(replay)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("node answer: {e}");
        }
    });
    let req = http::Request::get("/")
        .body(Body::empty())
        .map_err(|e| LegError::BadHead(e.to_string()))?;
    let resp = tokio::time::timeout_at(deadline, sender.send_request(req))
        .await
        .map_err(|_| LegError::Timeout(timeout))??;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(LegError::BadHead(
            "the answer changed on a second read".into(),
        ));
    }
    Ok(Answer::Other(resp))
}

/// The node's socket for a second read of its answer: first the bytes already read, then
/// the socket, until `deadline` (the answer's body is bounded like its head). Writes (the
/// request hyper thinks it sends) go nowhere: the node already has the real one. Nothing
/// is read before that request is "sent" (hyper takes an answer to no request for an
/// error).
struct Replay {
    pre: Bytes,
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    sent: bool,
    reader: Option<std::task::Waker>,
}

impl Replay {
    fn mark_sent(&mut self) {
        self.sent = true;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.sent {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the node's answer took longer than backend_response",
            )));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.mark_sent();
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.mark_sent();
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_written_as_parts_say() {
        let req = http::Request::get("/chat?room=1")
            .header("host", "chat.example")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let head = String::from_utf8(request_head(&parts)).unwrap();
        assert_eq!(
            head,
            "GET /chat?room=1 HTTP/1.1\r\nhost: chat.example\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn heads_parse_or_fail_clearly() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01a";
        let (code, h, n) = parse_head(ok).unwrap().unwrap();
        assert_eq!(code, 101);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(&ok[n..], b"\x81\x01a");
        assert!(parse_head(b"HTTP/1.1 101 Swi").unwrap().is_none());
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(LegError::BadHead(_))
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        let e = parse_head(&big).err().unwrap();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..(MAX_FIELDS + 1) {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&many), Err(LegError::BadHead(_))));
    }
}
