//! Log output: `tracing` events to stderr as text or one JSON object per line.
//!
//! A leaf: nothing else in the crate.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing `format` at `level` (a tracing
/// filter). `RUST_LOG`, when set, overrides the level. Returns an error if
/// the level does not parse or a subscriber is already installed.
pub fn init(
    level: &str,
    format: LogFormat,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::builder().parse(env)?,
        // async-nats logs "max reconnection attempts reached" at error
        // level each time the relay's own reconnect loop takes over (see
        // backplane::nats); the relay logs the outage itself, with context.
        _ if level.contains("async_nats") => EnvFilter::builder().parse(level)?,
        _ => EnvFilter::builder()
            .parse(level)?
            .add_directive("async_nats::connector=off".parse()?),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
}
