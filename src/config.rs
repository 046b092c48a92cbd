//! The relay's configuration: one YAML file, every key optional.
//!
//! Precedence is command-line flag > environment variable > file > built-in
//! default; the flags and variables are applied by the binary on top of what
//! [`Config::load`] returns. Unknown keys are rejected, and every error names
//! the file, the key and the line, because an operator reading a failed
//! start-up should not have to guess which of forty lines is wrong.
//!
//! It names the types of what it configures (and checks broker URLs and
//! origins with their owners' rules, so an error names the key and line);
//! only the server reads it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

// The settings' own types, defined by the parts they configure.
pub use crate::auth::JwtKey;
pub use crate::backplane::ClusterBackend;
pub use crate::limits::OnRateExceeded;
pub use crate::log::OnOverflow;
pub use crate::logging::LogFormat;

/// Everything the relay can be told. `Config::default()` is the relay that
/// `wsrelay` runs with no file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub client: ClientConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub rooms: RoomsConfig,
    pub relay: RelayConfig,
    pub compression: CompressionConfig,
    pub api: ApiConfig,
    pub cluster: ClusterConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
}

/// The WebSocket listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the WebSocket listener binds.
    pub listen: SocketAddr,
    /// HTTP path clients upgrade on; anything else gets 404.
    #[serde(deserialize_with = "de_path")]
    pub path: String,
    /// Serve `wss://` with this certificate and key; absent means plain `ws://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Origins whose pages may connect (exact, or `https://*.example.com`);
    /// empty allows any. Others get 403 before the upgrade.
    #[serde(deserialize_with = "de_origins")]
    pub allowed_origins: Vec<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers name
    /// the real client; from any other peer those headers are ignored.
    #[serde(deserialize_with = "de_cidrs", serialize_with = "ser_display_list")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            path: "/".to_owned(),
            tls: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// PEM files for `wss://`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_file: PathBuf,
    /// How often the files are checked for a new certificate ("0s": only
    /// on SIGHUP). Symlink swaps are seen: the check follows links.
    #[serde(default = "default_watch_interval", with = "humantime_serde_compat")]
    pub watch_interval: Duration,
}

fn default_watch_interval() -> Duration {
    Duration::from_secs(1)
}

/// The Prometheus listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address serving `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Also count messages and deliveries per room (a label per room name:
    /// only where room names are few).
    pub per_room_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            per_room_labels: false,
        }
    }
}

/// Per-client behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// How many messages a client may fall behind its room's log (which
    /// holds each message once, for all its clients). A client further
    /// behind while its socket refuses bytes, or more than twice this
    /// behind whatever its socket, is a slow consumer and `on_overflow`
    /// applies.
    #[serde(deserialize_with = "de_nonzero")]
    pub queue_messages: usize,
    /// How many payload bytes a client may fall behind its room's log, as
    /// for `queue_messages` (a lag of one message of any size is always
    /// within it).
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub queue_bytes: usize,
    /// What happens to a slow consumer: closed with 1008 (`disconnect`),
    /// moved forward to within the limits (`drop_oldest`), or kept on its
    /// oldest messages within the limits while it misses the newer ones
    /// until it has taken them (`drop_newest`).
    pub on_overflow: OnOverflow,
    /// A client whose socket accepts no bytes for this long, while the relay
    /// has something to send it, is dropped ("0s": never).
    #[serde(with = "humantime_serde_compat")]
    pub write_timeout: Duration,
    /// How long a client being disconnected (slow consumer, protocol error,
    /// its own Close) gets to finish the close handshake before its socket
    /// is dropped.
    #[serde(with = "humantime_serde_compat")]
    pub close_timeout: Duration,
    /// How often the server pings every client ("0s": never, and no idle timeout).
    #[serde(with = "humantime_serde_compat")]
    pub ping_interval: Duration,
    /// A client that sends nothing, not even a pong, for this long is closed
    /// (checked once per ping interval).
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            queue_messages: 1024,
            queue_bytes: 4 << 20,
            on_overflow: OnOverflow::Disconnect,
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Protection against oversized input.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message (and frame) a client may send; larger gets close 1009.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub max_message_size: usize,
    /// Most clients connected at once (0: no cap); more get 503 before the upgrade.
    pub max_connections: usize,
    /// Most clients from one IP address at once (0: no cap); more get 429.
    pub max_connections_per_ip: usize,
    /// Longest a client may take from TCP accept to its 101 (TLS included);
    /// slower ones are dropped.
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// Most connections in their handshake (TLS and HTTP, before the 101)
    /// at once (0: no cap); further ones wait in the kernel's accept queue.
    pub max_handshakes: usize,
    /// Longest one message may take to arrive, from its first byte to its
    /// last (0: no limit); slower gets close 1008.
    #[serde(with = "humantime_serde_compat")]
    pub message_timeout: Duration,
    /// Messages per second one client may send on average (0: no limit).
    pub messages_per_second: u32,
    /// Messages one client may send in a burst (0: one second's worth).
    pub burst: u32,
    /// What happens to a client over its rate.
    pub on_rate_exceeded: OnRateExceeded,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_connections: 0,
            max_connections_per_ip: 0,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            message_timeout: Duration::from_secs(60),
            messages_per_second: 0,
            burst: 0,
            on_rate_exceeded: OnRateExceeded::Close,
        }
    }
}

