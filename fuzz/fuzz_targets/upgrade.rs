//! The upgrade request path: raw bytes are parsed as an HTTP/1.1 request by
//! httparse (the parser hyper uses), then decided by the relay's `Gate`
//! with every check switched on: path, handshake headers, Origin, static
//! tokens and HS256 JWTs from all three places, trusted proxies and caps,
//! and permessage-deflate offers.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;

use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use wsrelay::auth::{JwtKey, JwtRules};
use wsrelay::upgrade::{Decision, Gate, GateSettings};

static GATE: LazyLock<Gate> = LazyLock::new(|| {
    let settings = GateSettings {
        path: "/ws".into(),
        room_prefix: None,
        echo: true,
        allowed_origins: vec!["https://app.example.com".into(), "https://*.example.org".into()],
        tokens: vec!["static-token".into()],
        jwt: Some(JwtRules {
            key: JwtKey::HS256 { secret: "fuzz secret".into() },
            audience: Some("relay".into()),
            issuer: None,
            leeway: std::time::Duration::ZERO,
        }),
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        max_connections: 4,
        max_connections_per_ip: 2,
        compression: true,
    };
    Gate::new(settings).expect("fuzz configuration")
});

fuzz_target!(|data: &[u8]| {
    // The first byte picks the peer: a trusted proxy or not.
    let Some((&who, raw)) = data.split_first() else {
        return;
    };
    let peer: SocketAddr = match who % 3 {
        0 => "127.0.0.1:40000".parse().unwrap(),
        1 => "[::1]:40000".parse().unwrap(),
        _ => "192.0.2.1:40000".parse().unwrap(),
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(raw) else {
        return;
    };
    let mut builder = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .version(match parsed.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    // hyper would refuse what http cannot represent with a 400 of its own.
    let Ok(req) = builder.body(()) else {
        return;
    };
    match GATE.admit(&req, peer) {
        Decision::Upgrade(response, client) => {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            assert!(response.headers().contains_key(header::SEC_WEBSOCKET_ACCEPT));
            // A token comes back as the selected subprotocol only when it
            // was the one protocol offered (a browser needs one selected).
            if let Some(p) = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
                let offered = req
                    .headers()
                    .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .any(|o| !o.is_empty() && !o.starts_with("bearer."));
                assert!(!(offered && p.as_bytes().starts_with(b"bearer.")));
            }
            drop(client); // gives its place under the caps back
        }
        Decision::Refuse(_, response) => {
            assert!(response.status().is_client_error() || response.status().is_server_error());
        }
    }
});
