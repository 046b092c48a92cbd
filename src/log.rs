//! A room's log: every message published into one room, appended once, in
//! order, each at the next offset, and the limits on how far behind it a
//! reader may fall.
//!
//! A reader is an offset into the log (its cursor): it has had everything
//! before it. Its lag, the messages and payload bytes from its cursor to
//! the head, is a subtraction. [`LagLimits`] bounds it; what happens to a
//! reader past them (the slow-consumer policy, [`OnOverflow`]) is decided
//! by whoever keeps the readers (`hub`). One message of any size is always
//! within the limits: a lag of one message never counts, nor two at twice
//! the limits, so a message larger than the byte limit still gets through.
//!
//! The log is also a room's history: its keeper may hold messages past
//! what readers need, within [`Retention`], so that a reader can start
//! behind the head (rewind, recovery). Each entry carries its publish time
//! and its position frame, the `@<position>` text frame that
//! position-aware clients get before each message (encoded once, at
//! append, for all of them). A message's *position* is what clients are
//! told: alone, the log numbers its messages 1, 2, 3...; in a cluster whose
//! broker numbers them, the broker's numbers, which need not be contiguous
//! (NATS JetStream numbers all rooms in one sequence). Offsets are the
//! log's own, contiguous and never reused; positions only grow with them.
//! Position 0 means "before the first message".
//!
//! It knows frames and offsets; nothing of members, sockets or the
//! configuration file.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::wire::Frame;

/// The slow-consumer policy: what happens to a reader that falls past its
/// lag limits and cannot keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// Close the client with 1008 "slow consumer".
    #[default]
    Disconnect,
    /// Skip its oldest unsent messages: it jumps forward.
    DropOldest,
    /// Keep its oldest unsent messages, miss the newer ones.
    DropNewest,
}

/// How far a reader may fall behind its room's log, and what happens
/// beyond that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    pub messages: usize,
    /// Payload bytes.
    pub bytes: usize,
    pub on_overflow: OnOverflow,
}

impl LagLimits {
    /// Whether a lag of `messages` and `bytes` is past the limits scaled by
    /// `scale` (1: the policy's bound; 2: the room's hard bound). One
    /// message, or two at the hard bound, is never past them.
    pub fn exceeded(&self, (messages, bytes): (u64, u64), scale: u64) -> bool {
        messages > scale
            && (messages > (self.messages as u64).saturating_mul(scale)
                || bytes > (self.bytes as u64).saturating_mul(scale))
    }
}

/// A position in a room's log: the offset of the next message to send.
pub type Offset = u64;

/// Who skips an entry: the member that published it without wanting its
/// own messages back (0: nobody skips it; [`HAD_BEFORE`]: the members
/// older than a generation do).
pub type Sender = u64;

/// Marks the sender of an entry that the members of its room's log from
/// before a generation (the low 32 bits) had already: in a cluster, a
/// message this node's clients got before the broker numbered it (see
/// `backplane`). Client ids never reach this bit.
pub const HAD_BEFORE: Sender = 1 << 63;

struct Entry {
    frame: Frame,
    sender: Sender,
    /// Payload bytes appended before this entry, ever: lag in bytes is a
    /// subtraction.
    before: u64,
    /// When it was appended, in the keeper's milliseconds.
    at_ms: u64,
    mark: Mark,
}

/// What one entry costs besides its payload, as the relay-wide history
/// bound counts it, so that many tiny messages cannot hide behind it: the
/// entry (its frame's handle, sender, offsets, time and position frame,
/// 88 bytes) twice, since the log's ring may be half empty after it grew,
/// and 32 bytes for the frame's own allocation. (With 88 alone, a flood
/// of 16-byte messages grew the relay by 38 MiB against a 16 MiB bound;
/// with this, 25 MiB: tests/crowds/history.rs.)
pub const ENTRY_BYTES: u64 = 2 * std::mem::size_of::<Entry>() as u64 + 32;
// The docs and the example config quote it.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    ENTRY_BYTES == 208,
    "update the 208 in README, ARCHITECTURE and the example config"
);

