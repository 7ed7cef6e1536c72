//! `tally serve` and `tally token`: the ledger, or one replica of a cluster, as a gRPC
//! server (docs/spec.md §6 and §7, docs/server.md, docs/cluster.md).

use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tally_engine::Placement;
use tally_server::{Backend, Limits, Operation, Rights, Server, ServerConfig, TlsFiles};

/// A listening address given as `IP:PORT` or `HOST:PORT`: a host name is resolved
/// once, at start, to its first address.
fn socket_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let mut resolved = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|error| format!("not an IP:PORT or HOST:PORT address: {error}"))?;
    resolved
        .next()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

/// The flags of `tally serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// The gRPC address (IP or host name, and port); port 0 picks a free one (printed
    /// on stdout).
    #[arg(long, default_value = "127.0.0.1:7100", value_parser = socket_address)]
    listen: SocketAddr,
    /// Number of shards (default: fitted to the machine).
    #[arg(long)]
    shards: Option<usize>,
    /// Place ids on shards by their lowest N bits (1 to 128; default 128, the whole id).
    #[arg(long, default_value_t = Placement::WHOLE_ID)]
    placement_bits: Placement,
    /// The server's certificate chain (PEM); with --tls-key, serves TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The token file (hashed tokens and their rights); without it every caller may
    /// do everything.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Allow plain text on a non-loopback address: the client address and, for a
    /// replica, the peer address too.
    #[arg(long)]
    insecure: bool,
    /// Serve Prometheus metrics over HTTP at this address (IP or host name, and port).
    #[arg(long, value_parser = socket_address)]
    metrics: Option<SocketAddr>,
    /// Log lines as JSON instead of text.
    #[arg(long)]
    log_json: bool,
    /// Largest request message in bytes (answers are bounded by the batch and page limits).
    #[arg(long, default_value_t = Limits::default().message_bytes_max)]
    message_bytes_max: usize,
    /// Concurrent calls on one connection.
    #[arg(long, default_value_t = Limits::default().streams_per_connection_max)]
    streams_per_connection_max: u32,
    /// Open connections from one IP address (an IPv6 one: its /64 network).
    #[arg(long, default_value_t = Limits::default().connections_per_ip_max)]
    connections_per_ip_max: usize,
    /// Open connections in all.
    #[arg(long, default_value_t = Limits::default().connections_max)]
    connections_max: usize,
    /// Request bytes the calls from one address may hold while they are read; a call
    /// past it gets RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = Limits::default().request_bytes_per_ip_max)]
    request_bytes_per_ip_max: usize,
    /// Request bytes all calls may hold while they are read.
    #[arg(long, default_value_t = Limits::default().request_bytes_max)]
    request_bytes_max: usize,
    /// Seconds a connection may go without a call in flight before it is closed.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout_s: u64,
    /// Seconds a graceful stop waits for calls in flight before dropping connections.
    #[arg(long, default_value_t = 10)]
    drain_timeout_s: u64,
    /// Seconds a new connection has to send its first bytes, and a call its whole request.
    #[arg(long, default_value_t = Limits::default().header_timeout.as_secs())]
    header_timeout_s: u64,
    /// Run as one replica of a cluster: the peer address of every replica,
    /// `1=HOST:PORT,2=HOST:PORT,...` (the replicas' own traffic goes there).
    #[arg(long, requires = "replica", conflicts_with_all = ["shards", "placement_bits"])]
    cluster: Option<String>,
    /// This replica's id in --cluster.
    #[arg(long, requires = "cluster")]
    replica: Option<u64>,
    /// Bind the peer service here instead of at this replica's address in --cluster
    /// (when the others reach it through a proxy or a NAT).
    #[arg(long, requires = "cluster")]
    peer_listen: Option<String>,
    /// Join a running cluster (started empty, added with `tally cluster add`)
    /// instead of forming one.
    #[arg(long, requires = "cluster")]
    join: bool,
    /// The shortest election timeout in milliseconds; the longest is twice it, the
    /// heartbeat interval two thirds of it. A lost leader is replaced within about 4
    /// times it, 6 times when two followers stand for election at once.
    #[arg(long, default_value_t = 300, requires = "cluster")]
    election_timeout_ms: u64,
    /// A file holding the cluster's peer secret (16 to 256 printable characters, the
    /// same on every replica): peer calls carry it, and calls without it are refused.
    #[arg(long, requires = "cluster")]
    peer_secret_file: Option<PathBuf>,
    /// Bytes of log entries after which the replica takes a snapshot and purges the
    /// log before it (at least 4,096): a replica further behind catches up from it.
    #[arg(long, default_value_t = 1 << 30, requires = "cluster")]
    snapshot_log_bytes: u64,
    /// Allow a non-loopback peer address only (the client address keeps TLS): peer
    /// traffic is plain text (keep it on a network only the replicas reach, and give
    /// a peer secret).
    #[arg(long, requires = "cluster")]
    insecure_peer: bool,
}

