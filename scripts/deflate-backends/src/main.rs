//! zlib-rs (through flate2, what the relay uses) against miniz_oxide: raw
//! deflate of the bench's 1 KiB JSON messages, each from a reset
//! compressor (no context takeover, as the relay compresses), and inflating
//! them back. Prints nanoseconds per message and the ratio per level.
//!
//! cargo run --release --manifest-path scripts/deflate-backends/Cargo.toml [SIZE]

use std::hint::black_box;
use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, compress, create_comp_flags_from_zip_params,
};
use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush};
use wsrelay::bench::payload::{self, Kind, Stamp};

const ROUNDS: usize = 100;

fn main() {
    let size = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let messages: Vec<Vec<u8>> = (0..500)
        .map(|seq| {
            let stamp = Stamp {
                publisher: 0,
                seq,
                sent_ns: seq * 7_919_000,
            };
            payload::encode(stamp, size, Kind::Json)
        })
        .collect();
    let plain: usize = messages.iter().map(Vec::len).sum();
    println!(
        "{} JSON messages of {size} B, {ROUNDS} rounds",
        messages.len()
    );
    for level in [1, 2, 3, 6, 9] {
        let mut z = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(size * 2 + 64);
        let (zlib_ns, zlib_bytes) = per_message(&messages, |m| {
            z.reset();
            out.clear();
            z.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
            out.len()
        });
        let mut m = CompressorOxide::new(create_comp_flags_from_zip_params(level as i32, 0, 0));
        let mut buf = vec![0; size * 2 + 64];
        let (miniz_ns, miniz_bytes) = per_message(&messages, |msg| {
            m.reset();
            compress(&mut m, msg, &mut buf, TDEFLFlush::Sync).2
        });
        println!(
            "level {level}: zlib-rs {zlib_ns:>6.0} ns, ratio {:.2} | miniz_oxide {miniz_ns:>6.0} ns, ratio {:.2} | miniz_oxide / zlib-rs time {:.2}",
            plain as f64 / zlib_bytes as f64,
            plain as f64 / miniz_bytes as f64,
            miniz_ns / zlib_ns
        );
    }
    let mut z = Compress::new(Compression::new(1), false);
    let packed: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| {
            z.reset();
            let mut out = Vec::with_capacity(size * 2 + 64);
            z.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
            out
        })
        .collect();
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(size + 64);
    let (zlib_ns, _) = per_message(&packed, |p| {
        d.reset(false);
        out.clear();
        d.decompress_vec(p, &mut out, FlushDecompress::Sync)
            .unwrap();
        out.len()
    });
    let mut state = InflateState::new(DataFormat::Raw);
    let mut buf = vec![0; size + 64];
    let (miniz_ns, _) = per_message(&packed, |p| {
        state.reset(DataFormat::Raw);
        inflate(&mut state, p, &mut buf, MZFlush::Sync).bytes_written
    });
    println!(
        "inflate: zlib-rs {zlib_ns:.0} ns | miniz_oxide {miniz_ns:.0} ns | miniz_oxide / zlib-rs time {:.2}",
        miniz_ns / zlib_ns
    );
}

/// Mean nanoseconds per message of `f` over every message, `ROUNDS` times,
/// and the bytes it returned for one round.
fn per_message(messages: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> usize) -> (f64, usize) {
    let bytes = messages.iter().map(|m| f(m)).sum();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        for m in messages {
            black_box(f(black_box(m)));
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / (ROUNDS * messages.len()) as f64;
    (ns, bytes)
}
