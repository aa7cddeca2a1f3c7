//! One body type for every response herdgate sends: nothing, a few bytes of its own, or
//! a node's body streamed through.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body: herdgate's own bytes (or none), or a node's body passed through.
pub enum Body {
    /// A body herdgate made; `None` is empty (or already sent).
    Full(Option<Bytes>),
    /// A node's body, streamed as it arrives.
    Stream(Incoming),
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Body::Full(None)
    }
    /// A fixed text body, without copying.
    pub fn from_static(s: &'static str) -> Self {
        Body::Full(Some(Bytes::from_static(s.as_bytes())))
    }
    /// A text body herdgate built.
    pub fn from_string(s: String) -> Self {
        Body::Full(Some(Bytes::from(s)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => s.size_hint(),
        }
    }
}
