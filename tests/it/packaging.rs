//! Packaging that can be checked without a Docker engine or systemd: the
//! Grafana dashboard queries only metrics (and labels) the relay exports.
//! The Dockerfile and the systemd unit are linted by
//! `scripts/lint-packaging.sh` in CI.

use crate::common::*;

/// Every `wsrelay_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wsrelay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_what_the_relay_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");

    // With a cluster backend, so the cluster series exist too; no broker
    // is needed for the node to start and export them.
    let mut config = test_config();
    config.cluster.backend = wsrelay::config::ClusterBackend::Redis;
    config.cluster.url = "redis://127.0.0.1:1".into();
    let server = start(config).await;
    let exposition = server.metrics().await;
    let series: Vec<&str> = exposition.lines().filter(|l| !l.starts_with('#')).collect();
    let mut checked = 0;
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no wsrelay metric in {expr}");
        for name in names {
            let exported: Vec<&&str> = series
                .iter()
                .filter(|s| {
                    s.starts_with(&format!("{name} ")) || s.starts_with(&format!("{name}{{"))
                })
                .collect();
            assert!(!exported.is_empty(), "{name} (in {expr}) is not exported");
            // Grouping by a label only makes sense if the series carry it.
            if expr.contains("by (reason)") {
                assert!(
                    exported.iter().all(|s| s.contains("reason=")),
                    "{name} has no reason label"
                );
            }
            checked += 1;
        }
    }
    // The panels the issue asks for are there.
    let all = exprs.join("\n");
    for needed in [
        "wsrelay_connections_active",
        "wsrelay_messages_total",
        "wsrelay_messages_delivered_total",
        "wsrelay_dropped_messages_total",
        "wsrelay_disconnections_by_reason_total",
    ] {
        assert!(all.contains(needed), "no panel uses {needed}");
    }
    assert!(checked >= exprs.len());
    server.stop().await;
}
