//! Parsing what clients send (RFC 6455, server side).
//!
//! The relay owns this rather than using a WebSocket library's stream so
//! that an idle client holds no read buffer: bytes are read into a buffer
//! shared by every client on the thread, complete frames are handled
//! straight from it, and only the tail of a frame that has not fully arrived
//! is kept per client. The parser is strict: masking, reserved bits,
//! opcodes, control-frame rules, fragmentation order, close codes, and
//! UTF-8 (checked as fragments arrive, so a bad message fails on its first
//! bad fragment).

use bytes::{Buf, Bytes, BytesMut};

use super::deflate;
use super::frame::{BINARY, CLOSE, CONTINUATION, Frame, PING, PONG, RSV1, TEXT, unmask};

/// Something a client sent that the connection must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete data message, already encoded as the frame the relay sends.
    Message(Frame),
    /// A ping; the payload goes back in a pong.
    Ping(Bytes),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
}

/// Why the connection must be failed: the close code and reason to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> Violation {
    Violation { code: 1002, reason }
}

/// A fragmented message being assembled.
struct Fragmented {
    text: bool,
    /// Compressed (permessage-deflate): `payload` is inflated, and its
    /// UTF-8 checked, once the last fragment is in.
    compressed: bool,
    payload: BytesMut,
    /// Bytes of `payload` known to be valid UTF-8 (text only).
    valid_up_to: usize,
}

/// Parses one client's frames. Holds memory only while a frame or a
/// fragmented message is incomplete, or while its owner has paused it.
///
/// After a violation, or once the relay has sent its own Close
/// ([`Reader::discard`]), it only skips frames, keeping no payload, and
/// watches for the peer's Close: the relay keeps reading until then so the
/// client gets to read the Close it was sent (closing a socket with unread
/// bytes in it makes the kernel send a reset, and browsers then report 1006).
pub struct Reader {
    /// The start of a frame whose remaining bytes have not arrived yet, or
    /// whole frames not yet parsed because `on` paused.
    partial: BytesMut,
    /// Boxed, as `discarding`: rare, and an idle client's reader should be
    /// small (it lives in every client's task).
    message: Option<Box<Fragmented>>,
    max_message: usize,
    /// permessage-deflate was negotiated: a message's first frame may have
    /// RSV1 set.
    inflates: bool,
    /// `on` stopped the last `feed` early: `partial` may hold whole frames.
    paused: bool,
    /// Set once nothing more is parsed, only skipped.
    discarding: Option<Box<Discard>>,
    /// How much of an incomplete text frame has been checked as UTF-8.
    arriving: ArrivingText,
}

/// The UTF-8 check of a text frame still arriving, so that a message fails
/// on its first bad byte even inside one large frame.
#[derive(Default)]
struct ArrivingText {
    /// Payload bytes of the frame checked so far.
    checked: usize,
    utf8: Utf8Stream,
}

impl Reader {
    /// A reader for messages of up to `max_message` bytes (inflated, when
    /// `inflates`: the client negotiated permessage-deflate).
    pub fn new(max_message: usize, inflates: bool) -> Self {
        Self {
            partial: BytesMut::new(),
            message: None,
            max_message,
            inflates,
            paused: false,
            discarding: None,
            arriving: ArrivingText::default(),
        }
    }

    /// Takes bytes that arrived before this reader existed (read ahead by
    /// the HTTP layer with the upgrade request): they are parsed before
    /// anything is read from the socket.
    pub fn preload(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        self.paused = !self.partial.is_empty();
    }

    /// Whether bytes of an incomplete frame are waiting for the rest.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Whether part of a message has arrived and the rest has not: a frame
    /// still arriving, or a fragmented message not yet complete.
    pub fn mid_message(&self) -> bool {
        self.message.is_some() || (self.has_partial() && !self.paused)
    }

    /// Whether `on` paused the last `feed` with bytes left over: the next
    /// `feed` (with no new bytes) parses those before the socket is read.
    pub fn is_paused(&self) -> bool {
        self.paused && !self.partial.is_empty()
    }

