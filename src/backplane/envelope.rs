//! The message format on the broker.
//!
//! Every message a node hands the broker is a small binary header and the
//! payload, untouched:
//!
//! ```text
//! "WR"  version(1)  flags(1)  node_len(1) node  room_len(1) room  message_id(u64 BE)
//!       sender(u64 BE)  sender_key(u32 BE)
//!       [epoch_len(1) epoch  position_len(1) position  [previous_len(1) previous]]  payload
//! ```
//!
//! `flags` bit 0 is set for a text message. `node` is the publishing node's
//! id (1-64 bytes) so a node can recognise its own messages when the
//! broker echoes them; `room` (0-128 bytes, empty with rooms off) says
//! where the message goes; `message_id` counts up per node, so gaps show
//! where messages were lost (it starts at a random point in each process,
//! whose upper half tells one process of a node from an earlier one under
//! the same id). `sender` and `sender_key` name the client
//! that published it on its node (0: none, or it wants its own messages
//! back), so that node can leave it out when the message comes back.
//!
//! Bit 1 (`SEQUENCED`): the broker gave the message its room's position
//! (shared history, see `backplane`); the node sends the header with the
//! bit set and the broker's script puts the room's epoch and the position,
//! in decimal, between the header and the payload ([`split`] says where).
//! Bit 3 (`CHAINED`, with bit 1): the room's previous position follows, in
//! decimal (0: none). NATS JetStream numbers all rooms in one sequence, so
//! a room's positions are not contiguous there; its link adds the
//! sequence, and this, from the headers JetStream gives the message
//! ([`number`]). Without it the previous position is one less.
//! Bit 2 (`DELIVERED`): the publishing node already delivered it to its
//! own clients (its broker was unreachable then), so when it comes back
//! there the clients that had it skip it.
//!
//! The magic and the version let a future format be told apart, and
//! anything else on the channel be rejected rather than relayed. Version
//! 1 (no sender, no sequence) is still read, so nodes being upgraded from
//! it are still heard; they cannot read version 2 (and a node whose broker
//! numbers messages drops unnumbered ones).

use bytes::{BufMut, Bytes, BytesMut};

/// The first bytes of every message.
const MAGIC: &[u8; 2] = b"WR";
/// The format this build writes.
pub const VERSION: u8 = 2;
/// The first format, still read.
const VERSION_1: u8 = 1;
const TEXT: u8 = 0x01;
/// The broker's script added the room's epoch and the position.
pub const SEQUENCED: u8 = 0x02;
/// The publishing node delivered it to its own clients already.
pub const DELIVERED: u8 = 0x04;
/// The sequence also names the room's previous position.
pub const CHAINED: u8 = 0x08;
/// Bytes of a version 2 header that do not depend on the node or room.
const FIXED: usize = MAGIC.len() + 1 + 1 + 1 + 1 + 8 + 8 + 4;
/// An epoch is at most this long (the relay makes 8 characters).
pub const MAX_EPOCH: usize = 32;
/// The largest position: what Redis's scripts count exactly (2^53), and
/// far from where adding one to it could overflow.
pub const MAX_POSITION: u64 = 1 << 53;

/// Who published a message, on its node: its client id and its key in
/// its room there (0, 0: nobody to leave out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sender {
    pub id: u64,
    pub key: u32,
}

/// A room's epoch and a message's position in it, as the broker gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence<'a> {
    pub epoch: &'a str,
    pub position: u64,
    /// The room's message before it (0: none).
    pub previous: u64,
}

/// One decoded broker message, borrowing from the bytes it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub node: &'a str,
    pub room: &'a str,
    pub text: bool,
    pub id: u64,
    pub sender: Sender,
    /// Its origin node delivered it already (see the module docs).
    pub delivered: bool,
    /// Set by the broker's script (shared history).
    pub sequence: Option<Sequence<'a>>,
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
    #[error("bad epoch or position")]
    Sequence,
    #[error("text payload is not UTF-8")]
    Utf8,
}

/// What a message says about itself besides its node, room and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub text: bool,
    pub id: u64,
    pub sender: Sender,
    /// For the broker's script to sequence (it adds the epoch and position).
    pub sequenced: bool,
    pub delivered: bool,
}

/// Encodes one message; the only copy of the payload a publish to the
/// cluster makes. With `header.sequenced`, the broker's script inserts the
/// sequence at [`split`].
pub fn encode(node: &str, room: &str, header: Header, payload: &[u8]) -> Bytes {
    debug_assert!(!node.is_empty() && node.len() <= 64 && room.len() <= 128);
    let mut b = BytesMut::with_capacity(FIXED + node.len() + room.len() + payload.len());
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    let flags = (if header.text { TEXT } else { 0 })
        | (if header.sequenced { SEQUENCED } else { 0 })
        | (if header.delivered { DELIVERED } else { 0 });
    b.put_u8(flags);
    b.put_u8(node.len() as u8);
    b.put_slice(node.as_bytes());
    b.put_u8(room.len() as u8);
    b.put_slice(room.as_bytes());
    b.put_u64(header.id);
    b.put_u64(header.sender.id);
    b.put_u32(header.sender.key);
    b.put_slice(payload);
    b.freeze()
}

