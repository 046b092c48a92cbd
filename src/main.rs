//! The `wsrelay` command: parses the command line and calls the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
#[cfg(feature = "client")]
use wsrelay::client::{self, Ending};
use wsrelay::config::{ClusterBackend, Config, LogFormat};

// jemalloc rather than the system allocator: an idle client's state is a
// handful of small objects, one of them (tokio's task) 128-byte aligned;
// glibc's per-chunk headers and aligned-allocation slack made S3 (10 000
// idle clients) 190 B per client heavier, mimalloc heavier still
// (docs/ARCHITECTURE.md, "What an idle client costs"). The library leaves
// the choice to its binary.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A fast, lean WebSocket relay.
///
/// Every message a client sends is relayed to every connected client (the
/// sender included), text as text and binary as binary. Run with no
/// arguments to serve ws://0.0.0.0:8443/ with metrics on
/// http://0.0.0.0:9090/metrics.
///
/// Settings come from, in order of precedence: command-line flags,
/// environment variables, the YAML config file, built-in defaults.
#[derive(Parser, Debug)]
#[command(name = "wsrelay", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeArgs),
    /// Connect to a relay: send each stdin line as a text message, print
    /// each message received on its own line.
    ///
    /// When stdin ends, the client closes with 1000 and exits 0. It exits 0
    /// too when the server closes normally (1000) or goes away (1001), and 1
    /// on any other close or error.
    #[cfg(feature = "client")]
    Client(ClientArgs),
    /// Measure a relay (this one or any other): fan-out throughput, latency
    /// and loss, idle memory per connection, or connection rate.
    ///
    /// Every fan-out message carries its publisher, a sequence number and a
    /// send time; every receiver checks order and completeness. With --pid of
    /// a relay on this host, the report includes its CPU time per delivery
    /// and memory per connection. Exits 1 if anything was lost, reordered or
    /// disconnected, unless --allow-loss is given.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Check a config file and print the effective configuration.
    ///
    /// Validates the file as `serve` would, including that TLS and JWT key
    /// files load, applies the same flags and environment variables on top,
    /// and prints the result with every default filled in (secrets as
    /// ***). Exits 0 if the relay would start with it, 2 (naming the file,
    /// key and line) if not.
    CheckConfig(CheckConfigArgs),
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct BenchArgs {
    #[command(subcommand)]
    mode: BenchMode,
}

