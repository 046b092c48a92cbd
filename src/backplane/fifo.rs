//! The bounded first-in, first-out queue cluster messages wait in, both
//! ways: the outbox (for the broker) and each fan-out worker's inbound
//! queue (from it). Bounded in count and payload bytes; past either bound
//! the oldest messages go, so what waits stays fresh and memory stays
//! bounded. One message always fits an empty queue.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

/// What a queued message counts toward the byte bound.
pub(super) trait Payload {
    fn size(&self) -> usize;
}

impl Payload for Bytes {
    fn size(&self) -> usize {
        self.len()
    }
}

/// Messages waiting, oldest first, dropping the oldest past its bounds.
pub(super) struct DropOldest<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    max_messages: usize,
    max_bytes: usize,
}

struct State<T> {
    messages: VecDeque<T>,
    /// Payload bytes in `messages`.
    bytes: usize,
}

impl<T: Payload> DropOldest<T> {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                messages: VecDeque::new(),
                bytes: 0,
            }),
            ready: Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a message, first dropping the oldest ones it does not fit
    /// beside. Returns how many were dropped and how many wait now.
    pub fn push(&self, message: T) -> (usize, usize) {
        let mut s = self.lock();
        let mut dropped = 0;
        let size = message.size();
        while !s.messages.is_empty()
            && (s.messages.len() >= self.max_messages || s.bytes + size > self.max_bytes)
        {
            if let Some(old) = s.messages.pop_front() {
                s.bytes -= old.size();
                dropped += 1;
            }
        }
        s.bytes += size;
        s.messages.push_back(message);
        let waiting = s.messages.len();
        drop(s);
        self.ready.notify_one();
        (dropped, waiting)
    }

    /// Moves up to `max` of the oldest messages into `batch`; returns how
    /// many still wait.
    pub fn take(&self, batch: &mut impl Extend<T>, max: usize) -> usize {
        let mut s = self.lock();
        let s = &mut *s;
        let n = max.min(s.messages.len());
        let taken = s.messages.drain(..n).inspect(|m| s.bytes -= m.size());
        batch.extend(taken);
        s.messages.len()
    }

    /// Resolves once something waits.
    pub async fn ready(&self) {
        while self.lock().messages.is_empty() {
            self.ready.notified().await;
        }
    }

    /// Messages waiting now.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// A copy of what waits, oldest first (for tests).
    #[cfg(test)]
    pub fn snapshot(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.lock().messages.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_are_dropped_beyond_the_bounds() {
        let q = DropOldest::new(3, 100);
        for i in 0..5u8 {
            q.push(Bytes::from(vec![i; 10]));
        }
        let mut batch = Vec::new();
        assert_eq!(q.take(&mut batch, 10), 0);
        let kept: Vec<u8> = batch.iter().map(|m| m[0]).collect();
        assert_eq!(kept, [2, 3, 4]);
        // Bytes bound: a 60-byte message pushes out the two 30-byte ones
        // before it would exceed 100.
        let q = DropOldest::new(100, 100);
        q.push(Bytes::from(vec![0; 30]));
        q.push(Bytes::from(vec![0; 30]));
        assert_eq!(q.push(Bytes::from(vec![0; 60])), (1, 2));
        // One message always fits an empty queue.
        let q = DropOldest::new(10, 5);
        assert_eq!(q.push(Bytes::from(vec![0; 50])), (0, 1));
        // Taking part leaves the rest, with their bytes counted.
        let q = DropOldest::new(10, 25);
        for _ in 0..3 {
            q.push(Bytes::from(vec![0; 10]));
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.take(&mut Vec::new(), 1), 1);
        assert_eq!(q.push(Bytes::from(vec![0; 10])), (0, 2));
    }
}
