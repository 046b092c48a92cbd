//! The bench's message format: who sent it, its place in that sender's
//! sequence, and when it was sent, then filler up to the requested size.
//!
//! The stamp is ASCII (so the same format works for text and binary
//! messages) and fixed-length. Two kinds of payload carry it:
//!
//! ```text
//! random: WSRB<publisher: 8 hex><sequence: 16 hex><sent, ns since bench start: 16 hex><random letters and digits…>
//! json:   {"wsrb":"<the same 40 hex>","events":[{"id":…,"user":"user-…","type":"trade",…},…],"note":"…"}
//! ```
//!
//! Random filler is what a compressor can do least with; the JSON is what
//! most relays carry (repeated keys, a few enumerated values, numbers), for
//! measuring permessage-deflate.

/// Bytes taken by the random payload's stamp; its smallest message.
pub const HEADER_LEN: usize = 4 + STAMP_HEX;

const STAMP_HEX: usize = 8 + 16 + 16;

const MAGIC: &[u8; 4] = b"WSRB";

const JSON_MAGIC: &[u8; 9] = br#"{"wsrb":""#;

/// The JSON payload's smallest message: the stamp alone in an object.
pub const JSON_MIN_LEN: usize = JSON_MAGIC.len() + STAMP_HEX + 2;

/// What fills a message after its stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Random letters and digits: barely compressible.
    #[default]
    Random,
    /// Realistic JSON events: compressible as real traffic is.
    Json,
}

impl Kind {
    /// The smallest message of this kind.
    pub fn min_len(self) -> usize {
        match self {
            Self::Random => HEADER_LEN,
            Self::Json => JSON_MIN_LEN,
        }
    }
}

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

/// A payload of `kind` and `size` bytes (at least the kind's
/// [`Kind::min_len`]) carrying `stamp`. The filler differs per message:
/// it is drawn from a generator seeded with the stamp.
pub fn encode(stamp: Stamp, size: usize, kind: Kind) -> Vec<u8> {
    let size = size.max(kind.min_len());
    let mut rng = fastrand::Rng::with_seed(u64::from(stamp.publisher) << 40 ^ stamp.seq);
    let mut out = Vec::with_capacity(size);
    match kind {
        Kind::Random => {
            out.extend_from_slice(MAGIC);
            push_stamp(&mut out, stamp);
            let filler = size - out.len();
            push_letters(&mut out, &mut rng, filler);
        }
        Kind::Json => {
            out.extend_from_slice(JSON_MAGIC);
            push_stamp(&mut out, stamp);
            out.push(b'"');
            push_events(&mut out, &mut rng, size - 1);
            out.push(b'}');
        }
    }
    debug_assert_eq!(out.len(), size);
    out
}

/// The stamp in a payload of either kind, or `None` if it is not a bench
/// message.
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    let hex = payload
        .strip_prefix(MAGIC)
        .or_else(|| payload.strip_prefix(JSON_MAGIC))?
        .get(..STAMP_HEX)?;
    Some(Stamp {
        publisher: u32::try_from(parse_hex(&hex[..8])?).ok()?,
        seq: parse_hex(&hex[8..24])?,
        sent_ns: parse_hex(&hex[24..40])?,
    })
}

fn push_stamp(out: &mut Vec<u8>, stamp: Stamp) {
    push_hex(out, u64::from(stamp.publisher), 8);
    push_hex(out, stamp.seq, 16);
    push_hex(out, stamp.sent_ns, 16);
}

fn push_letters(out: &mut Vec<u8>, rng: &mut fastrand::Rng, n: usize) {
    out.extend((0..n).map(|_| rng.alphanumeric() as u8));
}

/// Trades as a market-data feed sends them, while they fit in `end`
/// bytes: consecutive ids, rising timestamps, prices near each symbol's
/// level, a hundred active users. Then a `note` of words (or spaces, if
/// too little room is left) up to exactly `end`.
fn push_events(out: &mut Vec<u8>, rng: &mut fastrand::Rng, end: usize) {
    use std::fmt::Write;
    const SYMBOLS: [(&str, u32); 6] = [
        ("BTC-USD", 43_100),
        ("ETH-USD", 2_300),
        ("SOL-USD", 98),
        ("BTC-EUR", 39_800),
        ("ETH-EUR", 2_120),
        ("DOGE-USD", 0),
    ];
    const WORDS: [&str; 16] = [
        "market", "order", "price", "filled", "partial", "update", "book", "level", "the", "of",
        "and", "to", "in", "is", "for", "on",
    ];
    let first_id = rng.u64(1_000_000..9_000_000);
    let mut ts = 1_764_633_600_000 + rng.u64(..86_400_000);
    let mut event = String::with_capacity(160);
    let opened = out.len();
    for id in first_id.. {
        let (symbol, level) = SYMBOLS[rng.usize(..SYMBOLS.len())];
        ts += rng.u64(1..40);
        event.clear();
        let _ = write!(
            event,
            r#"{}{{"id":{id},"user":"user-{}","type":"trade","symbol":"{symbol}","side":"{}","price":{}.{:02},"qty":0.{:04},"ts":{ts}}}"#,
            if out.len() == opened {
                r#","events":["#
            } else {
                ","
            },
            rng.u32(1000..1100),
            if rng.bool() { "buy" } else { "sell" },
            level + rng.u32(..40),
            rng.u32(..100),
            rng.u32(1..10_000),
        );
        // Room for this event, the array's end and a short note after it.
        if out.len() + event.len() + 1 + 12 > end {
            break;
        }
        out.extend_from_slice(event.as_bytes());
    }
    if out.len() > opened {
        out.push(b']');
    }
    let note = br#","note":""#;
    if out.len() + note.len() < end {
        out.extend_from_slice(note);
        let stop = end - 1;
        while out.len() < stop {
            let word = WORDS[rng.usize(..WORDS.len())].as_bytes();
            let fits = word.len().min(stop - out.len());
            out.extend_from_slice(&word[..fits]);
            if out.len() < stop {
                out.push(b' ');
            }
        }
        out.push(b'"');
    }
    out.resize(end, b' ');
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
        for kind in [Kind::Random, Kind::Json] {
            for size in (0..300).chain([1024, 70_000]) {
                let p = encode(stamp, size, kind);
                assert_eq!(p.len(), size.max(kind.min_len()));
                assert!(std::str::from_utf8(&p).is_ok(), "usable as a text message");
                assert_eq!(decode(&p), Some(stamp));
                if kind == Kind::Json {
                    let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_else(|e| {
                        panic!("{size} B: {e}: {}", String::from_utf8_lossy(&p))
                    });
                    assert!(v["wsrb"].is_string());
                }
            }
        }
    }

    #[test]
    fn json_payloads_are_events_and_differ_per_message() {
        let stamp = |seq| Stamp {
            publisher: 1,
            seq,
            sent_ns: 0,
        };
        let a = encode(stamp(1), 1024, Kind::Json);
        let b = encode(stamp(2), 1024, Kind::Json);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert!(v["events"].as_array().unwrap().len() >= 6, "{v}");
        assert_eq!(v["events"][0]["type"], "trade");
        assert_ne!(a[JSON_MIN_LEN..], b[JSON_MIN_LEN..]);
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
            Kind::Random,
        );
        p[10] = b'G';
        assert_eq!(decode(&p), None);
        assert_eq!(decode(&p[..HEADER_LEN - 1]), None);
    }
}
