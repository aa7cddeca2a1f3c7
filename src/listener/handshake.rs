//! The TLS step of a connection: read the ClientHello under the handshake deadline, then
//! charge the listener's handshake cap (`handshakes_per_second`), then finish the
//! handshake with the certificates of the snapshot in force.
//!
//! The cap is charged at the ClientHello, not at accept: a bare TCP connect that sends
//! nothing holds its connection slot until the deadline and never takes a token. When
//! tokens are short, the waiting handshakes are served in round robin by client
//! ([`FairQueue`], keyed by [`crate::conn::ConnInfo::client_id`]), so one client flooding
//! ClientHellos cannot starve another; each client may have at most
//! `max_waiting_handshakes_per_client` waiting, more are closed and counted. Waiting is
//! bounded by the same deadline.

use crate::conn::ConnInfo;
use crate::io::tls::{self, TlsStream};
use crate::metrics::ListenerMetrics;
use herdgate_core::admission::{FairQueue, HandshakeLimiter, SourceFull, WaiterId};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The handshake cap of one listener, with the handshakes waiting for its tokens.
pub(crate) struct HandshakeGate {
    inner: Mutex<Inner>,
}

struct Inner {
    queue: FairQueue<IpAddr, oneshot::Sender<()>>,
    /// The limiter of the latest snapshot: the dispatcher charges this one.
    limiter: Option<Arc<HandshakeLimiter>>,
    /// A dispatcher task is running (at most one per gate).
    dispatching: bool,
}

/// How asking for a token went.
#[derive(Debug, PartialEq, Eq)]
enum Charge {
    /// A token was taken; `waited` when not at once.
    Granted { waited: bool },
    /// The client already has its share of waiting handshakes.
    SourceFull,
    /// The deadline came first.
    TimedOut,
}

impl HandshakeGate {
    /// A gate with nobody waiting.
    pub(crate) fn new() -> Arc<HandshakeGate> {
        Arc::new(HandshakeGate {
            inner: Mutex::new(Inner {
                queue: FairQueue::new(1),
                limiter: None,
                dispatching: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock can leave it half-updated: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a token for `source`: at once if nobody waits and one is there, else in turn
    /// with the other sources, until `deadline`.
    async fn charge(
        self: &Arc<Self>,
        limiter: &Arc<HandshakeLimiter>,
        per_source: usize,
        source: IpAddr,
        deadline: Instant,
    ) -> Charge {
        let (id, rx) = {
            let mut g = self.lock();
            g.limiter = Some(limiter.clone());
            g.queue.set_per_source(per_source);
            // Nobody ahead: no queue to jump.
            if g.queue.is_empty() && limiter.try_acquire() {
                return Charge::Granted { waited: false };
            }
            let (tx, rx) = oneshot::channel();
            let id = match g.queue.push(source, tx) {
                Ok(id) => id,
                Err(SourceFull) => return Charge::SourceFull,
            };
            if !g.dispatching {
                g.dispatching = true;
                tokio::spawn(self.clone().dispatch());
            }
            (id, rx)
        };
        let waiting = Waiting {
            gate: self,
            source,
            id,
        };
        let r = tokio::time::timeout_at(deadline, rx).await;
        drop(waiting);
        match r {
            Ok(Ok(())) => Charge::Granted { waited: true },
            // The dispatcher never drops a sender unsent, so this is the deadline too.
            Ok(Err(_)) | Err(_) => Charge::TimedOut,
        }
    }

    /// Hand out tokens as they come, one per waiter in turn, until nobody waits.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let limiter = {
                let mut g = self.lock();
                match (&g.limiter, g.queue.is_empty()) {
                    (Some(l), false) => l.clone(),
                    _ => {
                        g.dispatching = false;
                        return;
                    }
                }
            };
            limiter.until_ready_with(tokio::time::sleep).await;
            let mut g = self.lock();
            // The token goes to the next waiter still there (one that gave up is skipped;
            // when nobody is left the token is spent, as it would be by an arrival).
            while let Some((_, _, tx)) = g.queue.pop() {
                if tx.send(()).is_ok() {
                    break;
                }
            }
        }
    }
}

/// A waiter's place in the queue, removed if it gives up (deadline or dropped).
struct Waiting<'a> {
    gate: &'a HandshakeGate,
    source: IpAddr,
    id: WaiterId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.gate.lock().queue.cancel(&self.source, self.id);
    }
}

