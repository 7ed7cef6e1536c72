//! `loadgen`: replays Singles' Day traffic against Tally and measures it.
//!
//! ```text
//! loadgen                                   # festival: the default curve, 1M users, open loop
//! loadgen --mode max --duration 60          # closed loop, pre-built batches
//! loadgen --mode max --workload transfers   # TigerBeetle's benchmark's shape
//! loadgen --record day.trace                # record the request stream
//! loadgen --replay day.trace --report r.json --chart r.svg
//! loadgen --target cluster --replicas 3 --chaos kill-leader   # failover under load
//! ```
//! Exit status: 0 when the run verified, 1 when the ledger failed verification (or
//! requests never got a result, or a cluster's replicas did not converge), 2 on a usage,
//! setup or I/O error.

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_engine::Placement;
use tally_loadgen::curve::Curve;
use tally_loadgen::end_of_day;
use tally_loadgen::mix::{Generator, MixSpec, Request, RequestStream};
use tally_loadgen::model::Model;
use tally_loadgen::population::{Population, PopulationSpec, Shape};
use tally_loadgen::report::{Machine, Report};
use tally_loadgen::runner::{self, RunResult};
use tally_loadgen::target::Target;
use tally_loadgen::target::chaos::ChaosPlan;
use tally_loadgen::target::cluster::ClusterTarget;
use tally_loadgen::target::engine::{EngineOptions, EngineTarget};
use tally_loadgen::target::memory::MemoryTarget;
use tally_loadgen::target::replicas::{self, LocalCluster};
use tally_loadgen::target::server::ServerTarget;
use tally_loadgen::trace::{TraceError, TraceMeta, TraceReader, TraceWriter};
use tally_loadgen::transfers::{self, Distribution, TransfersGenerator, TransfersSpec};