/// The frame that tells a position-aware client the position of the
/// message after it: text `@<position>`, at most 23 bytes, kept inline.
#[derive(Clone, Copy)]
pub struct Mark {
    len: u8,
    bytes: [u8; 23],
}

impl Mark {
    /// The frame for `position`.
    pub fn new(position: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = position;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let text = &digits[at..];
        let mut bytes = [0u8; 23];
        bytes[0] = 0x81;
        bytes[1] = 1 + text.len() as u8;
        bytes[2] = b'@';
        bytes[3..3 + text.len()].copy_from_slice(text);
        Self {
            len: 3 + text.len() as u8,
            bytes,
        }
    }

    /// The whole frame, ready to write.
    pub fn frame(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The position it names (kept only as text: an entry stays as small
    /// as it was when its position was its offset plus one).
    pub fn position(&self) -> u64 {
        self.bytes[3..self.len as usize]
            .iter()
            .fold(0, |n, d| n * 10 + u64::from(d - b'0'))
    }
}

/// One message as a reader takes it.
pub struct Logged<'a> {
    pub frame: &'a Frame,
    pub sender: Sender,
    pub mark: &'a Mark,
}

/// How much history a log keeps beyond what its readers need: at most
/// `messages` messages and `bytes` payload bytes (a message larger than
/// `bytes` is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub messages: usize,
    pub bytes: usize,
}

/// The messages of one room from the oldest a reader may still need,
/// oldest first; trimmed by its keeper.
pub struct Log {
    entries: VecDeque<Entry>,
    /// Offset of `entries[0]` (of the head when empty).
    first: Offset,
    /// Payload bytes appended, ever.
    appended_bytes: u64,
    /// The position of the message before `entries[0]` (0: none): what a
    /// reader at `first` has had.
    base: u64,
}

/// Entries an emptied log keeps room for; beyond it the memory goes back.
const KEEP_CAPACITY: usize = 64;

/// Where a new log's offsets start: far from 0, so that older messages
/// read from a cluster's broker can go before its first ([`Log::prepend`]).
const ORIGIN: Offset = 1 << 32;

impl Default for Log {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            first: ORIGIN,
            appended_bytes: 0,
            base: 0,
        }
    }
}

impl Log {
    /// The offset the next message will get; a subscriber at the head is
    /// up to date.
    pub fn head(&self) -> Offset {
        self.first + self.entries.len() as u64
    }

    /// The oldest offset still in the log.
    pub fn first(&self) -> Offset {
        self.first
    }

    /// The position of the newest message (of the one before the log if it
    /// holds none).
    pub fn top(&self) -> u64 {
        self.entries.back().map_or(self.base, |e| e.mark.position())
    }

    /// The position of the message before `offset`: what a reader there
    /// has had (clamped to the log).
    pub fn position_before(&self, offset: Offset) -> u64 {
        match offset.checked_sub(self.first + 1) {
            None => self.base,
            Some(i) => self
                .entries
                .get(i as usize)
                .map_or(self.top(), |e| e.mark.position()),
        }
    }

    /// The offset of the first message after `position` (the head if
    /// none): where a reader that had `position` goes on.
    pub fn offset_after(&self, position: u64) -> Offset {
        // Positions grow with offsets: a binary search.
        self.first
            + self
                .entries
                .partition_point(|e| e.mark.position() <= position) as u64
    }

    /// Appends `frame`, published by `sender` at `at_ms`, at the position
    /// after the newest; returns its offset.
    pub fn append(&mut self, frame: Frame, sender: Sender, at_ms: u64) -> Offset {
        self.append_at(frame, sender, at_ms, self.top() + 1)
    }

    /// [`Log::append`] at `position` (past the newest's).
    pub fn append_at(&mut self, frame: Frame, sender: Sender, at_ms: u64, position: u64) -> Offset {
        debug_assert!(position > self.top());
        let size = frame.payload().len() as u64;
        self.entries.push_back(Entry {
            frame,
            sender,
            before: self.appended_bytes,
            at_ms,
            mark: Mark::new(position),
        });
        self.appended_bytes += size;
        self.head() - 1
    }

