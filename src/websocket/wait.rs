//! What a relay waits for between turns, polled in place.
//!
//! Readiness comes from each socket's own reactor slot (`poll_read_ready`,
//! `poll_write_ready`): one waker per direction, stored in the registration the socket has
//! anyway. Waiting through `readable()`/`writable()` futures instead puts a waiter node per
//! wait into the relay's future (four of them under a `select!`), and an idle tunnel would
//! carry their room for its whole life.

use super::side::Side;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Sleep;

/// Why the relay woke.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ev {
    /// The control plane changed the tunnel's state.
    Command,
    /// The client's socket has bytes (or EOF).
    ClientReadable,
    /// The node's socket has bytes (or EOF).
    BackendReadable,
    /// The client's socket takes writes again.
    ClientWritable,
    /// The node's socket takes writes again.
    BackendWritable,
    /// The tunnel's one timer fired.
    Timer,
    /// Not a wake-up: there is work to do without waiting.
    Again,
    /// A socket reported an error while waiting (`node`: the node's read side).
    Failed {
        /// It was the node's socket, on read: the node may be gone.
        node: bool,
    },
}

/// What the relay wants to hear about on this turn.
#[derive(Clone, Copy, Default)]
pub(super) struct Want {
    pub(super) client_read: bool,
    pub(super) backend_read: bool,
    pub(super) client_write: bool,
    pub(super) backend_write: bool,
}

/// Poll, in priority order, the control plane, the timer and the sockets the relay wants;
/// the first that is ready wins. Every one polled and not ready holds this task's waker.
pub(super) fn poll_event<C: Future<Output = ()>>(
    cx: &mut Context<'_>,
    mut changed: Pin<&mut C>,
    fresh: impl FnOnce() -> C,
    timer: Pin<&mut Sleep>,
    client: &Side,
    backend: &Side,
    want: Want,
) -> Poll<Ev> {
    if changed.as_mut().poll(cx).is_ready() {
        // Listen again for the next change (a change meanwhile leaves a permit).
        changed.set(fresh());
        return Poll::Ready(Ev::Command);
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Ev::Timer);
    }
    let ready = |p: Poll<std::io::Result<()>>, ev: Ev, node: bool| match p {
        Poll::Ready(Ok(())) => Some(ev),
        Poll::Ready(Err(_)) => Some(Ev::Failed { node }),
        Poll::Pending => None,
    };
    if want.client_read {
        if let Some(ev) = ready(client.tcp().poll_read_ready(cx), Ev::ClientReadable, false) {
            return Poll::Ready(ev);
        }
    }
    if want.backend_read {
        if let Some(ev) = ready(backend.tcp().poll_read_ready(cx), Ev::BackendReadable, true) {
            return Poll::Ready(ev);
        }
    }
    if want.client_write {
        if let Some(ev) = ready(client.tcp().poll_write_ready(cx), Ev::ClientWritable, false) {
            return Poll::Ready(ev);
        }
    }
    if want.backend_write {
        if let Some(ev) = ready(
            backend.tcp().poll_write_ready(cx),
            Ev::BackendWritable,
            false,
        ) {
            return Poll::Ready(ev);
        }
    }
    Poll::Pending
}
