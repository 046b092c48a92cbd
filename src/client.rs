//! The client behind `wsrelay client`: stdin lines out, messages in.
//!
//! Also the one place that knows how to open a client connection (with an
//! extra trusted CA for `wss://` to private servers), so the CLI, the bench
//! and the tests all connect the same way.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{
    ClientBuilder, CloseCode, Connector, MaybeTlsStream, Message, WebSocketStream,
};

use crate::tls::{self, TlsError};

/// A client-side WebSocket over plain TCP or TLS.
pub type ClientStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the client stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_websockets::Error,
    },
    #[error("connection to {url} failed: {source}")]
    Connection {
        url: String,
        #[source]
        source: tokio_websockets::Error,
    },
    #[error("reading stdin or writing stdout failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How the session ended, when it ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Input ended and the close handshake completed (or timed out).
    InputDone,
    /// The server closed the connection with this code and reason.
    ClosedByServer { code: Option<u16>, reason: String },
    /// The connection ended without a close frame.
    Dropped,
}

/// Opens a WebSocket to `url` (`ws://` or `wss://`). For `wss://`, the
/// public web roots are trusted, plus `ca_file` when given.
pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<ClientStream, ClientError> {
    let builder = ClientBuilder::new()
        .uri(url)
        .map_err(|source| ClientError::Url {
            url: url.to_owned(),
            source,
        })?;
    let connector = match url.starts_with("wss:") {
        true => Connector::Rustls(tokio_rustls::TlsConnector::from(tls::client_config(
            ca_file,
        )?)),
        false => Connector::Plain,
    };
    let (ws, _response) = builder
        .connector(&connector)
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok(ws)
}

/// Sends each line of `input` as a text message and writes each message
/// received to `output`, one per line (binary payloads as lossy UTF-8).
/// When `input` ends, closes with 1000 and waits briefly for the server.
pub async fn run<I, O>(
    mut ws: ClientStream,
    url: &str,
    input: I,
    mut output: O,
) -> Result<Ending, ClientError>
where
    I: AsyncBufRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let failed = |source| ClientError::Connection {
        url: url.to_owned(),
        source,
    };
    let mut lines = input.lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => ws.send(Message::text(line)).await.map_err(failed)?,
                None => {
                    ws.send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "")).await.map_err(failed)?;
                    // Print what is still in flight, but do not wait forever for the server.
                    let drain = async {
                        while let Some(Ok(m)) = ws.next().await {
                            print_message(&mut output, &m).await?;
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), drain).await {
                        r?;
                    }
                    output.flush().await?;
                    return Ok(Ending::InputDone);
                }
            },
            message = ws.next() => match message {
                Some(Ok(m)) if m.is_close() => {
                    output.flush().await?;
                    let (code, reason) = m
                        .as_close()
                        .map(|(c, r)| (Some(u16::from(c)), r.to_owned()))
                        .unwrap_or((None, String::new()));
                    // Let the stream send its reply to the close.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
                    return Ok(Ending::ClosedByServer { code, reason });
                }
                Some(Ok(m)) => print_message(&mut output, &m).await?,
                Some(Err(e)) => return Err(failed(e)),
                None => {
                    output.flush().await?;
                    return Ok(Ending::Dropped);
                }
            },
        }
    }
}

async fn print_message<O: AsyncWrite + Unpin>(output: &mut O, m: &Message) -> std::io::Result<()> {
    if m.is_text() || m.is_binary() {
        let mut line = String::from_utf8_lossy(m.as_payload()).into_owned();
        line.push('\n');
        output.write_all(line.as_bytes()).await?;
        output.flush().await?;
    }
    Ok(())
}
