//! wss:// with a test certificate, and TLS files that cannot be used.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use futures_util::SinkExt;
use tokio_websockets::Message;
use wsrelay::config::TlsConfig;
use wsrelay::server::{Server, ServerError};

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files.
fn write_cert(dir: &TempDir) -> TlsConfig {
    write_cert_expiring(&dir.0, (2040, 1, 1))
}

/// The same, in `dir`, expiring at midnight UTC on the given date.
fn write_cert_expiring(dir: &Path, (y, m, d): (i32, u8, u8)) -> TlsConfig {
    std::fs::create_dir_all(dir).unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TlsConfig {
        cert_file,
        key_file,
        watch_interval: Duration::from_millis(50),
    }
}

/// Unix seconds of midnight UTC on a date, for the expiry gauge.
fn unix_midnight((y, m, d): (i32, u8, u8)) -> u64 {
    let t = rcgen::date_time_ymd(y, m, d);
    u64::try_from(t.unix_timestamp()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_relays_between_clients_trusting_the_test_certificate() {
    let dir = TempDir::new("wss");
    let tls = write_cert(&dir);
    let ca = tls.cert_file.clone();
    let mut config = test_config();
    config.server.tls = Some(tls);
    let server = start(config).await;
    assert!(server.url.starts_with("wss://"), "{}", server.url);

    let mut a = within(wsrelay::client::connect(&server.url, Some(&ca)))
        .await
        .unwrap();
    let mut b = within(wsrelay::client::connect(&server.url, Some(&ca)))
        .await
        .unwrap();
    a.send(Message::text("over tls")).await.unwrap();
    b.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    for ws in [&mut a, &mut b] {
        let first = recv(ws).await;
        let second = recv(ws).await;
        let mut got = [first, second].map(|m| (m.is_text(), m.as_payload().to_vec()));
        got.sort();
        assert_eq!(
            got,
            [(false, vec![0, 1, 2, 255]), (true, b"over tls".to_vec())]
        );
    }

    // A client that does not trust the certificate is refused, and counted.
    assert!(wsrelay::client::connect(&server.url, None).await.is_err());
    server
        .wait_metric("wsrelay_rejected_connections_total{reason=\"tls\"}", 1)
        .await;
    assert_eq!(server.metric("wsrelay_connections_active").await, 2);
    server.stop().await;
}

async fn bind_error(tls: TlsConfig) -> String {
    let mut config = test_config();
    config.server.tls = Some(tls);
    match Server::bind(&config).await {
        Ok(_) => panic!("server started with unusable TLS files"),
        Err(e @ ServerError::Tls(_)) => e.to_string(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn missing_or_bad_tls_files_name_the_file() {
    let dir = TempDir::new("badtls");
    let good = write_cert(&dir);

    let missing = dir.0.join("nope.pem");
    let e = bind_error(TlsConfig {
        cert_file: missing.clone(),
        key_file: good.key_file.clone(),
        watch_interval: Duration::ZERO,
    })
    .await;
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let e = bind_error(TlsConfig {
        cert_file: good.cert_file.clone(),
        key_file: missing.clone(),
        watch_interval: Duration::ZERO,
    })
    .await;
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let garbage = dir.file("garbage.pem", "this is not PEM\n");
    let e = bind_error(TlsConfig {
        cert_file: garbage.clone(),
        key_file: good.key_file.clone(),
        watch_interval: Duration::ZERO,
    })
    .await;
    assert!(e.contains("garbage.pem"), "{e}");

    // A key from another certificate does not match this one.
    let other = TempDir::new("othertls");
    let other = write_cert(&other);
    let e = bind_error(TlsConfig {
        cert_file: good.cert_file.clone(),
        key_file: other.key_file.clone(),
        watch_interval: Duration::ZERO,
    })
    .await;
    assert!(e.contains("cert.pem") && e.contains("key.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs1_rsa_and_sec1_ec_keys_are_accepted() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (cert, key) in [("rsa.crt", "rsa-pkcs1.key"), ("ec.crt", "ec-sec1.key")] {
        let mut config = test_config();
        config.server.tls = Some(TlsConfig {
            cert_file: fixtures.join(cert),
            key_file: fixtures.join(key),
            watch_interval: Duration::ZERO,
        });
        let server = start(config).await;
        let ca = fixtures.join(cert);
        let mut ws = within(wsrelay::client::connect(&server.url, Some(&ca)))
            .await
            .unwrap();
        ws.send(Message::text(key)).await.unwrap();
        assert_eq!(recv(&mut ws).await.as_text(), Some(key));
        server.stop().await;
    }
}

const EXPIRES_A: (i32, u8, u8) = (2040, 1, 1);
const EXPIRES_B: (i32, u8, u8) = (2041, 6, 30);

async fn connect_trusting(url: &str, ca: &Path) -> Result<wsrelay::client::ClientStream, String> {
    within(wsrelay::client::connect(url, Some(ca)))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_serves_new_handshakes_while_old_connections_stay() {
    let dir = TempDir::new("reload");
    // Kubernetes style: the configured paths go through a symlink that is
    // swapped to a new directory in one rename.
    let a = write_cert_expiring(&dir.0.join("v1"), EXPIRES_A);
    let b = write_cert_expiring(&dir.0.join("v2"), EXPIRES_B);
    std::os::unix::fs::symlink("v1", dir.0.join("live")).unwrap();
    let mut config = test_config();
    config.server.tls = Some(TlsConfig {
        cert_file: dir.0.join("live/cert.pem"),
        key_file: dir.0.join("live/key.pem"),
        watch_interval: Duration::from_millis(50),
    });
    let server = start(config).await;
    let expiry = "wsrelay_tls_certificate_expiry_timestamp_seconds";
    assert_eq!(server.metric(expiry).await, unix_midnight(EXPIRES_A));
    let mut old = connect_trusting(&server.url, &a.cert_file).await.unwrap();

    std::os::unix::fs::symlink("v2", dir.0.join("live.new")).unwrap();
    std::fs::rename(dir.0.join("live.new"), dir.0.join("live")).unwrap();
    server
        .wait_metric("wsrelay_tls_reloads_total{result=\"ok\"}", 1)
        .await;
    assert_eq!(server.metric(expiry).await, unix_midnight(EXPIRES_B));

    // New handshakes get the new certificate only.
    let mut new = connect_trusting(&server.url, &b.cert_file).await.unwrap();
    assert!(connect_trusting(&server.url, &a.cert_file).await.is_err());
    // The connection made under the old certificate carries on.
    new.send(Message::text("after the swap")).await.unwrap();
    assert_eq!(recv(&mut old).await.as_text(), Some("after the swap"));
    assert_eq!(
        server
            .metric("wsrelay_tls_reloads_total{result=\"error\"}")
            .await,
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_pair_is_refused_and_the_old_certificate_stays() {
    let dir = TempDir::new("badreload");
    let a = write_cert_expiring(&dir.0, EXPIRES_A);
    let mut config = test_config();
    config.server.tls = Some(a.clone());
    let server = start(config).await;
    let mut held = connect_trusting(&server.url, &a.cert_file).await.unwrap();

    // A key that is not PEM, then a key from another certificate.
    std::fs::write(&a.key_file, "not a key\n").unwrap();
    server
        .wait_metric("wsrelay_tls_reloads_total{result=\"error\"}", 1)
        .await;
    let other = write_cert_expiring(&dir.0.join("other"), EXPIRES_B);
    std::fs::copy(&other.key_file, &a.key_file).unwrap();
    server
        .wait_metric("wsrelay_tls_reloads_total{result=\"error\"}", 2)
        .await;

    // Still the old pair: clients trusting it connect, the held one relays.
    let mut fresh = connect_trusting(&server.url, &a.cert_file).await.unwrap();
    fresh.send(Message::text("still A")).await.unwrap();
    assert_eq!(recv(&mut held).await.as_text(), Some("still A"));
    assert_eq!(
        server
            .metric("wsrelay_tls_certificate_expiry_timestamp_seconds")
            .await,
        unix_midnight(EXPIRES_A)
    );
    assert_eq!(
        server
            .metric("wsrelay_tls_reloads_total{result=\"ok\"}")
            .await,
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_is_harmless_without_tls() {
    let dir = TempDir::new("sighup");
    let a = write_cert_expiring(&dir.0.join("a"), EXPIRES_A);
    let b = write_cert_expiring(&dir.0.join("b"), EXPIRES_B);
    let live = write_cert_expiring(&dir.0.join("live"), EXPIRES_A);
    std::fs::copy(&a.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&a.key_file, &live.key_file).unwrap();
    // No file watching: only the signal may reload.
    let file = dir.file(
        "relay.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  tls:\n    cert_file: {}\n    key_file: {}\n    watch_interval: 0s\nmetrics:\n  listen: \"127.0.0.1:0\"\n",
            live.cert_file.display(),
            live.key_file.display()
        ),
    );
    let relay = spawn_relay(&file);
    let url = format!("wss://{}/", relay.addr);
    let mut held = connect_trusting(&url, &a.cert_file).await.unwrap();
    std::fs::copy(&b.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&b.key_file, &live.key_file).unwrap();
    relay.signal("HUP");
    let line = relay.wait_log("TLS certificate reloaded");
    assert!(line.contains("SIGHUP"), "{line}");
    let mut new = connect_trusting(&url, &b.cert_file).await.unwrap();
    new.send(Message::text("reloaded")).await.unwrap();
    assert_eq!(recv(&mut held).await.as_text(), Some("reloaded"));

    // Without TLS a SIGHUP is logged and the relay carries on.
    let plain = spawn_relay(&dir.file(
        "plain.yaml",
        "server:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  enabled: false\n",
    ));
    plain.signal("HUP");
    within(async {
        while !plain
            .logs
            .recv()
            .expect("relay log")
            .contains("no TLS certificate")
        {}
    })
    .await;
    let mut ws = within(wsrelay::client::connect(
        &format!("ws://{}/", plain.addr),
        None,
    ))
    .await
    .unwrap();
    ws.send(Message::text("alive")).await.unwrap();
    assert_eq!(recv(&mut ws).await.as_text(), Some("alive"));
}
