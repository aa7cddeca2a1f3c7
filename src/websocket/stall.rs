//! A relay's write-stall watch: how long bytes have waited for one side without progress.

use std::time::Duration;
use tokio::time::Instant;

/// How long bytes have been waiting for one destination without any being taken.
#[derive(Default)]
pub(super) struct Stall {
    /// Waiting without progress since then (`None`: nothing waiting).
    since: Option<Instant>,
    /// Bytes waiting when last looked at; fewer now is progress.
    backlog: usize,
}

impl Stall {
    /// Look again at what is waiting; true when a (new) stall starts now.
    pub(super) fn note(&mut self, waiting: bool, backlog: usize, now: Instant) -> bool {
        if !waiting {
            self.since = None;
            return false;
        }
        let progress = backlog < self.backlog;
        self.backlog = backlog;
        if self.since.is_none() || progress {
            self.since = Some(now);
            return true;
        }
        false
    }

    pub(super) fn deadline(&self, write: Duration) -> Option<Instant> {
        self.since.map(|s| s + write)
    }
}
