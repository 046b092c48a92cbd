//! What the relay puts on the wire: data frames encoded once for every
//! subscriber, control frames, and the unmasking every client frame needs.
//! Pure encoding: no I/O, and nothing of rooms, clients or sockets.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::deflate::{self, Window};

/// The opcodes the relay understands (RFC 6455 section 5.2).
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;
/// The first header byte's bit that marks a compressed message (RFC 7692).
pub(crate) const RSV1: u8 = 0x40;

/// A data message encoded once as the unmasked, final server frame that
/// goes on every subscriber's wire unchanged; and, once marked
/// [`Frame::compressible`], its permessage-deflate form, made on first
/// need and shared the same way.
#[derive(Debug, Clone)]
pub struct Frame {
    wire: Bytes,
    deflated: Option<Arc<Deflated>>,
}

/// A message's compressed frames, one per window, made at most once each.
#[derive(Debug)]
struct Deflated {
    level: u8,
    frames: [OnceLock<Bytes>; 2],
}

/// What compressing one message did, for whoever counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressed {
    /// Payload bytes before and after (equal when it went plain).
    pub before: usize,
    pub after: usize,
    /// How long compressing took.
    pub took: Duration,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire
    }
}

impl Eq for Frame {}

impl Frame {
    /// Encodes a text (`text == true`) or binary message.
    pub fn new(text: bool, payload: &[u8]) -> Self {
        let mut b = Self::header(text, payload.len());
        b.extend_from_slice(payload);
        Self::from_wire(b.freeze())
    }

    fn from_wire(wire: Bytes) -> Self {
        Self {
            wire,
            deflated: None,
        }
    }

    /// The same message, to be compressed at `level` (1-9) for clients
    /// that negotiated permessage-deflate.
    pub fn compressible(&self, level: u8) -> Self {
        Self {
            wire: self.wire.clone(),
            deflated: Some(Arc::new(Deflated {
                level,
                frames: Default::default(),
            })),
        }
    }

    /// The frame for a client that negotiated permessage-deflate with
    /// `window`: compressed once for every such client (RSV1 set), or the
    /// plain frame if the message was not marked compressible or does not
    /// get smaller. `compressed` hears of the one call that compressed it.
    pub fn deflated(&self, window: Window, compressed: impl FnOnce(Compressed)) -> &Bytes {
        let Some(d) = &self.deflated else {
            return &self.wire;
        };
        d.frames[window as usize].get_or_init(|| {
            let began = Instant::now();
            let payload = self.payload();
            let (frame, after) = match deflate::compress(payload, u32::from(d.level), window) {
                Some(c) => {
                    let mut b = Self::header(self.is_text(), c.len());
                    b[0] |= RSV1;
                    b.extend_from_slice(&c);
                    (b.freeze(), c.len())
                }
                None => (self.wire.clone(), payload.len()),
            };
            compressed(Compressed {
                before: payload.len(),
                after,
                took: began.elapsed(),
            });
            frame
        })
    }

    /// Encodes a message from a client frame's masked payload, unmasking it
    /// in the same pass as the copy that encoding needs anyway.
    pub fn from_masked(text: bool, masked: &[u8], mask: [u8; 4]) -> Self {
        let mut b = Self::header(text, masked.len());
        let start = b.len();
        b.extend_from_slice(masked);
        unmask(&mut b[start..], mask);
        Self::from_wire(b.freeze())
    }

    /// A buffer holding the frame header, with room for the payload.
    fn header(text: bool, n: usize) -> BytesMut {
        let opcode = if text { TEXT } else { BINARY };
        let mut b = BytesMut::with_capacity(n + 10);
        b.put_u8(0x80 | opcode);
        if n < 126 {
            b.put_u8(n as u8);
        } else if n <= 0xffff {
            b.put_u8(126);
            b.put_u16(n as u16);
        } else {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
        b
    }

    /// The whole frame, header included.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    fn header_len(&self) -> usize {
        match self.wire.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        }
    }

    /// The message's payload.
    pub fn payload(&self) -> &[u8] {
        &self.wire[self.header_len()..]
    }

    pub fn is_text(&self) -> bool {
        self.wire.first() == Some(&(0x80 | TEXT))
    }
}

/// XORs `buf` with the frame's mask, eight bytes at a time.
pub fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A server control frame (unmasked, final).
fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + payload.len());
    b.put_u8(0x80 | opcode);
    b.put_u8(payload.len().min(125) as u8);
    b.extend_from_slice(&payload[..payload.len().min(125)]);
    b.freeze()
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    control_frame(CLOSE, &payload)
}

/// The reply to a peer's Close: its code echoed (RFC 6455 section 5.5.1),
/// or an empty close if it sent none.
pub fn close_reply(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => close_frame(code, ""),
        None => control_frame(CLOSE, &[]),
    }
}

/// A pong answering a ping's payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control_frame(PONG, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_are_final_and_unmasked() {
        assert_eq!(
            &close_frame(1001, "bye")[..],
            &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
        );
        assert_eq!(&close_reply(None)[..], &[0x88, 0]);
        assert_eq!(&pong_frame(b"hi")[..], &[0x8A, 2, b'h', b'i']);
    }
}
