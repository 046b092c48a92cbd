//! Redis pub/sub as the broker: a channel per room.
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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::LinkError;
use super::inbound::Inbound;

/// A connected Redis connection.
pub struct RedisLink {
    connection: MultiplexedConnection,
    /// Notified when the connection's driver ends.
    lost: Arc<Notify>,
}

impl RedisLink {
    /// Connects; messages on channels subscribed later go to `inbound`.
    pub async fn connect(
        url: &str,
        timeout: Duration,
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
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self { connection, lost })
    }

    /// Subscribes to every channel in one `SUBSCRIBE` (a node rejoining
    /// after an outage may have thousands of rooms), confirmed by Redis.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.connection.subscribe(channels).await?)
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.connection.unsubscribe(channels).await?)
    }

    /// Publishes a batch in order, as one pipeline.
    pub async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        for (channel, message) in batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&message[..]).ignore();
        }
        pipe.exec_async(&mut self.connection).await?;
        Ok(())
    }

    /// Resolves once the connection is gone.
    pub async fn lost(&self) {
        self.lost.notified().await;
    }
}

/// The payload of a `message` push: `[channel, payload]`.
fn message_payload(data: Vec<Value>) -> Option<Bytes> {
    match data.into_iter().nth(1)? {
        Value::BulkString(payload) => Some(Bytes::from(payload)),
        _ => None,
    }
}
