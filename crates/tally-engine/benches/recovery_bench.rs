//! Times recovery of a data directory, two ways:
//!
//! 1. Read only, in two phases: reading the log (every checksum checked, frames
//!    decoded) with the directory locked and left as it was, then replaying it onto a
//!    state machine, one after the other.
//! 2. `Ledger::open` on one shard, as a restart does: the log read on one thread and
//!    replayed on another as it is read (this may cut a torn tail, as any open does).
//!
//! `cargo bench -p tally-engine --bench recovery_bench -- DIR`, DIR absolute (cargo runs
//! benches from the crate's directory); `-- DIR --open-only`: the second way alone (for
//! a profile of a restart); `-- DIR --snapshot`: first open DIR, commit one account and
//! write a snapshot of the whole state, so that both ways then time a snapshot's load
//! (DIR is changed: run it on a copy); `-- --test`: a small ledger written to a temporary
//! directory first, as a smoke test; `--transfers-capacity N`: the restart opens with
//! that `Config::transfers_capacity`, as a service configured for N transfers does.

mod common;

use std::time::Instant;
use tally_engine::{Config, Ledger};
use tally_state::StateMachine;

fn main() -> Result<(), String> {
    let (mut args, smoke) = tally_testkit::bench_arguments();
    let open_only = args.iter().any(|argument| argument == "--open-only");
    let snapshot_first = args.iter().any(|argument| argument == "--snapshot");
    args.retain(|argument| argument != "--open-only" && argument != "--snapshot");
    let transfers_capacity = match args.iter().position(|a| a == "--transfers-capacity") {
        Some(at) => {
            let value = args
                .get(at + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or("--transfers-capacity takes a number")?;
            args.drain(at..at + 2);
            value
        }
        None => 0,
    };
    let (dir, _temp) = match smoke {
        true => {
            let (dir, temp) =
                common::data_dir("recovery-bench", true).map_err(|e| e.to_string())?;
            write_small_ledger(&dir)?;
            (dir, temp)
        }
        false => {
            let dir = args
                .into_iter()
                .next()
                .ok_or("usage: recovery_bench DIR (a ledger's data directory)")?;
            let dir = std::path::PathBuf::from(dir);
            // `cargo bench` runs from the crate's directory: a relative path that names
            // nothing there would otherwise open (and create) an empty ledger.
            if !dir.is_dir() {
                return Err(format!(
                    "{} is not a directory (cargo bench runs from crates/tally-engine: \
                     give an absolute path, e.g. \"$PWD/tally-data/loadgen/ledger\")",
                    dir.display()
                ));
            }
            (dir, None)
        }
    };
    if snapshot_first {
        write_snapshot(&dir)?;
    }
    if !open_only {
        read_only_in_two_phases(&dir)?;
    }
    open_as_a_restart(&dir, transfers_capacity)
}

/// A ledger of a few batches, for the smoke run.
fn write_small_ledger(dir: &std::path::Path) -> Result<(), String> {
    let ledger = Ledger::open(Config::new(dir)).map_err(|error| error.to_string())?;
    for id in 1..=100u128 {
        create_account(&ledger, id)?;
    }
    ledger.shutdown().map_err(|error| error.to_string())
}

/// Commits account `id` on ledger 1.
fn create_account(ledger: &Ledger, id: u128) -> Result<(), String> {
    let account = tally_engine::Account {
        id,
        ledger: 1,
        code: 1,
        ..tally_engine::Account::default()
    };
    ledger
        .create_accounts(vec![account])
        .map(drop)
        .map_err(|error| error.to_string())
}

/// Opens the ledger in `dir`, commits one account (a new id) and writes a snapshot
/// after it: a snapshot falls due at the first group once the interval is one event.
fn write_snapshot(dir: &std::path::Path) -> Result<(), String> {
    let ledger = Ledger::open(Config {
        snapshot_events_interval: 1,
        ..Config::new(dir)
    })
    .map_err(|error| error.to_string())?;
    create_account(&ledger, u128::MAX - u128::from(std::process::id()))?;
    // The apply thread freezes the state after answering; the log thread writes it
    // from its loop. Shutdown would drop an image not yet handed over.
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let metrics = ledger.metrics();
        if metrics.snapshots_written > 0 {
            break;
        }
        if metrics.snapshots_failed > 0 || Instant::now() > deadline {
            return Err("the snapshot was not written".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ledger.shutdown().map_err(|error| error.to_string())?;
    let reopened = Ledger::open(Config {
        shards: 1,
        ..Config::new(dir)
    })
    .map_err(|error| error.to_string())?;
    let recovery = reopened.recovery();
    reopened.shutdown().map_err(|error| error.to_string())?;
    match recovery.snapshot_sequence {
        Some(_) => Ok(()),
        None => Err("no snapshot was written".into()),
    }
}

/// Reading the log with the directory locked and left as it was, then replaying it,
/// one after the other.
fn read_only_in_two_phases(dir: &std::path::Path) -> Result<(), String> {
    {
        let _lock = tally_log::DirLock::acquire(dir).map_err(|error| error.to_string())?;
        let started = Instant::now();
        let read = tally_log::read_log(dir).map_err(|error| error.to_string())?;
        let read_s = started.elapsed().as_secs_f64();
        let batches = read.records.len();
        let events: usize = read.records.iter().map(|r| r.batch.len()).sum();
        let started = Instant::now();
        let mut state = match read.snapshot {
            Some((_, image)) => StateMachine::from_image(image).map_err(|error| error.0)?,
            None => StateMachine::new(),
        };
        let load_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let replayed: Vec<_> = read
            .records
            .iter()
            .map(|record| (record.timestamp, &record.batch))
            .collect();
        state.replay(&replayed);
        let replay_s = started.elapsed().as_secs_f64();
        let rate = |seconds: f64| events as f64 / seconds / 1e6;
        println!(
            "read only: read {batches} batches, {events} events in {read_s:.2} s ({:.2} M events/s); snapshot load {load_s:.2} s; replay {replay_s:.2} s ({:.2} M events/s); in all {:.2} M events/s",
            rate(read_s),
            rate(replay_s),
            rate(read_s + load_s + replay_s),
        );
    }
    Ok(())
}

/// `Ledger::open` on one shard, as a restart does, with room for `transfers_capacity`.
/// Its shutdown writes no snapshot (the events it replayed would bring one due), so
/// that every run finds the directory as the first did.
fn open_as_a_restart(dir: &std::path::Path, transfers_capacity: usize) -> Result<(), String> {
    let ledger = Ledger::open(Config {
        shards: 1,
        transfers_capacity,
        snapshot_at_shutdown_events: 0,
        ..Config::new(dir)
    })
    .map_err(|error| error.to_string())?;
    let recovery = ledger.recovery();
    let seconds = recovery.elapsed.as_secs_f64();
    println!(
        "Ledger::open: snapshot {:?}, then {} batches, {} events replayed in {seconds:.2} s: {:.2} M events/s",
        recovery.snapshot_sequence,
        recovery.batches,
        recovery.events,
        recovery.events as f64 / seconds / 1e6,
    );
    ledger.shutdown().map_err(|error| error.to_string())
}
