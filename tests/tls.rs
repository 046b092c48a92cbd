//! wss:// with a test certificate, and TLS files that cannot be used.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio_websockets::Message;
use wsrelay::config::TlsConfig;
use wsrelay::server::{Server, ServerError};

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files.
fn write_cert(dir: &TempDir) -> TlsConfig {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    TlsConfig {
        cert_file: dir.file("cert.pem", &cert.cert.pem()),
        key_file: dir.file("key.pem", &cert.signing_key.serialize_pem()),
    }
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
    })
    .await;
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let e = bind_error(TlsConfig {
        cert_file: good.cert_file.clone(),
        key_file: missing.clone(),
    })
    .await;
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let garbage = dir.file("garbage.pem", "this is not PEM\n");
    let e = bind_error(TlsConfig {
        cert_file: garbage.clone(),
        key_file: good.key_file.clone(),
    })
    .await;
    assert!(e.contains("garbage.pem"), "{e}");

    // A key from another certificate does not match this one.
    let other = TempDir::new("othertls");
    let other = write_cert(&other);
    let e = bind_error(TlsConfig {
        cert_file: good.cert_file.clone(),
        key_file: other.key_file.clone(),
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
