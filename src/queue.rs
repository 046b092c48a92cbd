//! One client's outgoing queue, bounded in messages and in bytes, and the
//! slow-consumer policy that applies when it is full.
//!
//! The publisher pushes and the client's task takes; both hold the queue's
//! lock only to move handles of already-encoded frames, never across a
//! write or an `.await`. The policy is decided at push time, by the
//! publisher, because only there is the overflow visible:
//!
//! - `disconnect`: the push fails and the hub closes the queue, which wakes
//!   the client's task to close it with 1008;
//! - `drop_oldest`: the oldest queued messages make room for the new one;
//! - `drop_newest`: the new message is not queued for this client.
//!
//! A full queue only counts against its client while the client's writer
//! is held up by its socket: then the client is behind by a full socket
//! buffer and a full queue, and it is slow. A writer that can still write
//! and simply has not had its turn yet (a sender's burst was parsed and
//! published in one go) is not slow: the push goes through as
//! [`Push::Backlogged`] and the publisher pauses until the writer has
//! caught up. So a reader that keeps up is never evicted, however a
//! sender's bytes arrive; see docs/ARCHITECTURE.md.
//!
//! Memory stays bounded: past twice the limits the policy applies whatever
//! the socket's state, so a client holds at most `2 × queue_messages`
//! messages and `2 × queue_bytes` payload bytes here (or two messages of any
//! size, so a message larger than the byte limit still reaches a client).
//! A queue gets that far only when many senders publish into it before its
//! writer runs (each adds a message before it waits), or when publishers
//! that cannot wait (the HTTP API, messages from other cluster nodes) do;
//! then a reader can be evicted though its socket was not full.
//!
//! The keepalive ping is a flag, not a queued message: a control frame is
//! never dropped by the policy, and never waits behind data.
//!
//! It knows frames; nothing of rooms, sockets or the configuration file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::Frame;

/// The slow-consumer policy: what happens when a client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// Close the client with 1008 "slow consumer".
    #[default]
    Disconnect,
    /// Discard its oldest queued messages to make room: it skips ahead.
    DropOldest,
    /// Discard the new message for it: it misses what it cannot take.
    DropNewest,
}

/// How much a client's queue may hold, and what happens beyond that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub messages: usize,
    /// Payload bytes.
    pub bytes: usize,
    pub on_overflow: OnOverflow,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; `dropped` older messages were discarded to make room.
    Queued { dropped: usize },
    /// Queued past the limits, because the client's writer is not held up
    /// by its socket: it has just not run yet. The publisher should wait
    /// for [`Queue::is_backlogged`] to clear before it publishes more.
    Backlogged,
    /// Not queued: the queue is full and the policy drops the newest.
    Dropped,
    /// Not queued: the queue is full and the policy disconnects the client.
    /// The caller closes the queue.
    Overflow,
    /// Not queued: the client is already on its way out.
    Closed,
}

/// Why a client's queue was closed, recorded when it is, so that what the
/// client is told does not depend on what happens after (a client evicted
/// just before a shutdown is still a slow consumer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It overflowed under `on_overflow: disconnect`.
    Evicted,
    /// The relay is shutting down.
    Shutdown,
    /// An operator closed it (the HTTP API), with this Close frame.
    Closed(Bytes),
    /// The client left by itself; nobody reads this.
    Left,
}

/// What the client's task takes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the caller's batch, oldest first.
    Frames,
    /// A keepalive ping is due.
    Ping,
    /// The queue was closed: evicted, or shutting down.
    Closed,
}

/// A client's queue; shared by the hub (pushing) and the client (taking).
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<State>,
    // Mirrors `state.closed`, so the client checks it without the lock.
    closed: AtomicBool,
    /// The client's writer is waiting for its socket to take more bytes.
    /// Written only when it changes, by the client's own task.
    socket_full: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Payload bytes in `frames`.
    bytes: usize,
    ping: bool,
    closed: bool,
    /// Why it was closed: decided by whoever closed it first.
    ending: Option<Ending>,
    /// Woken by a push, a ping or close: the task is waiting for data.
    on_data: Option<Waker>,
    /// Woken by close only: the task is waiting on its socket instead, and
    /// must not be woken for every message it cannot write anyway.
    on_close: Option<Waker>,
}

