//! What one admin connection costs: a slot under `admin.max_connections`. (How long it
//! may hold it: `crate::io::WriteDeadline` and hyper's header read timeout.)

use crate::metrics as m;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let s = Arc::new(Slots::default());
        let a = s.try_take(2).unwrap();
        let _b = s.try_take(2).unwrap();
        assert!(s.try_take(2).is_none());
        drop(a);
        assert!(s.try_take(2).is_some());
    }
}
