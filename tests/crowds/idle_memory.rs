//! Memory an idle client holds after traffic, measured by `wsrelay bench
//! idle` against the relay as its own process.

use std::time::Duration;

use wsrelay::bench::{self, Target};

use crate::common::*;

/// An idle client that has received traffic holds about what a fresh one
/// does: the relay as its own process, 800 clients, 100 messages of 900 B
/// to each, then idle through two pings. (Each client used to keep its
/// biggest batch's buffer: about 60 KiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_give_back_what_traffic_took() {
    let _turn = crate::one_at_a_time().await;
    let dir = TempDir::new("idle-after-traffic");
    let relay = spawn_relay(&dir.file(
        "wsrelay.yaml",
        "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  enabled: false\nclient:\n  ping_interval: 500ms\n",
    ));
    let target = Target {
        pid: Some(relay.child.id()),
        ..bench_target(&format!("ws://{}/", relay.addr))
    };
    let opts = bench::IdleOptions {
        connections: 800,
        hold: Duration::from_millis(100),
        traffic: 100,
        size: 900,
    };
    let report = within(bench::idle(&target, &opts)).await.unwrap();
    assert!(report.disconnects.is_empty(), "{report:?}");
    let fresh = report.server.as_ref().unwrap().rss_per_connection_bytes;
    let after = report.rss_per_connection_after_traffic_bytes.unwrap();
    eprintln!(
        "idle after traffic: {after:.0} B per client, fresh {fresh:.0} B ({:.2} x)",
        after / fresh
    );
    // Within 60 % of fresh here, and never the tens of KiB a client once
    // kept. Measured 1.14-1.23 x in most runs, and 1.5-1.56 x in about one
    // run in four: jemalloc (the binary's allocator) hands freed pages back
    // after its 10 s decay, and this waits 1.5 s (two pings 500 ms apart,
    // then 500 ms), so what it still holds depends on where its arenas
    // stand. 1.7-1.9 x was while clients kept their small buffers.
    assert!(
        after < 1.6 * fresh && after < 10.0 * 1024.0,
        "{after:.0} B per idle client after traffic ({fresh:.0} B fresh)"
    );
}
