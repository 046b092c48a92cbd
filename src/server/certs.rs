//! Certificate reloads: on SIGHUP and when the files change.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use super::ticks::every;
use crate::connection::ConnectionContext;
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// The server's certificate store, and how often to look for new files.
#[derive(Clone)]
pub(super) struct CertReloader {
    pub(super) store: Arc<CertStore>,
    pub(super) watch_interval: Duration,
}

impl CertReloader {
    /// Loads the files again: new handshakes get the new pair; on failure
    /// the old one stays in use. Either way it is logged and counted.
    pub(super) fn reload(&self, metrics: &Metrics, trigger: &str) {
        match self.store.reload() {
            Ok(()) => {
                metrics.tls_reloaded(true);
                let expiry = self.store.not_after().unwrap_or(0);
                metrics.tls_certificate_expiry.set(expiry);
                info!(trigger, not_after = expiry, "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reloaded(false);
                error!(trigger, error = %e, "TLS certificate reload failed; keeping the current certificate");
            }
        }
    }

    /// What identifies the files' current contents: modification time, size
    /// and inode of each, through symlinks, so a Kubernetes-style swap of
    /// the directory a link points to counts as a change.
    pub(super) fn fingerprint(&self) -> Vec<Option<(std::time::SystemTime, u64, u64)>> {
        use std::os::unix::fs::MetadataExt;
        self.store
            .files()
            .iter()
            .map(|f| {
                let m = std::fs::metadata(f).ok()?;
                Some((m.modified().ok()?, m.len(), m.ino()))
            })
            .collect()
    }
}

/// Reloads the certificate whenever its files change.
pub(super) async fn watch_certificate(certs: CertReloader, cx: Arc<ConnectionContext>) {
    let mut seen = certs.fingerprint();
    every(certs.watch_interval, &cx.shutdown, || {
        let now = certs.fingerprint();
        // A failed reload is retried only once the files change again, so a
        // bad pair is reported once, not every interval.
        if now != seen {
            seen = now;
            certs.reload(&cx.relay.metrics, "file change");
        }
    })
    .await;
}
