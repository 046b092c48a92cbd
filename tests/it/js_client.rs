//! clients/js, wsrelay's JavaScript client, in Node against the real relay
//! binary: its own tests (`clients/js/test/`, with the `ws` package as the
//! WebSocket) run here. The same module runs in Chromium in
//! `browser::the_javascript_client_resumes_in_a_browser_without_loss_or_repeats`.
//!
//! Needs `node` and `clients/js/node_modules` (`npm ci --prefix clients/js`,
//! which `scripts/test.sh` runs); without them the test prints `SKIPPED`
//! and passes, unless `WSRELAY_REQUIRE_NODE=1` (as `scripts/test.sh` sets
//! where node is installed), when it fails.

use std::path::Path;
use std::process::Command;

#[test]
fn the_javascript_client_passes_its_node_tests_against_the_relay() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let node = Command::new("node").arg("--version").output();
    let ready = node.is_ok_and(|o| o.status.success()) && js.join("node_modules/ws").is_dir();
    if !ready {
        let why = "needs node and clients/js/node_modules (npm ci --prefix clients/js)";
        assert!(
            std::env::var_os("WSRELAY_REQUIRE_NODE").is_none(),
            "WSRELAY_REQUIRE_NODE is set but this test {why}"
        );
        eprintln!("SKIPPED: the_javascript_client_passes_its_node_tests_against_the_relay: {why}");
        return;
    }
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&js)
        .env("WSRELAY_BIN", env!("CARGO_BIN_EXE_wsrelay"))
        .output()
        .expect("run node --test");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every test in the file ran and passed.
    let tests = std::fs::read_to_string(js.join("test/client.test.mjs"))
        .expect("clients/js/test/client.test.mjs")
        .matches("\ntest(\"")
        .count();
    assert!(tests >= 5, "found {tests} tests");
    assert!(report.contains(&format!("# pass {tests}\n")), "{report}");
    assert!(report.contains("# fail 0\n"), "{report}");
}
