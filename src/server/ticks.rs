//! What runs once per interval: keepalive pings (and with them the idle
//! check, giving memory back and expiring rooms' history), history expiry
//! on its own when pings are off, certificate watching.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::connection::ConnectionContext;

/// Calls `tick` every `period` (the first time one period from now) until
/// shutdown starts.
pub(super) async fn every(period: Duration, shutdown: &CancellationToken, mut tick: impl FnMut()) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => tick(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Asks every client to ping its peer once per interval, and advances the
/// clock clients measure idleness by. A client idle at its ping gives back
/// its buffers; the next tick hands what they freed back to the system.
pub(super) async fn keepalive(cx: Arc<ConnectionContext>) {
    let Some(clock) = &cx.keepalive else { return };
    every(clock.interval, &cx.shutdown, || {
        clock.advance();
        // Off the runtime's threads: after a burst it can take milliseconds.
        tokio::task::spawn_blocking(give_back_free_memory);
        cx.relay.hub.ping_all();
    })
    .await;
}

/// Lets rooms' history expire on a relay that does not ping (pings do it
/// otherwise): every tenth of the ttl, within 1 s to 1 min.
pub(super) async fn history(cx: Arc<ConnectionContext>, ttl: Duration) {
    if cx.keepalive.is_some() {
        return;
    }
    let period = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    every(period, &cx.shutdown, || cx.relay.hub.expire_history()).await;
}

/// Returns the allocator's free memory to the system once there is enough
/// of it to matter. glibc keeps what clients freed after a burst inside its
/// heap, pinned by the live allocations around it: 10 000 idle clients that
/// had received 50 messages of 900 B each held 4.4 KB apiece against 2.4 KB
/// fresh (after 20 messages of 50 B, mallinfo2 showed less in use than when
/// fresh: the rest was free but resident); trimmed, 0.93 × of fresh. A trim after such a burst took 7 ms; with nothing to give back,
/// microseconds. Other allocators and platforms: nothing is done.
fn give_back_free_memory() {
    /// Free bytes in the heap below which a trim is not worth its locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const TRIM_ABOVE: usize = 1 << 20;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 and malloc_trim only read and release the
    // allocator's own free lists, under its locks; they may be called from
    // any thread at any time.
    unsafe {
        if libc::mallinfo2().fordblks >= TRIM_ABOVE {
            libc::malloc_trim(0);
        }
    }
}