    /// Parses `data` (bytes just read) after whatever is left over, calling
    /// `on` for each complete item. `on` returns false to pause: the bytes
    /// not yet parsed are kept for the next call. Stops at the first
    /// violation, and from then on only skips ([`Reader::discard`]).
    pub fn feed(
        &mut self,
        data: &[u8],
        on: &mut impl FnMut(Incoming) -> bool,
    ) -> Result<(), Violation> {
        self.paused = false;
        if self.partial.is_empty() {
            match self.parse(data, on) {
                Ok(used) if used < data.len() => self.partial.extend_from_slice(&data[used..]),
                Ok(_) => {}
                Err((v, resume)) => {
                    self.lose_step(resume.map(|at| &data[at..]));
                    return Err(v);
                }
            }
        } else {
            self.partial.extend_from_slice(data);
            let mut buffered = std::mem::take(&mut self.partial);
            match self.parse(&buffered, on) {
                Ok(used) if used < buffered.len() => {
                    buffered.advance(used);
                    self.partial = buffered;
                }
                // `buffered` is dropped: an idle client keeps nothing.
                Ok(_) => {}
                Err((v, resume)) => {
                    self.lose_step(resume.map(|at| &buffered[at..]));
                    return Err(v);
                }
            }
        }
        Ok(())
    }

    /// While skipping: whether the message that was being sent has been
    /// skipped to its end (or can no longer be followed), so a Close sent
    /// now does not cut the client off in the middle of it.
    pub fn message_skipped(&self) -> bool {
        self.discarding
            .as_ref()
            .is_none_or(|d| d.lost || (d.skip == 0 && d.have == 0 && !d.message_open))
    }

    /// From now on skips whatever arrives, returning true once the peer's
    /// Close frame has been seen (in `data` or earlier).
    pub fn discard(&mut self, data: &[u8]) -> bool {
        let partial = std::mem::take(&mut self.partial);
        let d = self.discarding.get_or_insert_with(Box::default);
        d.skip(&partial);
        self.message = None;
        self.arriving = ArrivingText::default();
        self.paused = false;
        d.skip(data)
    }

    /// After a violation: drop what was assembled and skip from `tail` on
    /// (the bytes from where frames can still be followed), or, when the
    /// violation left no way to tell where the next frame starts, drop
    /// everything until the connection ends.
    fn lose_step(&mut self, tail: Option<&[u8]>) {
        self.message = None;
        self.arriving = ArrivingText::default();
        self.partial = BytesMut::new();
        self.paused = false;
        let mut d = Discard::default();
        match tail {
            Some(tail) => {
                d.skip(tail);
            }
            None => d.lost = true,
        }
        self.discarding = Some(Box::new(d));
    }

    /// Parses whole frames from `buf`; returns how many bytes were used.
    /// A violation comes with where frames can be followed again, if known.
    fn parse(
        &mut self,
        buf: &[u8],
        on: &mut impl FnMut(Incoming) -> bool,
    ) -> Result<usize, (Violation, Option<usize>)> {
        let mut at = 0;
        loop {
            let (header, len) = match self.header(&buf[at..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                // Too big is known from a well-formed header: the frame can
                // be skipped whole. Other header faults leave no footing.
                Err(v) => return Err((v, (v.code == 1009).then_some(at))),
            };
            if buf.len() - at < header + len {
                // Text that is already invalid fails now, not when its
                // frame ends; the frame's length says where to skip to.
                self.check_arriving_text(&buf[at..], header)
                    .map_err(|v| (v, Some(at)))?;
                break;
            }
            let b0 = buf[at];
            let mask = [
                buf[at + header - 4],
                buf[at + header - 3],
                buf[at + header - 2],
                buf[at + header - 1],
            ];
            let payload = &buf[at + header..at + header + len];
            at += header + len;
            self.arriving = ArrivingText::default();
            let fin = b0 & 0x80 != 0;
            let compressed = b0 & RSV1 != 0;
            match self.frame(fin, b0 & 0x0f, compressed, payload, mask) {
                Ok(Some(item)) => {
                    if !on(item) {
                        self.paused = true;
                        return Ok(at);
                    }
                }
                Ok(None) => {}
                Err(v) => return Err((v, Some(at))),
            }
        }
        Ok(at)
    }

    /// Checks a frame header; returns (header length, payload length), or
    /// `None` if the header itself is incomplete.
    fn header(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, Violation> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let opcode = b0 & 0x0f;
        // RSV1 marks a compressed message, on its first frame only.
        let compressed_start = self.inflates && matches!(opcode, TEXT | BINARY);
        if b0 & 0x70 != 0 && !(b0 & 0x70 == RSV1 && compressed_start) {
            return Err(protocol("reserved bits set"));
        }
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(protocol("unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let (len, header) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4 + 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let n = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    if n >> 63 != 0 {
                        return Err(protocol("frame length has its top bit set"));
                    }
                    (n, 10 + 4)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2 + 4),
        };
        if opcode >= CLOSE && (b0 & 0x80 == 0 || len > 125) {
            return Err(protocol(
                "control frames must be final and at most 125 bytes",
            ));
        }
        // Refuse on the length alone, before buffering any of it.
        let buffered = self.message.as_ref().map_or(0, |m| m.payload.len() as u64);
        if len + buffered > self.max_message as u64 {
            return Err(Violation {
                code: 1009,
                reason: "message too big",
            });
        }
        if buf.len() < header {
            return Ok(None);
        }
        Ok(Some((header, len as usize)))
    }