/// Rooms: separate audiences chosen by the upgrade path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Off: everyone shares one room on `server.path`. On: a client at
    /// `{prefix}{name}` joins room `name` and hears only its room.
    pub enabled: bool,
    /// The path before a room's name.
    #[serde(deserialize_with = "de_path")]
    pub prefix: String,
    /// Most rooms at once (0: no cap); a client asking for one more gets 503.
    pub max_rooms: usize,
    /// What each room keeps of its latest messages, for clients that join
    /// behind the head (`?rewind=`, `?since=`).
    pub history: HistoryConfig,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "/rooms/".to_owned(),
            max_rooms: 0,
            history: HistoryConfig::default(),
        }
    }
}

/// Rooms' history: the latest messages of each room, kept for rewinds and
/// recoveries (with rooms off, of the one shared room).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room; 0 (the default): no history.
    pub size: usize,
    /// Payload bytes kept per room.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub max_bytes: usize,
    /// How long a room's history outlives its newest message.
    #[serde(
        deserialize_with = "de_history_ttl",
        serialize_with = "humantime_serde_compat::serialize"
    )]
    pub ttl: Duration,
    /// Payload bytes all rooms' history may hold together; past it, the
    /// rooms quiet longest lose theirs first.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub total_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 0,
            max_bytes: 1 << 20,
            ttl: Duration::from_secs(300),
            total_bytes: 256 << 20,
        }
    }
}

/// How messages are relayed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Whether a sender gets its own messages back; a client may override
    /// it for itself with `?echo=false` or `?echo=true`.
    pub echo_to_sender: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            echo_to_sender: true,
        }
    }
}

/// permessage-deflate (RFC 7692): compressed messages for clients that
/// offer it, each message compressed once for all of them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Accept clients' permessage-deflate offers. Off: every offer is
    /// declined and nothing is compressed.
    pub enabled: bool,
    /// zlib's level, 1 (fastest) to 9 (smallest, slowest). 0 would store
    /// uncompressed, which never gets smaller: turn `enabled` off instead.
    #[serde(deserialize_with = "de_level")]
    pub level: u8,
    /// Messages with smaller payloads go uncompressed.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub min_size: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            level: 1,
            min_size: 256,
        }
    }
}

/// The HTTP API for backends, on its own listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawApiConfig")]
pub struct ApiConfig {
    pub enabled: bool,
    /// Address serving `/api/v1/...`.
    pub listen: SocketAddr,
    /// Bearer keys, any one of which authorises a request; at least one
    /// when the API is enabled.
    pub keys: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            keys: Vec::new(),
        }
    }
}

/// `api` as written; checked so that an enabled API without keys is an
/// error that names the key and line.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawApiConfig {
    enabled: bool,
    listen: SocketAddr,
    keys: Vec<String>,
}

impl Default for RawApiConfig {
    fn default() -> Self {
        let d = ApiConfig::default();
        Self {
            enabled: d.enabled,
            listen: d.listen,
            keys: d.keys,
        }
    }
}

impl TryFrom<RawApiConfig> for ApiConfig {
    type Error = &'static str;

    fn try_from(raw: RawApiConfig) -> Result<Self, Self::Error> {
        if raw.enabled && raw.keys.iter().all(|k| k.trim().is_empty()) {
            return Err("an enabled API needs at least one key in `keys`");
        }
        Ok(Self {
            enabled: raw.enabled,
            listen: raw.listen,
            keys: raw.keys,
        })
    }
}

