//! permessage-deflate for the client side, beneath tokio-websockets (which
//! has no extension support and refuses RSV1 frames): the connection's
//! bytes pass through [`Inflating`], which reads the server's 101, and when
//! the server accepted the offer, inflates each compressed message back
//! into a plain frame before the WebSocket library parses it.
//!
//! Only what the server sends is inflated; the client sends its messages
//! plain, which RFC 7692 allows (RSV1 is per message). Inflating reuses the
//! relay's own stateless inflater ([`crate::wire::deflate::inflate`]), so a
//! connection holds no compression state: the offer asks for no context
//! takeover in either direction, and a server that accepts it without
//! `server_no_context_takeover` is refused.
//!
//! Also counts the bytes received after the handshake, compressed or not,
//! for the bench's wire bytes per delivery.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::deflate;

/// The offer: no context takeover either way, so every message inflates
/// on its own.
pub const OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Largest message the client inflates (as tokio-websockets, it has no
/// message limit of its own; this one stops a server's zip bomb).
const MAX_INFLATED: usize = 64 << 20;

/// Longest 101 response read before giving up on it.
const MAX_HEAD: usize = 16 << 10;
/// Most of a refusal's body kept to show (the relay's are one line).
const MAX_REFUSAL: usize = 512;

/// A server's answer other than 101 to the upgrade request: its status and
/// what of its body came with it (the relay says there why it refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub body: String,
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;

enum Phase {
    /// Reading the server's response to the upgrade request.
    Head,
    /// The server accepted the offer: frames are parsed, compressed ones
    /// inflated.
    Frames,
    /// No extension (or not offered): bytes pass through untouched.
    Plain,
}

/// A client connection's byte stream with the server's compressed messages
/// inflated. Writes pass through.
pub struct Inflating<S> {
    inner: S,
    phase: Phase,
    /// Read from `inner`, not yet handled.
    raw: BytesMut,
    /// Handled, for the WebSocket library to read.
    out: BytesMut,
    /// Bytes at the front of `raw` scanned and ready to go up as they are.
    ready: usize,
    /// Bytes of a plain frame still to go up as they are, past `raw`.
    passing: usize,
    /// A compressed message split over frames: its opcode and payload so far.
    message: Option<(u8, BytesMut)>,
    /// Bytes received after the handshake, shared by a dialer's connections.
    received: Arc<AtomicU64>,
    /// The upgrade request carried [`OFFER`].
    offered: bool,
    /// Where a refusal of the upgrade is put, for the dialer to report.
    refusal: Option<Arc<OnceLock<Refusal>>>,
}

impl<S> Inflating<S> {
    /// Wraps a connection before its upgrade request is sent; `offered`:
    /// whether that request carries [`OFFER`] (if not, everything passes
    /// through).
    pub fn new(inner: S, offered: bool, received: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            // Read either way, so that the bytes counted start after it.
            phase: Phase::Head,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            ready: 0,
            passing: 0,
            message: None,
            received,
            offered,
            refusal: None,
        }
    }

    /// Puts the server's status and body in `slot` if it refuses the
    /// upgrade (the WebSocket library only says it was not 101).
    pub fn with_refusal(self, slot: Arc<OnceLock<Refusal>>) -> Self {
        Self {
            refusal: Some(slot),
            ..self
        }
    }

    /// Whether the server accepted permessage-deflate (known once the
    /// handshake is done).
    pub fn deflates(&self) -> bool {
        matches!(self.phase, Phase::Frames)
    }

    /// Reads the 101 once it is whole (`false` until then): passes it on,
    /// and chooses the phase for the bytes after it.
    fn end_head(&mut self) -> io::Result<bool> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&self.raw);
        if let (Ok(httparse::Status::Complete(len)), Some(status), Some(slot)) =
            (parsed, response.code, &self.refusal)
            && status != 101
        {
            let body = &self.raw[len..self.raw.len().min(len + MAX_REFUSAL)];
            // Shown on a terminal: no control characters from the server.
            let body: String = String::from_utf8_lossy(body)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let _ = slot.set(Refusal {
                status,
                body: body.trim().to_owned(),
            });
        }
        let (len, phase) = match parsed {
            Ok(httparse::Status::Complete(len)) if self.offered => (len, accepted(&response)?),
            Ok(httparse::Status::Complete(len)) => (len, Phase::Plain),
            Ok(httparse::Status::Partial) if self.raw.len() < MAX_HEAD => return Ok(false),
            // Let the WebSocket library report what is wrong with it.
            _ => (self.raw.len(), Phase::Plain),
        };
        self.phase = phase;
        self.out.extend_from_slice(&self.raw.split_to(len));
        self.received
            .fetch_add(self.raw.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Scans the frames in `raw` after the `ready` ones: plain frames
    /// become ready as they arrive (passed up from `raw`, not copied);
    /// a compressed message, once whole and at the front (all before it
    /// passed up), is inflated into `out`. What this layer does not expect
    /// of a server goes up as it is, for the library to refuse.
    fn scan(&mut self) -> io::Result<()> {
        loop {
            if self.passing > 0 {
                let n = self.passing.min(self.raw.len() - self.ready);
                self.ready += n;
                self.passing -= n;
                if self.passing > 0 {
                    return Ok(());
                }
            }
            let Some((header, len)) = frame_header(&self.raw[self.ready..]) else {
                return Ok(());
            };
            let (b0, b1) = (self.raw[self.ready], self.raw[self.ready + 1]);
            let opcode = b0 & 0x0f;
            let starts_compressed = b0 & RSV1 != 0 && matches!(opcode, 1 | 2);
            let continues = opcode == 0 && b0 & RSV1 == 0 && self.message.is_some();
            if self.message.is_some() && matches!(opcode, 1 | 2) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server started a message inside a compressed one",
                ));
            }
            if b1 & MASKED != 0 || b0 & 0x30 != 0 {
                self.phase = Phase::Plain;
                self.ready = self.raw.len();
                return Ok(());
            }
            if !(starts_compressed || continues) {
                self.passing = header.saturating_add(len);
                continue;
            }
            if self.ready > 0 {
                return Ok(());
            }
            let so_far = self.message.as_ref().map_or(0, |(_, m)| m.len());
            if so_far.saturating_add(len) > MAX_INFLATED {
                return Err(too_big());
            }
            if self.raw.len() < header + len {
                return Ok(());
            }
            let mut frame = self.raw.split_to(header + len);
            frame.advance(header);
            let (opcode, payload) = match self.message.take() {
                Some((opcode, mut so_far)) => {
                    so_far.extend_from_slice(&frame);
                    (opcode, so_far)
                }
                None => (opcode, frame),
            };
            if b0 & FIN == 0 {
                self.message = Some((opcode, payload));
                continue;
            }
            let inflated = deflate::inflate(&payload, MAX_INFLATED).map_err(|v| match v.code {
                1009 => too_big(),
                _ => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a compressed message from the server does not inflate",
                ),
            })?;
            put_frame(&mut self.out, opcode, &inflated);
        }
    }
}

