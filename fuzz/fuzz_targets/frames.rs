//! The frame reader: for any bytes, cut into chunks anywhere, it reports
//! exactly what it reports when the bytes arrive at once, never panics,
//! and every text message it accepts is valid UTF-8 within the size limit,
//! with and without permessage-deflate (compressed messages inflated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::wire::{Incoming, Reader, Violation};

const MAX_MESSAGE: usize = 4096;

/// Feeds `chunks` to a fresh reader, as the relay does: stops at a Close or
/// a violation.
fn run<'a>(
    inflates: bool,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Incoming>, Option<Violation>) {
    let mut reader = Reader::new(MAX_MESSAGE, inflates);
    let mut items = Vec::new();
    let mut closed = false;
    for chunk in chunks {
        let result = reader.feed(chunk, &mut |item| {
            closed = matches!(item, Incoming::Close(_));
            items.push(item);
            !closed
        });
        if let Err(v) = result {
            return (items, Some(v));
        }
        if closed {
            break;
        }
    }
    (items, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte sets the chunk size for the split run, and its low
    // bit whether permessage-deflate was negotiated.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let inflates = cut & 1 == 1;
    let whole = run(inflates, std::iter::once(bytes));
    let split = run(inflates, bytes.chunks(usize::from(cut >> 1).max(1)));
    assert_eq!(whole, split, "chunking changed the result");
    for item in &whole.0 {
        if let Incoming::Message(frame) = item {
            assert!(frame.payload().len() <= MAX_MESSAGE);
            if frame.is_text() {
                assert!(std::str::from_utf8(frame.payload()).is_ok());
            }
        }
    }
});
