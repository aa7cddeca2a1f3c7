//! The handshake and hyper's view of a session: [`read_client_hello`] (the first record,
//! before the handshake cap is charged), [`handshake`], and [`TlsStream`], the session
//! with its socket as an `AsyncRead`/`AsyncWrite`.

use super::{Emit, Progress, TlsSession, HEADER};
use crate::io::ReadOutcome;
use rustls::ServerConfig;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Wait until the connection's first record, which must be the start of a ClientHello, is
/// in; returns the bytes read. Nothing is sent and no key is made: the handshake cap is
/// charged after this and before [`handshake`].
pub async fn read_client_hello(t: &TcpStream) -> io::Result<Vec<u8>> {
    let mut rx = Vec::new();
    loop {
        if let Some(h) = rx.get(..HEADER) {
            let h: &[u8] = h;
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            // 22 = handshake, version 3.x; the body's first byte, 1 = client_hello.
            if h[0] != 22 || h[1] != 3 || len == 0 || len > 16_384 {
                return Err(super::invalid("not a TLS handshake record"));
            }
            if let Some(&typ) = rx.get(HEADER) {
                if typ != 1 {
                    return Err(super::invalid("the first TLS message is not a ClientHello"));
                }
            }
            if rx.len() >= HEADER + len {
                return Ok(rx);
            }
        }
        t.readable().await?;
        let start = rx.len();
        rx.resize(start + 4096, 0);
        let r = crate::io::read_now(t, &mut rx[start..]);
        rx.truncate(start + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The server's handshake on `tcp`, the ClientHello's first bytes already in `rx` (see
/// [`read_client_hello`]), with `config`. The caller bounds it in time. On a failure
/// rustls' alert is sent if the socket takes it at once.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    rx: Vec<u8>,
) -> io::Result<TlsStream> {
    let mut s = TlsSession::new(config, rx)?;
    loop {
        let p = match s.process_rx(Emit::Nothing, &mut [], &mut []) {
            Ok(d) => d.progress,
            Err(e) => {
                s.flush_alert(&tcp);
                return Err(e);
            }
        };
        while !s.flush(&tcp)? {
            tcp.writable().await?;
        }
        match p {
            Progress::Writable if !s.handshaking() => break,
            Progress::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {}
        }
        tcp.readable().await?;
        match s.fill(&tcp) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    s.trim();
    Ok(TlsStream { tcp, s })
}

/// A TLS server connection after its handshake, read and written through tokio.
pub struct TlsStream {
    pub(super) tcp: TcpStream,
    pub(super) s: TlsSession,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The socket and the TLS session, for a relay that drives them itself.
    pub fn into_parts(self) -> (TcpStream, TlsSession) {
        (self.tcp, self.s)
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.s.read(&this.tcp, buf.initialize_unfilled())? {
                ReadOutcome::Data(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                ReadOutcome::Eof => return Poll::Ready(Ok(())),
                ReadOutcome::WouldBlock => ready!(this.tcp.poll_read_ready(cx))?,
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.s.write(&this.tcp, data)?;
            if n > 0 || data.is_empty() {
                return Poll::Ready(Ok(n));
            }
            ready!(this.tcp.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.s.flush(&this.tcp)? {
            ready!(this.tcp.poll_write_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.s.close_notify(&this.tcp);
        while !this.s.flush(&this.tcp)? {
            ready!(this.tcp.poll_write_ready(cx))?;
        }
        let _ = socket2::SockRef::from(&this.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
