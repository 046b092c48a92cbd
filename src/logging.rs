//! Log output: `tracing` events to stderr as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Returns an error if the level does not parse or a
/// subscriber is already installed.
pub fn init(config: &LogConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::builder().parse(env)?,
        // async-nats logs "max reconnection attempts reached" at error
        // level each time the relay's own reconnect loop takes over (see
        // backplane::nats); the relay logs the outage itself, with context.
        _ if config.level.contains("async_nats") => EnvFilter::builder().parse(&config.level)?,
        _ => EnvFilter::builder()
            .parse(&config.level)?
            .add_directive("async_nats::connector=off".parse()?),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
}