/// Where the header of a message [`encode`] made ends and its payload
/// begins: where the broker's script puts the sequence.
pub fn split(node: &str, room: &str) -> usize {
    FIXED + node.len() + room.len()
}

/// The sequence section the broker's script writes (`previous`: none),
/// or the NATS link (see [`CHAINED`]).
pub fn sequence_bytes(epoch: &str, position: u64, previous: Option<u64>) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.push(epoch.len() as u8);
    b.extend_from_slice(epoch.as_bytes());
    for n in std::iter::once(position).chain(previous) {
        let n = n.to_string();
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
    }
    b
}

/// `message` (as [`encode`] made it for the broker to number) with its
/// sequence: the room's epoch, its position and the room's previous one.
pub fn number(
    message: &[u8],
    epoch: &str,
    position: u64,
    previous: u64,
) -> Result<Bytes, Malformed> {
    let valid = (1..=MAX_POSITION).contains(&position) && previous < position;
    // Version 2, for the broker to number and not numbered yet.
    let mut r = Reader(message);
    let header_ok = r.take(2)? == MAGIC && r.byte()? == VERSION && {
        let flags = r.byte()?;
        flags & (SEQUENCED | CHAINED) == SEQUENCED
    };
    if !valid || !header_ok {
        return Err(Malformed::Sequence);
    }
    let node = r.byte()? as usize;
    r.take(node)?;
    let room = r.byte()? as usize;
    r.take(room + 8 + 8 + 4)?;
    let at = message.len() - r.0.len();
    let sequence = sequence_bytes(epoch, position, Some(previous));
    let mut b = BytesMut::with_capacity(message.len() + sequence.len());
    b.put_slice(&message[..at]);
    b.put_slice(&sequence);
    b.put_slice(&message[at..]);
    b[3] |= CHAINED;
    Ok(b.freeze())
}

