//! A TCP stream, plain or wrapped in TLS: one concrete type per side, so an upgraded
//! connection can be taken back out of hyper (`Upgraded::downcast`) and relayed without
//! copies. TLS is boxed: a plain connection does not pay for a rustls connection's size.

use std::future::Future;
use std::io;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

pub mod tls;

/// The reactor's readiness is edge-triggered here (epoll, kqueue), as tokio's own
/// `poll_read` assumes for the same shortcut.
const EDGE_TRIGGERED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
));

/// One non-blocking read. A read that fills less than `buf` has emptied the socket's
/// receive queue, so the socket's read readiness is cleared at once (what tokio's
/// `poll_read` does, and `try_read` does not): otherwise the next read is a syscall that
/// only returns EAGAIN, one wasted `recvfrom` per relayed chunk. Data or a FIN arriving
/// after the read raises readiness again, and a FIN already seen stays (tokio keeps the
/// closed state when clearing).
pub(crate) fn read_now(t: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    if !EDGE_TRIGGERED {
        return t.try_read(buf);
    }
    let mut short = None;
    let r = t.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(t)).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            // Tells tokio the socket is drained; `short` carries the data out.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

/// Outcome of a non-blocking read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were read.
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// Nothing to read now; wait for readiness.
    WouldBlock,
}

/// A TCP stream that is plain or TLS-wrapped (`T`), read and written the same way.
#[derive(Debug)]
pub enum MaybeTls<T> {
    /// No TLS.
    Plain(TcpStream),
    /// TLS over TCP, boxed.
    Tls(Box<T>),
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`:
/// a client that stops reading cannot hold a connection (nor the node response being sent
/// to it) forever. Reads pass through: their deadlines are the protocol's (the header read
/// timeout, the request body timeout). A zero `limit` never gives up. Used around every
/// client connection and every admin connection.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// The stream inside.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// After the inner stream said "not now": pending until `limit` has passed since the
    /// first such answer in a row, then an error.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.limit.is_zero() {
            return Poll::Pending;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer does not read: a write made no progress within its deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, p)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_nobody_reads_fails_and_a_read_one_does_not() {
        // A pipe that holds 16 bytes: writing more stalls until the other end reads.
        let (near, mut far) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(near, Duration::from_secs(1));
        let big = vec![7u8; 64];
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 64];
            far.read_exact(&mut got).await.unwrap();
            far
        });
        w.write_all(&big)
            .await
            .expect("a reader keeps the writes moving");
        let _far = reader.await.unwrap();
        let e = w.write_all(&big).await.expect_err("nobody reads any more");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
