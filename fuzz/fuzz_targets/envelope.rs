//! Broker messages: for any bytes, decoding never panics, and whatever it
//! accepts re-encodes to exactly the same bytes (nothing is accepted that
//! the relay would not have written itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::backplane::envelope::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data) {
        assert!(!m.text || std::str::from_utf8(m.payload).is_ok());
        assert_eq!(&encode(m.node, m.room, m.text, m.id, m.payload)[..], data);
    }
});