    /// Checks the UTF-8 of a text frame's payload received so far (`frame`
    /// is the frame from its first byte, `header` bytes of header).
    fn check_arriving_text(&mut self, frame: &[u8], header: usize) -> Result<(), Violation> {
        // Compressed text is checked once inflated.
        let text = match frame[0] & 0x0f {
            // Inside a fragmented message, a new one is a protocol error
            // that `frame` reports (1002) once it is complete.
            TEXT => self.message.is_none() && frame[0] & RSV1 == 0,
            CONTINUATION => self
                .message
                .as_ref()
                .is_some_and(|m| m.text && !m.compressed),
            _ => false,
        };
        if !text || frame.len() <= header {
            return Ok(());
        }
        let mask = [
            frame[header - 4],
            frame[header - 3],
            frame[header - 2],
            frame[header - 1],
        ];
        let payload = &frame[header..];
        let arriving = &mut self.arriving;
        if arriving.checked == 0
            && let Some(m) = &self.message
        {
            // A character the previous fragment left incomplete.
            arriving.utf8.push(&m.payload[m.valid_up_to..]);
        }
        let mut chunk = [0u8; 256];
        while arriving.checked < payload.len() {
            let from = arriving.checked;
            let n = (payload.len() - from).min(chunk.len());
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = payload[from + i] ^ mask[(from + i) & 3];
            }
            if !arriving.utf8.push(&chunk[..n]) {
                return Err(invalid_utf8());
            }
            arriving.checked += n;
        }
        Ok(())
    }

    /// Handles one complete frame.
    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        compressed: bool,
        masked: &[u8],
        mask: [u8; 4],
    ) -> Result<Option<Incoming>, Violation> {
        match opcode {
            TEXT | BINARY => {
                if self.message.is_some() {
                    return Err(protocol("new message inside a fragmented one"));
                }
                let text = opcode == TEXT;
                if fin && !compressed {
                    let frame = Frame::from_masked(text, masked, mask);
                    if text && std::str::from_utf8(frame.payload()).is_err() {
                        return Err(invalid_utf8());
                    }
                    return Ok(Some(Incoming::Message(frame)));
                }
                let mut payload = BytesMut::with_capacity(masked.len());
                put_unmasked(&mut payload, masked, mask);
                let mut m = Fragmented {
                    text,
                    compressed,
                    payload,
                    valid_up_to: 0,
                };
                if fin {
                    return self.complete(&m).map(Some);
                }
                m.check_utf8(false)?;
                self.message = Some(Box::new(m));
                Ok(None)
            }
            CONTINUATION => {
                let Some(mut m) = self.message.take() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                put_unmasked(&mut m.payload, masked, mask);
                m.check_utf8(fin)?;
                if fin {
                    return self.complete(&m).map(Some);
                }
                self.message = Some(m);
                Ok(None)
            }
            PING => {
                let mut payload = BytesMut::with_capacity(masked.len());
                put_unmasked(&mut payload, masked, mask);
                Ok(Some(Incoming::Ping(payload.freeze())))
            }
            PONG => Ok(None),
            CLOSE => {
                let mut payload = BytesMut::with_capacity(masked.len());
                put_unmasked(&mut payload, masked, mask);
                match payload.len() {
                    0 => Ok(Some(Incoming::Close(None))),
                    1 => Err(protocol("close frame with a one-byte payload")),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !valid_close_code(code) {
                            return Err(protocol("invalid close code"));
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(invalid_utf8());
                        }
                        Ok(Some(Incoming::Close(Some(code))))
                    }
                }
            }
            _ => Err(protocol("unknown opcode")),
        }
    }

    /// The message whose last fragment just arrived, inflated if it was
    /// compressed (within the size limit, then checked as UTF-8 if text).
    fn complete(&self, m: &Fragmented) -> Result<Incoming, Violation> {
        if !m.compressed {
            return Ok(Incoming::Message(Frame::new(m.text, &m.payload)));
        }
        let payload = deflate::inflate(&m.payload, self.max_message)?;
        if m.text && std::str::from_utf8(&payload).is_err() {
            return Err(invalid_utf8());
        }
        Ok(Incoming::Message(Frame::new(m.text, &payload)))
    }
}

