//! Waiting in tests: on an event with [`within`], on a condition with [`eventually`].
//! Both fail at a deadline; neither measures time.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Every wait in a test is bounded by this deadline (a hang is a failure, not a timing).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again. Short: it bounds how late a test notices, never
/// what it asserts.
const TICK: Duration = Duration::from_millis(10);

/// Await one step of a test; fail if it has not completed within [`DEADLINE`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("test step exceeded its deadline")
}

/// Poll `cond` until it holds; fail with `what` if it has not held within [`DEADLINE`].
/// For state that has no event to wait on: counters of another task or process,
/// metrics, a port that must start refusing.
///
/// A synchronous condition is written `|| async { x.load(..) == n }`.
pub async fn eventually<F, Fut>(what: impl Display, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(DEADLINE, what, cond).await;
}

/// [`eventually`] with another deadline (for a step whose size the test chose, such as a
/// thousand clients connecting).
pub async fn eventually_within<F, Fut>(deadline: Duration, what: impl Display, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        // A check that hangs (a scrape of a stuck server) is bounded by the same deadline.
        match tokio::time::timeout_at(end, cond()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => panic!("condition still being checked at the {deadline:?} deadline: {what}"),
        }
        assert!(
            Instant::now() < end,
            "condition never held within {deadline:?}: {what}"
        );
        tokio::time::sleep(TICK).await;
    }
}