/// How to go on after this response: [`Phase::Frames`] if it is a 101
/// that accepted the offer.
fn accepted(response: &httparse::Response<'_, '_>) -> io::Result<Phase> {
    let deflate = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .find(|e| extension_name(e) == "permessage-deflate");
    match (response.code, deflate) {
        (Some(101), Some(params)) => {
            match params_of(params).any(|p| p == "server_no_context_takeover") {
                true => Ok(Phase::Frames),
                false => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server accepted permessage-deflate without server_no_context_takeover",
                )),
            }
        }
        _ => Ok(Phase::Plain),
    }
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a compressed message from the server inflates past {MAX_INFLATED} bytes"),
    )
}

/// The extension's name in one `Sec-WebSocket-Extensions` element.
fn extension_name(element: &str) -> &str {
    element.split(';').next().unwrap_or("").trim()
}

/// An extension element's parameters, trimmed.
fn params_of(element: &str) -> impl Iterator<Item = &str> {
    element.split(';').skip(1).map(str::trim)
}

/// Header length and payload length of the frame at the start of `buf`,
/// once its header is in.
fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    let b1 = *buf.get(1)?;
    let mask = if b1 & MASKED != 0 { 4 } else { 0 };
    let (header, len) = match b1 & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?))
                .unwrap_or(usize::MAX),
        ),
        n => (2, n as usize),
    };
    Some((header + mask, len))
}

