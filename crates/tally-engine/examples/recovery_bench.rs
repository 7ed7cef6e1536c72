//! Times recovery of a data directory in its two phases: reading the log (every
//! checksum checked, frames decoded, as `Wal::open` reads it) and replaying it onto a
//! state machine. Read only: the directory is locked and left as it was.
//!
//! `cargo run --release -p tally-engine --example recovery_bench -- DIR`

use std::time::Instant;
use tally_state::StateMachine;

fn main() -> Result<(), String> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: recovery_bench DIR (a ledger's data directory)")?;
    let dir = std::path::Path::new(&dir);
    let _lock = tally_log::DirLock::acquire(dir).map_err(|error| error.to_string())?;

    let started = Instant::now();
    let read = tally_log::read_log(dir).map_err(|error| error.to_string())?;
    let read_elapsed = started.elapsed();
    let batches = read.records.len();
    let events: usize = read.records.iter().map(|r| r.batch.len()).sum();

    let started = Instant::now();
    let mut state = match read.snapshot {
        Some((_, image)) => StateMachine::from_image(image).map_err(|error| error.0)?,
        None => StateMachine::new(),
    };
    let load_elapsed = started.elapsed();
    let started = Instant::now();
    let replayed: Vec<_> = read
        .records
        .iter()
        .map(|record| (record.timestamp, &record.batch))
        .collect();
    state.replay(&replayed);
    let replay_elapsed = started.elapsed();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    println!(
        "read {batches} batches, {events} events in {:.2} s ({:.2} M events/s); snapshot load {:.2} s; replay {:.2} s ({:.2} M events/s); in all {:.2} M events/s",
        secs(read_elapsed),
        events as f64 / secs(read_elapsed) / 1e6,
        secs(load_elapsed),
        secs(replay_elapsed),
        events as f64 / secs(replay_elapsed) / 1e6,
        events as f64 / secs(read_elapsed + load_elapsed + replay_elapsed) / 1e6,
    );
    Ok(())
}