/// Capacity an emptied queue keeps for the next burst; beyond it the
/// memory goes back at once, and all of it when a keepalive ping finds the
/// queue empty (once per ping interval, so a client that goes on receiving
/// only reallocates that often).
const KEEP_CAPACITY: usize = 64;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` within `limits`, applying the overflow policy if the
    /// queue is full and its client is slow (see the module docs).
    pub fn push(&self, frame: &Frame, limits: &QueueLimits) -> Push {
        let size = frame.payload().len();
        let mut state = self.lock();
        if state.closed {
            return Push::Closed;
        }
        let fits = |s: &State, scale: usize| {
            s.frames.is_empty()
                || (s.frames.len() < limits.messages.saturating_mul(scale)
                    && s.bytes + size <= limits.bytes.saturating_mul(scale))
        };
        let mut dropped = 0;
        let mut backlogged = false;
        if !fits(&state, 1) {
            // Twice the limits, or two messages of any size (a message may
            // be larger than the byte limit on its own).
            let within_hard_bound = fits(&state, 2) || state.frames.len() < 2;
            if !self.socket_full.load(Ordering::Relaxed) && within_hard_bound {
                backlogged = true;
            } else {
                match limits.on_overflow {
                    OnOverflow::Disconnect => return Push::Overflow,
                    OnOverflow::DropNewest => return Push::Dropped,
                    OnOverflow::DropOldest => {
                        while !fits(&state, 1) {
                            let Some(old) = state.frames.pop_front() else {
                                break;
                            };
                            state.bytes -= old.payload().len();
                            dropped += 1;
                        }
                    }
                }
            }
        }
        state.frames.push_back(frame.clone());
        state.bytes += size;
        let waker = state.on_data.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        if backlogged {
            Push::Backlogged
        } else {
            Push::Queued { dropped }
        }
    }

    /// Whether a publisher that got [`Push::Backlogged`] should still wait:
    /// the queue is over `limits`, open, and its writer is not held up by
    /// its socket (so it will drain soon). A writer that is held up makes
    /// the client slow instead, and the next push applies the policy.
    pub fn is_backlogged(&self, limits: &QueueLimits) -> bool {
        if self.is_closed() || self.socket_full.load(Ordering::Relaxed) {
            return false;
        }
        // Wait until half is left, not just under the limit, so a
        // publisher and a writer do not take turns one message at a time.
        let state = self.lock();
        state.frames.len() > limits.messages / 2 || state.bytes > limits.bytes / 2
    }

    /// Called by the client's writer: whether its socket is refusing bytes.
    pub fn set_socket_full(&self, full: bool) {
        // Read first: the flag changes rarely, and a store would dirty the
        // cache line publishers read.
        if self.socket_full.load(Ordering::Relaxed) != full {
            self.socket_full.store(full, Ordering::Relaxed);
        }
    }

    /// Asks for a keepalive ping at the client's next frame boundary, and
    /// wakes the client's task even if it waits on its socket: the tick is
    /// also when it checks whether its peer has gone silent, which a task
    /// blocked on a write to a dead peer would otherwise never do.
    pub fn ping(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.ping = true;
        let wakers = [state.on_data.take(), state.on_close.take()];
        drop(state);
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Ends the queue: the client's task wakes and finds it closed, whatever
    /// it was waiting for. The first close decides the [`Ending`]; later
    /// ones change nothing.
    pub fn close(&self, ending: Ending) {
        let mut state = self.lock();
        if !state.closed {
            state.ending = Some(ending);
        }
        state.closed = true;
        self.closed.store(true, Ordering::Release);
        let wakers = [state.on_data.take(), state.on_close.take()];
        drop(state);
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Moves queued frames into `batch`, oldest first: at least one, then
    /// more while the batch stays within `max_frames` and `max_bytes` of
    /// payload. A due ping comes first; a closed queue reports only that.
    pub fn poll_next(
        &self,
        task: &mut Context<'_>,
        batch: &mut Vec<Frame>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Poll<Next> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(Next::Closed);
        }
        if std::mem::take(&mut state.ping) {
            if state.frames.is_empty() {
                state.frames = VecDeque::new();
            }
            return Poll::Ready(Next::Ping);
        }
        let Some(first) = state.frames.pop_front() else {
            if state.frames.capacity() > KEEP_CAPACITY {
                state.frames = VecDeque::new();
            }
            register(&mut state.on_data, task);
            return Poll::Pending;
        };
        let mut bytes = first.payload().len();
        batch.push(first);
        while batch.len() < max_frames
            && let Some(next) = state.frames.front()
        {
            let size = next.payload().len();
            if bytes + size > max_bytes {
                break;
            }
            bytes += size;
            batch.extend(state.frames.pop_front());
        }
        state.bytes -= bytes;
        Poll::Ready(Next::Frames)
    }

    /// Arranges a wake-up for when the queue is closed, for a task waiting
    /// on its socket rather than on the queue. True if it is closed already.
    pub fn watch_close(&self, task: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if !state.closed {
            register(&mut state.on_close, task);
        }
        state.closed
    }

    /// Why the queue was closed (`None` while it is open).
    pub fn ending(&self) -> Option<Ending> {
        self.lock().ending.clone()
    }

    /// Moves every queued frame into `batch`, oldest first, closed or not:
    /// what a client is sent before its Close.
    pub fn take_all(&self, batch: &mut Vec<Frame>) {
        let mut state = self.lock();
        batch.extend(std::mem::take(&mut state.frames));
        state.bytes = 0;
    }

    /// Empties the queue for good, returning how many messages it held.
    pub fn discard(&self) -> usize {
        let mut state = self.lock();
        let n = state.frames.len();
        state.frames = VecDeque::new();
        state.bytes = 0;
        n
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn register(slot: &mut Option<Waker>, task: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(task.waker()) => {}
        _ => *slot = Some(task.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    fn limits(messages: usize, bytes: usize, on_overflow: OnOverflow) -> QueueLimits {
        QueueLimits {
            messages,
            bytes,
            on_overflow,
        }
    }

    fn msg(n: u8, len: usize) -> Frame {
        Frame::new(false, &vec![n; len])
    }

    /// The queue of a client whose socket takes nothing more: a slow one.
    fn slow() -> Queue {
        let q = Queue::default();
        q.set_socket_full(true);
        q
    }

    /// Takes everything, returning each frame's first payload byte.
    fn drain(q: &Queue) -> Vec<u8> {
        let mut batch = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Next::Frames) = q.poll_next(&mut cx, &mut batch, 1000, usize::MAX) {}
        batch.iter().map(|f| f.payload()[0]).collect()
    }

    #[test]
    fn disconnect_reports_overflow_at_the_message_bound() {
        let q = slow();
        let l = limits(2, 1 << 20, OnOverflow::Disconnect);
        assert_eq!(q.push(&msg(1, 8), &l), Push::Queued { dropped: 0 });
        assert_eq!(q.push(&msg(2, 8), &l), Push::Queued { dropped: 0 });
        assert_eq!(q.push(&msg(3, 8), &l), Push::Overflow);
        q.close(Ending::Left);
        assert_eq!(q.push(&msg(4, 8), &l), Push::Closed);
        assert!(q.is_closed());
        assert_eq!(q.discard(), 2);
    }

    #[test]
    fn the_byte_bound_counts_payload_and_admits_one_large_message() {
        let q = slow();
        let l = limits(100, 100, OnOverflow::Disconnect);
        // Larger than the bound, but the queue is empty: it goes.
        assert_eq!(q.push(&msg(1, 500), &l), Push::Queued { dropped: 0 });
        assert_eq!(q.push(&msg(2, 1), &l), Push::Overflow);
        assert_eq!(drain(&q), [1]);
        assert_eq!(q.push(&msg(3, 60), &l), Push::Queued { dropped: 0 });
        assert_eq!(q.push(&msg(4, 40), &l), Push::Queued { dropped: 0 });
        assert_eq!(q.push(&msg(5, 1), &l), Push::Overflow);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_within_both_bounds() {
        let q = slow();
        let l = limits(3, 100, OnOverflow::DropOldest);
        for n in 1..=5 {
            q.push(&msg(n, 10), &l);
        }
        assert_eq!(q.len(), 3);
        // 90 bytes queued; one of 50 needs three of 10 to go.
        let l = limits(4, 100, OnOverflow::DropOldest);
        q.push(&msg(6, 10), &l);
        assert_eq!(q.push(&msg(7, 50), &l), Push::Queued { dropped: 1 });
        assert_eq!(q.push(&msg(8, 50), &l), Push::Queued { dropped: 3 });
        assert_eq!(drain(&q), [7, 8]);
    }

    #[test]
    fn drop_newest_keeps_the_oldest() {
        let q = slow();
        let l = limits(2, 1 << 20, OnOverflow::DropNewest);
        for n in 1..=4 {
            q.push(&msg(n, 10), &l);
        }
        assert_eq!(q.push(&msg(5, 10), &l), Push::Dropped);
        assert_eq!(drain(&q), [1, 2]);
        assert_eq!(q.push(&msg(6, 10), &l), Push::Queued { dropped: 0 });
        assert_eq!(drain(&q), [6]);
    }

    #[test]
    fn a_writer_that_can_write_is_backlogged_not_evicted_up_to_twice_the_limits() {
        let q = Queue::default();
        let l = limits(4, 1 << 20, OnOverflow::Disconnect);
        for n in 0..4 {
            assert_eq!(q.push(&msg(n, 8), &l), Push::Queued { dropped: 0 });
        }
        // Full, but its writer has not run yet: queued, and the publisher told.
        for n in 4..8 {
            assert_eq!(q.push(&msg(n, 8), &l), Push::Backlogged);
        }
        assert!(q.is_backlogged(&l));
        // Twice the limits is the hard bound, whatever the socket.
        assert_eq!(q.push(&msg(8, 8), &l), Push::Overflow);
        // Its socket fills up: now it is slow, and no publisher waits for it.
        q.set_socket_full(true);
        assert!(!q.is_backlogged(&l));
        // Draining to half the limit releases the publisher.
        q.set_socket_full(false);
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();
        assert!(q.poll_next(&mut cx, &mut batch, 5, usize::MAX).is_ready());
        assert!(q.is_backlogged(&l));
        assert!(q.poll_next(&mut cx, &mut batch, 1, usize::MAX).is_ready());
        assert!(!q.is_backlogged(&l));
        assert_eq!(batch.len(), 6);
        // What is left goes out before a Close, even once closed.
        q.close(Ending::Left);
        batch.clear();
        q.take_all(&mut batch);
        assert_eq!(batch.len(), 2);
        assert!(q.is_empty() && !q.is_backlogged(&l));
    }

    #[test]
    fn batches_respect_the_frame_and_byte_caps() {
        let q = Queue::default();
        let l = limits(100, 1 << 20, OnOverflow::Disconnect);
        for n in 0..10 {
            q.push(&msg(n, 100), &l);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 4, usize::MAX),
            Poll::Ready(Next::Frames)
        );
        assert_eq!(batch.len(), 4);
        batch.clear();
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 100, 250),
            Poll::Ready(Next::Frames)
        );
        assert_eq!(batch.len(), 2);
        batch.clear();
        // A first frame over the byte cap still comes out alone.
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 100, 10),
            Poll::Ready(Next::Frames)
        );
        assert_eq!(batch.len(), 1);
        assert_eq!(q.len(), 3);
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_task_waiting_on_its_socket_wakes_for_close_and_pings_but_not_for_data() {
        let q = Queue::default();
        let l = limits(10, 1 << 20, OnOverflow::Disconnect);
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(!q.watch_close(&mut cx));
        q.push(&msg(1, 1), &l);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        q.ping();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(!q.watch_close(&mut cx));
        q.close(Ending::Left);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(q.watch_close(&mut cx));
    }

    #[test]
    fn pings_come_first_and_a_closed_queue_reports_only_closed() {
        let q = Queue::default();
        let l = limits(10, 1 << 20, OnOverflow::Disconnect);
        let count = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(q.poll_next(&mut cx, &mut batch, 10, 100).is_pending());
        q.push(&msg(1, 1), &l);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        q.ping();
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 10, 100),
            Poll::Ready(Next::Ping)
        );
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 10, 100),
            Poll::Ready(Next::Frames)
        );
        q.push(&msg(2, 1), &l);
        q.close(Ending::Left);
        assert_eq!(
            q.poll_next(&mut cx, &mut batch, 10, 100),
            Poll::Ready(Next::Closed)
        );
    }
}
