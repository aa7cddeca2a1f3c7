//! Round robin across sources for whatever is scarce (TLS handshake tokens).
//!
//! When tokens are short, waiters are served one source at a time in turn: a source with a
//! thousand waiters gets one token per round, the same as a source with one, so a flood
//! from one source cannot starve another. Each source may have at most `per_source`
//! waiters; more are refused (the caller closes them and counts it).
//!
//! Pure bookkeeping, no clock and no runtime: the caller decides when a token is there
//! ([`FairQueue::pop`]) and removes waiters that gave up ([`FairQueue::cancel`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A waiter's id, unique within its queue.
pub type WaiterId = u64;

/// Refused: the source already has `per_source` waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFull;

/// Waiters by source, served in round robin.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    /// Each source's waiters, oldest first. A source is here iff it is in `turn`; its
    /// queue may be empty after cancels (removed lazily when its turn comes, so a cancel
    /// costs no scan of the turn order).
    waiting: HashMap<K, VecDeque<(WaiterId, T)>>,
    /// Sources in turn order, each at most once.
    turn: VecDeque<K>,
    per_source: usize,
    next_id: WaiterId,
    len: usize,
    /// Sources with at least one waiter.
    sources: usize,
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, T> {
    /// An empty queue admitting at most `per_source` waiters per source (at least 1).
    pub fn new(per_source: usize) -> Self {
        FairQueue {
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            per_source: per_source.max(1),
            next_id: 0,
            len: 0,
            sources: 0,
        }
    }

    /// Change the bound for pushes from now on (at least 1); waiters already queued stay.
    pub fn set_per_source(&mut self, per_source: usize) {
        self.per_source = per_source.max(1);
    }

    /// Waiters in the queue, all sources together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No waiter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sources with at least one waiter.
    pub fn sources(&self) -> usize {
        self.sources
    }

    /// Waiters of `key`.
    pub fn waiting(&self, key: &K) -> usize {
        self.waiting.get(key).map_or(0, VecDeque::len)
    }

    /// Queue `item` for `key`; a new source takes its turn after the sources waiting now.
    pub fn push(&mut self, key: K, item: T) -> Result<WaiterId, SourceFull> {
        let id = self.next_id;
        match self.waiting.get_mut(&key) {
            Some(q) if q.len() >= self.per_source => return Err(SourceFull),
            Some(q) => {
                if q.is_empty() {
                    self.sources += 1;
                }
                q.push_back((id, item));
            }
            None => {
                self.turn.push_back(key.clone());
                self.waiting.insert(key, VecDeque::from([(id, item)]));
                self.sources += 1;
            }
        }
        self.next_id = self.next_id.wrapping_add(1);
        self.len += 1;
        Ok(id)
    }

    /// The next waiter in turn: the oldest waiter of the source whose turn it is; that
    /// source then goes to the back of the turn order.
    pub fn pop(&mut self) -> Option<(K, WaiterId, T)> {
        while let Some(key) = self.turn.pop_front() {
            let Some(q) = self.waiting.get_mut(&key) else {
                continue;
            };
            let Some((id, item)) = q.pop_front() else {
                // Every waiter of this source gave up: drop it now.
                self.waiting.remove(&key);
                continue;
            };
            if q.is_empty() {
                self.waiting.remove(&key);
                self.sources -= 1;
            } else {
                self.turn.push_back(key.clone());
            }
            self.len -= 1;
            return Some((key, id, item));
        }
        None
    }

    /// Remove a waiter that gave up; its item if it was still queued.
    pub fn cancel(&mut self, key: &K, id: WaiterId) -> Option<T> {
        let q = self.waiting.get_mut(key)?;
        let at = q.iter().position(|(i, _)| *i == id)?;
        let (_, item) = q.remove(at)?;
        self.len -= 1;
        if q.is_empty() {
            self.sources -= 1;
        }
        if self.len == 0 {
            // Nobody waits: forget the sources whose waiters all gave up.
            self.waiting.clear();
            self.turn.clear();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_source_gets_one_turn_per_round() {
        let mut q = FairQueue::new(100);
        for i in 0..50 {
            q.push("flood", i).unwrap();
        }
        q.push("honest", 1000).unwrap();
        q.push("other", 2000).unwrap();
        // The flood's first waiter, then each other source before the flood again.
        let order: Vec<_> = (0..4).map(|_| q.pop().unwrap().0).collect();
        assert_eq!(order, ["flood", "honest", "other", "flood"]);
        assert_eq!(q.len(), 48);
        assert_eq!(q.sources(), 1);
    }

    #[test]
    fn each_source_is_bounded() {
        let mut q = FairQueue::new(3);
        for i in 0..3 {
            q.push(1u8, i).unwrap();
        }
        assert_eq!(q.push(1u8, 9), Err(SourceFull));
        assert!(q.push(2u8, 0).is_ok());
        assert_eq!(q.waiting(&1), 3);
        q.pop();
        assert!(q.push(1u8, 9).is_ok(), "a served waiter frees its place");
    }

    #[test]
    fn cancel_removes_the_waiter_and_an_empty_source() {
        let mut q = FairQueue::new(4);
        let a = q.push("a", 1).unwrap();
        let b = q.push("b", 2).unwrap();
        let a2 = q.push("a", 3).unwrap();
        assert_eq!(q.cancel(&"a", a), Some(1));
        assert_eq!(q.cancel(&"a", a), None, "twice is a no-op");
        assert_eq!(q.cancel(&"b", b), Some(2));
        assert_eq!(q.sources(), 1);
        // A source that comes back after its waiters gave up has one turn, not two.
        let b2 = q.push("b", 4).unwrap();
        let c = q.push("c", 5).unwrap();
        assert_eq!(q.pop(), Some(("a", a2, 3)));
        assert_eq!(q.pop(), Some(("b", b2, 4)));
        assert_eq!(q.pop(), Some(("c", c, 5)));
        assert!(q.pop().is_none());
        let a2 = q.push("a", 3).unwrap();
        assert_eq!(q.pop(), Some(("a", a2, 3)));
        assert!(q.is_empty());
        assert!(q.pop().is_none());
        assert_eq!(q.sources(), 0);
    }

    #[test]
    fn order_within_a_source_is_first_come() {
        let mut q = FairQueue::new(8);
        for i in 0..5 {
            q.push(7u32, i).unwrap();
        }
        let got: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, _, v)| v)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }
}

#[cfg(test)]
mod many_sources {
    use super::*;

    #[test]
    fn cancels_do_not_scan_and_leave_nothing_behind() {
        let mut q = FairQueue::new(1);
        let ids: Vec<_> = (0..10_000u32)
            .map(|k| (k, q.push(k, ()).unwrap()))
            .collect();
        assert_eq!(q.sources(), 10_000);
        for (k, id) in &ids[..9_999] {
            assert!(q.cancel(k, *id).is_some());
        }
        assert_eq!((q.len(), q.sources()), (1, 1));
        assert_eq!(q.pop().map(|(k, _, _)| k), Some(9_999));
        assert!(q.is_empty());
        let (k, id) = (1u32, q.push(1, ()).unwrap());
        q.cancel(&k, id);
        assert!(q.waiting.is_empty() && q.turn.is_empty());
    }
}