/// Appends an unmasked, final frame.
fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.put_u8(FIN | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xffff => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.extend_from_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // What was handled goes up first: inflated messages, then the
            // plain bytes scanned after them.
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.raw[..n]);
                this.raw.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Plain if !this.raw.is_empty() => {
                    this.ready = this.raw.len();
                    continue;
                }
                // Straight from the socket: nothing to look at, or the
                // rest of a plain frame.
                Phase::Plain => return this.read_through(cx, buf, usize::MAX),
                Phase::Frames if this.passing > 0 && this.raw.is_empty() => {
                    let passing = this.passing;
                    return this.read_through(cx, buf, passing);
                }
                // A compressed frame waited at the back for what came before it to go up.
                Phase::Frames if !this.raw.is_empty() => {
                    this.scan()?;
                    if this.ready > 0 || !this.out.is_empty() {
                        continue;
                    }
                }
                _ => {}
            }
            this.raw.reserve(16 << 10);
            let mut spare = ReadBuf::uninit(this.raw.spare_capacity_mut());
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut spare))?;
            let n = spare.filled().len();
            if n == 0 {
                // End of stream: whatever is left goes up as it is.
                this.phase = Phase::Plain;
                if this.raw.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // SAFETY: `spare` filled these `n` bytes of `raw`'s spare capacity.
            unsafe { this.raw.set_len(this.raw.len() + n) };
            match this.phase {
                Phase::Head => {
                    if this.end_head()? && matches!(this.phase, Phase::Frames) {
                        this.scan()?;
                    }
                }
                _ => {
                    this.received.fetch_add(n as u64, Ordering::Relaxed);
                    this.scan()?;
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> Inflating<S> {
    /// Reads at most `limit` bytes from the socket straight into `buf`.
    fn read_through(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: usize,
    ) -> Poll<io::Result<()>> {
        let mut limited = buf.take(limit);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        // SAFETY: the inner reader initialised and filled these `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        self.passing = self.passing.saturating_sub(n);
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::wire::Window;

    /// Serves its chunks one read at a time.
    struct Chunks(VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    const ACCEPTED: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
    const DECLINED: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, 0, payload);
        out[0] = b0;
        out.to_vec()
    }

    /// What comes up through [`Inflating`] when `wire` arrives in pieces
    /// of `piece` bytes, and the bytes it counted.
    async fn through(wire: &[u8], piece: usize) -> io::Result<(Vec<u8>, u64)> {
        let chunks = wire.chunks(piece).map(<[u8]>::to_vec).collect();
        let received = Arc::new(AtomicU64::new(0));
        let mut s = Inflating::new(Chunks(chunks), true, received.clone());
        let mut up = Vec::new();
        s.read_to_end(&mut up).await?;
        Ok((up, received.load(Ordering::Relaxed)))
    }

    #[tokio::test]
    async fn compressed_messages_come_up_whole_and_inflated_whatever_the_reads() {
        let text = br#"{"user":"ada","text":"hello, hello, hello, hello"}"#.repeat(30);
        let binary: Vec<u8> = (0..5000u32).flat_map(|i| (i % 7).to_be_bytes()).collect();
        let packed_text = deflate::compress(&text, 1, Window::Full).unwrap();
        let packed_binary = deflate::compress(&binary, 1, Window::Full).unwrap();
        let third = packed_binary.len() / 3;
        let mut wire = ACCEPTED.as_bytes().to_vec();
        let frames = [
            frame(0x89, b"ping"),
            frame(0xC1, &packed_text),
            // A compressed binary message in three frames, a ping between.
            frame(0x42, &packed_binary[..third]),
            frame(0x89, b"mid"),
            frame(0x00, &packed_binary[third..2 * third]),
            frame(0x80, &packed_binary[2 * third..]),
            frame(0x81, b"plain"),
        ];
        wire.extend(frames.concat());
        let mut want = ACCEPTED.as_bytes().to_vec();
        for f in [
            frame(0x89, b"ping"),
            frame(0x81, &text),
            frame(0x89, b"mid"),
            frame(0x82, &binary),
            frame(0x81, b"plain"),
        ] {
            want.extend(f);
        }
        for piece in [1, 3, 100, wire.len()] {
            let (up, received) = through(&wire, piece).await.unwrap();
            assert!(up == want, "in pieces of {piece}");
            assert_eq!(received as usize, wire.len() - ACCEPTED.len());
        }
    }

    #[tokio::test]
    async fn without_an_agreement_everything_passes_through() {
        let mut wire = DECLINED.as_bytes().to_vec();
        wire.extend(frame(0xC1, b"not inflated: the library refuses RSV1"));
        let (up, received) = through(&wire, 7).await.unwrap();
        assert_eq!(up, wire);
        assert_eq!(received as usize, wire.len() - DECLINED.len());
    }

    #[tokio::test]
    async fn an_agreement_that_keeps_the_servers_context_is_refused() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        let e = through(head.as_bytes(), 5).await.unwrap_err();
        assert!(e.to_string().contains("server_no_context_takeover"), "{e}");
    }

    #[tokio::test]
    async fn corrupt_or_oversized_compressed_messages_fail_the_connection() {
        let mut wire = ACCEPTED.as_bytes().to_vec();
        wire.extend(frame(0xC1, &[0xff; 40]));
        let e = through(&wire, 64).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut wire = ACCEPTED.as_bytes().to_vec();
        let mut header = vec![0xC1, 127];
        header.extend((MAX_INFLATED as u64 + 1).to_be_bytes());
        wire.extend(header);
        let e = through(&wire, 64).await.unwrap_err();
        assert!(e.to_string().contains("inflates past"), "{e}");
    }
}