#[cfg(feature = "bench")]
#[derive(Subcommand, Debug)]
enum BenchMode {
    /// N subscribers and P publishers; every message goes to every client.
    Fanout(FanoutArgs),
    /// Hold N idle connections open (memory per connection with --pid).
    Idle(IdleArgs),
    /// Open connections as fast as possible until one fails.
    Connect(ConnectArgs),
    /// Connections that come and go at a steady rate, ending every way a
    /// client can; run beside `fanout` for a soak test.
    Churn(ChurnArgs),
    /// A reconnect storm: N clients of a room with history drop at once,
    /// messages go by, and all come back at once resuming (?since=); how
    /// long until all caught up, and the relay's peak memory.
    Storm(StormArgs),
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct TargetArgs {
    /// Relay URL, ws:// or wss://.
    #[arg(long, default_value = "ws://127.0.0.1:8443/")]
    url: String,
    /// Extra CA certificate (PEM) to trust for wss://.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Process id of the relay, when it runs on this host: adds its CPU
    /// seconds, CPU ns per delivery and RSS per connection.
    #[arg(long)]
    pid: Option<u32>,
    /// Source addresses to spread connections over (default: 127.0.0.x as
    /// needed above 25 000 connections to a loopback relay).
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    source: Vec<std::net::IpAddr>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Offer permessage-deflate; the report counts the connections on
    /// which the relay accepted it.
    #[arg(long)]
    deflate: bool,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Clients that only receive.
    #[arg(short = 'n', long, default_value_t = 100)]
    subscribers: usize,
    /// Clients that send (and receive).
    #[arg(short = 'p', long, default_value_t = 1)]
    publishers: usize,
    /// Total messages per second over all publishers; without it, each
    /// publisher sends as fast as its in-flight window allows.
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Messages a publisher may have in flight (sent, own copy not yet back).
    #[arg(short = 'w', long, default_value_t = 64)]
    window: usize,
    /// Each publisher writes N messages at once, in one write, as a browser
    /// calling send() in a loop does (the window grows to N if smaller).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    burst: u32,
    /// Payload bytes per message (at least 44, the stamp; 51 for json).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// What fills each message after its stamp: random letters and digits
    /// (barely compressible), or JSON trade events (compressible as real
    /// traffic is; for --deflate).
    #[arg(long, value_enum, default_value_t = PayloadArg::Random)]
    payload: PayloadArg,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Run this long before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: std::time::Duration,
    /// Measure for this long.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// After publishing stops, wait at most this long for the last deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,
    /// Exit 0 even if messages were lost, reordered or clients disconnected.
    #[arg(long)]
    allow_loss: bool,
    /// Put the subscribers on these relays instead (round-robin; repeat or
    /// comma-separate), the publishers staying on --url: a fan-out across
    /// the nodes of a cluster. Latency is then measured at the subscribers,
    /// through the broker.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    subscriber_url: Vec<String>,
    /// Reconnect mode: every subscriber drops its connection after a random
    /// 0.5 to 1.5 times DURATION and resumes (?since=&epoch=) from the last
    /// position it had, on the next --subscriber-url each time (across the
    /// nodes of a cluster with history on, which its broker keeps); the check then proves
    /// recovery lost and repeated nothing. Needs rooms.history on.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    reconnect: Option<std::time::Duration>,
}

#[cfg(feature = "bench")]
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PayloadArg {
    Random,
    Json,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to hold.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    connections: usize,
    /// Hold them this long.
    #[arg(short = 'd', long, default_value = "5s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Before holding them idle, send every connection this many messages
    /// (from one of them) and wait until all have them and two of the
    /// relay's keepalive pings (up to 65 s: an idle client gives its
    /// buffers back at a ping, and the relay returns freed memory to the
    /// system at the next): the report then also gives the relay's memory
    /// per connection idle after traffic.
    #[arg(long, value_name = "MESSAGES", default_value_t = 0)]
    traffic: usize,
    /// Payload bytes of each --traffic message.
    #[arg(short = 's', long, default_value_t = 900)]
    size: usize,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct ChurnArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// New connections per second; each ends differently (clean close,
    /// dropped, reset, half handshake, protocol violation), in turn.
    #[arg(short = 'r', long, default_value_t = 200)]
    rate: u32,
    /// Keep churning this long.
    #[arg(short = 'd', long, default_value = "60s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Longest a client that is not aborted at once stays connected.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    max_life: std::time::Duration,
    /// Most churning connections alive at once.
    #[arg(long, default_value_t = 2000)]
    max_alive: usize,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct StormArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Clients that drop and come back (--url: a room, on a relay with
    /// rooms.history on).
    #[arg(short = 'n', long, default_value_t = 5000)]
    clients: usize,
    /// Messages published while they are away.
    #[arg(short = 'm', long, default_value_t = 100)]
    missed: usize,
    /// Payload bytes of each.
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct ConnectArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Stop after this many connections.
    #[arg(short = 'n', long, default_value_t = 19_000)]
    connections: usize,
    /// Stop after this long.
    #[arg(short = 'd', long, default_value = "30s", value_parser = parse_duration)]
    duration: std::time::Duration,
}

#[cfg(feature = "bench")]
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    wsrelay::config::parse_duration(s)
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    wsrelay::config::check_log_filter(s).map(|()| s.to_owned())
}

#[cfg(feature = "bench")]
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        std::time::Duration::ZERO => Err("must be more than zero".to_owned()),
        d => Ok(d),
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// YAML config file; every key is optional (see wsrelay.example.yaml).
    #[arg(short = 'c', long, env = "WSRELAY_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args, Debug)]
struct CheckConfigArgs {
    /// The YAML config file to check.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

/// `--log-format`'s values: the command line's view of [`LogFormat`], so the
/// library need not know clap.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// Settings that flags and environment variables override in any file.
#[derive(Args, Debug)]
struct Overrides {
    /// Address for WebSocket clients [config: server.listen; default 0.0.0.0:8443].
    #[arg(long, env = "WSRELAY_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address for /metrics and /healthz [config: metrics.listen; default 0.0.0.0:9090].
    #[arg(long, env = "WSRELAY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log filter such as `info` or `wsrelay=debug` [config: log.level]; RUST_LOG overrides it.
    #[arg(long, env = "WSRELAY_LOG", value_name = "FILTER", value_parser = parse_log_filter)]
    log_level: Option<String>,
    /// Log line format [config: log.format].
    #[arg(long, env = "WSRELAY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
    /// Join a cluster through this broker [config: cluster.url]; without
    /// cluster.backend in the file, the scheme picks it: redis:// or
    /// rediss:// for Redis, nats:// or tls:// for NATS.
    #[arg(long, env = "WSRELAY_CLUSTER_URL", value_name = "URL")]
    cluster_url: Option<String>,
    /// This node's name in the cluster [config: cluster.node_id; default random].
    #[arg(long, env = "WSRELAY_NODE_ID", value_name = "NAME")]
    node_id: Option<String>,
}

#[cfg(feature = "client")]
#[derive(Args, Debug)]
struct ClientArgs {
    /// Relay URL, ws:// or wss://.
    #[arg(default_value = "ws://127.0.0.1:8443/")]
    url: String,
    /// Extra CA certificate (PEM) to trust for wss://, e.g. a self-signed relay's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Offer permessage-deflate: the server may then compress what it
    /// sends (the client inflates it); lines are sent uncompressed.
    #[arg(long)]
    deflate: bool,
    /// Start with the room's latest kept messages: that many (20), or those
    /// that young (30s). Needs rooms.history on the relay.
    #[arg(long, value_name = "N|DURATION", conflicts_with = "since")]
    rewind: Option<String>,
    /// Resume after this position (the last message had), if the room's
    /// epoch is still --epoch and its history holds what followed. Only
    /// with --positions does the relay's notice say whether it could.
    #[arg(long, value_name = "POSITION", requires = "epoch")]
    since: Option<u64>,
    /// The room's epoch, with --since.
    #[arg(long, requires = "since")]
    epoch: Option<String>,
    /// The position-aware mode (subprotocol wsrelay.v1): the relay's join
    /// notice (#{...}) and each message's position (@N) print on their own
    /// lines before the messages.
    #[arg(long)]
    positions: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        #[cfg(feature = "client")]
        Some(Command::Client(args)) => run_client(args),
        #[cfg(feature = "bench")]
        Some(Command::Bench(args)) => run_bench(args),
        Some(Command::CheckConfig(args)) => check_config(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsrelay: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line. Library errors already quote
/// their cause in their own message, so a cause is printed only if the
/// text before it does not contain it yet.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// The file (if any) with flags and environment variables applied on top.
fn effective_config(file: Option<&Path>, args: Overrides) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(addr) = args.listen {
        config.server.listen = addr;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = addr;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    if let Some(format) = args.log_format {
        config.log.format = format.into();
    }
    if let Some(url) = args.cluster_url {
        if config.cluster.backend == ClusterBackend::None {
            config.cluster.backend = wsrelay::backplane::backend_of(&url);
        }
        wsrelay::backplane::check_url(config.cluster.backend, &url)
            .map_err(|e| anyhow::anyhow!("--cluster-url / WSRELAY_CLUSTER_URL {url:?}: {e}"))?;
        config.cluster.url = url;
    }
    if let Some(id) = args.node_id {
        wsrelay::config::check_cluster_name(&id)
            .map_err(|e| anyhow::anyhow!("--node-id / WSRELAY_NODE_ID: {e}"))?;
        config.cluster.node_id = id;
    }
    Ok(config)
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let checked = effective_config(Some(&args.file), args.overrides).and_then(|config| {
        wsrelay::server::check(&config)
            .with_context(|| format!("in config file {}", args.file.display()))?;
        Ok(config)
    });
    match checked {
        Ok(config) => {
            print!("{}", config.to_yaml_redacted());
            eprintln!("wsrelay: {} is valid", args.file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("wsrelay: error: {}", describe(&e));
            Ok(ExitCode::from(2))
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match effective_config(args.config_file.as_deref(), args.overrides) {
        Ok(c) => c,
        Err(e) => {
            // A configuration problem: the operator has to fix something.
            eprintln!("wsrelay: error: {}", describe(&e));
            return Ok(ExitCode::from(2));
        }
    };
    wsrelay::logging::init(&config.log.level, config.log.format)
        .map_err(|e| anyhow::anyhow!("invalid log level {:?}: {e}", config.log.level))?;
    runtime()?.block_on(wsrelay::server::run(&config))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "client")]
fn run_client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let code = runtime.block_on(async {
        if let Some(since) = args.since
            && !args.positions
        {
            eprintln!(
                "wsrelay: note: without --positions the relay cannot say whether it resumed \
                 (a room whose history no longer holds position {since} goes live silently)"
            );
        }
        let protocols: &[&str] = if args.positions {
            &[wsrelay::wire::POSITIONS_PROTOCOL]
        } else {
            &[]
        };
        let mut dialer = client::Dialer::new(&args.url, args.ca_file.as_deref()).await?;
        let start = start_query(&args);
        if !start.is_empty() {
            dialer = dialer.with_query(&start)?;
        }
        let ws = dialer
            .with_deflate(args.deflate)
            .with_protocols(protocols)?
            .connect(None)
            .await?;
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let ending = client::run(ws, &args.url, stdin, tokio::io::stdout()).await?;
        Ok(match ending {
            Ending::InputDone
            | Ending::ClosedByServer {
                code: Some(1000 | 1001),
                ..
            } => {
                if let Ending::ClosedByServer {
                    code: Some(code),
                    reason,
                } = &ending
                {
                    eprintln!("wsrelay: server closed the connection: {code} {reason}");
                }
                ExitCode::SUCCESS
            }
            Ending::ClosedByServer { code, reason } => {
                let code = code.map_or_else(|| "without a code".to_owned(), |c| c.to_string());
                eprintln!("wsrelay: server closed the connection: {code} {reason}");
                ExitCode::FAILURE
            }
            Ending::Dropped => {
                eprintln!("wsrelay: connection dropped without a close frame");
                ExitCode::FAILURE
            }
        })
    });
    // Tokio reads stdin on a blocking thread that no one can interrupt, and
    // dropping the runtime would wait for it: for the next line, forever if
    // stdin stays open after the server has closed the connection.
    runtime.shutdown_background();
    code
}

/// The query parameters that say where to start in the room (empty: live).
#[cfg(feature = "client")]
fn start_query(args: &ClientArgs) -> String {
    let mut params = form_urlencoded::Serializer::new(String::new());
    if let Some(rewind) = &args.rewind {
        params.append_pair("rewind", rewind);
    }
    if let (Some(since), Some(epoch)) = (args.since, &args.epoch) {
        params.append_pair("since", &since.to_string());
        params.append_pair("epoch", epoch);
    }
    params.finish()
}

#[cfg(feature = "bench")]
fn run_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use wsrelay::bench;
    let target = |t: TargetArgs| {
        let json = t.json;
        let target = bench::Target {
            url: t.url,
            ca_file: t.ca_file,
            sources: t.source,
            connect_concurrency: t.connect_concurrency,
            pid: t.pid,
            progress: !json,
            deflate: t.deflate,
        };
        (target, json)
    };
    runtime()?.block_on(async {
        match args.mode {
            BenchMode::Fanout(a) => {
                let (t, json) = target(a.target);
                let opts = bench::FanoutOptions {
                    subscribers: a.subscribers,
                    publishers: a.publishers.max(1),
                    rate: a.rate,
                    window: a.window,
                    burst: a.burst as usize,
                    size: a.size,
                    payload: match a.payload {
                        PayloadArg::Random => bench::payload::Kind::Random,
                        PayloadArg::Json => bench::payload::Kind::Json,
                    },
                    binary: a.binary,
                    warmup: a.warmup,
                    duration: a.duration,
                    drain_timeout: a.drain_timeout,
                    subscriber_urls: a.subscriber_url,
                    reconnect: a.reconnect,
                };
                let report = bench::fanout(&t, &opts).await?;
                print_report(&report, json)?;
                Ok(match report.saw_loss() && !a.allow_loss {
                    true => ExitCode::FAILURE,
                    false => ExitCode::SUCCESS,
                })
            }
            BenchMode::Idle(a) => {
                let (t, json) = target(a.target);
                let opts = bench::IdleOptions {
                    connections: a.connections,
                    hold: a.duration,
                    traffic: a.traffic,
                    size: a.size,
                };
                let report = bench::idle(&t, &opts).await?;
                print_report(&report, json)?;
                Ok(match report.disconnects.is_empty() {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::FAILURE,
                })
            }
            BenchMode::Connect(a) => {
                let (t, json) = target(a.target);
                let report = bench::connect(&t, a.connections, a.duration).await?;
                print_report(&report, json)?;
                Ok(ExitCode::SUCCESS)
            }
            BenchMode::Storm(a) => {
                let (t, json) = target(a.target);
                let opts = bench::storm::StormOptions {
                    clients: a.clients,
                    missed: a.missed,
                    size: a.size,
                };
                let report = bench::storm::storm(&t, &opts).await?;
                print_report(&report, json)?;
                Ok(match report.saw_loss() {
                    true => ExitCode::FAILURE,
                    false => ExitCode::SUCCESS,
                })
            }
            BenchMode::Churn(a) => {
                let (t, json) = target(a.target);
                let opts = bench::churn::ChurnOptions {
                    rate: a.rate.max(1),
                    duration: a.duration,
                    max_life: a.max_life,
                    max_alive: a.max_alive,
                };
                let report = bench::churn::churn(&t, &opts).await?;
                print_report(&report, json)?;
                Ok(match report.failed {
                    0 => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                })
            }
        }
    })
}

#[cfg(feature = "bench")]
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    match json {
        true => println!("{}", serde_json::to_string_pretty(report)?),
        false => print!("{report}"),
    }
    Ok(())
}

/// One worker thread per CPU this process may run on; with a single CPU
/// (e.g. under `taskset`) the current-thread scheduler, which skips the
/// work-stealing machinery that then only costs time.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = match cpus {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
