//! # wsrelay
//!
//! A WebSocket relay: every message a client sends is relayed to every
//! connected client, text as text and binary as binary, byte for byte.
//!
//! The crate is the whole server; the `wsrelay` binary only parses its
//! command line and calls in here. One module per concept:
//!
//! - [`config`]: the YAML configuration, its defaults and its errors.
//! - [`server`]: listeners, TLS and HTTP, graceful shutdown.
//! - [`upgrade`]: the checks that decide an upgrade request (101 or 4xx).
//! - [`connection`]: one client's reader and writer after the upgrade.
//! - [`hub`]: membership and fan-out into bounded per-client queues.
//! - [`queue`]: one client's bounded queue and the slow-consumer policy.
//! - [`wire`]: RFC 6455 frames, parsed strictly and bufferless when idle, and encoded once.
//! - [`limits`]: caps on concurrent clients, checked before the upgrade.
//! - [`origin`]: the `Origin` allowlist.
//! - [`auth`]: static tokens and JWTs, checked before the upgrade.
//! - [`forwarded`]: the real client address behind trusted proxies.
//! - [`query`]: parameters from a request's query string.
//! - [`api`]: the HTTP API for backends (publish, rooms, stats, close).
//! - [`backplane`]: clustering through Redis pub/sub or NATS.
//! - [`metrics`]: Prometheus counters and gauges, and their HTTP endpoint.
//! - [`tls`]: PEM certificates and keys into rustls configurations.
//! - [`bench`](mod@bench): the load generator behind `wsrelay bench`.
//! - [`client`]: the line-oriented client behind `wsrelay client`.
//! - [`logging`]: the `tracing` subscriber (text or JSON).
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

pub mod api;
pub mod auth;
pub mod backplane;
pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod forwarded;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;

pub mod query;
pub mod queue;
pub mod relay;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod wire;
