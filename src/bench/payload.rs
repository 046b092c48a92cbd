//! The bench's message format: who sent it, its place in that sender's
//! sequence, and when it was sent.
//!
//! The header is ASCII (so the same format works for text and binary
//! messages) and fixed-length; the rest of the payload is padding up to the
//! requested size:
//!
//! ```text
//! WSRB <publisher: 8 hex> <sequence: 16 hex> <sent, ns since bench start: 16 hex> <padding 'x'…>
//! ```

/// Bytes taken by the header; the smallest message the bench can send.
pub const HEADER_LEN: usize = 4 + 8 + 16 + 16;

const MAGIC: &[u8; 4] = b"WSRB";

/// Sent before a cross-node run until every subscriber hears it (proof that
/// the nodes' broker subscriptions are in place); receivers skip it.
pub const PROBE: &[u8] = b"WSRB-PROBE";

/// Whether a payload is a [`PROBE`].
pub fn is_probe(payload: &[u8]) -> bool {
    payload == PROBE
}

/// What each bench message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds since the bench's clock started.
    pub sent_ns: u64,
}

/// A payload of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub fn encode(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER_LEN));
    out.extend_from_slice(MAGIC);
    push_hex(&mut out, u64::from(stamp.publisher), 8);
    push_hex(&mut out, stamp.seq, 16);
    push_hex(&mut out, stamp.sent_ns, 16);
    out.resize(size.max(HEADER_LEN), b'x');
    out
}

/// The stamp in a payload, or `None` if it is not a bench message.
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    let rest = payload.strip_prefix(MAGIC)?;
    if rest.len() < HEADER_LEN - MAGIC.len() {
        return None;
    }
    Some(Stamp {
        publisher: u32::try_from(parse_hex(&rest[..8])?).ok()?,
        seq: parse_hex(&rest[8..24])?,
        sent_ns: parse_hex(&rest[24..40])?,
    })
}

fn push_hex(out: &mut Vec<u8>, value: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((value >> (i * 4)) & 0xf) as usize]);
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_size() {
        let stamp = Stamp {
            publisher: 0xdead_beef,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        for size in [0, HEADER_LEN, HEADER_LEN + 1, 64, 1024, 70_000] {
            let p = encode(stamp, size);
            assert_eq!(p.len(), size.max(HEADER_LEN));
            assert!(std::str::from_utf8(&p).is_ok(), "usable as a text message");
            assert_eq!(decode(&p), Some(stamp));
        }
    }

    #[test]
    fn rejects_what_is_not_a_bench_message() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"hello, world"), None);
        let mut p = encode(
            Stamp {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            },
            64,
        );
        p[10] = b'G';
        assert_eq!(decode(&p), None);
        assert_eq!(decode(&p[..HEADER_LEN - 1]), None);
    }
}
