//! permessage-deflate (RFC 7692): choosing an offer, compressing a message
//! once for every subscriber that negotiated it, and inflating what clients
//! send within the message size limit.
//!
//! No compression state lives in a connection. The relay always takes
//! `server_no_context_takeover` and `client_no_context_takeover`, so every
//! message is compressed and inflated on its own, with a compressor and an
//! inflater kept per thread and reset for each message. Pure encoding: no
//! I/O, and nothing of rooms, clients or configuration.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::reader::Violation;

/// The LZ77 window the relay compresses with, as the client allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 32 KiB (15 bits): every browser's offer.
    Full,
    /// 512 B (9 bits): for an offer with `server_max_window_bits` below 15.
    /// One narrow size for every such offer, so a message is compressed
    /// at most twice whatever the clients asked for.
    Small,
}

impl Window {
    fn bits(self) -> u8 {
        match self {
            Self::Full => 15,
            Self::Small => 9,
        }
    }
}

/// An accepted offer: the window to compress with and the
/// `Sec-WebSocket-Extensions` value of the 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub window: Window,
    pub response: String,
}

/// The first `permessage-deflate` offer in `Sec-WebSocket-Extensions`
/// values (in order) that the relay can honour, or `None`: then the
/// extension is declined (no header in the 101), never the handshake.
///
/// An offer is declined for an unknown or repeated parameter, a malformed
/// value, or a `server_max_window_bits` of 8 (zlib's raw deflate cannot
/// keep to 256 bytes).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .find_map(accept)
}

/// One offer (`name; param; param=value`), accepted or not.
fn accept(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let which = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_bits = Some(window_bits(value?)?);
                2
            }
            "client_max_window_bits" => {
                // Any window the client uses is one the relay can inflate.
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[which], true) {
            return None;
        }
    }
    let window = match server_bits {
        None | Some(15) => Window::Full,
        Some(9..=14) => Window::Small,
        Some(_) => return None,
    };
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_bits {
        // The same value as offered: the relay keeps to it or less (RFC
        // 7692 section 7.1.2.1).
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreement { window, response })
}

/// A parameter value, quoted or not (RFC 7692 section 5.2).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window size parameter: 8 to 15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    let bits: u8 = v.parse().ok().filter(|_| ok)?;
    (8..=15).contains(&bits).then_some(bits)
}

/// The four bytes a sync flush ends with, which the sender removes and the
/// receiver puts back (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// One compressor per window, at the level last asked for.
    static COMPRESSORS: RefCell<[Option<(u32, Compress)>; 2]> = const { RefCell::new([None, None]) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one message, without the flush's tail; `None`
/// when compressing would not make it smaller (then it goes plain).
pub fn compress(payload: &[u8], level: u32, window: Window) -> Option<Vec<u8>> {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let slot = &mut compressors[window as usize];
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = Compress::new_with_window_bits(Compression::new(level), false, window.bits());
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut()?;
        // A compressor that failed or panicked is not trusted again: the
        // message goes plain and the next one gets a new compressor.
        let compressed = std::panic::catch_unwind(AssertUnwindSafe(|| deflate_whole(c, payload)));
        match compressed {
            Ok(Some(out)) => (out.len() < payload.len()).then_some(out),
            Ok(None) | Err(_) => {
                *slot = None;
                None
            }
        }
    })
}

/// `payload` through `c` from a reset, flushed, without the tail; `None`
/// if zlib reports an error.
fn deflate_whole(c: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    c.reset();
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let done = c.total_in() as usize;
        c.compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
            .ok()?;
        // Finished when all input is in and the flush had room to spare.
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        // Never given up midway, even once it is clearly not getting
        // smaller: zlib-rs 0.6's `reset` did not recover from that, and
        // the next message panicked (see the tests).
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a compressed message could not be inflated.
const TOO_BIG: Violation = Violation {
    code: 1009,
    reason: "message too big",
};
const CORRUPT: Violation = Violation {
    code: 1007,
    reason: "invalid compressed data",
};

/// Inflates one message's compressed payload (the tail removed). More than
/// `limit` bytes of output fails with 1009 as soon as the limit is passed:
/// the output never grows past it.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, Violation> {
    INFLATER.with_borrow_mut(|inflater| {
        let d = inflater.get_or_insert_with(|| Decompress::new(false));
        // As for compressing: an inflater that panicked is not used again.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inflate_whole(d, compressed, limit))) {
            Ok(result) => result,
            Err(_) => {
                *inflater = None;
                Err(CORRUPT)
            }
        }
    })
}

