//! What one admin connection costs and how long it may hold it: a slot under
//! `admin.max_connections`, and a deadline on writes that make no progress.

use crate::metrics as m;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Admin connections open now, against a cap read at each accept (so a reload changes it).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    open: AtomicUsize,
}

/// One admin connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    /// A slot if fewer than `max` are taken.
    pub(crate) fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!(m::ADMIN_CONNECTIONS_OPEN).increment(1.0);
        Some(Slot {
            slots: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(m::ADMIN_CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`
/// (a client that never reads its response cannot hold its slot). Reads pass through:
/// hyper's header read timeout bounds them.
#[derive(Debug)]
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After the inner stream said "not now": pending until `limit` has passed since the
    /// first such answer in a row, then an error.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin client does not read its response",
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

    #[test]
    fn slots_are_capped_and_given_back() {
        let s = Arc::new(Slots::default());
        let a = s.try_take(2).unwrap();
        let _b = s.try_take(2).unwrap();
        assert!(s.try_take(2).is_none());
        drop(a);
        assert!(s.try_take(2).is_some());
    }

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