/// Joining several relays into one cluster through a broker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawClusterConfig")]
pub struct ClusterConfig {
    pub backend: ClusterBackend,
    /// The broker (`redis://`, `rediss://`, `nats://`, `tls://`); empty
    /// means the backend's default port on 127.0.0.1.
    pub url: String,
    /// Starts every channel (Redis) or subject (NATS) the relay uses, so
    /// several clusters can share one broker.
    pub prefix: String,
    /// Names this node in every message it publishes; empty means a random
    /// one at start-up.
    pub node_id: String,
    /// Messages that may wait for the broker (while it is unreachable);
    /// beyond that the oldest are dropped and counted.
    pub buffer_messages: usize,
    /// Payload bytes that may wait for the broker.
    #[serde(serialize_with = "ser_size")]
    pub buffer_bytes: usize,
    /// Messages from the broker that may wait for fan-out to this node's
    /// clients; beyond that the oldest are dropped and counted. Small, as
    /// is how far a client may fall behind its room: what waits here is
    /// latency.
    pub inbound_messages: usize,
    /// Bytes from the broker that may wait for fan-out.
    #[serde(serialize_with = "ser_size")]
    pub inbound_bytes: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            backend: ClusterBackend::None,
            url: String::new(),
            prefix: "wsrelay".to_owned(),
            node_id: String::new(),
            buffer_messages: 10_000,
            buffer_bytes: 16 << 20,
            inbound_messages: 1024,
            inbound_bytes: 4 << 20,
        }
    }
}

/// `cluster` as written; checked so that a URL of the wrong scheme, or a
/// prefix or node id no broker can carry, names the key and line.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawClusterConfig {
    backend: ClusterBackend,
    url: String,
    #[serde(deserialize_with = "de_cluster_name")]
    prefix: String,
    #[serde(deserialize_with = "de_cluster_name")]
    node_id: String,
    #[serde(deserialize_with = "de_nonzero")]
    buffer_messages: usize,
    #[serde(deserialize_with = "de_size")]
    buffer_bytes: usize,
    #[serde(deserialize_with = "de_nonzero")]
    inbound_messages: usize,
    #[serde(deserialize_with = "de_size")]
    inbound_bytes: usize,
}

impl Default for RawClusterConfig {
    fn default() -> Self {
        let d = ClusterConfig::default();
        Self {
            backend: d.backend,
            url: d.url,
            prefix: d.prefix,
            node_id: d.node_id,
            buffer_messages: d.buffer_messages,
            buffer_bytes: d.buffer_bytes,
            inbound_messages: d.inbound_messages,
            inbound_bytes: d.inbound_bytes,
        }
    }
}

impl TryFrom<RawClusterConfig> for ClusterConfig {
    type Error = String;

    fn try_from(raw: RawClusterConfig) -> Result<Self, Self::Error> {
        if raw.prefix.is_empty() {
            return Err("`prefix` must not be empty".into());
        }
        crate::backplane::check_backend(raw.backend)?;
        if !raw.url.is_empty() {
            crate::backplane::check_url(raw.backend, &raw.url)
                .map_err(|e| format!("`url`: {e}"))?;
        }
        Ok(Self {
            backend: raw.backend,
            url: raw.url,
            prefix: raw.prefix,
            node_id: raw.node_id,
            buffer_messages: raw.buffer_messages,
            buffer_bytes: raw.buffer_bytes,
            inbound_messages: raw.inbound_messages,
            inbound_bytes: raw.inbound_bytes,
        })
    }
}

/// Who may connect. With neither tokens nor a JWT key, anyone may.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens; any one of them admits a client.
    pub tokens: Vec<String>,
    /// JSON Web Tokens signed with this key admit a client until they expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

/// How JSON Web Tokens are verified.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawJwtConfig")]
pub struct JwtConfig {
    #[serde(flatten)]
    pub key: JwtKey,
    /// Required `aud` claim, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde_compat")]
    pub leeway: Duration,
}

/// `auth.jwt` as written; checked into a [`JwtConfig`] so that a secret
/// given for RS256, say, is an error that names the key and line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtConfig {
    algorithm: String,
    secret: Option<String>,
    public_key_file: Option<PathBuf>,
    audience: Option<String>,
    issuer: Option<String>,
    #[serde(default, with = "humantime_serde_compat")]
    leeway: Duration,
}

