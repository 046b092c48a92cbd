//! The HTTP API for backends, on its own listener (`api.listen`): push to a
//! room without holding a WebSocket, list rooms, read stats, close a room's
//! clients. Every request carries `Authorization: Bearer <key>` with one of
//! `api.keys`. Answers are JSON; errors are `{"error": "..."}` with the
//! status that fits (400, 401, 404, 405, 413, 503).
//!
//! - `POST /api/v1/rooms/{room}/messages`: the body is one message to the
//!   room, text for `text/*` and JSON content types, binary otherwise;
//!   answers `{"delivered": n}`, the local subscribers it is for.
//!   It goes through the same fan-out, size limit and metrics as a message
//!   from a client.
//!   When the message took a place in its room's log (someone receives it,
//!   or history is on), also `"position"` and `"epoch"`: where it stands,
//!   for a page that subscribes with `?since=` from there.
//! - `GET /api/v1/rooms/{room}/history?since=&epoch=&limit=`: the room's
//!   kept messages after position `since` (default 0), at most `limit`
//!   (default 100, at most 1000): `{"epoch", "position", "complete",
//!   "messages": [{"position", "text"} or {"position", "binary": base64}]}`;
//!   `complete` is false when messages after `since` were no longer kept,
//!   `since` is past the newest, or `epoch` is given and is not the room's.
//! - `GET /api/v1/rooms`: `{"rooms": [{"name": ..., "subscribers": n}]}`.
//! - `GET /api/v1/stats`: connections, rooms and message totals.
//! - `DELETE /api/v1/rooms/{room}/connections`: closes the room's clients
//!   with 1000 and the request body as the reason; answers `{"closed": n}`.
//!
//! With rooms off, the one shared room is called `default` here.
//!
//! It knows the relay (and the cluster, for `/stats`); nothing of client
//! sessions or the configuration file.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::{Secrets, bearer_token};
use crate::backplane::Cluster;
use crate::hub::RoomName;
use crate::relay::Relay;
use crate::wire;
use crate::wire::Frame;

/// The API's name for the shared room when rooms are off.
const DEFAULT_ROOM: &str = "default";

/// What the API needs from the relay.
pub struct Api {
    keys: Secrets,
    relay: Arc<Relay>,
    /// For `/stats`, in a cluster.
    cluster: Option<Arc<Cluster>>,
    max_message_size: usize,
    rooms_enabled: bool,
    /// Cancelled when the server starts shutting down: requests get 503.
    shutdown: CancellationToken,
}