/// The listener's handshake cap as this connection sees it.
pub(crate) struct Cap<'a> {
    /// The listener's gate (lives as long as its accept loop).
    pub gate: &'a Arc<HandshakeGate>,
    /// The snapshot's limiter (`handshakes_per_second`, `handshake_burst`).
    pub limiter: &'a Arc<HandshakeLimiter>,
    /// `max_waiting_handshakes_per_client`.
    pub per_source: usize,
}

/// The TLS handshake of one connection under `deadline`: ClientHello, then the cap (if
/// any), then the rest with `config`. `None` when the connection is to
/// be closed (counted here).
pub(crate) async fn accept(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    cap: Option<Cap<'_>>,
    info: &ConnInfo,
    deadline: Instant,
    metrics: &ListenerMetrics,
) -> Option<TlsStream> {
    let timed_out = || {
        metrics.handshake_timeouts.increment(1);
        metrics.tls_failures.increment(1);
        tracing::debug!(listener = %info.listener, peer = %info.peer, "TLS handshake timed out");
    };
    let failed = |e: std::io::Error| {
        metrics.tls_failures.increment(1);
        tracing::debug!(listener = %info.listener, peer = %info.peer, "TLS handshake failed: {e}");
    };
    let hello = tls::read_client_hello(&stream);
    let start = match tokio::time::timeout_at(deadline, hello).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            failed(e);
            return None;
        }
        Err(_) => {
            timed_out();
            return None;
        }
    };
    if let Some(cap) = cap {
        match cap
            .gate
            .charge(cap.limiter, cap.per_source, info.client_id(), deadline)
            .await
        {
            Charge::Granted { waited } => {
                metrics.handshake_tokens.increment(1);
                if waited {
                    metrics.deferred.increment(1);
                }
            }
            Charge::SourceFull => {
                metrics.handshakes_refused.increment(1);
                tracing::debug!(listener = %info.listener, peer = %info.peer,
                    "TLS handshake refused: too many of this client's handshakes waiting");
                return None;
            }
            Charge::TimedOut => {
                timed_out();
                return None;
            }
        }
    }
    match tokio::time::timeout_at(deadline, tls::handshake(stream, config.clone(), start)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            failed(e);
            None
        }
        Err(_) => {
            timed_out();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_are_served_in_turn_by_client_and_bounded_per_client() {
        let gate = HandshakeGate::new();
        let limiter = Arc::new(HandshakeLimiter::new(50.0, 1).unwrap());
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let honest: IpAddr = "10.0.0.2".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // The flood's first takes the burst token; three more wait, a fourth is over the
        // per-client bound of 3; then the honest client arrives last.
        for (who, n) in [(flood, 5), (honest, 1)] {
            for i in 0..n {
                let (gate, limiter, tx) = (gate.clone(), limiter.clone(), tx.clone());
                tasks.push(tokio::spawn(async move {
                    let got = gate.charge(&limiter, 3, who, deadline).await;
                    let _ = tx.send((who, i, got));
                }));
            }
        }
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        let mut order = Vec::new();
        while let Some(x) = rx.recv().await {
            order.push(x);
        }
        assert_eq!(order[0], (flood, 0, Charge::Granted { waited: false }));
        assert_eq!(order[1], (flood, 4, Charge::SourceFull));
        let waited: Vec<_> = order[2..].iter().map(|(w, i, _)| (*w, *i)).collect();
        // Round robin: one of the flood's, then the honest client, then the rest.
        assert_eq!(
            waited,
            [(flood, 1), (honest, 0), (flood, 2), (flood, 3)],
            "{order:?}"
        );
        assert!(order[2..]
            .iter()
            .all(|(_, _, c)| *c == Charge::Granted { waited: true }));
        assert!(gate.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_the_deadline_and_leaves_the_queue() {
        let gate = HandshakeGate::new();
        let limiter = Arc::new(HandshakeLimiter::new(0.5, 1).unwrap());
        let who: IpAddr = "10.0.0.1".parse().unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            gate.charge(&limiter, 4, who, soon).await,
            Charge::Granted { waited: false }
        );
        assert_eq!(gate.charge(&limiter, 4, who, soon).await, Charge::TimedOut);
        assert!(gate.lock().queue.is_empty());
    }
}
