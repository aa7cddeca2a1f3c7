//! The retry loop: attempt, classify, wait as the policy says, again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rustls::HandshakeKind;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::conn::{connect_and_confirm, connect_once, Connected, Target};
use crate::hint::Hint;
use crate::policy::{ReconnectPolicy, Strategy};
use crate::{ClientError, Outcome, RejectedBy, Rejection};

/// Counters shared by many clients (one `&Stats` for a whole storm). Relaxed atomics:
/// they are tallies read after the fact, not synchronisation.
#[derive(Debug, Default)]
pub struct Stats {
    attempts: AtomicU64,
    connected: AtomicU64,
    rejected_status: AtomicU64,
    rejected_close: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    hints_obeyed: AtomicU64,
    tickets_presented: AtomicU64,
    gave_up: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    waited_us: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connection attempts started.
    pub attempts: u64,
    /// Attempts that ended connected.
    pub connected: u64,
    /// Rejections by HTTP status (503/429).
    pub rejected_status: u64,
    /// Rejections by an immediate close (1013/1012/...).
    pub rejected_close: u64,
    /// Attempts that failed without an answer (includes `timeouts`).
    pub failed: u64,
    /// Failures that were timeouts.
    pub timeouts: u64,
    /// Delays taken from a server hint (rejections and closes).
    pub hints_obeyed: u64,
    /// Attempts that presented a ticket.
    pub tickets_presented: u64,
    /// Clients that gave up.
    pub gave_up: u64,
    /// TLS connections with a full handshake.
    pub tls_full: u64,
    /// TLS connections that resumed a session.
    pub tls_resumed: u64,
    /// Total time spent waiting between attempts, in microseconds.
    pub waited_us: u64,
}

impl Stats {
    /// All zero.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            attempts: r(&self.attempts),
            connected: r(&self.connected),
            rejected_status: r(&self.rejected_status),
            rejected_close: r(&self.rejected_close),
            failed: r(&self.failed),
            timeouts: r(&self.timeouts),
            hints_obeyed: r(&self.hints_obeyed),
            tickets_presented: r(&self.tickets_presented),
            gave_up: r(&self.gave_up),
            tls_full: r(&self.tls_full),
            tls_resumed: r(&self.tls_resumed),
            waited_us: r(&self.waited_us),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Connected(c) => {
                Stats::bump(&self.connected);
                match c.tls_handshake_kind() {
                    Some(HandshakeKind::Resumed) => Stats::bump(&self.tls_resumed),
                    Some(_) => Stats::bump(&self.tls_full),
                    None => {}
                }
            }
            Outcome::Rejected(Rejection { by, .. }) => match by {
                RejectedBy::Status(_) => Stats::bump(&self.rejected_status),
                RejectedBy::Close(_) => Stats::bump(&self.rejected_close),
            },
            Outcome::Failed(e) => {
                Stats::bump(&self.failed);
                if matches!(e, ClientError::Timeout { .. }) {
                    Stats::bump(&self.timeouts);
                }
            }
        }
    }

    fn waited(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.waited_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// The last thing that went wrong before giving up.
#[derive(Debug, thiserror::Error)]
pub enum Setback {
    /// The last attempt was rejected by the proxy and the policy allowed no retry: the
    /// rejection keeps the hint the client was given.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The last attempt failed (network, TLS, timeout) and the policy allowed no retry.
    #[error(transparent)]
    Failed(ClientError),
    /// No attempt was made: the close that ended the connection left the policy no retry.
    #[error("the policy allows no further attempt")]
    NoAttempt,
}

/// The policy's `max_retries` ran out.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} attempts; last: {last}")]
pub struct GaveUp {
    /// Attempts made in this run.
    pub attempts: u32,
    /// How the last one ended.
    pub last: Setback,
}

/// Attempt until connected, waiting between attempts as `policy` says (obeying hints,
/// presenting tickets). Uses [`connect_and_confirm`] when the target has
/// `confirm_within`. On success the policy is reset for the next disconnection.
pub async fn run_until_connected<R: Rng + ?Sized>(
    target: &Target,
    policy: &mut ReconnectPolicy,
    rng: &mut R,
    stats: &Stats,
) -> Result<Connected, GaveUp> {
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        Stats::bump(&stats.attempts);
        let ticket = policy.ticket();
        if ticket.is_some() {
            Stats::bump(&stats.tickets_presented);
        }
        let accept = policy.accept_tickets();
        // Boxed for the same reason as the handshake inside: a client sleeping between
        // attempts should not carry the space of an attempt in flight.
        let outcome = match target.confirm_within {
            Some(wait) => Box::pin(connect_and_confirm(target, ticket, accept, wait)).await,
            None => Box::pin(connect_once(target, ticket, accept)).await,
        };
        stats.record(&outcome);
        let hinted = policy.honours_hints()
            && matches!(&outcome, Outcome::Rejected(Rejection { hint: Some(_), .. }));
        let delay = policy.next_delay(&outcome, rng);
        let delay = match (outcome, delay) {
            (Outcome::Connected(c), _) => return Ok(c),
            (_, Some(delay)) => delay,
            (Outcome::Rejected(r), None) => {
                return Err(gave_up(stats, attempts, Setback::Rejected(r)))
            }
            (Outcome::Failed(e), None) => return Err(gave_up(stats, attempts, Setback::Failed(e))),
        };
        if hinted {
            Stats::bump(&stats.hints_obeyed);
        }
        stats.waited(delay);
        tokio::time::sleep(delay).await;
    }
}