/// Merchants of the festival unless `--merchants` says otherwise.
const MERCHANTS_DEFAULT: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Open loop: the curve schedules each payment; one submission per payment.
    Festival,
    /// Closed loop: pre-built batches back to back, to find the maximum throughput.
    /// Users are funded for the run's length, not for 45 s of festival.
    Max,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Workload {
    /// The Singles' Day mix: payments, authorisations, refunds, money-market orders,
    /// loans and cross-border orders between funded users with limits and merchants.
    #[default]
    Festival,
    /// TigerBeetle's `benchmark` shape: single-phase transfers between two distinct
    /// accounts without balance limits (see --distribution); every one succeeds.
    Transfers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// Tally's engine, embedded, durable (fdatasync) on --data.
    Engine,
    /// The reference state machine in memory (not durable): tries the load generator alone.
    Memory,
    /// A `tally serve` endpoint through `tally-client` over TCP: the one at --addr, or
    /// one this process starts on a loopback port over the engine on --data.
    Server,
    /// A cluster through `tally-client`, failing over between its replicas: the one at
    /// --addr (its replicas' client addresses), or --replicas `tally serve --cluster`
    /// processes this process starts on loopback ports, with data under --data.
    Cluster,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum ChaosKind {
    /// Nothing happens to the cluster.
    #[default]
    None,
    /// SIGKILL the leader a third into the run (and every --chaos-every-s after);
    /// once the others have elected a new leader, restart it from its data directory
    /// --chaos-down-s later.
    KillLeader,
}

/// Tally's festival load generator.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    /// festival (open loop, per-payment submissions) or max (closed loop, batches).
    #[arg(long, value_enum, default_value = "festival")]
    mode: Mode,
    /// What the transfers are.
    #[arg(long, value_enum, default_value = "festival")]
    workload: Workload,
    /// --workload transfers: how the debit and credit accounts of each transfer are
    /// picked [default: zipfian].
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// What to drive.
    #[arg(long, value_enum, default_value = "engine")]
    target: TargetKind,
    /// --target server: the address (`host:port`) of a running `tally serve`; without
    /// it, the load generator serves its own ledger on a loopback port. --target
    /// cluster: the client addresses of a running cluster's replicas, comma-separated;
    /// without it, the load generator starts its own cluster.
    #[arg(long)]
    addr: Option<String>,
    /// --target cluster without --addr: replicas of the cluster to start.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// --target cluster --addr: the replicas' peer addresses (`1=HOST:PORT,2=...`, as
    /// `tally serve --cluster` takes them), to count failovers and check that the
    /// replicas converge.
    #[arg(long)]
    peers: Option<String>,
    /// --target cluster --addr --peers: a file holding the cluster's peer secret, when
    /// its replicas were started with one.
    #[arg(long, requires = "peers")]
    peer_secret_file: Option<PathBuf>,
    /// --target cluster without --addr: the `tally` binary [default: the one next to
    /// this executable].
    #[arg(long, env = "TALLY_BIN")]
    tally_bin: Option<PathBuf>,
    /// --target cluster without --addr: what happens to the cluster during the run.
    #[arg(long, value_enum, default_value = "none")]
    chaos: ChaosKind,
    /// --chaos kill-leader: kill the leader again every so many seconds (default: once).
    #[arg(long)]
    chaos_every_s: Option<f64>,
    /// --chaos kill-leader: seconds a killed leader stays down after the others have
    /// elected a new one.
    #[arg(long, default_value_t = 1.0)]
    chaos_down_s: f64,
    /// --target server --addr: a bearer token for the server (or $TALLY_TOKEN).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// --target server --addr: the CA certificate (PEM) of a TLS server; the address
    /// is then reached over https.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// --target server without --addr: tokio worker threads of the local server.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Seconds of curve (festival) or of load (max). The curve is time-compressed to it.
    #[arg(long, default_value_t = 45.0)]
    duration: f64,
    /// Peak offered payments (submissions) per second.
    #[arg(long, default_value_t = 120_000.0)]
    peak: f64,
    /// Multiplies every rate of the curve (after --peak), e.g. 0.1 for a small machine.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// A curve file: `seconds,rate` per line; rescaled to --duration and --peak when
    /// those are given explicitly.
    #[arg(long)]
    curve: Option<PathBuf>,
    /// Second-scale jitter of the curve (standard deviation of a per-second factor).
    #[arg(long, default_value_t = 0.05)]
    jitter: f64,
    /// User accounts (each funded before midnight); with --workload transfers, the
    /// accounts the transfers move between (no balance limits, no funding).
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    /// Merchant accounts; festival workload only (refused with --workload transfers,
    /// which has none) [default: 10000].
    #[arg(long)]
    merchants: Option<u64>,
    /// Zipf exponent s: the item of popularity rank k is picked with probability
    /// proportional to 1/k^s (0: all alike; larger: more skewed). The festival's
    /// merchants [default: 1.1]; the transfers workload's accounts with zipfian picks
    /// [default: 0.99, TigerBeetle's].
    #[arg(long)]
    zipf: Option<f64>,
    /// Engine shards (0 = fitted to the machine).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Place ids on shards by their lowest N bits (1 to 128; default 128, the whole
    /// id). The load generator's ids carry their customer's key in their low 32 bits
    /// (a transfer its payer's), so 32 keeps each customer's records on one shard.
    #[arg(long, default_value_t = Placement::WHOLE_ID)]
    placement_bits: Placement,
    /// With several shards, decide the units of groups of at least N events without the
    /// parts they only add to, sending those parts deltas (escrow; 0: every group).
    /// Default: the engine's, off.
    #[arg(long)]
    shard_deltas_from: Option<usize>,
    /// With several shards, run every group by plan on the shard threads (to measure
    /// the executor), not only those whose plan is estimated faster than serial.
    #[arg(long)]
    shards_always_by_plan: bool,
    /// Data directory (wiped at start unless --keep).
    #[arg(long, default_value = "tally-data/loadgen")]
    data: PathBuf,
    /// Keep the data directory: existing accounts become the model's baseline.
    #[arg(long)]
    keep: bool,
    /// Seed of everything random.
    #[arg(long, default_value_t = 20_161_111)]
    seed: u64,
    /// Write the report as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write an SVG chart of offered/achieved rate and latency over time.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Record the request stream to a trace file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Replay a recorded trace (its population and requests; rate flags are ignored).
    #[arg(long, conflicts_with = "record")]
    replay: Option<PathBuf>,
    /// Max mode: concurrent callers.
    #[arg(long, default_value_t = 4)]
    callers: usize,
    /// Max mode: events per pre-built batch.
    #[arg(long, default_value_t = 8_190)]
    batch: usize,
    /// Tokio worker threads of the festival callers (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// BENCHMARK ONLY: open the engine without fdatasync (acknowledged data is not
    /// durable). The report says so.
    #[arg(long)]
    unsafe_no_sync: bool,
    /// Fixed group commit pacing in the engine: after a commit several payments shared,
    /// the microseconds before the next one starts (0 = commit as soon as anything
    /// waits). Default: the engine's own adaptive pacing, from 0 up to 1,000 while the
    /// machine stands still.
    #[arg(long)]
    commit_interval_us: Option<u64>,
    /// Have the engine extend its log files as it writes, instead of writing its frames
    /// into zero-filled segments prepared ahead (for comparisons).
    #[arg(long)]
    no_preallocate: bool,
    /// Have the engine keep no change events (docs/spec.md §2), for comparisons.
    #[arg(long)]
    no_change_events: bool,
    /// Keep change events but follow none live during the run (they are still read
    /// back and checked at the end), to tell the engine's cost from a consumer's.
    #[arg(long)]
    no_event_follower: bool,
    /// Look transfers up by order id (`user_data_128`, set by `--workload transfers`)
    /// this many times a second while the load runs, timing each query (engine only).
    #[arg(long, default_value_t = 0)]
    order_lookups: u32,
    /// Have the engine write a snapshot every this many events (0: never), instead of
    /// its default of 20 M (engine only): a restart after a crash replays the log since
    /// the last one.
    #[arg(long)]
    snapshot_events: Option<u64>,
}

