//! One client's attempt at one node's admission, shared by the single-instance run and
//! the fleet mode: the decision, and for a rejection the close reason the proxy sends,
//! read back by the reference client to pick its next attempt.

use herdgate_client::{Hint, Outcome, ReconnectPolicy, RejectedBy, Rejection};
use herdgate_core::admission::{duration_to_nanos, AdmitInput, Decision, Nanos, NodeAdmission};
use rand::Rng;

use crate::TRY_AGAIN_LATER;

/// Rejections counted for the notes under a run's table.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Rejections with a hint.
    pub(crate) rejected: u64,
    /// Of those, past `max_retry_after` (nothing reserved).
    pub(crate) overflow: u64,
    /// Admissions held until a later instant (`Decision::Queue`: forwards paced at the
    /// rate in force, e.g. claims bunched after the rate went down).
    pub(crate) held: u64,
}

/// One attempt of client `c` (its `policy`) at `node` at `now`: `Ok(at)` admitted and
/// forwarded at `at`; `Err(Some(t))` rejected, its next attempt reaches admission at `t`;
/// `Err(None)` rejected and gave up. The rejection is turned into the close reason the
/// proxy sends and read back by the reference client.
pub(crate) fn attempt<R: Rng + ?Sized>(
    node: &NodeAdmission,
    c: usize,
    policy: &mut ReconnectPolicy,
    now: Nanos,
    rtt: Nanos,
    tally: &mut Tally,
    rng: &mut R,
) -> Result<Nanos, Option<Nanos>> {
    let input = AdmitInput {
        ticket: policy.ticket(),
        wants_ticket: policy.accept_tickets(),
        may_queue: None,
        owner: Some(c as u64),
    };
    match node.check(now, &input) {
        Decision::Admit { .. } => Ok(now),
        // No queue was offered; were one ever returned, the request is forwarded at its
        // slot.
        Decision::Queue { until, .. } => {
            tally.held += 1;
            Ok(until)
        }
        Decision::Reject {
            retry_after,
            ticket,
            overflow: over,
            ..
        } => {
            tally.rejected += 1;
            tally.overflow += u64::from(over);
            // What the proxy writes and the client reads: skipped for clients that ignore
            // it anyway (it is most of the cost of a rejection).
            let hint = if policy.honours_hints() {
                let reason = herdgate_wire::reason_json(
                    herdgate_wire::retry_after_ms(retry_after),
                    Some(if over { "overloaded" } else { "node_busy" }),
                    ticket.as_deref(),
                );
                Hint::from_close(TRY_AGAIN_LATER, &reason)
            } else {
                None
            };
            let outcome: Outcome<()> = Outcome::Rejected(Rejection {
                by: RejectedBy::Close(TRY_AGAIN_LATER),
                hint,
            });
            Err(policy
                .next_delay(&outcome, rng)
                .map(|delay| now + rtt / 2 + duration_to_nanos(delay) + rtt))
        }
    }
}