fn gave_up(stats: &Stats, attempts: u32, last: Setback) -> GaveUp {
    Stats::bump(&stats.gave_up);
    GaveUp { attempts, last }
}

/// One client: a shared target, its own policy and rng. Small (a few hundred bytes
/// with a small rng) and thread-free: the storm bench spawns one task per client.
#[derive(Debug)]
pub struct ReconnectingClient<R> {
    target: Arc<Target>,
    policy: ReconnectPolicy,
    rng: R,
}

impl<R: Rng> ReconnectingClient<R> {
    /// A client using `strategy`, its base delay drawn from `rng`.
    pub fn new(target: Arc<Target>, strategy: Strategy, mut rng: R) -> ReconnectingClient<R> {
        let policy = ReconnectPolicy::new(strategy, &mut rng);
        ReconnectingClient {
            target,
            policy,
            rng,
        }
    }

    /// A client with an explicit policy (max retries, fixed base...).
    pub fn with_policy(
        target: Arc<Target>,
        policy: ReconnectPolicy,
        rng: R,
    ) -> ReconnectingClient<R> {
        ReconnectingClient {
            target,
            policy,
            rng,
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The policy state (backoff attempt, pending ticket).
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }

    /// [`run_until_connected`] with this client's state.
    pub async fn connect(&mut self, stats: &Stats) -> Result<Connected, GaveUp> {
        run_until_connected(&self.target, &mut self.policy, &mut self.rng, stats).await
    }

    /// An established connection closed with `frame` (`None`: no close frame, e.g. a
    /// reset). Returns how long to wait before reconnecting: the hint of a 1012 drain
    /// (or 1013) close if there is one and the strategy obeys hints, else backoff.
    /// A ticket in the hint is kept for the next attempt.
    pub fn on_close(&mut self, frame: Option<&CloseFrame>) -> Option<Duration> {
        self.close_delay(frame).0
    }

    /// The delay after a close, and whether it came from a hint we obey.
    fn close_delay(&mut self, frame: Option<&CloseFrame>) -> (Option<Duration>, bool) {
        let hint = frame.and_then(Hint::from_close_frame);
        let hinted = hint.is_some() && self.policy.honours_hints();
        (
            self.policy.after_close(hint.as_ref(), &mut self.rng),
            hinted,
        )
    }

    /// [`ReconnectingClient::on_close`], wait, then [`ReconnectingClient::connect`].
    pub async fn reconnect(
        &mut self,
        closed: Option<&CloseFrame>,
        stats: &Stats,
    ) -> Result<Connected, GaveUp> {
        let (delay, hinted) = self.close_delay(closed);
        let Some(delay) = delay else {
            Stats::bump(&stats.gave_up);
            return Err(GaveUp {
                attempts: 0,
                last: Setback::NoAttempt,
            });
        };
        if hinted {
            Stats::bump(&stats.hints_obeyed);
        }
        stats.waited(delay);
        tokio::time::sleep(delay).await;
        self.connect(stats).await
    }
}
