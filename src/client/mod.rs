//! The client behind `wsrelay client`: stdin lines out, messages in.
//!
//! Also the one place that knows how to open a client connection (with an
//! extra trusted CA for `wss://` to private servers), so the CLI, the bench
//! and the tests all connect the same way.
//!
//! A tool: it talks to a relay as any client would, over `tls`; nothing
//! of the server's internals. permessage-deflate, which the WebSocket
//! library lacks, is [`inflate`]'s, beneath it.

pub mod inflate;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{
    ClientBuilder, CloseCode, Connector, MaybeTlsStream, Message, WebSocketStream,
};

use crate::tls::{self, TlsError};
use inflate::Inflating;

/// A client-side WebSocket over plain TCP or TLS, inflating the server's
/// compressed messages when permessage-deflate was agreed.
pub type ClientStream = WebSocketStream<Inflating<MaybeTlsStream<TcpStream>>>;

/// Why the client stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot use URL {url}: {why}")]
    Unusable { url: String, why: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{url} refused the upgrade: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
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

/// Opens client connections to one relay URL. Resolves the address and
/// builds the TLS configuration once, so opening thousands of connections
/// (as the bench does) costs only the handshakes.
#[derive(Clone)]
pub struct Dialer {
    url: String,
    uri: Uri,
    host: String,
    addr: SocketAddr,
    connector: Arc<Connector>,
    /// Bytes of frames a connection buffers before it writes them out
    /// unasked; `None`: the library's default.
    flush_threshold: Option<usize>,
    /// Whether connections offer permessage-deflate.
    deflate: bool,
    /// Subprotocols connections offer (`Sec-WebSocket-Protocol`).
    protocols: Option<http::HeaderValue>,
    /// Bytes all its connections received after their handshakes.
    received: Arc<AtomicU64>,
}

impl Dialer {
    /// Prepares connections to `url` (`ws://` or `wss://`). For `wss://`,
    /// the public web roots are trusted, plus `ca_file` when given.
    pub async fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let uri: Uri = url.parse().map_err(|source| ClientError::Url {
            url: url.to_owned(),
            source,
        })?;
        let unusable = |why: &str| ClientError::Unusable {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(unusable("the scheme must be ws:// or wss://")),
        };
        // Uri::host keeps IPv6 brackets, which do not resolve.
        let host = uri
            .host()
            .ok_or_else(|| unusable("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| unusable("the host does not resolve"))?;
        let connector = match tls {
            true => Connector::Rustls(tokio_rustls::TlsConnector::from(tls::client_config(
                ca_file,
            )?)),
            false => Connector::Plain,
        };
        Ok(Self {
            url: url.to_owned(),
            uri,
            host,
            addr,
            connector: Arc::new(connector),
            flush_threshold: None,
            deflate: false,
            protocols: None,
            received: Arc::default(),
        })
    }

    /// Lets connections buffer up to `bytes` of frames before writing them
    /// unasked, so a sender that flushes after many frames writes them all
    /// at once (`wsrelay bench --burst`).
    pub fn with_flush_threshold(self, bytes: usize) -> Self {
        Self {
            flush_threshold: Some(bytes),
            ..self
        }
    }

    /// Makes connections offer permessage-deflate, and inflate what the
    /// server compresses when it accepts (see [`inflate`]).
    pub fn with_deflate(self, deflate: bool) -> Self {
        Self { deflate, ..self }
    }

    /// Makes connections offer these subprotocols (such as `wsrelay.v1`,
    /// the position-aware mode); an empty list offers none.
    pub fn with_protocols(self, protocols: &[&str]) -> Result<Self, ClientError> {
        let protocols = match protocols {
            [] => None,
            list => Some(http::HeaderValue::from_str(&list.join(", ")).map_err(|_| {
                ClientError::Unusable {
                    url: self.url.clone(),
                    why: "a subprotocol is not a valid header value".to_owned(),
                }
            })?),
        };
        Ok(Self { protocols, ..self })
    }

    /// The same dialer for this URL with `query` (`name=value&...`,
    /// already encoded) added to its query string: a resuming client's
    /// `since=&epoch=`. Nothing is resolved or loaded again.
    pub fn with_query(&self, query: &str) -> Result<Self, ClientError> {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}{query}", self.url);
        let uri = url.parse().map_err(|source| ClientError::Url {
            url: url.clone(),
            source,
        })?;
        Ok(Self {
            url,
            uri,
            ..self.clone()
        })
    }

    /// Counts the bytes this dialer's connections receive after their
    /// handshakes into `received` (several dialers may share one).
    pub fn counting_into(self, received: Arc<AtomicU64>) -> Self {
        Self { received, ..self }
    }

    /// Bytes this dialer's connections (and any sharing its counter) have
    /// received after their handshakes, frame headers included.
    pub fn received_bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The relay's resolved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `Host` header value for the relay.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The request target: path and query of the URL.
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// Opens the TCP connection alone, from `source` when given (spreading
    /// source addresses over 127.0.0.x lifts the ephemeral-port limit per
    /// address).
    pub async fn connect_tcp(&self, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(self.addr).await
    }

    /// Opens one WebSocket connection, from `source` when given.
    pub async fn connect(&self, source: Option<IpAddr>) -> Result<ClientStream, ClientError> {
        let failed = |source| ClientError::Connect {
            url: self.url.clone(),
            source,
        };
        let stream = self
            .connect_tcp(source)
            .await
            .map_err(|e| failed(e.into()))?;
        let _ = stream.set_nodelay(true);
        let stream = self
            .connector
            .wrap(&self.host, stream)
            .await
            .map_err(failed)?;
        let refusal = Arc::new(std::sync::OnceLock::new());
        let stream = Inflating::new(stream, self.deflate, self.received.clone())
            .with_refusal(refusal.clone());
        let mut builder = ClientBuilder::from_uri(self.uri.clone());
        if self.deflate {
            builder = builder
                .add_header(
                    http::header::SEC_WEBSOCKET_EXTENSIONS,
                    http::HeaderValue::from_static(inflate::OFFER),
                )
                .map_err(failed)?;
        }
        if let Some(protocols) = &self.protocols {
            builder = builder
                .add_header(http::header::SEC_WEBSOCKET_PROTOCOL, protocols.clone())
                .map_err(failed)?;
        }
        if let Some(bytes) = self.flush_threshold {
            builder = builder.config(tokio_websockets::Config::default().flush_threshold(bytes));
        }
        let (ws, _response) =
            builder
                .connect_on(stream)
                .await
                .map_err(|e| match refusal.get().cloned() {
                    Some(r) => ClientError::Refused {
                        url: self.url.clone(),
                        status: r.status,
                        body: r.body,
                    },
                    None => failed(e),
                })?;
        Ok(ws)
    }
}

/// Opens one WebSocket to `url`; see [`Dialer::new`].
pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<ClientStream, ClientError> {
    Dialer::new(url, ca_file).await?.connect(None).await
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