impl ServeArgs {
    fn server_config(&self) -> ServerConfig {
        let mut config = ServerConfig::new(self.listen);
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        config.tokens = self.tokens.clone();
        config.insecure = self.insecure;
        config.metrics = self.metrics;
        config.drain_timeout = Duration::from_secs(self.drain_timeout_s);
        config.limits = Limits {
            message_bytes_max: self.message_bytes_max,
            streams_per_connection_max: self.streams_per_connection_max,
            connections_per_ip_max: self.connections_per_ip_max,
            connections_max: self.connections_max,
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            header_timeout: Duration::from_secs(self.header_timeout_s),
            request_bytes_per_ip_max: self.request_bytes_per_ip_max,
            request_bytes_max: self.request_bytes_max,
            ..Limits::default()
        };
        config
    }

    /// The cluster configuration, when serving as a replica.
    fn cluster_config(&self) -> Result<Option<tally_cluster::ClusterConfig>, String> {
        let (Some(members), Some(replica)) = (&self.cluster, self.replica) else {
            return Ok(None);
        };
        let members = tally_cluster::ClusterConfig::parse_members(members)
            .map_err(|e| format!("--cluster: {e}"))?;
        let mut config = tally_cluster::ClusterConfig::new(replica, members, self.data.clone());
        config.join = self.join;
        config.peer_listen = self.peer_listen.clone();
        config.peer_secret = self
            .peer_secret_file
            .as_deref()
            .map(tally_cluster::PeerSecret::read)
            .transpose()
            .map_err(|e| format!("--peer-secret-file {e}"))?;
        let low = Duration::from_millis(self.election_timeout_ms);
        config.election_timeout = (low, low * 2);
        config.heartbeat_interval = (low * 2 / 3).max(Duration::from_millis(10));
        config.snapshot_log_bytes = self.snapshot_log_bytes;
        config.validate()?;
        let peer_bind = config.peer_listen.as_deref().or(config.own_address());
        let plain_peers_allowed = self.insecure_peer || self.insecure;
        if !plain_peers_allowed && !peer_bind.is_some_and(is_loopback) {
            return Err(format!(
                "the peer address {} is not a loopback address, and peer traffic is plain \
                 text: pass --insecure-peer (or --insecure) to accept that (with \
                 --peer-secret-file, so that only replicas holding the secret are answered), \
                 or bind it on loopback",
                peer_bind.unwrap_or_default()
            ));
        }
        if config.peer_secret.is_none() && !peer_bind.is_some_and(is_loopback) {
            tracing::warn!(
                "no peer secret on a non-loopback peer address: anyone who can reach it may \
                 forward writes and change the membership"
            );
        }
        Ok(Some(config))
    }
}

/// Whether `address` (`host:port`) names loopback only; an address that does not
/// resolve is not.
fn is_loopback(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    match address.to_socket_addrs() {
        Ok(resolved) => {
            let resolved: Vec<_> = resolved.collect();
            !resolved.is_empty() && resolved.iter().all(|a| a.ip().to_canonical().is_loopback())
        }
        Err(_) => false,
    }
}

/// Opens what the server serves: the ledger in --data, or a cluster replica.
async fn open_backend(args: &ServeArgs) -> Result<Backend, String> {
    match args.cluster_config()? {
        Some(config) => {
            let replica = tally_cluster::Replica::open(config).await?;
            let hosted = tally_cluster::HostedReplica::on_current_runtime(Arc::new(replica))
                .map_err(|error| error.to_string())?;
            Ok(Backend::Replica(hosted))
        }
        None => Ok(Backend::Node(crate::open(
            args.data.clone(),
            (
                args.shards,
                args.placement_bits,
                tally_engine::ShardExecution::WhenFaster,
            ),
            false,
        )?)),
    }
}

/// Resolves when a replica's Raft core stops (never for a single-node ledger).
async fn replica_stopped(backend: &Backend) {
    match backend {
        Backend::Replica(hosted) => hosted.replica().stopped().await,
        Backend::Node(_) => std::future::pending().await,
    }
}

/// Closes a backend the server never took.
async fn close_backend(backend: Backend) {
    match backend {
        Backend::Node(ledger) => {
            let _ = tokio::task::spawn_blocking(move || ledger.shutdown()).await;
        }
        Backend::Replica(hosted) => hosted.replica().shutdown().await,
    }
}

