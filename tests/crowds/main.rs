//! The tests that need most of this process's file descriptors: a thousand
//! readers of one burst, a thousand half-open handshakes, eight hundred
//! idle clients. Each relay runs as its own process, so a crowd costs its
//! sockets once on each side and fits `ulimit -n 1024`; here, in a binary
//! of their own, one test at a time (`one_at_a_time`), none of them shares
//! the table with another test. Everything else is in `tests/it`.

#[path = "../common/mod.rs"]
mod common;

mod bursts;
mod compression;
mod handshakes;
mod history;
mod idle_memory;

use tokio::sync::{Mutex, MutexGuard};

/// Held for the whole of a crowd test: they share the file-descriptor
/// table and the CPUs.
async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}
