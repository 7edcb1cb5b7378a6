//! Which offsets the assistant may store while replies finish out of order.
//!
//! Replies run concurrently (one per conversation at a time, many conversations at once),
//! so a later message of a partition may finish before an earlier one. Kafka keeps one
//! offset per partition: it may only move past a message once every earlier message of
//! that partition is done, or a crash would skip the unfinished one.

use std::collections::{BTreeSet, HashMap};

/// In-flight offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
}

impl OffsetTracker {
    /// Records that `offset` of `topic`/`partition` was received and is being worked on.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self.partitions.entry((topic.to_string(), partition)).or_default();
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Records that `offset` is done; returns the offset to store for its partition (the
    /// next one to read after a restart), or `None` when an earlier message is still
    /// being worked on.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_string(), partition))?;
        let lowest = p.in_flight.first().copied();
        p.in_flight.remove(&offset);
        if lowest != Some(offset) {
            return None;
        }
        Some(p.in_flight.first().copied().unwrap_or(p.next))
    }

    /// Forgets partitions taken away in a rebalance (their new owner re-reads them).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Messages being worked on, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_stored_only_once_everything_before_it_is_done() {
        let mut t = OffsetTracker::default();
        for o in [10, 11, 12] {
            t.begin("c", 0, o);
        }
        t.begin("c", 1, 5);
        assert_eq!(t.finish("c", 0, 12), None, "10 and 11 are still running");
        assert_eq!(t.finish("c", 0, 10), Some(11), "11 is still running: resume there");
        assert_eq!(t.finish("c", 1, 5), Some(6), "partitions are independent");
        assert_eq!(t.finish("c", 0, 11), Some(13), "everything received is done");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_forgotten_partition_stores_nothing() {
        let mut t = OffsetTracker::default();
        t.begin("c", 0, 1);
        t.forget("c", 0);
        assert_eq!(t.finish("c", 0, 1), None);
    }
}
