//! # wsrelay
//!
//! A WebSocket relay: every message a client sends is relayed to every
//! connected client, text as text and binary as binary, byte for byte.
//!
//! The crate is the whole server; the `wsrelay` binary only parses its
//! command line and calls in here. One module per concept, in layers: a
//! module uses only those below it (`tests/it/layers.rs` checks). The
//! public surface is what the binary, the tools and the tests use; the
//! core and the session stay inside the crate.
//!
//! - Bottom: [`wire`] (RFC 6455 frames, strict and bufferless when idle,
//!   encoded once), `metrics` (Prometheus counters and their endpoint),
//!   `origin` (the `Origin` allowlist), `forwarded` (the client address
//!   behind trusted proxies), `query` (query-string parameters), [`tls`]
//!   (PEM files into rustls), [`logging`] (the `tracing` subscriber).
//! - Core: `log` (a room's log of messages and how far behind it a
//!   subscriber may fall), `hub` (rooms, members, fan-out), `relay`
//!   (publishing here and to the other nodes, delivering).
//! - Edges: `limits` (connection caps, rate limit), [`auth`] (tokens and
//!   JWTs), [`upgrade`] (the checks that decide an upgrade request),
//!   [`backplane`] (clustering through Redis pub/sub or NATS),
//!   `connection` (one client after the upgrade), `api` (the HTTP API
//!   for backends).
//! - Root: [`config`] (the YAML configuration, its defaults and errors),
//!   [`server`] (the only reader of the configuration: listeners, TLS and
//!   HTTP, graceful shutdown).
//! - Tools, each behind the cargo feature of its name: `client` (`wsrelay
//!   client`), `bench` (`wsrelay bench`).
//!
//! Running a relay on an ephemeral port from code:
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsrelay::server::ServerError> {
//! let mut config = wsrelay::config::Config::default();
//! config.server.listen = "127.0.0.1:0".parse().unwrap();
//! let server = wsrelay::server::Server::bind(&config).await?;
//! println!("clients connect to {}", server.url());
//! server.run(std::future::pending()).await;
//! # Ok(()) }
//! ```

pub(crate) mod api;
pub mod auth;
pub mod backplane;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub(crate) mod connection;
pub(crate) mod forwarded;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod log;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod origin;
pub(crate) mod query;
pub(crate) mod relay;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod wire;