fn inflate_whole(
    d: &mut Decompress,
    compressed: &[u8],
    limit: usize,
) -> Result<Vec<u8>, Violation> {
    d.reset(false);
    let mut out = Vec::with_capacity((compressed.len() * 4).max(64).min(limit + 1));
    for part in [compressed, &TAIL[..]] {
        let mut at = 0;
        loop {
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&part[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| CORRUPT)?;
            at += (d.total_in() - in_before) as usize;
            if out.len() > limit {
                return Err(TOO_BIG);
            }
            if status == Status::StreamEnd {
                return Ok(out);
            }
            // All of it in, and the output had room: on to the next part.
            if at == part.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                // Grows by doubling, never past one byte over the limit.
                let room = out.capacity().max(64).min(limit + 1 - out.len());
                out.reserve_exact(room);
            } else if d.total_in() == in_before && out.len() == out_before {
                return Err(CORRUPT);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Agreement> {
        negotiate([v.as_bytes()])
    }

    #[test]
    fn browsers_offer_is_accepted_with_no_context_takeover_both_ways() {
        let a = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(a.window, Window::Full);
        assert_eq!(
            a.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn offers_it_cannot_honour_are_declined_for_the_next() {
        assert_eq!(offer("x-webkit-deflate-frame"), None);
        assert_eq!(offer("permessage-deflate; unknown"), None);
        assert_eq!(offer("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(offer("permessage-deflate; server_max_window_bits=16"), None);
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=010"),
            None
        );
        assert_eq!(offer("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover=1"),
            None
        );
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None
        );
        let a = offer(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=\"10\"",
        )
        .unwrap();
        assert_eq!(a.window, Window::Small);
        assert!(a.response.ends_with("; server_max_window_bits=10"));
        let a = negotiate([
            &b"foo"[..],
            b"permessage-deflate; client_max_window_bits=12",
        ])
        .unwrap();
        assert_eq!(a.window, Window::Full);
    }

    #[test]
    fn compressed_messages_inflate_back_in_either_window() {
        let text = br#"{"user":"ada","room":"lobby","text":"hello, hello, hello"}"#.repeat(40);
        for window in [Window::Full, Window::Small] {
            let c = compress(&text, 1, window).unwrap();
            assert!(c.len() * 3 < text.len(), "{} of {}", c.len(), text.len());
            assert_eq!(inflate(&c, text.len()).unwrap(), text);
        }
        // Incompressible input goes plain.
        let mut noise = vec![0; 512];
        fastrand::Rng::with_seed(7).fill(&mut noise);
        assert_eq!(compress(&noise, 1, Window::Full), None);
    }

    #[test]
    fn inflating_past_the_limit_stops_at_the_limit() {
        let bomb = compress(&vec![b'a'; 10 << 20], 9, Window::Full).unwrap();
        assert!(bomb.len() < 20_000);
        assert_eq!(inflate(&bomb, 1 << 16), Err(TOO_BIG));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 100), Err(CORRUPT));
        assert_eq!(
            inflate(&compress(&[b'a'; 300], 1, Window::Full).unwrap(), 300)
                .unwrap()
                .len(),
            300
        );
    }

    /// One thread's compressor serves message after message, compressible
    /// or not, of every size and in both windows. (Giving up on a message
    /// midway once left zlib-rs's state broken for the next one, whatever
    /// `reset` did: it panicked on the next.)
    #[test]
    fn one_compressor_serves_any_sequence_of_messages() {
        let mut rng = fastrand::Rng::with_seed(3);
        let words = [
            "relay ", "room ", "message ", "{\"id\":", "42, ", "Faust ", "und ",
        ];
        let text: Vec<u8> = (0..300_000)
            .flat_map(|_| words[rng.usize(..words.len())].bytes())
            .collect();
        let mut noise = vec![0u8; 300_000];
        rng.fill(&mut noise);
        for round in 0..400 {
            let n = [16, 64, 256, 1024, 4096, 16384, 65536, 131072][round % 8];
            let src = if rng.bool() { &text } else { &noise };
            let at = rng.usize(0..src.len() - n);
            let payload = &src[at..at + n];
            let window = if rng.bool() {
                Window::Full
            } else {
                Window::Small
            };
            if let Some(c) = compress(payload, 1, window) {
                assert_eq!(inflate(&c, 1 << 20).unwrap(), payload);
            }
        }
    }

    #[test]
    fn inflates_the_rfc_7692_example() {
        // Section 7.2.3.1: "Hello", compressed, the tail removed.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 100).unwrap(), b"Hello");
        // A limit of a few bytes neither panics nor lets it through.
        assert_eq!(inflate(&hello, 4), Err(TOO_BIG));
        assert_eq!(inflate(&hello, 5).unwrap(), b"Hello");
    }

    #[test]
    fn the_small_window_keeps_to_512_bytes() {
        // Random 2 KiB blocks, each repeated: a 32 KiB window matches the
        // repeats 2 KiB back; a 512 B window cannot see them. (An inflater
        // cannot tell: zlib follows any distance still in its output.)
        let mut data = Vec::new();
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..4 {
            let mut block = vec![0u8; 2048];
            rng.fill(&mut block);
            data.extend_from_slice(&block);
            data.extend_from_slice(&block);
        }
        let full = compress(&data, 1, Window::Full).unwrap();
        assert!(full.len() < data.len() * 6 / 10, "{}", full.len());
        assert_eq!(inflate(&full, data.len()).unwrap(), data);
        match compress(&data, 1, Window::Small) {
            None => {}
            Some(small) => {
                assert!(small.len() > data.len() * 9 / 10, "{}", small.len());
                assert_eq!(inflate(&small, data.len()).unwrap(), data);
            }
        }
    }
}