    /// Empties the log; the next message follows position `base` (the
    /// positions up to it are not here: a cluster's broker numbered them,
    /// or they were lost). Offsets go on from the head.
    pub fn restart(&mut self, base: u64) {
        self.trim(self.head());
        self.base = base;
    }

    /// Puts `older` (oldest first, each with its sender, time and
    /// position) right before the first entry, so the log starts
    /// `older.len()` earlier and after position `base`.
    pub fn prepend(&mut self, older: Vec<(Frame, Sender, u64, u64)>, base: u64) {
        // Offsets start far from 0 (`ORIGIN`); beyond 0 the oldest are left out.
        let room = usize::try_from(self.first).unwrap_or(usize::MAX);
        let skip = older.len().saturating_sub(room);
        let base = skip.checked_sub(1).map_or(base, |last| older[last].3);
        let count = older.len() - skip;
        let added: u64 = older[skip..]
            .iter()
            .map(|(f, ..)| f.payload().len() as u64)
            .sum();
        // `before` counts from the new first entry.
        let dropped = self.bytes_before(self.first);
        for e in &mut self.entries {
            e.before = e.before - dropped + added;
        }
        self.appended_bytes = self.appended_bytes - dropped + added;
        let start = self.first - count as u64;
        // Times stay in order for `appended_since`.
        let newest_ms = self.entries.front().map_or(u64::MAX, |e| e.at_ms);
        let mut entries = VecDeque::with_capacity(count + self.entries.len());
        let mut before = 0;
        for (frame, sender, at_ms, position) in older.into_iter().skip(skip) {
            let size = frame.payload().len() as u64;
            entries.push_back(Entry {
                frame,
                sender,
                before,
                at_ms: at_ms.min(newest_ms),
                mark: Mark::new(position),
            });
            before += size;
        }
        entries.append(&mut self.entries);
        self.entries = entries;
        self.first = start;
        self.base = base;
    }

    /// Payload bytes appended before `offset` (clamped to the log).
    fn bytes_before(&self, offset: Offset) -> u64 {
        match self.entries.get(offset.saturating_sub(self.first) as usize) {
            Some(e) if offset >= self.first => e.before,
            Some(_) => self.entries[0].before,
            None => self.appended_bytes,
        }
    }

    /// Messages and payload bytes from `from` to the head.
    pub fn lag(&self, from: Offset) -> (u64, u64) {
        self.span(from, self.head())
    }

    /// Messages and payload bytes in `[from, to)`.
    pub fn span(&self, from: Offset, to: Offset) -> (u64, u64) {
        let (from, to) = (from.max(self.first), to.min(self.head()));
        if from >= to {
            return (0, 0);
        }
        (to - from, self.bytes_before(to) - self.bytes_before(from))
    }

    /// The oldest offset at or after `from` whose lag is within `limits`
    /// scaled by `scale`: where a subscriber skipping its oldest messages
    /// lands.
    pub fn oldest_within(&self, from: Offset, limits: &LagLimits, scale: u64) -> Offset {
        // Lag only shrinks as the offset grows, and is nothing at the head.
        first_offset(from.max(self.first), self.head(), |o| {
            !limits.exceeded(self.lag(o), scale)
        })
    }

    /// The newest offset after `from` such that `[from, offset)` is within
    /// `limits`: where a subscriber keeping its oldest messages stops.
    pub fn newest_within(&self, from: Offset, limits: &LagLimits) -> Offset {
        let (lo, hi) = (from.max(self.first), self.head());
        if !limits.exceeded(self.span(lo, hi), 1) {
            return hi;
        }
        // The span only grows with its end: the last end within.
        let (mut ok, mut bad) = (lo + 1, hi);
        while ok + 1 < bad {
            let mid = ok + (bad - ok) / 2;
            if limits.exceeded(self.span(lo, mid), 1) {
                bad = mid;
            } else {
                ok = mid;
            }
        }
        ok
    }