/// Runs a server until SIGINT or SIGTERM, then drains and shuts down.
pub fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    init_logs(args.log_json);
    let config = args.server_config();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tally-server")
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(async move {
        // Installed before the server starts, so a signal sent as soon as the address
        // is printed is never lost (the default action would kill the process).
        let stop = StopSignals::install()?;
        // Refused before the data directory is touched: a bad configuration, and a
        // listening address already taken (bound here once, then let go for the server).
        config.check().map_err(|error| error.to_string())?;
        drop(
            std::net::TcpListener::bind(config.listen)
                .map_err(|error| format!("cannot listen on {}: {error}", config.listen))?,
        );
        let backend = open_backend(&args).await?;
        let server = match Server::start_backend(backend.clone(), config).await {
            Ok(server) => server,
            Err(error) => {
                // The backend is ours to close when the server never took it.
                close_backend(backend).await;
                return Err(error.to_string());
            }
        };
        // From here every way out goes through `shutdown`: the ledger's last group is
        // synced and the data directory released.
        let printed = print_addresses(&server);
        let mut failed = false;
        if printed.is_ok() {
            tokio::select! {
                () = stop.wait() => tracing::info!("stopping: draining calls in flight"),
                () = replica_stopped(&backend) => {
                    tracing::error!("the replica's Raft core stopped: exiting to be restarted");
                    failed = true;
                }
            }
        }
        let stopped = server.shutdown().await.map_err(|error| error.to_string());
        printed?;
        stopped?;
        if failed {
            return Err("the replica's Raft core stopped; restart the replica".into());
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// `listening on ADDR` (and the metrics address) on stdout, flushed: what scripts and
/// tests wait for.
fn print_addresses(server: &tally_server::RunningServer) -> Result<(), String> {
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", server.local_addr())
        .and_then(|()| match server.metrics_addr() {
            Some(metrics) => writeln!(out, "metrics on http://{metrics}/metrics"),
            None => Ok(()),
        })
        .and_then(|()| out.flush())
        .map_err(|error| format!("writing stdout: {error}"))
}

/// The SIGTERM and SIGINT handlers.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate =
            signal(SignalKind::terminate()).map_err(|error| format!("SIGTERM handler: {error}"))?;
        let interrupt =
            signal(SignalKind::interrupt()).map_err(|error| format!("SIGINT handler: {error}"))?;
        Ok(StopSignals {
            terminate,
            interrupt,
        })
    }

    /// Until either signal arrives.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The flags of `tally token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// A name for the token (shown in logs, never the secret).
    #[arg(long)]
    name: String,
    /// Operations it may call, comma-separated, or `*` for all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    operations: Vec<String>,
    /// Ledgers it may touch, comma-separated, or `*` for all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    ledgers: Vec<String>,
    /// Append the hashed line to this token file (created if missing).
    #[arg(long)]
    file: PathBuf,
}

/// Makes a new random token, appends its hashed line to the token file and prints the
/// token (the only time it is shown).
pub fn token(args: TokenArgs) -> Result<ExitCode, String> {
    let rights = token_rights(&args)?;
    let token = new_token()?;
    let line = tally_server::auth::token_line(&token, &rights);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.file)
        .map_err(|error| format!("{}: {error}", args.file.display()))?;
    writeln!(file, "{line}")
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("{}: {error}", args.file.display()))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn token_rights(args: &TokenArgs) -> Result<Rights, String> {
    let mut operations = std::collections::BTreeSet::new();
    for name in &args.operations {
        if name == "*" {
            operations.extend(Operation::ALL);
        } else {
            let operation = Operation::from_name(name)
                .ok_or_else(|| format!("--operations: unknown operation {name:?}"))?;
            operations.insert(operation);
        }
    }
    let mut ledgers = Some(std::collections::BTreeSet::new());
    for text in &args.ledgers {
        if text == "*" {
            ledgers = None;
            continue;
        }
        let ledger: u32 = text
            .parse()
            .ok()
            .filter(|ledger| *ledger != 0)
            .ok_or_else(|| format!("--ledgers: {text:?} is not a ledger number or *"))?;
        if let Some(set) = ledgers.as_mut() {
            set.insert(ledger);
        }
    }
    Ok(Rights {
        name: args.name.clone(),
        operations,
        ledgers,
    })
}

/// `tly_` and 64 hex digits: 256 bits from the operating system's random source.
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|error| format!("reading /dev/urandom: {error}"))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("tly_{hex}"))
}