/// A failed request: its status, what to say, and for a 405 the methods
/// the route takes (its `Allow` header).
struct Failure(StatusCode, String, Option<&'static str>);

type Reply = Result<Value, Failure>;

fn fail(status: StatusCode, why: impl Into<String>) -> Failure {
    Failure(status, why.into(), None)
}

/// 405 for a route that takes only `allow`.
fn not_allowed(allow: &'static str) -> Failure {
    Failure(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed (this route takes {allow})"),
        Some(allow),
    )
}

impl Api {
    /// The API with these `keys`, publishing through `relay` messages of
    /// at most `max_message_size`.
    pub fn new(
        keys: &[String],
        relay: Arc<Relay>,
        cluster: Option<Arc<Cluster>>,
        max_message_size: usize,
        rooms_enabled: bool,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            // A blank key can never be presented: bearer_token trims.
            keys: Secrets::new(keys),
            relay,
            cluster,
            max_message_size,
            rooms_enabled,
            shutdown,
        }
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        bearer_token(headers).is_some_and(|key| self.keys.contains(key))
    }

    /// The hub's room for an API room name.
    fn room(&self, name: &str) -> Result<RoomName, Failure> {
        if !crate::hub::is_room_name(name) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "room names are 1-128 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
        match (self.rooms_enabled, name) {
            (true, _) => Ok(RoomName::from(name)),
            (false, DEFAULT_ROOM) => Ok(RoomName::from("")),
            (false, _) => Err(fail(
                StatusCode::NOT_FOUND,
                "rooms are off: the one room is \"default\"",
            )),
        }
    }

    fn api_name(&self, room: &str) -> String {
        match self.rooms_enabled {
            true => room.to_owned(),
            false => DEFAULT_ROOM.to_owned(),
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = self.route(req).await;
        let (status, body, allow) = match reply {
            Ok(body) => (StatusCode::OK, body, None),
            Err(Failure(status, why, allow)) => (status, json!({ "error": why }), allow),
        };
        let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = allow {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        if !self.authorised(req.headers()) {
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                "missing or unknown API key: send Authorization: Bearer <key>",
            ));
        }
        if self.shutdown.is_cancelled() {
            return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
        }
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::POST, ["", "api", "v1", "rooms", room, "messages"]) => {
                let room = self.room(room)?;
                self.publish(room, req).await
            }
            (Method::GET, ["", "api", "v1", "rooms", room, "history"]) => {
                let room = self.room(room)?;
                self.history(&room, req.uri().query()).await
            }
            (Method::GET, ["", "api", "v1", "rooms"]) => Ok(self.rooms()),
            (Method::GET, ["", "api", "v1", "stats"]) => Ok(self.stats()),
            (Method::DELETE, ["", "api", "v1", "rooms", room, "connections"]) => {
                let room = self.room(room)?;
                self.close_room(&room, req).await
            }
            (_, ["", "api", "v1", "rooms", _, "messages"]) => Err(not_allowed("POST")),
            (_, ["", "api", "v1", "rooms", _, "connections"]) => Err(not_allowed("DELETE")),
            (
                _,
                ["", "api", "v1", "rooms", _, "history"] | ["", "api", "v1", "rooms" | "stats"],
            ) => Err(not_allowed("GET")),
            _ => Err(fail(StatusCode::NOT_FOUND, "no such route")),
        }
    }

    async fn publish(&self, room: RoomName, req: Request<Incoming>) -> Reply {
        let text = is_text(req.headers());
        let body = read_body(req, self.max_message_size).await?;
        if text && std::str::from_utf8(&body).is_err() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "a text message must be UTF-8 (send binary with another content type)",
            ));
        }
        self.relay.metrics.received(body.len());
        let published = self.relay.publish(&room, &Frame::new(text, &body));
        let mut reply = json!({ "delivered": published.queued });
        if let Some(epoch) = &published.epoch {
            reply["position"] = json!(published.position);
            reply["epoch"] = json!(&**epoch);
        }
        Ok(reply)
    }

    async fn history(&self, room: &str, query: Option<&str>) -> Reply {
        let number = |name: &str, default: u64| match crate::query::param(query, name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| fail(StatusCode::BAD_REQUEST, format!("{name} must be a number"))),
        };
        let since = number("since", 0)?;
        let limit = number("limit", 100)?.min(1000) as usize;
        let epoch = crate::query::param(query, "epoch");
        let page = self
            .relay
            .history(room, since, epoch.as_deref(), limit)
            .await
            .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such room"))?;
        let messages: Vec<Value> = page
            .messages
            .iter()
            .map(|(position, frame)| match frame.is_text() {
                // Text frames hold UTF-8: checked when they arrived.
                true => json!({
                    "position": position,
                    "text": String::from_utf8_lossy(frame.payload()),
                }),
                false => json!({
                    "position": position,
                    "binary": base64::engine::general_purpose::STANDARD.encode(frame.payload()),
                }),
            })
            .collect();
        Ok(json!({
            "epoch": &*page.epoch,
            "position": page.position,
            "complete": page.complete,
            "messages": messages,
        }))
    }

    fn rooms(&self) -> Value {
        let rooms: Vec<Value> = self
            .relay
            .hub
            .rooms()
            .into_iter()
            .map(|(name, n)| json!({ "name": self.api_name(&name), "subscribers": n }))
            .collect();
        json!({ "rooms": rooms })
    }

    fn stats(&self) -> Value {
        let m = &self.relay.metrics;
        let mut stats = json!({
            "connections": m.connections_active.get(),
            "connections_total": m.connections.get(),
            "rooms": self.relay.hub.room_count(),
            "messages_received": m.messages_received.get(),
            "messages_delivered": m.messages_sent.get(),
        });
        if let (Some(cluster), Some(cm)) = (&self.cluster, &m.cluster) {
            stats["cluster"] = json!({
                "backend": cluster.backend(),
                "node_id": cluster.node_id(),
                "connected": cm.connected.get() == 1,
                "buffered": cluster.waiting(),
            });
        }
        stats
    }

    async fn close_room(&self, room: &str, req: Request<Incoming>) -> Reply {
        // A Close frame's reason has room for 123 bytes.
        let body = read_body(req, 123).await?;
        let reason = std::str::from_utf8(&body)
            .map_err(|_| fail(StatusCode::BAD_REQUEST, "the reason must be UTF-8"))?;
        let closed = self
            .relay
            .hub
            .close_room(room, &wire::close_frame(1000, reason.trim()));
        match closed {
            None => Err(fail(StatusCode::NOT_FOUND, "no such room")),
            Some(n) => Ok(json!({ "closed": n })),
        }
    }
}

/// Text for `text/*` and JSON (`application/json`, `*+json`) content types.
fn is_text(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/") || mime == "application/json" || mime.ends_with("+json")
}

/// The whole body, refused with 413 past `limit` bytes.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Failure> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {limit} bytes"),
        )),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            format!("cannot read body: {e}"),
        )),
    }
}