    /// Messages in `[from, to)` a subscriber would be sent: all of them,
    /// or, for `skip_sender`, all but that sender's own.
    pub fn count_for(&self, from: Offset, to: Offset, skip_sender: Option<Sender>) -> u64 {
        let (from, to) = (from.max(self.first), to.min(self.head()));
        if from >= to {
            return 0;
        }
        match skip_sender {
            None => to - from,
            Some(me) => self
                .range(from, to)
                .filter(|(_, sender)| *sender != me)
                .count() as u64,
        }
    }

    /// The entries in `[from, to)`, oldest first, with their senders.
    pub fn range(&self, from: Offset, to: Offset) -> impl Iterator<Item = (&Frame, Sender)> {
        self.entries_in(from, to).map(|e| (e.frame, e.sender))
    }

    /// The entries in `[from, to)`, oldest first, as readers take them.
    pub fn entries_in(&self, from: Offset, to: Offset) -> impl Iterator<Item = Logged<'_>> {
        let start = from.max(self.first).min(self.head());
        let end = to.clamp(start, self.head());
        self.entries
            .range((start - self.first) as usize..(end - self.first) as usize)
            .map(|e| Logged {
                frame: &e.frame,
                sender: e.sender,
                mark: &e.mark,
            })
    }

    /// The oldest offset whose messages from there to the head are within
    /// `retention`: where the history starts.
    pub fn retained_from(&self, retention: &Retention) -> Offset {
        let head = self.head();
        let by_count = head
            .saturating_sub(retention.messages as u64)
            .max(self.first);
        // The span only shrinks as its start grows, and is nothing at the head.
        first_offset(by_count, head, |o| {
            self.span(o, head).1 <= retention.bytes as u64
        })
    }

    /// The oldest offset at or after `from` appended at or after `at_ms`
    /// (the head if none).
    pub fn appended_since(&self, from: Offset, at_ms: u64) -> Offset {
        // Appended in time order: a binary search.
        let newer = self.first + self.entries.partition_point(|e| e.at_ms < at_ms) as u64;
        newer.max(from).min(self.head())
    }

    /// When the newest message was appended, if the log holds any.
    pub fn newest_ms(&self) -> Option<u64> {
        self.entries.back().map(|e| e.at_ms)
    }

    /// Messages and payload bytes the log holds.
    pub fn held(&self) -> (u64, u64) {
        self.span(self.first, self.head())
    }

    /// Lets go of every entry before `offset`.
    pub fn trim(&mut self, offset: Offset) {
        let n = offset
            .saturating_sub(self.first)
            .min(self.entries.len() as u64);
        if let Some(last) = n.checked_sub(1) {
            self.base = self.entries[last as usize].mark.position();
        }
        self.entries.drain(..n as usize);
        self.first += n;
        if self.entries.is_empty() && self.entries.capacity() > KEEP_CAPACITY {
            self.entries = VecDeque::new();
        }
    }

    /// Messages in the log.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The first offset in `[lo, hi]` where `holds`, which holds at `hi` and,
