//! `tally-connect`: publishes a data directory's change events to NATS JetStream.

use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_connect::{Config, run};
use tokio::signal::unix::{SignalKind, signal};

/// Publishes every change event of a Tally data directory, in order, to NATS
/// JetStream, and follows the journal forever. Resumes after the stream's last
/// message. Logs go to stderr (RUST_LOG sets the level).
#[derive(Debug, Parser)]
#[command(name = "tally-connect", version)]
struct Args {
    /// The data directory (its journal is DATA/events).
    #[arg(long)]
    data: PathBuf,
    /// The NATS server.
    #[arg(long, env = "TALLY_NATS_URL")]
    nats: String,
    /// The JetStream stream (created if missing, with subjects `<subject>.>`).
    #[arg(long, default_value = "TALLY_EVENTS")]
    stream: String,
    /// The subject prefix: events go to `<subject>.<kind>`.
    #[arg(long, default_value = "tally.events")]
    subject: String,
    /// Publish the events after this timestamp instead of resuming after the stream's
    /// last message.
    #[arg(long)]
    after: Option<u64>,
    /// Publishes sent and not yet acknowledged, at most.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    window: u32,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_json);
    let mut config = Config::new(args.data, args.nats);
    config.stream = args.stream;
    config.subject = args.subject;
    config.after_timestamp = args.after;
    config.window_publishes_max = args.window as usize;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(error) => {
                tracing::error!(%error, "cannot handle SIGTERM");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            Err(error) = run(config) => {
                tracing::error!(%error, "tally-connect stopped");
                ExitCode::FAILURE
            }
            _ = terminate.recv() => ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
