//! RFC 6455 frames, both ways, with no I/O: [`Reader`] parses what clients
//! send, [`Frame`] and the control-frame encoders are what the relay sends,
//! and [`deflate`] is permessage-deflate (RFC 7692) for both.
//!
//! The bottom layer: it knows nothing of sockets, rooms, clients or
//! configuration, and nothing in the crate is below it.

pub mod deflate;
mod frame;
mod reader;

pub use deflate::Window;

/// The subprotocol of the position-aware mode (docs/PROTOCOL.md): each
/// message comes after a frame with its position.
pub const POSITIONS_PROTOCOL: &str = "wsrelay.v1";
pub use frame::{Compressed, Frame, close_frame, close_reply, pong_frame, unmask};
pub use reader::{Incoming, Reader, Violation};
