//! Redis pub/sub as the broker: a channel per room; with history, a
//! capped stream per room as well.
//!
//! One multiplexed connection speaking RESP3 (Redis 6 or later), which
//! lets a connection publish while it is subscribed. Each batch goes out as
//! one pipeline of `PUBLISH` commands (one round trip per batch, in order);
//! (un)subscribing many rooms is one command. Messages on subscribed
//! channels arrive as RESP3 pushes, which the connection's driver hands
//! straight to the inbound queues: redis-rs's dedicated pub/sub connection
//! would put them through an unbounded channel first. Every command is
//! bounded by the response timeout; the driver reports the connection's
//! end as a push too, which ends the link.
//!
//! Shared history: a message for the broker to number goes through one
//! script ([`PUBLISH_SCRIPT`]), atomic on the server: it takes the room's
//! next position from the room's meta hash (which holds the epoch, made
//! from the node's random candidate if the hash is gone), appends the
//! numbered message to the room's stream (`XADD ... MAXLEN ~ size`, the
//! position as the entry id `0-<position>`), renews both keys' expiry
//! and publishes it on the room's channel. Positions are thus per room,
//! without gaps, in the order Redis ran the scripts: the one every node
//! sees. [`READ_SCRIPT`] reads a room's epoch, newest position and entries
//! after a position, creating the epoch if there is none, so that every
//! node agrees on it before the first message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::inbound::Inbound;
use super::{LinkError, Outgoing, RawPage, SharedSettings};
use crate::hub::new_epoch;

/// Numbers one message of a room, keeps it in the room's stream and
/// publishes it. KEYS: the room's meta hash (`e`: epoch, `t`: newest
/// position), its stream. ARGV: channel, header, payload, epoch candidate,
/// stream size, stream ttl (ms), meta ttl (ms). The sequence goes between
/// the header and the payload (`envelope`).
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local top = redis.call('HINCRBY', KEYS[1], 't', 1)
local position = string.format('%d', top)
local message = ARGV[2] .. string.char(#epoch) .. epoch .. string.char(#position) .. position .. ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. position, 'm', message)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], message)
return top
";

/// A room's epoch, newest position, and stream entries after a position
/// (at most the newest `count` of them). KEYS: meta hash, stream. ARGV:
/// the position (empty: no entries), epoch candidate (empty: make none,
/// answer an empty epoch), meta ttl (ms), count, the epoch the position
/// is of (empty: any).
const READ_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if ARGV[2] == '' then
    return {'', '0', {}}
  end
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local top = redis.call('HGET', KEYS[1], 't') or '0'
local entries = {}
if ARGV[1] ~= '' and (ARGV[5] == '' or ARGV[5] == epoch) then
  local from = math.max(tonumber(ARGV[1]) + 1, tonumber(top) - tonumber(ARGV[4]) + 1)
  entries = redis.call('XRANGE', KEYS[2], '0-' .. string.format('%d', from), '+', 'COUNT', ARGV[4])
end
return {epoch, top, entries}
";

/// The keys of a room's shared history, from its channel.
fn history_keys(channel: &str) -> [String; 2] {
    [format!("{channel}:meta"), format!("{channel}:stream")]
}

/// A connected Redis connection.
pub struct RedisLink {
    connection: MultiplexedConnection,
    /// With shared history: its settings, and the publish script's hash.
    history: Option<(SharedSettings, String)>,
    /// Notified when the connection's driver ends.
    lost: Arc<Notify>,
}

impl RedisLink {
    /// Connects; messages on channels subscribed later go to `inbound`.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        history: Option<SharedSettings>,
        inbound: Arc<Inbound>,
    ) -> Result<Self, LinkError> {
        let client = Client::open(url)?;
        let info = client.get_connection_info().clone();
        let redis_settings = info.redis_settings().clone();
        let info = info.set_redis_settings(redis_settings.set_protocol(ProtocolVersion::RESP3));
        let client = Client::open(info)?;
        let lost = Arc::new(Notify::new());
        let on_push = {
            let lost = lost.clone();
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                match push.kind {
                    // Anything but a bulk string is not a wsrelay message.
                    PushKind::Message => {
                        inbound.accept(message_payload(push.data).unwrap_or_default())
                    }
                    PushKind::Disconnection => lost.notify_one(),
                    // Subscription confirmations; the commands' own replies
                    // already say they were applied.
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(on_push);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Loaded once per connection: a restarted Redis has none.
        let history = match history {
            Some(settings) => {
                let sha: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(PUBLISH_SCRIPT)
                    .query_async(&mut connection)
                    .await?;
                Some((settings, sha))
            }
            None => None,
        };
        Ok(Self {
            connection,
            history,
            lost,
        })
    }

    /// What reads rooms' history over this connection.
    pub fn reader(&self) -> Option<HistoryReader> {
        let (settings, _) = self.history.as_ref()?;
        Some(HistoryReader {
            connection: self.connection.clone(),
            meta_ttl_ms: settings.meta_ttl_ms(),
            max_entries: settings.size.saturating_add(128),
        })
    }

    /// Subscribes to every channel in one `SUBSCRIBE` (a node rejoining
    /// after an outage may have thousands of rooms), confirmed by Redis.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.connection.subscribe(channels).await?)
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.connection.unsubscribe(channels).await?)
    }

    /// Publishes a batch in order, as one pipeline: each message for the
    /// broker to number through the publish script, the others plainly.
    pub async fn publish(&mut self, batch: &[Outgoing]) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        for m in batch {
            match (&self.history, m.split) {
                (Some((settings, sha)), Some(split)) => {
                    let [meta, stream] = history_keys(&m.channel);
                    pipe.cmd("EVALSHA")
                        .arg(sha)
                        .arg(2)
                        .arg(meta)
                        .arg(stream)
                        .arg(&m.channel)
                        .arg(&m.message[..split])
                        .arg(&m.message[split..])
                        .arg(new_epoch())
                        .arg(settings.size.max(1))
                        .arg(settings.ttl_ms())
                        .arg(settings.meta_ttl_ms())
                        .ignore();
                }
                _ => {
                    pipe.cmd("PUBLISH")
                        .arg(&m.channel)
                        .arg(&m.message[..])
                        .ignore();
                }
            }
        }
        pipe.exec_async(&mut self.connection).await?;
        Ok(())
    }

    /// Resolves once the connection is gone.
    pub async fn lost(&self) {
        self.lost.notified().await;
    }
}