/// The run's parameters, recorded in traces (JSON inside the wincode meta frame).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunConfig {
    mode: Mode,
    /// Traces written before the transfers workload existed are festivals.
    #[serde(default)]
    workload: Workload,
    /// The transfers workload's parameters (unused by the festival).
    #[serde(default)]
    transfers: TransfersSpec,
    seed: u64,
    duration_s: f64,
    curve_points: Vec<(f64, f64)>,
    jitter: f64,
    population: PopulationSpec,
    mix: MixSpec,
}

/// About how many transfers the run will store: funding plus the curve's expected
/// submissions (a fifth of them are two-transfer chains). Max mode: capped guess.
fn transfers_hint(config: &RunConfig) -> usize {
    let funding = match config.workload {
        Workload::Festival => config.population.users as f64 + 1.0,
        Workload::Transfers => 0.0,
    };
    let run = match config.mode {
        Mode::Festival => Curve::from_points(config.curve_points.clone())
            .map_or(0.0, |curve| curve.expected_total() * 1.2),
        Mode::Max => (config.duration_s * 400_000.0).min(40_000_000.0),
    };
    (funding + run) as usize
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(report) if report.verified_ok => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("loadgen: the run FAILED its verification");
            ExitCode::from(1)
        }
        Err(message) => fail(message),
    }
}

fn validate(cli: &Cli) -> Result<(), String> {
    let positive = |value: f64, name: &str| {
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(format!("--{name} must be > 0"))
        }
    };
    positive(cli.duration, "duration")?;
    positive(cli.peak, "peak")?;
    positive(cli.scale, "scale")?;
    if cli.zipf.is_some_and(|s| !(s.is_finite() && s >= 0.0)) {
        return Err("--zipf must be >= 0".into());
    }
    if !(1..=10_000_000).contains(&cli.accounts) {
        return Err("--accounts must be 1..=10,000,000".into());
    }
    if !(1..=1_000_000).contains(&merchants(cli)) {
        return Err("--merchants must be 1..=1,000,000".into());
    }
    match cli.workload {
        Workload::Festival if cli.distribution.is_some() => {
            Err("--distribution applies to --workload transfers only".into())
        }
        Workload::Festival => Ok(()),
        Workload::Transfers => validate_transfers(cli),
    }
}

fn validate_transfers(cli: &Cli) -> Result<(), String> {
    if cli.merchants.is_some() {
        return Err(
            "--merchants: the transfers workload has no merchants (only --accounts)".into(),
        );
    }
    if cli.accounts < 2 {
        return Err("--accounts must be at least 2 with --workload transfers".into());
    }
    if cli.distribution == Some(Distribution::Uniform) && cli.zipf.is_some() {
        return Err("--zipf applies to --distribution zipfian only".into());
    }
    Ok(())
}

fn merchants(cli: &Cli) -> u64 {
    cli.merchants.unwrap_or(MERCHANTS_DEFAULT)
}