impl TryFrom<RawJwtConfig> for JwtConfig {
    type Error = String;

    fn try_from(raw: RawJwtConfig) -> Result<Self, String> {
        let key = match (raw.algorithm.as_str(), raw.secret, raw.public_key_file) {
            ("HS256", Some(secret), None) if !secret.is_empty() => JwtKey::HS256 { secret },
            ("HS256", _, _) => {
                return Err("algorithm HS256 needs `secret` (and no `public_key_file`)".into());
            }
            ("RS256", None, Some(public_key_file)) => JwtKey::RS256 { public_key_file },
            ("ES256", None, Some(public_key_file)) => JwtKey::ES256 { public_key_file },
            ("RS256" | "ES256", _, _) => {
                return Err(format!(
                    "algorithm {} needs `public_key_file` (a PEM public key) and no `secret`",
                    raw.algorithm
                ));
            }
            (other, _, _) => {
                return Err(format!(
                    "unknown algorithm {other:?}; use HS256, RS256 or ES256"
                ));
            }
        };
        Ok(Self {
            key,
            audience: raw.audience,
            issuer: raw.issuer,
            leeway: raw.leeway,
        })
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long clients get to answer Close 1001 before they are dropped;
    /// the closes themselves are spread over the first half of it.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// How long the relay keeps accepting clients after the signal, with
    /// `/readyz` answering 503, before it starts closing.
    #[serde(with = "humantime_serde_compat")]
    pub drain_delay: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `wsrelay=debug,warn`, ...). `RUST_LOG` overrides it.
    #[serde(deserialize_with = "de_log_level")]
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0)]
    Invalid(InvalidConfig),
}

/// A file that was read but does not describe a valid configuration.
#[derive(Debug)]
pub struct InvalidConfig {
    pub path: PathBuf,
    /// Dotted path of the offending key (`shutdown.timeout`), when known.
    pub key: Option<String>,
    /// 1-based line and column, when known.
    pub line: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config file {}", self.path.display())?;
        if let Some((line, col)) = self.line {
            write!(f, " at line {line}, column {col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Config {
    /// Reads and validates a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses YAML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        // An empty file (or one holding only comments) means "all defaults".
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Self::default());
        }
        let mut key: Option<String> = None;
        let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                let p = e.path().to_string();
                if p != "." {
                    key = Some(p);
                }
                e.into_inner()
            })
        });
        parsed.map_err(|e| {
            let line = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize));
            let mut message = bare_message(&e.to_string());
            if message.starts_with("unknown field") {
                message = message.replacen("unknown field", "unknown key", 1);
            }
            // The parser's words, in the config's: which key, and what to do.
            if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
                let name = rest.split(',').next().unwrap_or(rest).trim().to_owned();
                key = key.map(|k| format!("{}{name}", k.trim_end_matches('?')));
                message = format!("`{name}` is given twice; give each key once");
            } else if matches!(
                message.as_str(),
                "invalid u64" | "invalid u8" | "invalid usize"
            ) {
                message = "expected a whole number, 0 or more".to_owned();
            }
            ConfigError::Invalid(InvalidConfig {
                path: path.to_owned(),
                key,
                line,
                message,
            })
        })
    }

    /// The configuration as YAML, defaults filled in.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// [`Config::to_yaml`] with its secrets shown as `***` (API keys,
    /// client tokens, the JWT secret, a broker URL's password): what
    /// `check-config` prints, which ends up in terminals and CI logs.
    pub fn to_yaml_redacted(&self) -> String {
        let mut shown = self.clone();
        let hide = |secrets: &mut Vec<String>| secrets.iter_mut().for_each(|s| *s = "***".into());
        hide(&mut shown.api.keys);
        hide(&mut shown.auth.tokens);
        if let Some(jwt) = &mut shown.auth.jwt
            && let crate::auth::JwtKey::HS256 { secret } = &mut jwt.key
        {
            *secret = "***".into();
        }
        shown.cluster.url = crate::backplane::redact(&shown.cluster.url);
        shown.to_yaml()
    }
}

