//! The integration tests, one binary: each module starts the real relay on
//! `127.0.0.1:0` (or runs the built `wsrelay`) and talks to it over real
//! sockets. One binary links once after a change in `src/`, where a binary
//! per file linked fourteen times. Run one area with
//! `cargo test --test it relay::` (or `browser::`, `cluster::`, ...).

#[path = "../common/mod.rs"]
mod common;

/// Runs `scenario(kind)` as two tests, `scenario::redis` and
/// `scenario::nats` (the module calling it names `Kind`; `shared_history`
/// starts NATS with JetStream for it).
macro_rules! on_both_brokers {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$scenario(super::Kind::Redis).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$scenario(super::Kind::Nats).await;
            }
        }
    };
}

mod api;
mod auth;
mod bench;
mod browser;
mod cli;
mod cluster;
mod compression;
mod history;
mod js_client;
mod layers;
mod limits;
mod packaging;
mod relay;
mod rooms;
mod shared_history;
mod slow_consumers;
mod tls;