fn config_from_cli(cli: &Cli) -> Result<RunConfig, String> {
    validate(cli)?;
    let curve = match &cli.curve {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading curve {}: {e}", path.display()))?;
            let curve = Curve::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            curve.with_duration(cli.duration).with_peak(cli.peak)
        }
        None => Curve::singles_day(cli.duration, cli.peak),
    };
    let curve = curve.scaled(cli.scale);
    let shape = match cli.workload {
        Workload::Festival => Shape::Festival,
        Workload::Transfers => Shape::Plain,
    };
    let population = PopulationSpec {
        shape,
        users: cli.accounts,
        merchants: merchants(cli),
        seed: cli.seed,
        funding_scale: match cli.mode {
            Mode::Festival => 1,
            Mode::Max => {
                tally_loadgen::population::max_mode_funding_scale(cli.duration, cli.accounts)
            }
        },
        ..PopulationSpec::default()
    };
    let mix = MixSpec {
        zipf_s: cli.zipf.unwrap_or(MixSpec::default().zipf_s),
        ..MixSpec::default()
    };
    let transfers = TransfersSpec {
        distribution: cli.distribution.unwrap_or(Distribution::Zipfian),
        zipf_s: cli.zipf.unwrap_or(transfers::ZIPF_S_DEFAULT),
    };
    Ok(RunConfig {
        mode: cli.mode,
        workload: cli.workload,
        transfers,
        seed: cli.seed,
        duration_s: cli.duration,
        curve_points: curve.points().to_vec(),
        jitter: cli.jitter,
        population,
        mix,
    })
}