/// serde-saphyr renders `error: line L column C: message` followed by a
/// source snippet; we print the location ourselves, so keep only the message.
fn bare_message(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, message)) => message.to_owned(),
        None => line.to_owned(),
    }
}

/// The longest duration any setting takes. Longer ones are surely typos,
/// and would overflow the clock arithmetic that timers do.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`, at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. \"10s\" or \"500ms\""))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is longer than the 10 years any setting allows"
        ));
    }
    Ok(d)
}

/// Parses a byte size such as `1048576`, `64KiB`, `1MiB` or `1MB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}; use e.g. \"1MiB\" or \"65536\""))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {s:?} must be between 1 byte and {} bytes", usize::MAX))
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        // Read only to say what is wrong with it.
        Negative(#[allow(dead_code)] i64),
        Text(String),
    }
    let wrong = || {
        serde::de::Error::custom(
            "a size is a number of bytes or a string such as \"64KiB\" or \"1MiB\"",
        )
    };
    match Size::deserialize(d).map_err(|_: D::Error| wrong())? {
        Size::Bytes(0) | Size::Negative(_) => {
            Err(serde::de::Error::custom("size must be at least 1 byte"))
        }
        Size::Bytes(n) => usize::try_from(n).map_err(|_| wrong()),
        Size::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn ser_size<S: serde::Serializer>(v: &usize, s: S) -> Result<S::Ok, S::Error> {
    let text = if v.is_multiple_of(1 << 20) {
        format!("{}MiB", v >> 20)
    } else if v.is_multiple_of(1 << 10) {
        format!("{}KiB", v >> 10)
    } else {
        v.to_string()
    };
    s.serialize_str(&text)
}

/// A history ttl: 0 would expire every message at once, which is not
/// what anyone means by it (`size: 0` is how history is turned off).
fn de_history_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match humantime_serde_compat::deserialize(d)? {
        Duration::ZERO => Err(serde::de::Error::custom(
            "must be more than 0s: history would expire at once (size: 0 turns history off)",
        )),
        ttl => Ok(ttl),
    }
}

fn de_nonzero<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// Checks a cluster prefix or node id: it becomes part of every broker
/// subject, so only characters that Redis and NATS both carry verbatim,
/// with dots only between other characters (an empty NATS token is invalid).
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok_dots = !name.starts_with('.') && !name.ends_with('.') && !name.contains("..");
    if name.len() > 64 || !ok_chars || !ok_dots {
        return Err(format!(
            "{name:?} must be at most 64 of A-Z a-z 0-9 _ - and dots between them"
        ));
    }
    Ok(())
}

fn de_cluster_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_cluster_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

fn de_level<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let level = u64::deserialize(d)?;
    match u8::try_from(level) {
        Ok(l @ 1..=9) => Ok(l),
        _ => Err(serde::de::Error::custom(format!(
            "level {level} must be 1 (fastest) to 9 (smallest)"
        ))),
    }
}

fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let p = String::deserialize(d)?;
    if !p.starts_with('/') {
        return Err(serde::de::Error::custom(format!(
            "path {p:?} must start with '/'"
        )));
    }
    Ok(p)
}

fn de_origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let origins = Vec::<String>::deserialize(d)?;
    crate::origin::OriginPolicy::new(&origins).map_err(serde::de::Error::custom)?;
    Ok(origins)
}

fn de_log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let level = String::deserialize(d)?;
    check_log_filter(&level).map_err(serde::de::Error::custom)?;
    Ok(level)
}

/// Checks a log filter (`log.level`, `--log-level`): a `tracing` filter in
/// which every directive without `=` is a level. A bare word that is not
/// one (`verbose`, a typo) would parse as a target, and log nothing but
/// that target: the relay would go silent.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log level {filter:?}: {e}"))?;
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter.split(',').map(str::trim) {
        if !directive.is_empty()
            && !directive.contains(['=', '['])
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
            // tracing's numeric levels, 0 (off) to 5 (trace).
            && !matches!(directive, "0" | "1" | "2" | "3" | "4" | "5")
        {
            return Err(format!(
                "invalid log level {directive:?}: use one of {} or target=level \
                 (a bare word is taken as a target, and everything else would be silent)",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A list of networks: CIDRs, or bare addresses as networks of one.
fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            // A bare address is a network of one.
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{entry:?} is not an IP address or CIDR such as 10.0.0.0/8"
                    ))
                })
        })
        .collect()
}

