//! Broker messages: for any bytes, decoding never panics, and whatever it
//! accepts re-encodes to exactly the same bytes (nothing is accepted that
//! the relay, its broker's script or its NATS link would not have written
//! itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::backplane::envelope::{CHAINED, Header, decode, encode, sequence_bytes, split};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode(data) else {
        return;
    };
    assert!(!m.text || std::str::from_utf8(m.payload).is_ok());
    let again = match data[2] {
        // Version 1: no sender, no sequence, no other flags.
        1 => {
            let mut b = vec![b'W', b'R', 1, u8::from(m.text), m.node.len() as u8];
            b.extend_from_slice(m.node.as_bytes());
            b.push(m.room.len() as u8);
            b.extend_from_slice(m.room.as_bytes());
            b.extend_from_slice(&m.id.to_be_bytes());
            b.extend_from_slice(m.payload);
            b
        }
        _ => {
            let header = Header {
                text: m.text,
                id: m.id,
                sender: m.sender,
                sequenced: m.sequence.is_some(),
                delivered: m.delivered,
            };
            let mut b = encode(m.node, m.room, header, m.payload).to_vec();
            let at = split(m.node, m.room);
            // Whether the previous position was written out (NATS) or is
            // one less (Redis) is only in the flags.
            let chained = data[3] & CHAINED != 0;
            if chained {
                b[3] |= CHAINED;
            }
            let sequence = m
                .sequence
                .map(|s| sequence_bytes(s.epoch, s.position, chained.then_some(s.previous)))
                .unwrap_or_default();
            [&b[..at], &sequence, &b[at..]].concat()
        }
    };
    assert_eq!(again, data);
});