/// Wipes the data directory unless --keep; refuses to wipe a directory that is not ours.
fn prepare_data_dir(dir: &Path, keep: bool) -> Result<PathBuf, String> {
    const MARKER: &str = ".tally-loadgen";
    let exists = dir.exists();
    if exists && !keep {
        let mut entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let empty = entries.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(format!(
                "refusing to wipe {}: it is not empty and was not made by loadgen",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("wiping {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by tally loadgen; wiped at each run unless --keep\n",
    )
    .map_err(|e| format!("writing the marker in {}: {e}", dir.display()))?;
    Ok(dir.join("ledger"))
}

fn run(cli: &Cli) -> Result<Report, String> {
    validate_target(cli)?;
    let server_addr = cli.addr.is_some() && cli.target == TargetKind::Server;
    if (cli.token.is_some() || cli.tls_ca.is_some()) && !server_addr {
        return Err("--token and --tls-ca apply to --target server --addr only".into());
    }
    let (config, replay) = match &cli.replay {
        Some(path) => {
            let reader = TraceReader::open(path).map_err(|e| e.to_string())?;
            let config: RunConfig = serde_json::from_str(&reader.meta().config_json)
                .map_err(|e| format!("trace {}: bad run configuration: {e}", path.display()))?;
            (
                RunConfig {
                    mode: cli.mode,
                    ..config
                },
                Some(reader),
            )
        }
        None => (config_from_cli(cli)?, None),
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.target {
        TargetKind::Memory => {
            let target = MemoryTarget::new();
            let name = "memory (reference state machine in process, not durable)";
            drive(cli, config, replay, Arc::new(target), name, command)
        }
        TargetKind::Engine => {
            let ledger_dir = prepare_data_dir(&cli.data, cli.keep)?;
            let target = engine_target(cli, &ledger_dir)?;
            let durability = if cli.unsafe_no_sync {
                "UNSAFE no-sync, NOT durable".to_string()
            } else {
                let (floor, ceiling) = target.commit_interval();
                let pacing = if floor == ceiling {
                    format!("paced {} us apart", floor.as_micros())
                } else {
                    format!(
                        "paced {}-{} us apart as the host allows",
                        floor.as_micros(),
                        ceiling.as_micros()
                    )
                };
                format!(
                    "fdatasync, concurrent commits {pacing}, segments {}",
                    if target.preallocates() {
                        "preallocated"
                    } else {
                        "extended as written"
                    }
                )
            };
            let placement = match cli.placement_bits {
                Placement::WHOLE_ID => String::new(),
                bits => format!(", ids placed on shards by their low {bits} bits"),
            };
            let name = format!(
                "tally-engine ({durability}{placement}) in {}",
                ledger_dir.display()
            );
            drive(cli, config, replay, Arc::new(target), &name, command)
        }
        TargetKind::Server => {
            let target = match &cli.addr {
                Some(addr) => {
                    let ca = match &cli.tls_ca {
                        Some(path) => Some(
                            std::fs::read(path)
                                .map_err(|error| format!("--tls-ca {}: {error}", path.display()))?,
                        ),
                        None => None,
                    };
                    ServerTarget::connect(addr, cli.token.clone(), ca)?
                }
                None => {
                    let ledger_dir = prepare_data_dir(&cli.data, cli.keep)?;
                    let engine = engine_target(cli, &ledger_dir)?;
                    ServerTarget::start_local(engine.into_ledger(), cli.server_threads)?
                }
            };
            let name = if target.is_local() {
                format!(
                    "tally serve at {} (started by loadgen over the engine in {}, \
                     fdatasync), through tally-client over loopback TCP",
                    target.addr(),
                    cli.data.join("ledger").display()
                )
            } else {
                format!(
                    "tally serve at {}, through tally-client over TCP",
                    target.addr()
                )
            };
            drive(cli, config, replay, Arc::new(target), &name, command)
        }
        TargetKind::Cluster => {
            let (target, name) = cluster_target(cli, config.duration_s)?;
            drive(cli, config, replay, Arc::new(target), &name, command)
        }
    }
}

/// Refuses flags that do not apply to the chosen target.
fn validate_target(cli: &Cli) -> Result<(), String> {
    let networked = matches!(cli.target, TargetKind::Server | TargetKind::Cluster);
    if cli.addr.is_some() && !networked {
        return Err("--addr applies to --target server and cluster only".into());
    }
    let local_cluster = cli.target == TargetKind::Cluster && cli.addr.is_none();
    if cli.keep && local_cluster {
        // The replicas keep their members' addresses in their log, and a new run
        // starts them on other ports.
        return Err("--keep does not apply to a cluster loadgen starts".into());
    }
    if cli.chaos != ChaosKind::None && !local_cluster {
        return Err("--chaos applies to --target cluster without --addr only".into());
    }
    if cli.peers.is_some() && (cli.target != TargetKind::Cluster || cli.addr.is_none()) {
        return Err("--peers applies to --target cluster --addr only".into());
    }
    let seconds = |value: Option<f64>, name: &str| match value {
        Some(value) if !(value.is_finite() && value > 0.0) => Err(format!("--{name} must be > 0")),
        _ => Ok(()),
    };
    seconds(cli.chaos_every_s, "chaos-every-s")?;
    seconds(Some(cli.chaos_down_s), "chaos-down-s")
}

/// `--target cluster`: the one at --addr, or one started here; and the report's name.
fn cluster_target(cli: &Cli, duration_s: f64) -> Result<(ClusterTarget, String), String> {
    if let Some(addrs) = &cli.addr {
        let addrs: Vec<String> = addrs.split(',').map(|a| a.trim().to_string()).collect();
        let peers = match &cli.peers {
            Some(peers) => tally_cluster::ClusterConfig::parse_members(peers)
                .map_err(|e| format!("--peers: {e}"))?
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        if let Some(path) = &cli.peer_secret_file {
            let secret = tally_cluster::PeerSecret::read(path)
                .map_err(|e| format!("--peer-secret-file {e}"))?;
            tally_loadgen::target::chaos::use_peer_secret(secret);
        }
        let target = ClusterTarget::connect(addrs, peers)?;
        let name = format!(
            "tally cluster at {}, through tally-client over TCP",
            target.addrs().join(",")
        );
        return Ok((target, name));
    }
    let binary = replicas::tally_binary(cli.tally_bin.as_deref())?;
    prepare_data_dir(&cli.data, cli.keep)?;
    eprintln!(
        "loadgen: starting {} replicas of {}",
        cli.replicas,
        binary.display()
    );
    let cluster = LocalCluster::start(binary, &cli.data, cli.replicas)?;
    let plan = match cli.chaos {
        ChaosKind::None => None,
        ChaosKind::KillLeader => Some(ChaosPlan {
            first_after: Duration::from_secs_f64(duration_s / 3.0),
            every: cli.chaos_every_s.map(Duration::from_secs_f64),
            down: Duration::from_secs_f64(cli.chaos_down_s),
        }),
    };
    let target = ClusterTarget::start_local(cluster, plan)?;
    let name = format!(
        "tally cluster of {} replicas (tally serve --cluster, started by loadgen, data in \
         {}, fdatasync) at {}, through tally-client over loopback TCP",
        cli.replicas,
        cli.data.display(),
        target.addrs().join(",")
    );
    Ok((target, name))
}

/// Headroom for the foreign-currency and system accounts the population adds.
const FOREIGN_ACCOUNTS_RESERVE: u64 = 100_000;

/// A reservation size, capped so that a hint never asks for absurd memory.
fn capacity(wanted: u64) -> usize {
    usize::try_from(wanted.min(200_000_000)).unwrap_or(200_000_000)
}

fn engine_target(cli: &Cli, dir: &Path) -> Result<EngineTarget, String> {
    let options = EngineOptions {
        shards: cli.shards,
        placement: cli.placement_bits,
        shard_deltas_from: cli.shard_deltas_from,
        shards_always_by_plan: cli.shards_always_by_plan,
        busy_immediately: cli.mode == Mode::Festival,
        unsafe_no_sync: cli.unsafe_no_sync,
        commit_interval: cli.commit_interval_us.map(std::time::Duration::from_micros),
        preallocate_segments: !cli.no_preallocate,
        change_events: !cli.no_change_events,
        follow_events: !cli.no_event_follower,
        order_lookups_per_s: cli.order_lookups,
        snapshot_events: cli.snapshot_events,
        accounts_capacity: capacity(cli.accounts + merchants(cli) + FOREIGN_ACCOUNTS_RESERVE),
        // Funding transfers, plus the run at a generous rate: festival at its peak
        // throughout, max mode at 800,000 transfers/s. Only a sizing hint: the ledger
        // grows past it (with a pause) if the run outdoes it.
        transfers_capacity: capacity(
            cli.accounts
                + (cli.duration.max(0.0)
                    * match cli.mode {
                        Mode::Festival => cli.peak * cli.scale,
                        Mode::Max => 800_000.0,
                    }) as u64,
        ),
    };
    EngineTarget::open(dir, options)
}

fn drive<T: Target>(
    cli: &Cli,
    config: RunConfig,
    replay: Option<TraceReader>,
    target: Arc<T>,
    target_name: &str,
    command: String,
) -> Result<Report, String> {
    let population = Population::new(config.population.clone());
    let mut model = Model::with_capacity(population.clone(), transfers_hint(&config));
    if config.workload == Workload::Transfers {
        model.check_predictions();
    }
    match config.workload {
        Workload::Festival => eprintln!(
            "loadgen: setup: {} accounts, {} users funded before midnight ({} x the festival's funding)",
            population.account_count(),
            population.spec.users,
            population.spec.funding_scale
        ),
        Workload::Transfers => eprintln!(
            "loadgen: setup: {} accounts without limits, none funded",
            population.account_count()
        ),
    }
    let setup = runner::setup(&*target, &population, &mut model, cli.keep)?;
    let model = Arc::new(Mutex::new(model));
    let trace = create_trace(cli, &config)?;
    let curve = Curve::from_points(config.curve_points.clone())
        .map_err(|e| e.to_string())?
        .with_jitter(config.jitter, config.seed);
    let generator = stream(&config, &population);
    eprintln!(
        "loadgen: {:?} mode starts ({:.0} s)",
        config.mode, config.duration_s
    );
    target.run_started();
    let run = match config.mode {
        Mode::Festival => {
            let seconds = curve.duration_s().ceil() as usize + 1;
            let source = festival_source(replay, &curve, generator, config.seed);
            runner::run_festival(
                target.clone(),
                source,
                seconds,
                model.clone(),
                trace,
                festival_workers(cli),
            )
        }
        Mode::Max => run_max(cli, &config, replay, generator, &target, &model, trace),
    };
    target.run_finished();
    let (result, trace) = run?;
    if let Some(writer) = trace {
        let requests = writer.finish().map_err(|e| e.to_string())?;
        eprintln!("loadgen: recorded {requests} requests");
    }
    finish(
        cli,
        &config,
        &*target,
        target_name,
        &population,
        model,
        setup,
        result,
        command,
    )
}

/// The trace writer for `--record`, its meta frame holding the run configuration.
fn create_trace(cli: &Cli, config: &RunConfig) -> Result<Option<TraceWriter>, String> {
    let Some(path) = &cli.record else {
        return Ok(None);
    };
    let config_json = serde_json::to_string(config).map_err(|e| e.to_string())?;
    let meta = TraceMeta {
        seed: config.seed,
        config_json,
    };
    TraceWriter::create(path, &meta)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The workload's request generator.
fn stream(config: &RunConfig, population: &Population) -> Box<dyn RequestStream + Send> {
    let population = population.clone();
    match config.workload {
        Workload::Festival => Box::new(Generator::new(population, config.mix.clone(), config.seed)),
        Workload::Transfers => Box::new(TransfersGenerator::new(
            population,
            &config.transfers,
            config.seed,
        )),
    }
}

/// Festival mode's requests: the replayed trace, or the generator on the curve's
/// arrivals (one submission each).
fn festival_source<'a>(
    replay: Option<TraceReader>,
    curve: &'a Curve,
    mut generator: Box<dyn RequestStream + Send>,
    seed: u64,
) -> Box<dyn Iterator<Item = Result<Request, TraceError>> + 'a> {
    match replay {
        Some(reader) => Box::new(reader),
        None => Box::new(curve.arrivals(seed).map(move |t| Ok(generator.next_at(t)))),
    }
}

/// Tokio worker threads for the festival callers: `--workers`, or one per core.
fn festival_workers(cli: &Cli) -> usize {
    if cli.workers == 0 {
        std::thread::available_parallelism().map_or(2, usize::from)
    } else {
        cli.workers
    }
}

/// Max mode: the replayed trace, or the generator on a virtual clock.
fn run_max<T: Target>(
    cli: &Cli,
    config: &RunConfig,
    replay: Option<TraceReader>,
    generator: Box<dyn RequestStream + Send>,
    target: &Arc<T>,
    model: &Arc<Mutex<Model>>,
    trace: Option<TraceWriter>,
) -> Result<(RunResult, Option<TraceWriter>), String> {
    let duration = Duration::from_secs_f64(config.duration_s);
    let batch = cli.batch;
    match replay {
        Some(reader) => runner::run_max(
            target.clone(),
            reader,
            duration,
            cli.callers,
            batch,
            model.clone(),
            trace,
        ),
        None => runner::run_max(
            target.clone(),
            runner::virtual_stream(generator),
            duration,
            cli.callers,
            batch,
            model.clone(),
            trace,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn finish<T: Target>(
    cli: &Cli,
    config: &RunConfig,
    target: &T,
    target_name: &str,
    population: &Population,
    model: Arc<Mutex<Model>>,
    setup: runner::SetupReport,
    result: RunResult,
    command: String,
) -> Result<Report, String> {
    eprintln!(
        "loadgen: run done; {}verifying the ledger",
        match config.workload {
            Workload::Festival => "sweeping expiries, closing the day and ",
            Workload::Transfers => "",
        }
    );
    let mut model = model
        .lock()
        .map_err(|_| "model lock poisoned".to_string())?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let (expired, pending_left) = match config.workload {
        Workload::Festival => runner::sweep(
            target,
            population,
            &mut model,
            config.mix.expiring_timeout_s,
            nonce,
        )?,
        // Nothing is ever pending, so nothing can expire.
        Workload::Transfers => (0, 0),
    };
    let end_of_day = match config.workload {
        Workload::Festival => Some(end_of_day::close_the_day(target, &mut model, nonce)?),
        // TigerBeetle's benchmark shape: transfers and nothing else.
        Workload::Transfers => None,
    };
    let verification = model.verify(target, expired, pending_left);
    let events = target.check_events();
    let order_lookups = target.order_lookups();
    let cluster = target.cluster_stats();
    target.shutdown()?;
    // After the shutdown, whose snapshot of the final state (if one is due) counts.
    let engine = target.shard_stats();
    let mut report = Report {
        mode: format!("{:?}", config.mode).to_lowercase(),
        submission: match config.mode {
            Mode::Festival => "open loop: each payment (one transfer or one linked chain) is its own submission from a tokio task spawned at its scheduled instant; latency from the scheduled instant to the durable result".into(),
            Mode::Max => format!("closed loop: PRE-BUILT BATCHES of up to {} events from {} callers; latency per batch from submit to durable result", cli.batch, cli.callers),
        },
        workload: workload_text(config),
        target: target_name.to_string(),
        shards: target.shards(),
        engine,
        cluster,
        setup,
        expiry_policy: match config.workload {
            Workload::Festival => "short-timeout authorisations left to expire: waited past their expiry, then one sweep transfer; expired iff timestamp + timeout <= the sweep's timestamp, else expected still pending".into(),
            Workload::Transfers => "none: the workload has no pending transfers".into(),
        },
        machine: Machine::probe(),
        command,
        ..Report::default()
    };
    report.measure(&result);
    report.conservation_ok = verification.conservation_ok;
    let converged = report.cluster.as_ref().and_then(|c| c.converged);
    let order_lookups = order_lookups.transpose()?;
    report.verified_ok = verification.verified_ok
        && result.unfinished == 0
        && converged != Some(false)
        && events.as_ref().is_none_or(|check| check.ok)
        && order_lookups.as_ref().is_none_or(|lookups| lookups.ok());
    report.verification = verification;
    report.end_of_day = end_of_day;
    report.events = events;
    report.order_lookups = order_lookups;
    print!("{}", report.text());
    if let Some(path) = &cli.report {
        report.write_json(path)?;
    }
    if let Some(path) = &cli.chart {
        report.write_chart(path)?;
    }
    Ok(report)
}

/// The report's workload line.
fn workload_text(config: &RunConfig) -> String {
    match config.workload {
        Workload::Festival => match config.population.funding_scale {
            1 => "festival: the Singles' Day mix".into(),
            scale => format!(
                "festival: the Singles' Day mix, users funded {scale} x the festival's funding for the run's length"
            ),
        },
        Workload::Transfers => {
            let spec = &config.transfers;
            let picks = match spec.distribution {
                Distribution::Uniform => "uniform".to_string(),
                Distribution::Zipfian => format!("zipfian (s = {})", spec.zipf_s),
            };
            format!(
                "transfers (TigerBeetle benchmark's shape): {} accounts without limits, {picks} picks, every transfer valid",
                config.population.users
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `loadgen --target memory` with `arguments` after it.
    fn run_memory(arguments: &[&str]) -> Report {
        let command = ["loadgen", "--target", "memory", "--seed", "7"];
        let cli = Cli::parse_from(command.iter().chain(arguments));
        run(&cli).expect("the run")
    }

    fn assert_all_ok(report: &Report) {
        assert!(report.verified_ok, "{}", report.text());
        assert!(report.transfers_ok > 1_000, "{}", report.text());
        assert_eq!(report.transfers_failed, 0, "{}", report.text());
        assert_eq!(report.failed_tps, 0.0);
        let v = &report.verification;
        assert_eq!(
            v.results_predicted, report.transfers_ok,
            "every result predicted"
        );
        assert_eq!(v.results_mispredicted, 0);
        assert_eq!(v.transfers_checked, report.transfers_ok);
        assert_eq!(v.accounts_checked, 500);
        assert_eq!(
            v.conservation,
            vec![(tally_loadgen::population::LEDGER_PLAIN, true)]
        );
    }

    #[test]
    fn the_transfers_workload_in_max_mode_succeeds_every_transfer_and_verifies() {
        let arguments = [
            "--mode",
            "max",
            "--workload",
            "transfers",
            "--accounts",
            "500",
        ];
        let more = ["--duration", "0.5", "--callers", "2", "--batch", "1000"];
        let report = run_memory(&[&arguments[..], &more[..]].concat());
        assert_all_ok(&report);
        assert_eq!(report.setup.funding_transfers, 0);
        assert!(
            report.workload.contains("zipfian (s = 0.99)"),
            "{}",
            report.workload
        );
    }

    #[test]
    fn the_transfers_workload_on_the_festival_curve_verifies_with_uniform_picks() {
        let arguments = ["--workload", "transfers", "--distribution", "uniform"];
        let more = ["--accounts", "500", "--duration", "1", "--peak", "3000"];
        let report = run_memory(&[&arguments[..], &more[..]].concat());
        assert_all_ok(&report);
        assert!(
            report.workload.contains("uniform picks"),
            "{}",
            report.workload
        );
    }

    #[test]
    fn a_festival_closes_its_day_and_verifies() {
        let arguments = ["--accounts", "2000", "--merchants", "300"];
        let more = ["--duration", "1", "--peak", "2000"];
        let report = run_memory(&[&arguments[..], &more[..]].concat());
        assert!(report.verified_ok, "{}", report.text());
        let day = report
            .end_of_day
            .as_ref()
            .expect("a festival closes its day");
        assert_eq!(day.mispredicted, 0);
        assert_eq!(day.merchants_closed, end_of_day::CLOSED_MERCHANTS);
        assert_eq!(day.merchants_settled, 300);
        assert!(day.settled_fen > 0);
        assert_eq!(day.histories_checked, Some(3));
        assert!(
            report.text().contains("end of day        ok"),
            "{}",
            report.text()
        );
    }

    #[test]
    fn festival_only_and_transfers_only_flags_are_refused_with_the_other_workload() {
        let refused = |arguments: &[&str]| {
            let command = ["loadgen", "--target", "memory"];
            let cli = Cli::parse_from(command.iter().chain(arguments));
            config_from_cli(&cli).expect_err("refused")
        };
        let merchants = refused(&["--workload", "transfers", "--merchants", "10"]);
        assert!(merchants.contains("--merchants"), "{merchants}");
        let distribution = refused(&["--distribution", "uniform"]);
        assert!(distribution.contains("--distribution"), "{distribution}");
        let one = refused(&["--workload", "transfers", "--accounts", "1"]);
        assert!(one.contains("--accounts"), "{one}");
        let zipf = refused(&[
            "--workload",
            "transfers",
            "--distribution",
            "uniform",
            "--zipf",
            "1",
        ]);
        assert!(zipf.contains("--zipf"), "{zipf}");
    }
}
