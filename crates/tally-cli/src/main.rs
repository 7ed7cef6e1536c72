//! `tally`: applies, inspects and checks a ledger on disk (docs/spec.md §4).
//!
//! * `tally apply --data DIR [--shards N] [--manual-clock]`: JSON Lines requests on
//!   stdin, one answer line each on stdout, each written and flushed only once its
//!   request is durable.
//! * `tally accounts|transfers --data DIR`: dump as JSON Lines.
//! * `tally serve --data DIR --listen ADDR [--tls-cert F --tls-key F] [--tokens F]`:
//!   the ledger as a gRPC server until SIGINT or SIGTERM; `tally token` makes a token;
//!   with `--cluster 1=PEER,2=PEER,3=PEER --replica ID`, one replica of a cluster.
//! * `tally cluster status|add|remove --peer ADDR`: a cluster's replicas and membership.
//! * `tally events --data DIR [--after TS] [--follow] [--limit N]`: the change events as
//!   JSON Lines, read from the event journal without the directory's lock.
//! * `tally verify --data DIR`: checks every checksum, replays the log, checks every
//!   guarantee that can be checked from disk; exits non-zero on any violation.

/// mimalloc: the server and the replicas allocate and free per request on every
/// thread; against the system allocator, a 3-replica cluster on one 2-core machine
/// committed 5-8 % more (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod events;
mod lines;
mod profile;
mod serve;

use clap::{Parser, Subcommand};
use lines::{Line, read_line_bounded};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tally_engine::{Config, EngineError, Ledger, Placement, ShardExecution};
use tally_json::{LedgerLookup, Request, RequestLine};
use tally_log::LogError;
use tally_state::StateMachine;
use tally_types::currency::CurrencyTable;
use tally_types::{BATCH_EVENTS_MAX, Batch};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally payment ledger: apply, inspect and verify a ledger on disk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply JSON Lines requests from stdin; one answer line per request on stdout.
    Apply {
        #[arg(long)]
        data: PathBuf,
        /// Number of shards (default: fitted to the machine). Results never depend on it.
        #[arg(long)]
        shards: Option<usize>,
        /// Place ids on shards by their lowest N bits (1 to 128; default 128, the whole
        /// id): ids that share them share a shard. Results never depend on it.
        #[arg(long, default_value_t = Placement::WHOLE_ID)]
        placement_bits: Placement,
        /// Run every group by plan on the shard threads, not only where that is estimated
        /// faster than serially (to exercise or measure them). Results never depend on it.
        #[arg(long)]
        shards_always_by_plan: bool,
        /// Stamp batches from each request's "now" instead of the wall clock.
        #[arg(long)]
        manual_clock: bool,
    },
    /// Dump every account as JSON Lines.
    Accounts {
        #[arg(long)]
        data: PathBuf,
    },
    /// Dump every transfer as JSON Lines.
    Transfers {
        #[arg(long)]
        data: PathBuf,
    },
    /// Print change events as JSON Lines, without the directory's lock; --follow waits for more.
    Events(events::EventsArgs),
    /// Print the log's parallelism profile: how far N shards could speed it up.
    Profile(profile::ProfileArgs),
    /// Check the log's checksums, replay it and check every guarantee.
    Verify {
        #[arg(long)]
        data: PathBuf,
    },
    /// Serve the ledger over gRPC (TLS, tokens, limits) until SIGINT or SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// Make a bearer token: append its hash to a token file, print the token once.
    Token(serve::TokenArgs),
    /// A cluster's replicas: status, add, remove.
    Cluster(cluster::ClusterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Apply {
            data,
            shards,
            placement_bits,
            shards_always_by_plan,
            manual_clock,
        } => {
            let execution = match shards_always_by_plan {
                true => ShardExecution::Always,
                false => ShardExecution::WhenFaster,
            };
            apply(data, (shards, placement_bits, execution), manual_clock)
        }
        Command::Accounts { data } => dump(data, Dump::Accounts),
        Command::Transfers { data } => dump(data, Dump::Transfers),
        Command::Events(args) => events::events(args),
        Command::Profile(args) => profile::profile(args),
        Command::Verify { data } => verify(data),
        Command::Serve(args) => serve::serve(*args),
        Command::Token(args) => serve::token(args),
        Command::Cluster(args) => cluster::cluster(args),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tally: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Shards asked for on the command line (none: fitted to the machine), and how ids are
/// placed on them.
pub(crate) type Sharding = (Option<usize>, Placement, ShardExecution);

pub(crate) fn open(
    data: PathBuf,
    (shards, placement, execution): Sharding,
    manual_clock: bool,
) -> Result<Ledger, String> {
    let mut config = Config::new(data);
    config.placement = placement;
    config.shard_execution = execution;
    if let Some(shards) = shards {
        if shards == 0 || shards > tally_engine::SHARDS_MAX {
            return Err(format!(
                "--shards {shards}: give a number from 1 to {}",
                tally_engine::SHARDS_MAX
            ));
        }
        config.shards = shards;
    }
    config.manual_clock = manual_clock;
    let ledger = Ledger::open(config).map_err(|error| error.to_string())?;
    let recovery = ledger.recovery();
    if let Some(kept) = &recovery.torn_tail_kept {
        // Never in silence: a crash leaves such bytes, but so does damage to the last
        // frame, which may have been acknowledged.
        eprintln!(
            "tally: warning: the log ended in {} byte(s) that do not check (a write cut short by a crash, never acknowledged, or damage to the last frame); cut from the log and kept in {}",
            recovery.torn_tail_bytes_cut,
            kept.display()
        );
    }
    if let Some(cut) = &recovery.change_events_cut {
        // The journal held events of log frames that are gone: it follows the log.
        eprintln!(
            "tally: warning: the change-event journal held {} event(s) past the log's end, made by log frames that are gone; cut from the journal and kept in {}; new events are stamped after {}",
            cut.events,
            cut.kept.display(),
            cut.last_before
        );
    }
    Ok(ledger)
}

/// Ledger lookups for the amount-scale rule of `tally apply`.
struct LedgerLedgers<'a>(&'a Ledger);

