//! A client's request body on its way to a node, under `timeouts.request_body`, with a
//! record of whose fault it is if the exchange fails.
//!
//! The timer runs only while the HTTP client waits for the client's next bytes (the body
//! returned `Pending`), and restarts at every frame: a client that stalls its body is cut
//! off after the timeout, while time spent waiting on a slow node never counts against the
//! client. When the exchange then fails, [`BodyWatch`] tells the forwarder that the client
//! caused it, so the answer is 408 and the node's health is left alone.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Error of a [`TimedBody`]: the client's own error or its stall.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

const READING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;
const CLIENT_FAULT: u8 = 3;

/// Where a forwarded request body is, shared between the body and its forwarder.
#[derive(Debug, Default)]
pub struct BodyWatch {
    state: AtomicU8,
}

impl BodyWatch {
    /// A watch for one body.
    pub fn new() -> Arc<BodyWatch> {
        Arc::new(BodyWatch::default())
    }

    /// The client broke the exchange: its body stalled past the timeout, or failed.
    pub fn client_fault(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLIENT_FAULT
    }

    /// The exchange is waiting on the client's next body bytes right now.
    pub fn waiting_on_client(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    fn set(&self, s: u8) {
        // A fault is final.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old != CLIENT_FAULT).then_some(s)
            });
    }
}

/// The body stalled: no new byte for `timeouts.request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body: no data for {0:?}")]
pub struct BodyStalled(pub Duration);

pin_project_lite::pin_project! {
    /// A client's request body, cut off when it brings nothing for `idle` while read.
    pub struct TimedBody {
        #[pin]
        inner: Incoming,
        idle: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        watch: Arc<BodyWatch>,
    }
}

impl TimedBody {
    /// Wrap `inner`; `watch` records its fate.
    pub fn new(inner: Incoming, idle: Duration, watch: Arc<BodyWatch>) -> Self {
        TimedBody {
            inner,
            idle,
            timer: None,
            watch,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                *this.timer = None;
                this.watch.set(READING);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.watch.set(CLIENT_FAULT);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.watch.set(DONE);
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.watch.set(WAITING);
                let idle = *this.idle;
                let t = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if t.as_mut().poll(cx).is_ready() {
                    this.watch.set(CLIENT_FAULT);
                    metrics::counter!(crate::metrics::REQUEST_BODY_TIMEOUTS).increment(1);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