impl Fragmented {
    /// Validates the UTF-8 received so far; an incomplete character at the
    /// end is fine until the final fragment. Compressed text is checked
    /// once inflated.
    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.valid_up_to..]) {
            Ok(_) => self.valid_up_to = self.payload.len(),
            Err(e) if e.error_len().is_none() && !fin => self.valid_up_to += e.valid_up_to(),
            Err(_) => return Err(invalid_utf8()),
        }
        Ok(())
    }
}

/// Checks UTF-8 across chunks, carrying an incomplete character over.
#[derive(Default)]
struct Utf8Stream {
    carry: [u8; 4],
    len: usize,
}

impl Utf8Stream {
    /// False once the bytes so far cannot be valid UTF-8.
    fn push(&mut self, mut data: &[u8]) -> bool {
        while self.len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return true;
            };
            self.carry[self.len] = b;
            self.len += 1;
            data = rest;
            match std::str::from_utf8(&self.carry[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() && self.len < 4 => {}
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                true
            }
            Err(_) => false,
        }
    }
}

/// Skips frames after the relay's Close, keeping at most one header.
#[derive(Default)]
struct Discard {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// Frames cannot be followed: everything is dropped until EOF.
    lost: bool,
    /// The header of the peer's Close has been read; its payload is being
    /// skipped.
    in_close: bool,
    /// The peer's Close has been read whole.
    closed: bool,
    /// The last data frame skipped was not final: the message goes on.
    message_open: bool,
}