impl LedgerLookup for LedgerLedgers<'_> {
    fn account_ledger(&self, id: u128) -> Option<u32> {
        self.0
            .lookup_accounts(&[id])
            .first()
            .map(|account| account.ledger)
    }

    fn transfer_ledger(&self, id: u128) -> Option<u32> {
        self.0
            .lookup_transfers(&[id])
            .first()
            .map(|transfer| transfer.ledger)
    }
}

fn apply(data: PathBuf, sharding: Sharding, manual_clock: bool) -> Result<ExitCode, String> {
    let ledger = open(data, sharding, manual_clock)?;
    let currencies = CurrencyTable::default();
    let stdin = std::io::stdin();
    let mut out = BufWriter::new(std::io::stdout().lock());
    // Bound the line we hold: the largest legal request is 8,190 events.
    let line_bytes_max = BATCH_EVENTS_MAX * 2_048;
    let mut input = stdin.lock();
    let mut buffer = Vec::new();
    while let Some(line) = read_line_bounded(&mut input, &mut buffer, line_bytes_max)
        .map_err(|error| format!("reading stdin: {error}"))?
    {
        let answer = match line {
            // A blank line holds no request, so it gets no answer.
            Line::Text(line) if line.trim().is_empty() => continue,
            Line::Text(line) => answer_line(&ledger, &line, &currencies, manual_clock),
            Line::TooLong(bytes) => tally_json::error_answer(&format!(
                "line of {bytes} bytes is longer than the maximum {line_bytes_max}"
            )),
            Line::NotUtf8(offset) => {
                tally_json::error_answer(&format!("line is not valid UTF-8 (at byte {offset})"))
            }
        };
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .map_err(|error| format!("writing stdout: {error}"))?;
    }
    ledger.shutdown().map_err(|error| error.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn answer_line(
    ledger: &Ledger,
    line: &str,
    currencies: &CurrencyTable,
    manual_clock: bool,
) -> String {
    let RequestLine {
        request,
        now,
        balances,
    } = match tally_json::parse_line(line, &LedgerLedgers(ledger), currencies) {
        Ok(parsed) => parsed,
        Err(error) => return tally_json::error_answer(&error.0),
    };
    if now.is_some() && !manual_clock {
        return tally_json::error_answer("now: requires --manual-clock");
    }
    let batch = match request {
        Request::CreateAccounts(accounts) => Batch::CreateAccounts(accounts),
        Request::CreateTransfers(transfers) if balances => {
            return transfers_with_balances(ledger, transfers, now, currencies);
        }
        Request::CreateTransfers(transfers) => Batch::CreateTransfers(transfers),
        Request::LookupAccounts(ids) => {
            return tally_json::accounts_answer(&ledger.lookup_accounts(&ids), currencies);
        }
        Request::LookupTransfers(ids) => {
            return tally_json::transfers_answer(&ledger.lookup_transfers(&ids), currencies);
        }
        Request::GetAccountTransfers(filter) => {
            return tally_json::transfers_answer(
                &ledger.get_account_transfers(&filter),
                currencies,
            );
        }
        Request::GetAccountBalances(filter) => {
            let rows: Vec<(u64, tally_types::AccountBalances)> = ledger
                .get_account_balances(&filter)
                .iter()
                .map(|row| (row.timestamp, row.balances))
                .collect();
            let account_ledger = ledger
                .lookup_accounts(&[filter.account_id])
                .first()
                .map_or(0, |account| account.ledger);
            return tally_json::account_balances_answer(&rows, account_ledger, currencies);
        }
        Request::QueryAccounts(filter) => {
            return tally_json::accounts_answer(&ledger.query_accounts(&filter), currencies);
        }
        Request::QueryTransfers(filter) => {
            return tally_json::transfers_answer(&ledger.query_transfers(&filter), currencies);
        }
        Request::GetChangeEvents {
            timestamp_min,
            limit,
        } => {
            return match ledger.get_change_events(timestamp_min, limit as usize) {
                Ok(events) => tally_json::change_events_answer(&events, currencies),
                Err(error) => tally_json::error_answer(&error.to_string()),
            };
        }
    };
    match ledger.submit_at(batch, now) {
        Ok(results) => {
            let outcomes: Vec<tally_json::EventOutcome> = results
                .iter()
                .map(|r| tally_json::EventOutcome {
                    code: r.code,
                    timestamp: r.timestamp,
                })
                .collect();
            tally_json::results_answer(&outcomes)
        }
        Err(error) => tally_json::error_answer(&error.to_string()),
    }
}

/// A `create_transfers` line with `"balances": true`: each applied transfer's answer
/// carries both accounts' balances, in the scale of the ledger it took.
fn transfers_with_balances(
    ledger: &Ledger,
    transfers: Vec<tally_types::Transfer>,
    now: Option<u64>,
    currencies: &CurrencyTable,
) -> String {
    let ids: Vec<u128> = transfers.iter().map(|t| t.id).collect();
    match ledger.create_transfers_with_balances(transfers, now) {
        Ok(results) => {
            let outcomes: Vec<tally_json::BalancedOutcome> = results
                .iter()
                .zip(&ids)
                .map(|(r, id)| tally_json::BalancedOutcome {
                    outcome: tally_json::EventOutcome {
                        code: r.code,
                        timestamp: r.timestamp,
                    },
                    // The stored transfer has its ledger filled in (a post, void or
                    // refund may give 0).
                    balances: r.balances.map(|balances| {
                        let stored = ledger.lookup_transfers(&[*id]);
                        (balances, stored.first().map_or(0, |t| t.ledger))
                    }),
                })
                .collect();
            tally_json::results_with_balances_answer(&outcomes, currencies)
        }
        Err(error) => tally_json::error_answer(&error.to_string()),
    }
}

enum Dump {
    Accounts,
    Transfers,
}

/// A data directory read without changing it, the directory lock held while reading
/// (one process at a time, docs/spec.md §3.7; `LOCK` is created if missing). A single
/// node's ledger: what recovery would recover, replayed onto the newest snapshot, with
/// the checks of the log; no torn tail is cut and no log file is made. The log is read
/// on one thread and replayed on another as it is read, as at start-up, and is never
/// whole in memory. A cluster replica's: its snapshot and the committed entries of its
/// log after it (`tally_cluster::offline`).
struct ReadOnly {
    source: Source,
    state: StateMachine,
    _lock: tally_log::DirLock,
}

/// Whose directory was read, and what its log held.
enum Source {
    /// A single node's log, and its change-event journal compared with the log's
    /// events when asked for.
    Node(
        tally_log::VerifyReport,
        Option<tally_engine::inspect::EventsComparison>,
    ),
    Replica(tally_cluster::offline::ReplicaDir),
}

fn read_only(data: &Path, compare_events: bool) -> Result<ReadOnly, String> {
    require_any_dir(data)?;
    let lock = tally_log::DirLock::acquire(data).map_err(|error| error.to_string())?;
    if tally_cluster::offline::is_replica_dir(data) {
        let mut replica = tally_cluster::offline::read_replica_dir(data)
            .map_err(|error| format!("replica check failed: {error}"))?;
        return Ok(ReadOnly {
            state: std::mem::take(&mut replica.applied.state),
            source: Source::Replica(replica),
            _lock: lock,
        });
    }
    let read = match compare_events {
        true => tally_engine::inspect::read_only_comparing_events(data)
            .map(|(report, state, events)| (report, state, Some(events))),
        false => {
            tally_engine::inspect::read_only(data).map(|(report, state)| (report, state, None))
        }
    };
    let (report, state, events) = read.map_err(|error| match error {
        EngineError::Log(error) => format!("log check failed: {error}"),
        other => other.to_string(),
    })?;
    Ok(ReadOnly {
        source: Source::Node(report, events),
        state,
        _lock: lock,
    })
}

fn dump(data: PathBuf, what: Dump) -> Result<ExitCode, String> {
    let ReadOnly { state, _lock, .. } = read_only(&data, false)?;
    let currencies = CurrencyTable::default();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = (|| -> std::io::Result<()> {
        match what {
            Dump::Accounts => {
                for account in state.accounts() {
                    writeln!(out, "{}", tally_json::account_line(account, &currencies))?;
                }
            }
            Dump::Transfers => {
                for transfer in state.transfers() {
                    writeln!(out, "{}", tally_json::transfer_line(&transfer, &currencies))?;
                }
            }
        }
        out.flush()
    })();
    written.map_err(|error| format!("writing stdout: {error}"))?;
    Ok(ExitCode::SUCCESS)
}

/// A data directory that exists: a single node's or a cluster replica's.
pub(crate) fn require_any_dir(data: &std::path::Path) -> Result<(), String> {
    match data.is_dir() {
        true => Ok(()),
        false => Err(format!("{}: no such data directory", data.display())),
    }
}

fn verify(data: PathBuf) -> Result<ExitCode, String> {
    let ReadOnly {
        source,
        state,
        _lock,
    } = read_only(&data, true)?;
    match &source {
        Source::Node(report, _) => print_node_log(report),
        Source::Replica(replica) => print_replica_log(replica),
    }
    let replica = matches!(source, Source::Replica(_));
    let journal = check_journal(&data.join(events::EVENTS_DIR_NAME), replica);
    println!("{}", journal.summary);
    for warning in &journal.warnings {
        println!("warning: {warning}");
    }
    let mut violations = journal.violations;
    if let Source::Node(report, Some(comparison)) = &source
        && journal.count > 0
    {
        let torn = report.torn_tail_bytes > 0 || report.torn_segment;
        violations.extend(print_events_comparison(comparison, torn));
    }
    violations.extend(state.check_invariants().into_iter().map(|v| v.0));
    violations.extend(check_references(&state));
    let (accounts, transfers) = (state.account_count(), state.transfer_count());
    violations.truncate(100);
    println!("state: {accounts} account(s), {transfers} transfer(s) replayed");
    if violations.is_empty() {
        println!(
            "verify: ok (checksums, replay, change-event journal, conservation per ledger, balance limits, pending reservations, refund bounds, references)"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for violation in &violations {
            println!("violation: {violation}");
        }
        println!("verify: FAILED ({} violation(s) shown)", violations.len());
        Ok(ExitCode::FAILURE)
    }
}

/// What comparing a single node's journal with its log's events found; answers the
/// differences, as violations. Journal events past the log's end were made by log
/// frames that are gone: with a `torn` tail in the log, those frames' (a warning, as
/// the tail is); with none, frames lost without a trace (a violation).
fn print_events_comparison(
    found: &tally_engine::inspect::EventsComparison,
    torn: bool,
) -> Vec<String> {
    println!(
        "events compared with the log's: {} equal, {} past the journal's end (a crash lost \
         them from its tail: the next open writes them again), {} before its oldest, {} \
         differing, {} past the log's end",
        found.equal,
        found.past_journal_end,
        found.before_journal,
        found.differing,
        found.past_log_end
    );
    let past = found.past_log_end;
    let past_log_end = (past > 0).then(|| match torn {
        true => format!(
            "the journal holds {past} event(s) past the log's end, the torn tail's; the \
             next `tally apply` cuts them from the journal and keeps them in a \
             torn-events-after-<timestamp>-to-<timestamp>.bin file"
        ),
        false => format!(
            "the journal holds {past} event(s) past the log's end, and the log has no torn \
             tail: log frames that were synced are missing; the next `tally apply` cuts \
             the events from the journal and keeps them in a \
             torn-events-after-<timestamp>-to-<timestamp>.bin file"
        ),
    });
    if let Some(why) = &found.unread {
        println!("warning: the comparison stopped where the journal stopped reading: {why}");
    }
    let mut violations: Vec<String> = found
        .differences
        .iter()
        .map(|difference| format!("change-event journal: {difference}"))
        .collect();
    let described = violations.len() as u64;
    if found.differing > described {
        violations.push(format!(
            "change-event journal: {} more event(s) differ from the log's",
            found.differing - described
        ));
    }
    match past_log_end {
        Some(past) if torn => println!("warning: {past}"),
        Some(past) => violations.push(format!("change-event journal: {past}")),
        None => {}
    }
    violations
}

/// What `verify` found in a single node's log.
fn print_node_log(report: &tally_log::VerifyReport) {
    println!(
        "log: {} segment(s), {} batch(es), {} event(s), {} byte(s) ({} preallocated), sequences {}..={}, snapshot {}",
        report.segments,
        report.records,
        report.events,
        report.bytes,
        report.preallocated_bytes,
        report.sequence_first,
        report.sequence_last,
        report
            .snapshot_sequence
            .map_or("none".to_string(), |s| s.to_string()),
    );
    for damaged in &report.snapshots_damaged {
        println!("warning: damaged snapshot (an older one or the log is used): {damaged}");
    }
    if report.torn_tail_bytes > 0 {
        println!(
            "warning: the log ends in {} byte(s) of a frame that does not check (an unfinished write cut short by a crash, or damage to the last frame); not replayed; the next `tally apply` cuts it",
            report.torn_tail_bytes
        );
    }
    if report.torn_segment {
        println!(
            "warning: the last segment's header never reached the disk (a crash during rotation); the next `tally apply` removes it"
        );
    }
}

/// What `verify` found in a cluster replica's log, and where its state stands: the
/// digest `tally cluster status` reports, to compare replicas stopped alike.
fn print_replica_log(replica: &tally_cluster::offline::ReplicaDir) {
    let position = |at: Option<tally_cluster::offline::Position>| {
        at.map_or("none".to_string(), |at| at.to_string())
    };
    println!(
        "replica log: entries {}, commit {}, snapshot {}; {} entry(ies) after the commit not replayed (a new leader may replace them)",
        replica
            .entries
            .map_or("none".to_string(), |(first, last)| format!(
                "{first}..={last}"
            )),
        position(replica.committed),
        position(replica.snapshot),
        replica.entries_past_commit,
    );
    if replica.torn_tail_bytes > 0 {
        println!(
            "warning: the replica log ends in {} byte(s) that do not check (a write cut short by a crash, or damage to the last frame); not replayed; the replica cuts them at its next start and keeps a copy",
            replica.torn_tail_bytes
        );
    }
    let applied = &replica.applied;
    println!(
        "replica state: applied {}, digest {:016x}, {} event(s) applied since the log began",
        position(replica.applied_at()),
        applied.digest,
        applied.events_applied
    );
}

/// What reading the whole change-event journal found.
struct JournalCheck {
    /// Events read.
    count: u64,
    summary: String,
    warnings: Vec<String>,
    violations: Vec<String>,
}

/// Reads the change-event journal in `dir` from end to end, checking every frame's
/// checksums and the order of timestamps (the directory's lock is held, so no writer
/// is appending). Events that retention deleted are not missing. With `skips_allowed`
/// (a cluster replica's journal), a gap further on is a warning: the replica took its
/// state from another's snapshot there, or lost its journal's files, and the journal
/// records the gap. A single node's journal never skips: it is derived again from the
/// log instead.
fn check_journal(dir: &Path, skips_allowed: bool) -> JournalCheck {
    let mut check = JournalCheck {
        count: 0,
        summary: String::new(),
        warnings: Vec::new(),
        violations: Vec::new(),
    };
    let (mut count, mut first, mut last) = (0u64, None, 0u64);
    let mut skips = Vec::new();
    let read = (|| -> Result<Option<tally_log::events::UnreadableTail>, LogError> {
        let mut reader = tally_log::events::EventReader::open(dir)?;
        let mut timestamp_min = 0;
        loop {
            let events = match reader.read(timestamp_min, tally_types::CHANGE_EVENTS_LIMIT_MAX) {
                Err(LogError::EventsRetired {
                    next_timestamp_kept,
                    ..
                }) if (count == 0 || skips_allowed) && timestamp_min < next_timestamp_kept => {
                    if count > 0 {
                        skips.push((last, next_timestamp_kept));
                    }
                    timestamp_min = next_timestamp_kept;
                    continue;
                }
                read => read?,
            };
            let Some(newest) = events.last() else {
                return Ok(reader.unreadable_tail().cloned());
            };
            count += events.len() as u64;
            first.get_or_insert(events[0].timestamp);
            last = newest.timestamp;
            timestamp_min = last + 1;
        }
    })();
    check.count = count;
    check.summary = match first {
        Some(first) => {
            format!("events: {count} event(s) in the journal, timestamps {first}..={last}")
        }
        None => "events: none in the journal".to_string(),
    };
    for (before, after) in skips {
        check.warnings.push(format!(
            "the change-event journal goes on at timestamp {after} after {before}, without the \
             events between: the replica never received them (it took its state from \
             another's snapshot, or its journal's files were lost)"
        ));
    }
    let finding = read.and_then(|tail| {
        tail.map(|tail| events::unreadable_tail_finding(&tail))
            .transpose()
    });
    match finding {
        Err(error) => check
            .violations
            .push(format!("change-event journal: {error}")),
        Ok(None) => {}
        Ok(Some(events::UnreadableTailFinding::Damaged(message))) => {
            check.violations.push(message);
        }
        Ok(Some(events::UnreadableTailFinding::CutShort(message))) => {
            check.warnings.push(message);
        }
    }
    check
}

/// Every transfer names existing accounts of its own ledger and a unique id, and the
/// timestamps strictly increase.
fn check_references(state: &tally_state::StateMachine) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last_timestamp = 0;
    for transfer in state.transfers() {
        for id in [transfer.debit_account_id, transfer.credit_account_id] {
            match state.lookup_account(id) {
                Some(account) if account.ledger == transfer.ledger => {}
                Some(_) => violations.push(format!("transfer {} crosses ledgers", transfer.id)),
                None => violations.push(format!(
                    "transfer {} names unknown account {id}",
                    transfer.id
                )),
            }
        }
        if transfer.timestamp <= last_timestamp {
            violations.push(format!(
                "transfer {} is out of timestamp order",
                transfer.id
            ));
        }
        last_timestamp = transfer.timestamp;
    }
    violations
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check_journal;
    use tally_log::events::{EventJournal, JournalOptions};
    use tally_testkit::account_created_event as created;

    /// A journal that skips (a replica that installed another's snapshot) warns on a
    /// replica's directory and is a violation on a single node's.
    #[test]
    fn a_skip_in_the_journal_is_a_warning_only_for_a_replica() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = EventJournal::open(dir.path(), JournalOptions::default()).unwrap();
        journal.append(&[created(10), created(11)]).unwrap();
        journal.skip_to(100);
        journal.append(&[created(101)]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let replica = check_journal(dir.path(), true);
        assert!(replica.violations.is_empty(), "{:?}", replica.violations);
        assert_eq!(replica.warnings.len(), 1, "{:?}", replica.warnings);
        assert!(replica.warnings[0].contains("goes on at timestamp 101 after 11"));
        assert!(
            replica.summary.contains("3 event(s)"),
            "{}",
            replica.summary
        );
        let node = check_journal(dir.path(), false);
        assert_eq!(node.violations.len(), 1, "{:?}", node.violations);
    }
}
