//! Optional authentication (static tokens, JWTs) and the real client
//! address behind trusted proxies; both decided before the upgrade.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_websockets::Message;
use wsrelay::config::{AuthConfig, JwtConfig, JwtKey};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
const SECRET: &str = "a shared secret of decent length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_config(key: JwtKey) -> JwtConfig {
    JwtConfig {
        key,
        audience: Some("relay".into()),
        issuer: Some("https://issuer.example".into()),
        leeway: Duration::ZERO,
    }
}

/// A token signed with `alg` by the matching fixture (or [`SECRET`]).
fn sign(alg: Algorithm, claims: serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            let pem = std::fs::read(format!("{FIXTURES}/rs256-private.pem")).unwrap();
            EncodingKey::from_rsa_pem(&pem).unwrap()
        }
        Algorithm::ES256 => {
            let pem = std::fs::read(format!("{FIXTURES}/es256-private.pem")).unwrap();
            EncodingKey::from_ec_pem(&pem).unwrap()
        }
        other => panic!("no fixture for {other:?}"),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

/// Claims the test configuration accepts, expiring `ttl` seconds from now.
fn claims(ttl: u64) -> serde_json::Value {
    json!({ "sub": "tester", "aud": "relay", "iss": "https://issuer.example", "exp": now() + ttl })
}

