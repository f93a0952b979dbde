//! Receiver bookkeeping for one flow of sequence-numbered messages (one sender to one
//! receiver): duplicates, reordering, and how many distinct messages arrived.
//!
//! Owns only the per-flow arithmetic; it must not touch clocks, sockets or shared counters
//! (the connection task that owns the receiving end feeds it and publishes the results).
//! Loss is not decided here: it is `sent − delivered` once the grace period after the run
//! has passed, because only the sender knows what was sent.
//!
//! Memory stays small in the common case: everything below `next` has arrived, and only
//! sequence numbers received ahead of a gap are kept individually.

use std::collections::BTreeSet;

/// What one received sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First arrival of this sequence number; `reordered` when a higher one came before it.
    Fresh { reordered: bool },
    /// Already received before.
    Duplicate,
}

/// Per-flow state; sequence numbers start at 0.
#[derive(Debug, Clone, Default)]
pub struct FlowTracker {
    /// Every sequence number below this has been received.
    next: u64,
    /// Received sequence numbers above `next`.
    ahead: BTreeSet<u64>,
    /// Highest sequence number received so far, if any.
    max_seen: Option<u64>,
    pub delivered: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl FlowTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of `seq`.
    pub fn receive(&mut self, seq: u64) -> Receipt {
        if seq < self.next || self.ahead.contains(&seq) {
            self.duplicates += 1;
            return Receipt::Duplicate;
        }
        let reordered = self.max_seen.is_some_and(|m| seq < m);
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        if seq == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        self.delivered += 1;
        if reordered {
            self.reordered += 1;
        }
        Receipt::Fresh { reordered }
    }

    /// Distinct sequence numbers in `0..sent` not received (what is lost if `sent` were
    /// sent and the grace period is over).
    pub fn missing(&self, sent: u64) -> u64 {
        let below = self.next.min(sent) + self.ahead.range(..sent).count() as u64;
        sent - below
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn in_order_delivery() {
        let mut t = FlowTracker::new();
        for s in 0..100 {
            assert_eq!(t.receive(s), Receipt::Fresh { reordered: false });
        }
        assert_eq!((t.delivered, t.duplicates, t.reordered), (100, 0, 0));
        assert_eq!(t.missing(100), 0);
        assert_eq!(t.missing(103), 3, "three sent but never seen");
        assert!(t.ahead.is_empty(), "nothing kept individually when in order");
    }

    #[test]
    fn duplicates_are_detected_before_and_after_a_gap() {
        let mut t = FlowTracker::new();
        t.receive(0);
        t.receive(1);
        assert_eq!(t.receive(1), Receipt::Duplicate);
        assert_eq!(t.receive(0), Receipt::Duplicate);
        t.receive(5); // ahead of a gap
        assert_eq!(t.receive(5), Receipt::Duplicate);
        assert_eq!((t.delivered, t.duplicates), (3, 3));
    }

    #[test]
    fn reordering_and_loss() {
        let mut t = FlowTracker::new();
        // 0, 2, 1, 4, 6, 3 and 5 never arrives; 7 sent.
        for s in [0, 2, 1, 4, 6, 3] {
            t.receive(s);
        }
        assert_eq!(t.delivered, 6);
        assert_eq!(t.reordered, 2, "1 after 2 and 3 after 6");
        assert_eq!(t.duplicates, 0);
        assert_eq!(t.missing(7), 1);
        assert_eq!(t.missing(5), 0, "only 0..5 counted when 5 were sent");
        // The late 5 fills the gap: contiguous again, nothing kept aside.
        assert_eq!(t.receive(5), Receipt::Fresh { reordered: true });
        assert_eq!(t.missing(7), 0);
        assert!(t.ahead.is_empty());
        assert_eq!(t.receive(3), Receipt::Duplicate);
    }

    #[test]
    fn loss_at_the_start_of_a_flow() {
        let mut t = FlowTracker::new();
        t.receive(3);
        assert_eq!(t.receive(4), Receipt::Fresh { reordered: false });
        assert_eq!(t.missing(5), 3);
        assert_eq!(t.reordered, 0);
    }
}