/// Decodes and checks one message: anything this build did not write is
/// an error, never a panic.
pub fn decode(b: &[u8]) -> Result<Envelope<'_>, Malformed> {
    let mut r = Reader(b);
    if r.take(2)? != MAGIC {
        return Err(Malformed::Magic);
    }
    let version = r.byte()?;
    if version != VERSION && version != VERSION_1 {
        return Err(Malformed::Version(version));
    }
    let flags = r.byte()?;
    let known = match version {
        VERSION_1 => TEXT,
        _ => TEXT | SEQUENCED | DELIVERED | CHAINED,
    };
    if flags & !known != 0 || flags & (SEQUENCED | CHAINED) == CHAINED {
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
    let id = r.u64()?;
    let mut sender = Sender::default();
    if version == VERSION {
        sender.id = r.u64()?;
        sender.key = u32::from_be_bytes(r.array()?);
    }
    let sequence = match flags & SEQUENCED != 0 {
        true => Some(
            r.sequence(flags & CHAINED != 0)
                .map_err(|_| Malformed::Sequence)?,
        ),
        false => None,
    };
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
        sender,
        delivered: flags & DELIVERED != 0,
        sequence,
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        self.take(N)?.try_into().map_err(|_| Malformed::Truncated)
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string of at most 255 bytes, preceded by its length.
    fn short_str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.byte()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Malformed::Utf8)
    }

    /// An epoch (1 to [`MAX_EPOCH`] letters and digits), a position (1 or
    /// more, in decimal) and, if `chained`, the previous one (less).
    fn sequence(&mut self, chained: bool) -> Result<Sequence<'a>, Malformed> {
        let epoch = self.short_str()?;
        let epoch_ok = (1..=MAX_EPOCH).contains(&epoch.len())
            && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        let position = self.decimal()?;
        let previous = match chained {
            true => self.decimal()?,
            false => position.wrapping_sub(1),
        };
        match epoch_ok && (1..=MAX_POSITION).contains(&position) && previous < position {
            true => Ok(Sequence {
                epoch,
                position,
                previous,
            }),
            false => Err(Malformed::Sequence),
        }
    }

    /// A number in decimal: digits only, no leading zero (`parse` would
    /// also take a sign, and one number has one spelling).
    fn decimal(&mut self) -> Result<u64, Malformed> {
        let text = self.short_str()?;
        let digits = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        match digits {
            true => text.parse().map_err(|_| Malformed::Sequence),
            false => Err(Malformed::Sequence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: bool, id: u64) -> Header {
        Header {
            text,
            id,
            ..Header::default()
        }
    }

    #[test]
    fn round_trips_text_and_binary() {
        let sender = Sender { id: 9, key: 3 };
        let b = encode(
            "node-1",
            "lobby",
            Header {
                sender,
                ..header(true, 42)
            },
            "héllo".as_bytes(),
        );
        assert_eq!(
            decode(&b),
            Ok(Envelope {
                node: "node-1",
                room: "lobby",
                text: true,
                id: 42,
                sender,
                delivered: false,
                sequence: None,
                payload: "héllo".as_bytes(),
            })
        );
        let b = encode("n", "", header(false, u64::MAX), &[0xff, 0, 1]);
        let e = decode(&b).unwrap();
        assert!(!e.text);
        assert_eq!((e.room, e.id, e.payload), ("", u64::MAX, &[0xff, 0, 1][..]));
    }

    /// What the broker's script does: the sequence goes in at `split`.
    fn sequenced(epoch: &str, position: u64, payload: &[u8]) -> Vec<u8> {
        let h = Header {
            sequenced: true,
            delivered: true,
            ..header(true, 7)
        };
        let b = encode("node", "room", h, payload);
        let at = split("node", "room");
        [&b[..at], &sequence_bytes(epoch, position, None), &b[at..]].concat()
    }

    #[test]
    fn reads_the_sequence_the_broker_added() {
        let b = sequenced("Xq3v9LmA", 1041, b"hi");
        let e = decode(&b).unwrap();
        let sequence = Some(Sequence {
            epoch: "Xq3v9LmA",
            position: 1041,
            previous: 1040,
        });
        assert_eq!(
            (e.sequence, e.delivered, e.payload),
            (sequence, true, &b"hi"[..])
        );
        for (epoch, position) in [("", 1), ("a-b", 1), ("ok", 0), ("ok", MAX_POSITION + 1)] {
            assert_eq!(
                decode(&sequenced(epoch, position, b"")),
                Err(Malformed::Sequence)
            );
        }
        let mut signed = sequenced("ok", 12, b"");
        let at = split("node", "room") + 4;
        signed[at] = b'+';
        assert_eq!(decode(&signed), Err(Malformed::Sequence));
        signed[at] = b'0';
        assert_eq!(decode(&signed), Err(Malformed::Sequence));
    }

    #[test]
    fn a_chained_sequence_names_the_rooms_previous_position() {
        let h = Header {
            sequenced: true,
            ..header(false, 7)
        };
        let b = encode("node", "room", h, b"hi");
        let numbered = number(&b, "JsEpoch1", 907, 12).unwrap();
        let e = decode(&numbered).unwrap();
        let sequence = Sequence {
            epoch: "JsEpoch1",
            position: 907,
            previous: 12,
        };
        assert_eq!((e.sequence, e.payload), (Some(sequence), &b"hi"[..]));
        assert_eq!(
            decode(&number(&b, "e", 1, 0).unwrap())
                .unwrap()
                .sequence
                .unwrap()
                .previous,
            0
        );
        // Not less than the position; nor numbered twice; nor unsequenced.
        assert_eq!(number(&b, "e", 5, 5).map(drop), Err(Malformed::Sequence));
        assert_eq!(
            number(&numbered, "e", 1000, 5).map(drop),
            Err(Malformed::Sequence)
        );
        let plain = encode("node", "room", header(false, 7), b"hi");
        assert_eq!(
            number(&plain, "e", 2, 1).map(drop),
            Err(Malformed::Sequence)
        );
        // CHAINED alone is not a flag this build writes.
        let mut b = plain.to_vec();
        b[3] |= CHAINED;
        assert_eq!(decode(&b), Err(Malformed::Flags(CHAINED)));
    }

    #[test]
    fn reads_version_1() {
        let mut b = vec![b'W', b'R', 1, TEXT, 1, b'n', 1, b'r'];
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(b"hi");
        let e = decode(&b).unwrap();
        assert_eq!(
            (e.node, e.room, e.id, e.sender, e.payload),
            ("n", "r", 5, Sender::default(), &b"hi"[..])
        );
        // Version 1 had no other flags.
        b[3] = SEQUENCED;
        assert_eq!(decode(&b), Err(Malformed::Flags(SEQUENCED)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sequenced("ep", 77, b"");
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn rejects_foreign_or_corrupt_messages() {
        let good = encode("node", "room", header(true, 1), b"hi");
        let corrupt = |at: usize, v: u8| {
            let mut b = good.to_vec();
            b[at] = v;
            decode(&b).unwrap_err()
        };
        assert_eq!(decode(b"hello world"), Err(Malformed::Magic));
        assert_eq!(corrupt(2, 3), Malformed::Version(3));
        assert_eq!(corrupt(3, 0x81), Malformed::Flags(0x81));
        assert_eq!(corrupt(4, 0), Malformed::Node);
        // The room "ro/m" is not a room name.
        assert_eq!(corrupt(12, b'/'), Malformed::Room);
        let mut bad_text = good.to_vec();
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(decode(&bad_text), Err(Malformed::Utf8));
    }
}