fn ser_display_list<S: serde::Serializer, T: fmt::Display>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// Durations as human-readable strings, both ways.
mod humantime_serde_compat {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, InvalidConfig> {
        match Config::parse(text, Path::new("test.yaml")) {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid(e)) => Err(e),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn wrong_values_are_named_in_the_configs_words() {
        let e = parse("rooms:\n  history:\n    ttl: 1s\n    ttl: 2s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("rooms.history.ttl") && text.contains("given twice"),
            "{text}"
        );
        assert!(!text.contains("DuplicateKeyPolicy"), "{text}");
        let text = parse("rooms:\n  history:\n    size: -1\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("whole number"), "{text}");
        for (bad, says) in [
            ("-1", "at least 1 byte"),
            ("1.5", "number of bytes"),
            ("true", "number of bytes"),
        ] {
            let text = parse(&format!("rooms:\n  history:\n    max_bytes: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("rooms.history.max_bytes") && text.contains(says),
                "{bad}: {text}"
            );
        }
        assert!(parse("rooms:\n  history:\n    max_bytes: 4096\n").is_ok());
        assert!(parse("rooms:\n  history:\n    max_bytes: 0\n").is_err());
    }

    #[test]
    fn a_log_level_that_would_silence_the_relay_is_refused() {
        let e = parse("log:\n  level: verbose\n").unwrap_err().to_string();
        assert!(e.contains("log.level") && e.contains("line 2"), "{e}");
        assert!(e.contains("bare word"), "{e}");
        for ok in ["info", "WARN", "wsrelay=debug,warn", "off"] {
            assert!(parse(&format!("log:\n  level: \"{ok}\"\n")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_history_ttl_of_zero_is_refused_with_its_key_and_line() {
        let e = parse("rooms:\n  history:\n    size: 10\n    ttl: 0s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("rooms.history.ttl") && text.contains("line 4"),
            "{text}"
        );
        assert!(text.contains("expire at once"), "{text}");
        assert!(parse("rooms:\n  history:\n    ttl: 1s\n").is_ok());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            "server:\n  listen: \"127.0.0.1:9000\"\n  path: /ws\n  tls: { cert_file: c.pem, key_file: k.pem }\n\
             metrics:\n  enabled: false\n  listen: \"127.0.0.1:9001\"\n\
             client:\n  queue_messages: 16\n\
             limits:\n  max_message_size: 64KiB\n\
             shutdown:\n  timeout: 500ms\n\
             log:\n  level: debug\n  format: json\n",
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.server.path, "/ws");
        assert_eq!(c.server.tls.unwrap().key_file, PathBuf::from("k.pem"));
        assert!(!c.metrics.enabled);
        assert_eq!(c.client.queue_messages, 16);
        assert_eq!(c.limits.max_message_size, 65536);
        assert_eq!(c.shutdown.timeout, Duration::from_millis(500));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse("server:\n  listen: \"127.0.0.1:1\"\n  colour: blue\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.colour"));
        assert_eq!(e.line.map(|l| l.0), Some(3));
        let text = e.to_string();
        assert!(
            text.contains("test.yaml") && text.contains("line 3"),
            "{text}"
        );
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let e = parse("log:\n  level: info\nshutdown:\n  timeout: soon\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdown.timeout"));
        assert_eq!(e.line.map(|l| l.0), Some(4));
        assert!(e.message.contains("invalid duration"), "{}", e.message);

        let e = parse("server:\n  listen: nowhere\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.listen"));
        assert_eq!(e.line.map(|l| l.0), Some(2));

        let e = parse("client:\n  queue_messages: 0\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("client.queue_messages"));

        let e = parse("server:\n  path: ws\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.path"));

        let e = parse("server:\n  allowed_origins: [\"example.com\"]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.allowed_origins"));
    }

    #[test]
    fn invalid_yaml_names_line() {
        let e = parse("server:\n  listen: [unclosed\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("10 KB"), Ok(10_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        // Past what timers can add to the clock: refused, not a panic later.
        assert!(
            parse_duration("500000000000y")
                .unwrap_err()
                .contains("10 years")
        );
        let e = parse("limits:\n  handshake_timeout: 500000000000y\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.handshake_timeout"));
        assert!(parse_duration("forever").is_err());
    }

    #[test]
    fn example_file_lists_the_defaults() {
        let text = include_str!("../wsrelay.example.yaml");
        assert_eq!(parse(text).unwrap(), Config::default());
        // Every key of the default config appears in the example.
        for line in Config::default().to_yaml().lines() {
            let key = line.trim().split(':').next().unwrap_or_default();
            assert!(text.contains(&format!("{key}:")), "example lacks {key}");
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = Config::default();
        assert_eq!(parse(&c.to_yaml()).unwrap(), c);
    }

    #[test]
    fn jwt_settings_are_checked_against_the_algorithm() {
        let c = parse(
            "auth:\n  jwt:\n    algorithm: ES256\n    public_key_file: k.pem\n    audience: a\n    leeway: 5s\n",
        )
        .unwrap();
        let jwt = c.auth.jwt.unwrap();
        assert_eq!(
            jwt.key,
            JwtKey::ES256 {
                public_key_file: "k.pem".into()
            }
        );
        assert_eq!(jwt.leeway, Duration::from_secs(5));
        for (text, want) in [
            ("auth:\n  jwt:\n    algorithm: HS256\n", "needs `secret`"),
            (
                "auth:\n  jwt:\n    algorithm: RS256\n    secret: x\n",
                "needs `public_key_file`",
            ),
            (
                "auth:\n  jwt:\n    algorithm: none\n    secret: x\n",
                "unknown algorithm",
            ),
            (
                "auth:\n  jwt:\n    algorithm: HS256\n    secret: x\n    audiences: y\n",
                "unknown",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains(want), "{text}: {}", e.message);
            assert!(
                e.key.as_deref().is_some_and(|k| k.starts_with("auth.jwt")),
                "{text}: {:?}",
                e.key
            );
            assert!(e.line.is_some(), "{text}");
        }
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let c = parse("server:\n  trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert!(c.server.trusted_proxies[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
        let e = parse("server:\n  trusted_proxies:\n    - 10.0.0.0/33\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.trusted_proxies"));
        assert!(e.message.contains("10.0.0.0/33"), "{}", e.message);
    }

    #[test]
    fn slow_consumer_policy_parses() {
        let c = parse(
            "client:\n  on_overflow: drop_oldest\n  queue_bytes: 64KiB\n  write_timeout: 0s\n",
        )
        .unwrap();
        assert_eq!(c.client.on_overflow, OnOverflow::DropOldest);
        assert_eq!(c.client.queue_bytes, 64 << 10);
        assert!(c.client.write_timeout.is_zero());
        let e = parse("client:\n  on_overflow: wait\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("client.on_overflow"));
        assert_eq!(e.line, Some((2, 16)));
    }

    #[test]
    fn cluster_settings_are_checked() {
        let c = parse(
            "cluster:\n  backend: nats\n  url: \"nats://u:p@broker:4222\"\n  node_id: eu-1\n  buffer_bytes: 1MiB\n",
        )
        .unwrap();
        assert_eq!(c.cluster.backend, ClusterBackend::Nats);
        assert_eq!(c.cluster.node_id, "eu-1");
        assert_eq!(c.cluster.buffer_bytes, 1 << 20);
        assert_eq!(c.cluster.prefix, "wsrelay");
        for (yaml, key, message) in [
            (
                "cluster:\n  prefix: \"a b\"\n",
                Some("cluster.prefix"),
                "at most 64",
            ),
            (
                "cluster:\n  node_id: x..y\n",
                Some("cluster.node_id"),
                "dots between",
            ),
            (
                "cluster:\n  buffer_messages: 0\n",
                Some("cluster.buffer_messages"),
                "at least 1",
            ),
            (
                "cluster:\n  backend: kafka\n",
                Some("cluster.backend"),
                "unknown variant",
            ),
            (
                "cluster:\n  backend: redis\n  url: \"nats://x\"\n",
                Some("cluster"),
                "`url`: invalid Redis URL",
            ),
            (
                "cluster:\n  backend: nats\n  url: \"redis://x\"\n",
                Some("cluster"),
                "nats://",
            ),
            (
                "cluster:\n  url: \"redis://x\"\n",
                Some("cluster"),
                "backend` is none",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert_eq!(e.key.as_deref(), key, "{yaml}: {e}");
            assert!(e.line.is_some(), "{yaml}: {e}");
            assert!(e.message.contains(message), "{yaml}: {e}");
        }
    }
}