/// The status code of a handshake for `target` with `extra` headers.
async fn status(server: &TestServer, target: &str, extra: &str) -> String {
    let (head, _) = handshake_to(server.addr, "127.0.0.1", target, extra).await;
    head.get(9..12).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_are_taken_from_header_query_or_subprotocol() {
    let mut config = test_config();
    config.auth = AuthConfig {
        tokens: vec!["first-token".into(), "second token+/".into()],
        jwt: None,
    };
    let server = start(config).await;

    for (target, extra) in [
        ("/", "Authorization: Bearer first-token\r\n"),
        ("/", "authorization: bearer second token+/\r\n"),
        ("/?token=first-token", ""),
        ("/?x=1&token=second%20token%2B%2F", ""),
    ] {
        assert_eq!(
            status(&server, target, extra).await,
            "101",
            "{target} {extra:?}"
        );
    }
    // A browser's subprotocol: the 101 selects the other protocol it offered,
    // never echoing the token.
    let (head, _held) = handshake(
        server.addr,
        "127.0.0.1",
        "Sec-WebSocket-Protocol: wsrelay, bearer.first-token\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-protocol: wsrelay\r\n"),
        "{head}"
    );
    assert!(!head.contains("first-token"), "{head}");
    // Offered alone (`new WebSocket(url, ["bearer." + token])`), the bearer
    // entry is what the 101 selects: a browser fails a 101 naming none.
    let (head, _held) = handshake(
        server.addr,
        "127.0.0.1",
        "Sec-WebSocket-Protocol: bearer.first-token\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: bearer.first-token\r\n"),
        "{head}"
    );

    for (target, extra) in [
        ("/", ""),
        ("/", "Authorization: Bearer first-token-not\r\n"),
        ("/", "Authorization: Basic Zmlyc3QtdG9rZW4=\r\n"),
        ("/?token=", ""),
        ("/?token=FIRST-TOKEN", ""),
        ("/", "Sec-WebSocket-Protocol: first-token\r\n"),
    ] {
        let (head, _) = handshake_to(server.addr, "127.0.0.1", target, extra).await;
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{target} {extra:?}: {head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    server.wait_metric(&rejected("auth"), 6).await;
    assert_eq!(server.metric("wsrelay_connections_total").await, 6);

    // An admitted client relays as usual.
    let mut ws = within(wsrelay::client::connect(
        &format!("{}?token=first-token", server.url),
        None,
    ))
    .await
    .unwrap();
    ws.send(Message::text("authenticated")).await.unwrap();
    assert_eq!(recv(&mut ws).await.as_text(), Some("authenticated"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_for_signature_and_every_checked_claim() {
    let mut config = test_config();
    config.auth.jwt = Some(jwt_config(JwtKey::HS256 {
        secret: SECRET.into(),
    }));
    let server = start(config).await;
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");

    let good = sign(Algorithm::HS256, claims(600));
    assert_eq!(status(&server, "/", &bearer(&good)).await, "101");
    assert_eq!(status(&server, &format!("/?token={good}"), "").await, "101");
    let offered = format!("Sec-WebSocket-Protocol: bearer.{good}, wsrelay\r\n");
    assert_eq!(status(&server, "/", &offered).await, "101");
    // A validly signed `exp` beyond what the clock can hold is a token that
    // never expires, not a panic in the handshake.
    let mut forever = claims(0);
    forever["exp"] = json!(u64::MAX);
    let forever = sign(Algorithm::HS256, forever);
    assert_eq!(status(&server, "/", &bearer(&forever)).await, "101");

    let with = |patch: serde_json::Value| {
        let mut c = claims(600);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::HS256, c)
    };
    // Well formed and signed, with the wrong key: verification must fail.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(600),
        &EncodingKey::from_secret(b"not the relay's secret"),
    )
    .unwrap();
    // One character short: not even a valid signature encoding.
    let mut truncated = good.clone();
    truncated.pop();
    let refused = [
        ("expired", with(json!({ "exp": now() - 5 }))),
        ("not yet valid", with(json!({ "nbf": now() + 600 }))),
        ("wrong audience", with(json!({ "aud": "someone-else" }))),
        (
            "wrong issuer",
            with(json!({ "iss": "https://evil.example" })),
        ),
        (
            "no exp",
            sign(
                Algorithm::HS256,
                json!({ "aud": "relay", "iss": "https://issuer.example" }),
            ),
        ),
        ("signed with another key", forged),
        ("truncated signature", truncated),
        ("another algorithm", sign(Algorithm::ES256, claims(600))),
        ("not a JWT", "abc.def.ghi".into()),
    ];
    for (why, token) in &refused {
        assert_eq!(status(&server, "/", &bearer(token)).await, "401", "{why}");
    }
    server
        .wait_metric(&rejected("auth"), refused.len() as u64)
        .await;
    assert_eq!(server.metric("wsrelay_connections_total").await, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_verify_against_public_key_files() {
    for (alg, key) in [
        (
            Algorithm::RS256,
            JwtKey::RS256 {
                public_key_file: format!("{FIXTURES}/rs256-public.pem").into(),
            },
        ),
        (
            Algorithm::ES256,
            JwtKey::ES256 {
                public_key_file: format!("{FIXTURES}/es256-public.pem").into(),
            },
        ),
    ] {
        let mut config = test_config();
        config.auth.jwt = Some(jwt_config(key));
        let server = start(config).await;
        let good = sign(alg, claims(600));
        assert_eq!(
            status(&server, &format!("/?token={good}"), "").await,
            "101",
            "{alg:?}"
        );
        // The HS256 confusion attack: a token "signed" with the public key
        // as an HMAC secret must not pass.
        let public = std::fs::read(format!(
            "{FIXTURES}/{}-public.pem",
            if alg == Algorithm::RS256 {
                "rs256"
            } else {
                "es256"
            }
        ))
        .unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(600),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(
            status(&server, &format!("/?token={confused}"), "").await,
            "401",
            "{alg:?}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_expiring_while_connected_closes_with_1008_and_others_stay() {
    let mut config = test_config();
    config.auth.jwt = Some(jwt_config(JwtKey::HS256 {
        secret: SECRET.into(),
    }));
    let server = start(config).await;
    let url = |ttl| {
        format!(
            "{}?token={}",
            server.url,
            sign(Algorithm::HS256, claims(ttl))
        )
    };
    let mut long = within(wsrelay::client::connect(&url(600), None))
        .await
        .unwrap();
    // `exp` is in whole seconds: 3 s from now leaves 2 to 3 s for this
    // handshake and one relayed message, on a loaded machine too.
    let mut short = within(wsrelay::client::connect(&url(3), None))
        .await
        .unwrap();

    // Relays until its token runs out, then gets 1008.
    short.send(Message::text("before expiry")).await.unwrap();
    assert_eq!(recv(&mut long).await.as_text(), Some("before expiry"));
    assert_eq!(recv_close(&mut short).await, 1008);
    server
        .wait_metric(
            "wsrelay_disconnections_by_reason_total{reason=\"token_expired\"}",
            1,
        )
        .await;
    long.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut long).await.as_text(), Some("still here"));
    assert_eq!(server.metric("wsrelay_connections_active").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_count_the_forwarded_address_only_from_trusted_proxies() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = start(config).await;
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");

    // Through the trusted proxy (127.0.0.1), two clients behind it count apart.
    let (a, _a) = handshake(server.addr, "127.0.0.1", &xff("203.0.113.1")).await;
    let (b, _b) = handshake(server.addr, "127.0.0.1", &xff("198.51.100.7, 203.0.113.2")).await;
    let (again, _) = handshake(server.addr, "127.0.0.1", "Forwarded: for=203.0.113.1\r\n").await;
    assert!(a.starts_with("HTTP/1.1 101"), "{a}");
    assert!(b.starts_with("HTTP/1.1 101"), "{b}");
    assert!(again.starts_with("HTTP/1.1 429"), "{again}");

    // 127.0.0.2 is not a trusted proxy: its header is ignored, and its own
    // address is what counts.
    let (c, _c) = handshake(server.addr, "127.0.0.2", &xff("192.0.2.1")).await;
    let (d, _) = handshake(server.addr, "127.0.0.2", &xff("192.0.2.2")).await;
    assert!(c.starts_with("HTTP/1.1 101"), "{c}");
    assert!(d.starts_with("HTTP/1.1 429"), "{d}");
    server
        .wait_metric(&rejected("max_connections_per_ip"), 2)
        .await;
    server.wait_metric("wsrelay_connections_active", 3).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_narrow_the_rooms_and_roles_a_client_may_use() {
    let mut config = test_config();
    config.rooms.enabled = true;
    config.auth.jwt = Some(jwt_config(JwtKey::HS256 {
        secret: SECRET.into(),
    }));
    let server = start(config).await;
    let with = |patch: serde_json::Value| {
        let mut c = claims(600);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::HS256, c)
    };
    let reader = with(json!({ "rooms": ["chat:*", "lobby"], "publish": false }));
    let writer = with(json!({ "subscribe": false }));
    let cases = [
        (&reader, "/rooms/chat:1", "role=subscriber", "101"),
        (&reader, "/rooms/lobby", "role=subscriber", "101"),
        (&reader, "/rooms/chat:", "role=subscriber", "101"),
        (&reader, "/rooms/lobby2", "role=subscriber", "403"),
        (&reader, "/rooms/chat", "role=subscriber", "403"),
        // role=both would send, which this token does not allow.
        (&reader, "/rooms/lobby", "role=both", "403"),
        (&writer, "/rooms/anything", "role=publisher", "101"),
        (&writer, "/rooms/anything", "role=both", "403"),
    ];
    let mut held = Vec::new();
    for (token, path, query, want) in cases {
        let target = format!("{path}?{query}&token={token}");
        let (head, s) = handshake_to(server.addr, "127.0.0.1", &target, "").await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "{path}?{query}: {head}"
        );
        held.push(s);
    }
    server.wait_metric(&rejected("forbidden"), 4).await;
    server.wait_metric("wsrelay_connections_active", 4).await;
    server.stop().await;
}
