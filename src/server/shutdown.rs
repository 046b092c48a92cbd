//! Shutdown's parts: the signals that start it and the spread-out closes.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::hub::{Ending, Member};

/// SIGINT and SIGTERM, listened for from the moment this is created: a
/// signal that arrives before the server starts waiting is not lost (nor
/// does it kill the process with the default action).
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (int, term) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        if int.is_err() || term.is_err() {
            warn!("cannot install signal handlers; the relay may not shut down gracefully");
        }
        Self {
            int: int.ok(),
            term: term.ok(),
        }
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => "SIGINT",
            () = recv(&mut self.term) => "SIGTERM",
        }
    }

    /// Resolves on the first signal, naming it. A second signal afterwards
    /// ends the process at once, for operators who cannot wait.
    pub async fn shutdown(mut self) -> &'static str {
        let name = self.next().await;
        tokio::spawn(async move {
            let again = self.next().await;
            warn!(signal = again, "second signal: exiting now");
            std::process::exit(if again == "SIGINT" { 130 } else { 143 });
        });
        name
    }
}

/// Batches the shutdown closes are spread over.
const CLOSE_BATCHES: usize = 10;

/// Closes clients a batch at a time over `spread`, so that they do not all
/// reconnect to the next relay in the same instant.
pub(super) async fn close_in_batches(clients: Vec<Arc<Member>>, spread: Duration) {
    let per_batch = clients.len().div_ceil(CLOSE_BATCHES).max(1);
    let batches = clients.len().div_ceil(per_batch).max(1);
    let pause = spread / batches as u32;
    for (i, batch) in clients.chunks(per_batch).enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        batch
            .iter()
            .for_each(|member| member.close(Ending::Shutdown));
    }
}
