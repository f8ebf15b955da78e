//! The bounded queue between the signals thread and the presence writer.
//!
//! An alive signal that needs a presence write (see [`crate::presence`])
//! must not store, flush and replicate on the thread that receives signals:
//! one slow write would delay every other user's signals. The handler
//! queues the write here and returns; a worker loop drains the queue. The
//! queue holds at most one write per user (a newer one replaces it) and at
//! most `capacity` users; beyond that a write is dropped and counted — the
//! user's next signal asks again, as the record still says offline.

use std::collections::{HashMap, VecDeque};

/// A queued "mark online" for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineWrite {
    /// The session the signal proved: the write is skipped if the user has
    /// logged out or in again since.
    pub session_hash: String,
    pub last_seen_ms: u64,
}

/// What [`WriteQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced the user's write already waiting.
    Coalesced,
    /// The queue is full: not queued.
    Dropped,
}

#[derive(Debug)]
pub struct WriteQueue {
    capacity: usize,
    order: VecDeque<String>,
    waiting: HashMap<String, OnlineWrite>,
    dropped: u64,
    coalesced: u64,
}

impl WriteQueue {
    pub fn new(capacity: usize) -> Self {
        WriteQueue {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            waiting: HashMap::new(),
            dropped: 0,
            coalesced: 0,
        }
    }

    pub fn push(&mut self, username: &str, write: OnlineWrite) -> Pushed {
        if let Some(w) = self.waiting.get_mut(username) {
            // Keep the newest signal's time.
            let last_seen_ms = w.last_seen_ms.max(write.last_seen_ms);
            *w = OnlineWrite {
                last_seen_ms,
                ..write
            };
            self.coalesced += 1;
            return Pushed::Coalesced;
        }
        if self.waiting.len() >= self.capacity {
            self.dropped += 1;
            return Pushed::Dropped;
        }
        self.order.push_back(username.to_string());
        self.waiting.insert(username.to_string(), write);
        Pushed::Queued
    }

    /// Up to `max` writes, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<(String, OnlineWrite)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(user) = self.order.pop_front() else {
                break;
            };
            if let Some(w) = self.waiting.remove(&user) {
                out.push((user, w));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Writes dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes merged into one already waiting, since start.
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(session: &str, t: u64) -> OnlineWrite {
        OnlineWrite {
            session_hash: session.into(),
            last_seen_ms: t,
        }
    }

    #[test]
    fn one_write_per_user_bounded_and_counted() {
        let mut q = WriteQueue::new(2);
        assert_eq!(q.push("ana", w("s1", 10)), Pushed::Queued);
        assert_eq!(q.push("bea", w("s2", 11)), Pushed::Queued);
        assert_eq!(q.push("cid", w("s3", 12)), Pushed::Dropped);
        // A user already waiting is merged even when full.
        assert_eq!(q.push("ana", w("s9", 5)), Pushed::Coalesced);
        assert_eq!((q.len(), q.dropped(), q.coalesced()), (2, 1, 1));
        assert_eq!(q.take(1), vec![("ana".to_string(), w("s9", 10))]);
        assert_eq!(q.push("cid", w("s3", 12)), Pushed::Queued);
        assert_eq!(
            q.take(10),
            vec![
                ("bea".to_string(), w("s2", 11)),
                ("cid".to_string(), w("s3", 12))
            ]
        );
        assert!(q.is_empty());
        assert!(q.take(10).is_empty());
    }
}
