//! The HTTP upgrade decision: whether a request becomes a WebSocket client.
//!
//! Every check runs before the 101, so a refused client gets an HTTP status
//! that says why, and no WebSocket state ever exists for it: the path and
//! the RFC 6455 handshake headers (404, 405, 426, 400), the `Origin`
//! allowlist (403), credentials (401), then the connection caps (503, 429),
//! counted against the client's real address behind trusted proxies. The
//! [`Gate`] is generic over the request body, so the same code is fuzzed on
//! requests parsed from raw bytes (`fuzz/`).
//!
//! It also settles permessage-deflate ([`deflate::negotiate`]).
//!
//! It knows admission (auth, caps, origins, proxies) and room names;
//! nothing of sessions after the 101, the server or the configuration
//! file ([`GateSettings`] is what it is given).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;

use ipnet::IpNet;

use crate::auth::{Admission, AuthError, Authenticator, JwtRules, offered_protocols};
use crate::forwarded::TrustedProxies;
use crate::hub::{Role, RoomName, Start};
use crate::limits::{ConnectionLimits, LimitExceeded, Permit};
use crate::metrics::RejectReason;
use crate::origin::OriginPolicy;
use crate::wire::{POSITIONS_PROTOCOL, Window, deflate};

/// Why the checks could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("invalid server.allowed_origins: {0}")]
    Origins(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What the gate checks (the server builds it from the configuration).
#[derive(Debug, Clone, Default)]
pub struct GateSettings {
    /// The path clients upgrade on, with rooms off.
    pub path: String,
    /// With rooms on, the path prefix before a room's name.
    pub room_prefix: Option<String>,
    /// Whether senders hear their own messages unless they say otherwise.
    pub echo: bool,
    /// `Origin` values allowed (empty: any).
    pub allowed_origins: Vec<String>,
    /// Static bearer tokens.
    pub tokens: Vec<String>,
    pub jwt: Option<JwtRules>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Caps on clients in all and per address (0: none).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Whether a client's permessage-deflate offer is accepted.
    pub compression: bool,
}

/// Everything decided before the upgrade.
pub struct Gate {
    path: String,
    /// With rooms on, the path prefix before a room's name.
    room_prefix: Option<String>,
    /// Whether senders hear their own messages unless they say otherwise.
    echo: bool,
    origins: OriginPolicy,
    /// `None` when anyone may connect.
    auth: Option<Authenticator>,
    proxies: TrustedProxies,
    limits: Arc<ConnectionLimits>,
    compression: bool,
}

/// One client as the gate admitted it: who it is and what it may do.
pub struct Client {
    /// The TCP peer (a proxy, when there is one).
    pub peer: SocketAddr,
    /// The client's own address, as trusted proxies report it.
    pub ip: IpAddr,
    /// The room it joined ("" with rooms off).
    pub room: RoomName,
    pub role: Role,
    /// Whether it hears its own messages.
    pub echo: bool,
    /// When its credentials expire: it is closed with 1008 then.
    pub expires_at: Option<SystemTime>,
    /// Its place under the connection caps, held for its lifetime.
    pub permit: Permit,
    /// The window it allowed, if it negotiated permessage-deflate.
    pub deflate: Option<Window>,
    /// Where it starts in its room's log (`?rewind=`, `?since=`).
    pub start: Start,
    /// It chose the position-aware mode ([`POSITIONS_PROTOCOL`]).
    pub positions: bool,
}

/// What to do with a request on the WebSocket listener.
pub enum Decision {
    /// Answer 101 and serve this client.
    Upgrade(Response<Full<Bytes>>, Client),
    /// Answer with this refusal, counted under this reason.
    Refuse(RejectReason, Response<Full<Bytes>>),
}

impl Gate {
    /// Builds the checks, reading any key files now.
    pub fn new(settings: GateSettings) -> Result<Self, GateError> {
        Ok(Self {
            origins: OriginPolicy::new(&settings.allowed_origins).map_err(GateError::Origins)?,
            auth: Authenticator::new(&settings.tokens, settings.jwt.as_ref())?,
            proxies: TrustedProxies::new(&settings.trusted_proxies),
            limits: ConnectionLimits::new(
                settings.max_connections,
                settings.max_connections_per_ip,
            ),
            path: settings.path,
            room_prefix: settings.room_prefix,
            echo: settings.echo,
            compression: settings.compression,
        })
    }

    /// The path clients upgrade on (with rooms, the prefix).
    pub fn path(&self) -> &str {
        self.room_prefix.as_deref().unwrap_or(&self.path)
    }

    /// The room a request's path names: 404 for a path that names none,
    /// 400 for a name that is not allowed.
    fn route(&self, path: &str) -> Result<RoomName, (StatusCode, &'static str)> {
        const NOT_FOUND: (StatusCode, &str) = (StatusCode::NOT_FOUND, "not found");
        let Some(prefix) = &self.room_prefix else {
            return match path == self.path {
                true => Ok(RoomName::from("")),
                false => Err(NOT_FOUND),
            };
        };
        let name = path.strip_prefix(prefix.as_str()).ok_or(NOT_FOUND)?;
        match crate::hub::is_room_name(name) {
            true => Ok(RoomName::from(name)),
            false => Err((
                StatusCode::BAD_REQUEST,
                "room names are 1-128 characters of A-Z a-z 0-9 . _ : -",
            )),
        }
    }

    /// Echo, role and where to start from the query: `?echo=false`,
    /// `?role=subscriber`, `?rewind=10` or `?rewind=30s`,
    /// `?since=<position>&epoch=<epoch>`.
    fn preferences(&self, query: Option<&str>) -> Result<(bool, Role, Start), &'static str> {
        let echo = match crate::query::param(query, "echo").as_deref() {
            None => self.echo,
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err("echo must be true or false"),
        };
        let role = match crate::query::param(query, "role").as_deref() {
            None | Some("both") => Role::Both,
            Some("subscriber") => Role::Subscriber,
            Some("publisher") => Role::Publisher,
            Some(_) => return Err("role must be subscriber, publisher or both"),
        };
        let param = |name| crate::query::param(query, name);
        let start = match (param("rewind"), param("since"), param("epoch")) {
            (None, None, None) => Start::Live,
            (Some(rewind), None, None) => match rewind.parse::<u64>() {
                Ok(n) => Start::Last(n),
                Err(_) => match humantime::parse_duration(&rewind) {
                    Ok(age) => Start::Within(age),
                    Err(_) => {
                        return Err(
                            "rewind must be a number of messages or a duration such as 30s",
                        );
                    }
                },
            },
            (None, Some(since), Some(epoch)) => match since.parse::<u64>() {
                Ok(position) if !epoch.is_empty() && epoch.len() <= 64 => {
                    Start::Since { epoch, position }
                }
                _ => return Err("since must be a position (a number) and epoch the room's epoch"),
            },
            (None, _, _) => return Err("since and epoch go together"),
            (Some(_), _, _) => return Err("rewind cannot be combined with since"),
        };
        Ok((echo, role, start))
    }

    /// Decides a request: protocol checks, then the Origin allowlist, then
    /// credentials, then the caps (counted against the real client address).
    pub fn admit<B>(&self, req: &Request<B>, peer: SocketAddr) -> Decision {
        let room = match self.route(req.uri().path()) {
            Ok(room) => room,
            Err((status, why)) => {
                return Decision::Refuse(RejectReason::BadRequest, refuse(status, why));
            }
        };
        let mut response = upgrade_response(req);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Decision::Refuse(RejectReason::BadRequest, response);
        }
        let (echo, role, start) = match self.preferences(req.uri().query()) {
            Ok(p) => p,
            Err(why) => {
                return Decision::Refuse(
                    RejectReason::BadRequest,
                    refuse(StatusCode::BAD_REQUEST, why),
                );
            }
        };
        let origin = req.headers().get(header::ORIGIN).map(HeaderValue::as_bytes);
        if !self.origins.allows(origin) {
            let refusal = refuse(StatusCode::FORBIDDEN, "origin not allowed");
            return Decision::Refuse(RejectReason::Origin, refusal);
        }
        let admission = match &self.auth {
            None => Admission::default(),
            Some(auth) => match auth.admit(req.uri().query(), req.headers()) {
                Ok(admission) => admission,
                Err(why) => {
                    let mut r = refuse(StatusCode::UNAUTHORIZED, why.as_str());
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return Decision::Refuse(RejectReason::Auth, r);
                }
            },
        };
        if !admission.grants.allow(&room, role.sends(), role.receives()) {
            return Decision::Refuse(
                RejectReason::Forbidden,
                refuse(
                    StatusCode::FORBIDDEN,
                    "this token does not allow that room or role",
                ),
            );
        }
        // Position-aware mode is chosen as a subprotocol: it is the one
        // selected, ahead of a bearer token's.
        let positions = offered_protocols(req.headers()).any(|p| p == POSITIONS_PROTOCOL);
        let protocol = match positions {
            true => Some(HeaderValue::from_static(POSITIONS_PROTOCOL)),
            false => admission.protocol,
        };
        if let Some(protocol) = protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        let agreement = match self.compression {
            true => deflate::negotiate(
                req.headers()
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .map(HeaderValue::as_bytes),
            ),
            false => None,
        };
        let deflate = agreement.and_then(|a| {
            let value = HeaderValue::from_str(&a.response).ok()?;
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
            Some(a.window)
        });
        let ip = self.proxies.client_ip(peer.ip(), req.headers());
        match self.limits.try_acquire(ip) {
            Ok(permit) => Decision::Upgrade(
                response,
                Client {
                    peer,
                    ip,
                    room,
                    role,
                    echo,
                    expires_at: admission.expires_at,
                    permit,
                    deflate,
                    start,
                    positions,
                },
            ),
            Err(LimitExceeded::Total) => Decision::Refuse(
                RejectReason::MaxConnections,
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections; try again later",
                ),
            ),
            Err(LimitExceeded::PerIp) => Decision::Refuse(
                RejectReason::MaxConnectionsPerIp,
                refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                ),
            ),
        }
    }
}

/// The response to a WebSocket upgrade request: 101 if it is a valid one,
/// otherwise the 4xx that says what is wrong.
fn upgrade_response<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let headers = req.headers();
    if req.method() != Method::GET {
        let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if req.version() != Version::HTTP_11 || !has_token(headers, header::UPGRADE, "websocket") {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: connect with a WebSocket client",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return refuse(StatusCode::BAD_REQUEST, "missing `Connection: Upgrade`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; use 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| is_valid_key(k.as_bytes()))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        );
    };
    let accept = accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A plain-text refusal that also ends the HTTP connection.
pub fn refuse(status: StatusCode, why: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// RFC 6455: the key is 16 random bytes, base64-encoded (24 characters).
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// RFC 6455 section 4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"short"));
        assert!(!is_valid_key(b"!!!!!!!!!!!!!!!!!!!!!!!!"));
    }
}