/// Reads rooms' shared history; one per connection, cloned per read (the
/// connection is multiplexed).
#[derive(Clone)]
pub struct HistoryReader {
    connection: MultiplexedConnection,
    meta_ttl_ms: u64,
    /// Most entries one read takes: the stream's size, and the ~100 more
    /// `MAXLEN ~` may leave.
    max_entries: usize,
}

impl HistoryReader {
    /// `channel`'s room's epoch and newest position, and its messages
    /// after position `after` (`u64::MAX`: none; none either if its epoch
    /// is not `epoch`, when given); a room without an epoch gets one if
    /// `create`, else answers an empty epoch.
    pub async fn read(
        &self,
        channel: &str,
        after: u64,
        epoch: Option<&str>,
        create: bool,
    ) -> Result<RawPage, LinkError> {
        let [meta, stream] = history_keys(channel);
        // Positions stay within what the script counts exactly.
        let after = match after {
            u64::MAX => String::new(),
            n => n.min(super::envelope::MAX_POSITION).to_string(),
        };
        let candidate = match create {
            true => new_epoch(),
            false => String::new(),
        };
        // EVAL, not EVALSHA: reads are rare, and Redis caches the script.
        let reply: Value = redis::cmd("EVAL")
            .arg(READ_SCRIPT)
            .arg(2)
            .arg(meta)
            .arg(stream)
            .arg(after)
            .arg(candidate)
            .arg(self.meta_ttl_ms)
            .arg(self.max_entries)
            .arg(epoch.unwrap_or_default())
            .query_async(&mut self.connection.clone())
            .await?;
        read_page(reply).ok_or(LinkError::Reply)
    }
}

/// Takes [`READ_SCRIPT`]'s reply apart: `[epoch, top, [[id, [field,
/// message]], ...]]`.
fn read_page(reply: Value) -> Option<RawPage> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [epoch, top, entries]: [Value; 3] = parts.try_into().ok()?;
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let epoch = text(epoch)?;
    let top = text(top)?
        .parse()
        .ok()
        .filter(|t| *t <= super::envelope::MAX_POSITION)?;
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return None;
        };
        let [_, fields]: [Value; 2] = entry.try_into().ok()?;
        let fields = match fields {
            Value::Array(f) => f,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        match fields.into_iter().nth(1)? {
            Value::BulkString(m) => messages.push(Bytes::from(m)),
            _ => return None,
        }
    }
    Some(RawPage {
        epoch,
        top,
        messages,
    })
}

/// The payload of a `message` push: `[channel, payload]`.
fn message_payload(data: Vec<Value>) -> Option<Bytes> {
    match data.into_iter().nth(1)? {
        Value::BulkString(payload) => Some(Bytes::from(payload)),
        _ => None,
    }
}
