//! The message format on the broker.
//!
//! Every message a node hands the broker is a small binary header and the
//! payload, untouched:
//!
//! ```text
//! "WR"  version(1)  flags(1)  node_len(1) node  room_len(1) room  message_id(u64 BE)  payload
//! ```
//!
//! `flags` bit 0 is set for a text message. `node` is the publishing node's
//! id (1-64 bytes) so a node can recognise its own messages when the
//! broker echoes them; `room` (0-128 bytes, empty with rooms off) says
//! where the message goes; `message_id` counts up per node, so gaps show
//! where messages were lost. The magic and the version let a future format
//! be told apart, and anything else on the channel be rejected rather than
//! relayed.

use bytes::{BufMut, Bytes, BytesMut};

/// The first bytes of every message.
const MAGIC: &[u8; 2] = b"WR";
/// The format this build writes and reads.
pub const VERSION: u8 = 1;
const TEXT: u8 = 0x01;
/// Bytes of the header that do not depend on the node or room.
const FIXED: usize = MAGIC.len() + 1 + 1 + 1 + 1 + 8;

/// One decoded broker message, borrowing from the bytes it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub node: &'a str,
    pub room: &'a str,
    pub text: bool,
    pub id: u64,
    pub payload: &'a [u8],
}

/// Why a broker message was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("too short or truncated")]
    Truncated,
    #[error("not a wsrelay message")]
    Magic,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("bad node id")]
    Node,
    #[error("bad room name")]
    Room,
    #[error("text payload is not UTF-8")]
    Utf8,
}

/// Encodes one message; the only copy of the payload a publish to the
/// cluster makes.
pub fn encode(node: &str, room: &str, text: bool, id: u64, payload: &[u8]) -> Bytes {
    debug_assert!(!node.is_empty() && node.len() <= 64 && room.len() <= 128);
    let mut b = BytesMut::with_capacity(FIXED + node.len() + room.len() + payload.len());
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    b.put_u8(if text { TEXT } else { 0 });
    b.put_u8(node.len() as u8);
    b.put_slice(node.as_bytes());
    b.put_u8(room.len() as u8);
    b.put_slice(room.as_bytes());
    b.put_u64(id);
    b.put_slice(payload);
    b.freeze()
}

/// Decodes and checks one message: anything this build did not write is
/// an error, never a panic.
pub fn decode(b: &[u8]) -> Result<Envelope<'_>, Malformed> {
    let mut r = Reader(b);
    if r.take(2)? != MAGIC {
        return Err(Malformed::Magic);
    }
    match r.byte()? {
        VERSION => {}
        v => return Err(Malformed::Version(v)),
    }
    let flags = r.byte()?;
    if flags & !TEXT != 0 {
        return Err(Malformed::Flags(flags));
    }
    let node = r.short_str().map_err(|_| Malformed::Node)?;
    if node.is_empty() || node.len() > 64 {
        return Err(Malformed::Node);
    }
    let room = r.short_str().map_err(|_| Malformed::Room)?;
    if !room.is_empty() && !crate::hub::is_room_name(room) {
        return Err(Malformed::Room);
    }
    let id = u64::from_be_bytes(r.take(8)?.try_into().map_err(|_| Malformed::Truncated)?);
    let payload = r.0;
    let text = flags & TEXT != 0;
    // A text message reaches clients as a text frame: invalid UTF-8 there
    // would make every recipient close with 1007.
    if text && std::str::from_utf8(payload).is_err() {
        return Err(Malformed::Utf8);
    }
    Ok(Envelope {
        node,
        room,
        text,
        id,
        payload,
    })
}

/// Reads a message front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    /// A string of at most 255 bytes, preceded by its length.
    fn short_str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.byte()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Malformed::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_binary() {
        let b = encode("node-1", "lobby", true, 42, "héllo".as_bytes());
        assert_eq!(
            decode(&b),
            Ok(Envelope {
                node: "node-1",
                room: "lobby",
                text: true,
                id: 42,
                payload: "héllo".as_bytes(),
            })
        );
        let b = encode("n", "", false, u64::MAX, &[0xff, 0, 1]);
        let e = decode(&b).unwrap();
        assert!(!e.text);
        assert_eq!((e.room, e.id, e.payload), ("", u64::MAX, &[0xff, 0, 1][..]));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = encode("node", "room", false, 7, b"");
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn rejects_foreign_or_corrupt_messages() {
        let good = encode("node", "room", true, 1, b"hi");
        let corrupt = |at: usize, v: u8| {
            let mut b = good.to_vec();
            b[at] = v;
            decode(&b).unwrap_err()
        };
        assert_eq!(decode(b"hello world"), Err(Malformed::Magic));
        assert_eq!(corrupt(2, 2), Malformed::Version(2));
        assert_eq!(corrupt(3, 0x81), Malformed::Flags(0x81));
        assert_eq!(corrupt(4, 0), Malformed::Node);
        // The room "ro/m" is not a room name.
        assert_eq!(corrupt(12, b'/'), Malformed::Room);
        let mut bad_text = good.to_vec();
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(decode(&bad_text), Err(Malformed::Utf8));
    }
}
