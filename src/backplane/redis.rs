//! Redis pub/sub as the broker: a channel per room.
//!
//! Two connections, because a Redis connection in subscriber mode can do
//! nothing but (un)subscribe: a dedicated pub/sub connection for the rooms
//! this node has subscribers in, and a multiplexed one that publishes each
//! batch as one pipeline of `PUBLISH` commands (one round trip per batch,
//! in order). Either failing ends the link; the caller reconnects both.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, Msg};

use super::LinkError;

/// A connected pair of Redis connections.
pub struct RedisLink {
    subscriptions: PubSubSink,
    messages: PubSubStream,
    publisher: MultiplexedConnection,
}

impl RedisLink {
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, LinkError> {
        let client = Client::open(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let publisher = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| LinkError::Timeout)??;
        let (subscriptions, messages) = pubsub.split();
        Ok(Self {
            subscriptions,
            messages,
            publisher,
        })
    }

    /// Subscribes to every channel in one `SUBSCRIBE` (a node rejoining
    /// after an outage may have thousands of rooms), and waits for Redis to
    /// confirm them.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.subscriptions.subscribe(channels).await?)
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), LinkError> {
        Ok(self.subscriptions.unsubscribe(channels).await?)
    }

    /// Publishes a batch in order, as one pipeline.
    pub async fn publish(&mut self, batch: &[(String, Bytes)]) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        for (channel, message) in batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&message[..]).ignore();
        }
        pipe.exec_async(&mut self.publisher).await?;
        Ok(())
    }

    /// The next message on a subscribed channel; `None` once the
    /// connection is gone.
    pub async fn next(&mut self) -> Option<Msg> {
        self.messages.next().await
    }
}