impl Discard {
    /// Skips `data`; true once the peer's Close has been seen.
    fn skip(&mut self, mut data: &[u8]) -> bool {
        while !self.lost && !self.closed {
            if self.skip > 0 {
                if data.is_empty() {
                    break;
                }
                let n = self.skip.min(data.len() as u64) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            // A Close counts once its payload is read too: closing the
            // socket with bytes unread would reset it.
            if self.in_close {
                self.closed = true;
                break;
            }
            let need = if self.have < 2 {
                2
            } else {
                let b1 = self.header[1];
                let extended = match b1 & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                2 + extended + if b1 & 0x80 != 0 { 4 } else { 0 }
            };
            if self.have < need {
                if data.is_empty() {
                    break;
                }
                let n = (need - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                // Go round even with no bytes left: a header just completed
                // may be a whole frame (an empty Close).
                continue;
            }
            let (b0, h) = (self.header[0], &self.header);
            if b0 & 0x70 != 0
                || !matches!(
                    b0 & 0x0f,
                    CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG
                )
            {
                self.lost = true;
                break;
            }
            self.skip = match h[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                n => u64::from(n),
            };
            self.in_close = b0 & 0x0f == CLOSE;
            if b0 & 0x0f <= BINARY {
                self.message_open = b0 & 0x80 == 0;
            }
            self.have = 0;
        }
        self.closed
    }
}

fn invalid_utf8() -> Violation {
    Violation {
        code: 1007,
        reason: "invalid UTF-8",
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends one frame's payload, unmasked (each frame has its own mask).
fn put_unmasked(out: &mut BytesMut, masked: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(masked);
    unmask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&MASK);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        v
    }

    fn feed_all(r: &mut Reader, data: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut out = Vec::new();
        r.feed(data, &mut |i| {
            out.push(i);
            true
        })?;
        Ok(out)
    }

    fn message(text: bool, payload: &[u8]) -> Incoming {
        Incoming::Message(Frame::new(text, payload))
    }

    #[test]
    fn whole_frames_at_every_length_encoding() {
        for n in [0usize, 1, 7, 8, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut r = Reader::new(1 << 20, false);
            assert_eq!(
                feed_all(&mut r, &frame(true, BINARY, &payload)),
                Ok(vec![message(false, &payload)])
            );
            assert!(!r.has_partial());
        }
    }

    #[test]
    fn frames_split_at_every_byte_are_reassembled() {
        let mut wire = frame(true, TEXT, "héllo".as_bytes());
        wire.extend(frame(true, PING, b"p"));
        wire.extend(frame(false, BINARY, b"ab"));
        wire.extend(frame(true, CONTINUATION, b"cd"));
        for split in 0..wire.len() {
            let mut r = Reader::new(1024, false);
            let mut got = feed_all(&mut r, &wire[..split]).unwrap();
            got.extend(feed_all(&mut r, &wire[split..]).unwrap());
            assert_eq!(
                got,
                vec![
                    message(true, "héllo".as_bytes()),
                    Incoming::Ping(Bytes::from_static(b"p")),
                    message(false, b"abcd")
                ],
                "split at {split}"
            );
            assert!(!r.has_partial());
        }
    }

    #[test]
    fn protocol_violations() {
        let mut reserved = frame(true, TEXT, b"x");
        reserved[0] |= 0x20;
        let mut unmasked = frame(true, TEXT, b"x");
        unmasked[1] &= 0x7f;
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("reserved bit", reserved, 1002),
            ("unmasked", unmasked, 1002),
            ("opcode 3", frame(true, 3, b""), 1002),
            ("opcode 0xB", frame(true, 0xB, b""), 1002),
            ("fragmented ping", frame(false, PING, b""), 1002),
            ("long ping", frame(true, PING, &[0; 126]), 1002),
            ("bare continuation", frame(true, CONTINUATION, b"x"), 1002),
            ("close with one byte", frame(true, CLOSE, &[3]), 1002),
            (
                "close code 1005",
                frame(true, CLOSE, &1005u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 999",
                frame(true, CLOSE, &999u16.to_be_bytes()),
                1002,
            ),
            (
                "close code 5000",
                frame(true, CLOSE, &5000u16.to_be_bytes()),
                1002,
            ),
            (
                "close reason not UTF-8",
                frame(true, CLOSE, &[0x03, 0xe8, 0xff]),
                1007,
            ),
            ("invalid UTF-8", frame(true, TEXT, &[0xc3, 0x28]), 1007),
            ("too big", frame(true, BINARY, &[0; 2000]), 1009),
            (
                "new message inside fragmented",
                [frame(false, TEXT, b"a"), frame(true, TEXT, b"b")].concat(),
                1002,
            ),
            (
                "fragments too big",
                [
                    frame(false, BINARY, &[0; 1000]),
                    frame(true, CONTINUATION, &[0; 100]),
                ]
                .concat(),
                1009,
            ),
        ];
        for (name, wire, code) in cases {
            let mut r = Reader::new(1024, false);
            assert_eq!(
                feed_all(&mut r, &wire).map_err(|v| v.code),
                Err(code),
                "{name}"
            );
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header_alone() {
        let mut r = Reader::new(1024, false);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(feed_all(&mut r, &header).map_err(|v| v.code), Err(1009));
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_breaks_it() {
        let mut r = Reader::new(1024, false);
        // "κ" then the first byte of a three-byte character: fine so far.
        assert_eq!(
            feed_all(&mut r, &frame(false, TEXT, &[0xce, 0xba, 0xe1])),
            Ok(vec![])
        );
        // 0x28 cannot continue it: fail now, before the message ends.
        assert_eq!(
            feed_all(&mut r, &frame(false, CONTINUATION, &[0x28])).map_err(|v| v.code),
            Err(1007)
        );
        // A character split across fragments is valid.
        let mut r = Reader::new(1024, false);
        let wire = [
            frame(false, TEXT, &[0xe2, 0x82]),
            frame(true, CONTINUATION, &[0xac]),
        ]
        .concat();
        assert_eq!(
            feed_all(&mut r, &wire),
            Ok(vec![message(true, "€".as_bytes())])
        );
        // An incomplete character at the very end is not.
        let mut r = Reader::new(1024, false);
        let wire = [
            frame(false, TEXT, b"ok"),
            frame(true, CONTINUATION, &[0xe2, 0x82]),
        ]
        .concat();
        assert_eq!(feed_all(&mut r, &wire).map_err(|v| v.code), Err(1007));
    }

    #[test]
    fn invalid_utf8_fails_while_its_frame_is_still_arriving() {
        // "κόσμε" then bytes that can never be UTF-8, in one frame sent in
        // chops: refused at the bad chop, before the frame is complete.
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        payload.extend_from_slice(b"edited");
        let wire = frame(true, TEXT, &payload);
        let bad_at = 6 + "κόσμε".len() + 1; // header, text, 0xf4 is still possible
        let mut r = Reader::new(1024, false);
        assert_eq!(feed_all(&mut r, &wire[..bad_at]), Ok(vec![]));
        assert_eq!(
            feed_all(&mut r, &wire[bad_at..bad_at + 1]).map_err(|v| v.code),
            Err(1007)
        );
        // Valid text split anywhere, characters included, still passes, in a
        // continuation too.
        let text = "€uro ✓ κόσμε";
        let wire = [
            frame(false, TEXT, &text.as_bytes()[..2]),
            frame(true, CONTINUATION, &text.as_bytes()[2..]),
        ]
        .concat();
        for step in 1..8 {
            let mut r = Reader::new(1024, false);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                got.extend(feed_all(&mut r, chunk).unwrap());
            }
            assert_eq!(got, vec![message(true, text.as_bytes())], "step {step}");
        }
    }

    #[test]
    fn close_frames() {
        let mut r = Reader::new(1024, false);
        assert_eq!(
            feed_all(&mut r, &frame(true, CLOSE, b"")),
            Ok(vec![Incoming::Close(None)])
        );
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(
            feed_all(&mut r, &frame(true, CLOSE, &payload)),
            Ok(vec![Incoming::Close(Some(1000))])
        );
    }

    #[test]
    fn control_frames_may_interleave_fragments() {
        let mut r = Reader::new(1024, false);
        let wire = [
            frame(false, TEXT, b"a"),
            frame(true, PING, b"!"),
            frame(true, CONTINUATION, b"b"),
        ]
        .concat();
        assert_eq!(
            feed_all(&mut r, &wire),
            Ok(vec![
                Incoming::Ping(Bytes::from_static(b"!")),
                message(true, b"ab")
            ])
        );
    }

    #[test]
    fn a_pause_keeps_what_is_not_parsed_for_the_next_feed() {
        let wire: Vec<u8> = (0..5u8).flat_map(|n| frame(true, BINARY, &[n])).collect();
        let mut r = Reader::new(1024, false);
        let mut got = Vec::new();
        let take_two = |r: &mut Reader, data: &[u8], got: &mut Vec<Incoming>| {
            let mut n = 0;
            r.feed(data, &mut |i| {
                got.push(i);
                n += 1;
                n < 2
            })
            .unwrap();
        };
        take_two(&mut r, &wire, &mut got);
        assert!(r.is_paused());
        take_two(&mut r, &[], &mut got);
        assert!(r.is_paused());
        take_two(&mut r, &[], &mut got);
        assert!(!r.is_paused() && !r.has_partial());
        let want: Vec<Incoming> = (0..5u8).map(|n| message(false, &[n])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn after_a_violation_frames_are_skipped_until_the_peers_close() {
        // Too big: the rest of the frame is skipped by its length, however
        // it arrives, and the Close after it is found.
        let big = frame(true, BINARY, &[7; 3000]);
        let close = frame(true, CLOSE, &1000u16.to_be_bytes());
        for split in [4, 10, 2000, big.len()] {
            let mut r = Reader::new(1024, false);
            let err = feed_all(&mut r, &big[..split]).map_err(|v| v.code);
            assert_eq!(err, Err(1009), "split {split}");
            assert!(!r.discard(&big[split..]));
            assert!(!r.discard(&frame(true, TEXT, b"more")));
            assert!(r.discard(&close[..3]) || r.discard(&close[3..]));
            assert!(!r.has_partial());
        }
        // Where the too-big message ends is known, fragmented or not.
        let mut r = Reader::new(1024, false);
        let first = frame(false, BINARY, &[1; 1000]);
        let rest = frame(true, CONTINUATION, &[2; 1000]);
        assert_eq!(feed_all(&mut r, &first).unwrap(), vec![]);
        assert_eq!(feed_all(&mut r, &rest[..10]).map_err(|v| v.code), Err(1009));
        assert!(!r.message_skipped());
        assert!(!r.discard(&rest[10..]));
        assert!(r.message_skipped());
        // A frame-level fault leaves the stream in step: a Close in the same
        // read is seen.
        let mut r = Reader::new(1024, false);
        let wire = [frame(true, TEXT, &[0xff]), close.clone()].concat();
        assert_eq!(feed_all(&mut r, &wire).map_err(|v| v.code), Err(1007));
        assert!(r.discard(&[]));
        // A bad header leaves no footing: nothing counts as a Close any more.
        let mut r = Reader::new(1024, false);
        let mut bad = frame(true, TEXT, b"x");
        bad[0] |= 0x40;
        assert_eq!(feed_all(&mut r, &bad).map_err(|v| v.code), Err(1002));
        assert!(!r.discard(&close));
        // An empty Close (`ws.close()`) is seen as soon as its header is,
        // and a Close with a payload only once that is read too.
        let mut r = Reader::new(1024, false);
        assert_eq!(feed_all(&mut r, &bad).map_err(|v| v.code), Err(1002));
        let mut r = Reader::new(1024, false);
        r.discard(&[]);
        assert!(r.discard(&frame(true, CLOSE, b"")));
        let mut r = Reader::new(1024, false);
        r.discard(&[]);
        assert!(!r.discard(&close[..close.len() - 1]));
        assert!(r.discard(&close[close.len() - 1..]));
        // A new text message inside a fragmented binary one is 1002 (not a
        // UTF-8 fault of the binary bytes before it).
        let mut r = Reader::new(1024, false);
        let wire = [
            frame(false, BINARY, &[0x61, 0xe2, 0x82]),
            frame(true, TEXT, b"abc"),
        ]
        .concat();
        assert_eq!(feed_all(&mut r, &wire[..wire.len() - 1]), Ok(vec![]));
        assert_eq!(
            feed_all(&mut r, &wire[wire.len() - 1..]).map_err(|v| v.code),
            Err(1002)
        );
        // The relay closing first: a frame half read is skipped to its end.
        let mut r = Reader::new(1024, false);
        let text = frame(true, TEXT, b"hello");
        feed_all(&mut r, &text[..4]).unwrap();
        assert!(!r.discard(&text[4..]));
        assert!(r.discard(&close));
    }

    /// A frame with RSV1 set (the first of a compressed message).
    fn rsv1(mut f: Vec<u8>) -> Vec<u8> {
        f[0] |= RSV1;
        f
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_in_fragments() {
        let text = "a compressed message, a compressed message, a compressed message";
        let c = deflate::compress(text.as_bytes(), 1, deflate::Window::Full).unwrap();
        let mut r = Reader::new(1024, true);
        let got = feed_all(&mut r, &rsv1(frame(true, TEXT, &c))).unwrap();
        assert_eq!(got, vec![message(true, text.as_bytes())]);
        let (a, b) = c.split_at(c.len() / 2);
        let mut data = rsv1(frame(false, BINARY, a));
        data.extend(frame(true, PING, b"p"));
        data.extend(frame(true, CONTINUATION, b));
        let got = feed_all(&mut r, &data).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                message(false, text.as_bytes())
            ]
        );
        // Plain messages still pass on a compressing connection.
        let got = feed_all(&mut r, &frame(true, TEXT, b"plain")).unwrap();
        assert_eq!(got, vec![message(true, b"plain")]);
    }

    #[test]
    fn compression_faults() {
        let c = deflate::compress(&[b'x'; 300], 1, deflate::Window::Full).unwrap();
        let code = |inflates: bool, data: &[u8]| {
            feed_all(&mut Reader::new(1024, inflates), data)
                .unwrap_err()
                .code
        };
        // RSV1 without the extension, on a control frame, on a continuation.
        assert_eq!(code(false, &rsv1(frame(true, TEXT, &c))), 1002);
        assert_eq!(code(true, &rsv1(frame(true, PING, b""))), 1002);
        let mut data = rsv1(frame(false, TEXT, &c));
        data.extend(rsv1(frame(true, CONTINUATION, b"")));
        assert_eq!(code(true, &data), 1002);
        // Past the size limit once inflated, small as it arrives.
        let bomb = deflate::compress(&[b'x'; 4096], 9, deflate::Window::Full).unwrap();
        assert!(bomb.len() < 100);
        assert_eq!(code(true, &rsv1(frame(true, BINARY, &bomb))), 1009);
        // Text that inflates to invalid UTF-8; data that does not inflate.
        let bad = deflate::compress(&[0xff; 300], 1, deflate::Window::Full).unwrap();
        assert_eq!(code(true, &rsv1(frame(true, TEXT, &bad))), 1007);
        assert_eq!(code(true, &rsv1(frame(true, BINARY, &[0xff; 8]))), 1007);
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 31) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