/// once it holds, for every offset after: a binary search.
fn first_offset(lo: Offset, hi: Offset, holds: impl Fn(Offset) -> bool) -> Offset {
    if holds(lo) {
        return lo;
    }
    let (mut fails, mut ok) = (lo, hi);
    while fails + 1 < ok {
        let mid = fails + (ok - fails) / 2;
        if holds(mid) {
            ok = mid;
        } else {
            fails = mid;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize) -> LagLimits {
        LagLimits {
            messages,
            bytes,
            on_overflow: OnOverflow::Disconnect,
        }
    }

    /// A log whose offsets start at 0, holding messages of `sizes` bytes.
    fn log_of(sizes: &[usize]) -> Log {
        let mut log = Log {
            first: 0,
            ..Log::default()
        };
        for (i, &n) in sizes.iter().enumerate() {
            log.append(
                Frame::new(false, &vec![i as u8; n]),
                (i % 2) as Sender,
                i as u64,
            );
        }
        log
    }

    #[test]
    fn offsets_lag_and_spans_count_messages_and_payload_bytes() {
        let mut log = log_of(&[10, 20, 30, 40]);
        assert_eq!((log.first(), log.head()), (0, 4));
        assert_eq!(log.lag(0), (4, 100));
        assert_eq!(log.lag(2), (2, 70));
        assert_eq!(log.lag(4), (0, 0));
        assert_eq!(log.span(1, 3), (2, 50));
        log.trim(2);
        assert_eq!((log.first(), log.head(), log.len()), (2, 4, 2));
        // A cursor before the log counts from what is left.
        assert_eq!(log.lag(0), (2, 70));
        assert_eq!(log.append(Frame::new(true, b"x"), 0, 0), 4);
        assert_eq!(log.lag(4), (1, 1));
        let payloads: Vec<u8> = log.range(0, 10).map(|(f, _)| f.payload()[0]).collect();
        assert_eq!(payloads, [2, 3, b'x']);
    }

    #[test]
    fn a_restarted_log_numbers_on_from_there_and_takes_older_entries_before() {
        let mut log = Log::default();
        log.append(Frame::new(true, b"a"), 0, 10);
        assert_eq!((log.first(), log.top()), (ORIGIN, 1));
        log.restart(99);
        assert_eq!(
            (log.head(), log.top(), log.is_empty()),
            (ORIGIN + 1, 99, true)
        );
        // Offsets go on; positions follow the new base.
        assert_eq!(log.append(Frame::new(true, b"abc"), 0, 50), ORIGIN + 1);
        assert_eq!(log.top(), 100);
        let older = |sizes: &[usize]| -> Vec<(Frame, Sender, u64, u64)> {
            sizes
                .iter()
                .zip(98..)
                .map(|(&n, position)| (Frame::new(false, &vec![n as u8; n]), 0, 60, position))
                .collect()
        };
        log.prepend(older(&[4, 5]), 97);
        let first = log.first();
        assert_eq!((first, log.head()), (ORIGIN - 1, ORIGIN + 2));
        assert_eq!(log.lag(first), (3, 12));
        assert_eq!(log.span(first + 1, first + 3), (2, 8));
        // Marks name each entry's own position; times stay in order.
        let marks: Vec<Vec<u8>> = log
            .entries_in(first, first + 3)
            .map(|e| e.mark.frame().to_vec())
            .collect();
        assert_eq!(marks[0][2..], *b"@98");
        assert_eq!(marks[2][2..], *b"@100");
        assert_eq!(log.appended_since(0, 51), first + 3);
        // Positions and offsets map onto each other both ways.
        assert_eq!(log.position_before(first), 97);
        assert_eq!(log.position_before(first + 2), 99);
        assert_eq!(log.position_before(first + 3), 100);
        assert_eq!(log.offset_after(97), first);
        assert_eq!(log.offset_after(99), first + 2);
        assert_eq!(log.offset_after(500), first + 3);
        // Trimming moves the base to the last message let go.
        log.trim(first + 2);
        assert_eq!(log.position_before(log.first()), 99);
        // Nothing goes before offset 0.
        let mut log = log_of(&[]);
        log.restart(1);
        log.prepend(older(&[1, 2, 3]), 0);
        assert_eq!((log.first(), log.head()), (0, 0));
    }

    #[test]
    fn positions_need_not_be_contiguous() {
        let mut log = Log::default();
        for position in [3, 7, 8, 20] {
            log.append_at(Frame::new(true, b"m"), 0, 0, position);
        }
        let first = log.first();
        assert_eq!(log.offset_after(0), first);
        assert_eq!(log.offset_after(5), first + 1);
        assert_eq!(log.offset_after(7), first + 2);
        assert_eq!(log.offset_after(20), first + 4);
        assert_eq!(log.position_before(first + 1), 3);
        assert_eq!(log.top(), 20);
        // Alone, it numbers on from the newest.
        log.append(Frame::new(true, b"m"), 0, 0);
        assert_eq!(log.top(), 21);
    }

    #[test]
    fn one_message_of_any_size_is_within_the_limits() {
        let l = limits(4, 100);
        assert!(!l.exceeded((1, 1 << 30), 1));
        assert!(l.exceeded((2, 101), 1));
        assert!(!l.exceeded((2, 101), 2));
        assert!(l.exceeded((5, 10), 1));
        assert!(!l.exceeded((8, 200), 2));
        assert!(l.exceeded((9, 10), 2));
    }

    #[test]
    fn oldest_and_newest_within_find_where_the_policies_land() {
        // Ten messages of 10 bytes; limits 4 messages, 35 bytes.
        let log = log_of(&[10; 10]);
        let l = limits(4, 35);
        // Skipping the oldest keeps the newest three (30 bytes).
        assert_eq!(log.oldest_within(0, &l, 1), 7);
        // Already within: stays.
        assert_eq!(log.oldest_within(8, &l, 1), 8);
        // Keeping the oldest stops after three from where it stands.
        assert_eq!(log.newest_within(2, &l), 5);
        assert_eq!(log.newest_within(8, &l), 10);
        // One large message at the cursor: it alone is kept.
        let big = log_of(&[500, 1, 1]);
        assert_eq!(big.newest_within(0, &l), 1);
        assert_eq!(big.oldest_within(0, &l, 1), 1);
    }

    #[test]
    fn counts_for_a_subscriber_skip_its_own_messages() {
        // Senders alternate 0, 1, 0, 1, ...
        let log = log_of(&[1; 6]);
        assert_eq!(log.count_for(0, 6, None), 6);
        assert_eq!(log.count_for(0, 6, Some(1)), 3);
        assert_eq!(log.count_for(1, 4, Some(0)), 2);
        assert_eq!(log.count_for(5, 2, None), 0);
    }

    #[test]
    fn an_emptied_log_gives_its_memory_back() {
        let mut log = log_of(&[1; 1000]);
        log.trim(log.head());
        assert!(log.is_empty());
        assert_eq!(log.entries.capacity(), 0);
        assert_eq!(log.lag(log.head()), (0, 0));
    }

    #[test]
    fn history_keeps_the_latest_within_count_and_bytes() {
        // Ten messages of 10 bytes, appended at 0, 1, ... 9 ms.
        let log = log_of(&[10; 10]);
        let keep = |messages, bytes| log.retained_from(&Retention { messages, bytes });
        assert_eq!(keep(4, 1000), 6);
        assert_eq!(keep(100, 1000), 0);
        assert_eq!(keep(100, 35), 7);
        assert_eq!(keep(0, 1000), 10);
        // One message larger than the byte bound is not kept.
        let big = log_of(&[10, 500]);
        assert_eq!(
            big.retained_from(&Retention {
                messages: 10,
                bytes: 100
            }),
            2
        );
    }

    #[test]
    fn rewinding_by_age_finds_the_first_message_that_young() {
        let mut log = log_of(&[1; 10]);
        assert_eq!(log.appended_since(0, 7), 7);
        assert_eq!(log.appended_since(8, 7), 8);
        assert_eq!(log.appended_since(0, 100), 10);
        log.trim(5);
        assert_eq!(log.appended_since(0, 0), 5);
        assert_eq!(log.newest_ms(), Some(9));
    }

    #[test]
    fn position_frames_are_text_at_sign_and_the_position() {
        for (position, text) in [
            (0, "@0"),
            (1, "@1"),
            (42, "@42"),
            (u64::MAX, "@18446744073709551615"),
        ] {
            let mark = Mark::new(position);
            let frame = mark.frame();
            assert_eq!(frame[0], 0x81);
            assert_eq!(frame[1] as usize, text.len());
            assert_eq!(&frame[2..], text.as_bytes());
        }
        // Each entry carries its own, numbered from 1 by the log alone.
        let log = log_of(&[1; 3]);
        let marks: Vec<Vec<u8>> = log
            .entries_in(0, 3)
            .map(|e| e.mark.frame().to_vec())
            .collect();
        assert_eq!(marks[2][2..], *b"@3");
        for position in [0, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(Mark::new(position).position(), position);
        }
    }
}
