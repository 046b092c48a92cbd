//! The `wsrelay` command: parses the command line and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wsrelay::client::{self, Ending};
use wsrelay::config::{Config, LogFormat};

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
    Client(ClientArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// YAML config file; every key is optional (see wsrelay.example.yaml).
    #[arg(short = 'c', long, env = "WSRELAY_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Address for WebSocket clients [config: server.listen; default 0.0.0.0:8443].
    #[arg(long, env = "WSRELAY_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address for /metrics and /healthz [config: metrics.listen; default 0.0.0.0:9090].
    #[arg(long, env = "WSRELAY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log filter such as `info` or `wsrelay=debug` [config: log.level]; RUST_LOG overrides it.
    #[arg(long, env = "WSRELAY_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// Log line format [config: log.format].
    #[arg(long, env = "WSRELAY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Relay URL, ws:// or wss://.
    #[arg(default_value = "ws://127.0.0.1:8443/")]
    url: String,
    /// Extra CA certificate (PEM) to trust for wss://, e.g. a self-signed relay's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Client(args)) => run_client(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsrelay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The file (if any) with flags and environment variables applied on top.
fn effective_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config_file {
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
        config.log.format = format;
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match effective_config(args) {
        Ok(c) => c,
        Err(e) => {
            // A configuration problem: the operator has to fix something.
            eprintln!("wsrelay: error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    wsrelay::logging::init(&config.log)
        .map_err(|e| anyhow::anyhow!("invalid log level {:?}: {e}", config.log.level))?;
    runtime()?.block_on(wsrelay::server::run(&config))?;
    Ok(ExitCode::SUCCESS)
}

fn run_client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let ws = client::connect(&args.url, args.ca_file.as_deref()).await?;
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
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
