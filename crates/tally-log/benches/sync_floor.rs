//! The disk's floor under a durable answer's latency: what a payment would wait if
//! computing cost nothing and only the log's syncs took time.
//!
//! Run: `cargo bench -p tally-log --bench sync_floor -- [seconds] [bytes per group]`
//! (defaults 10 s and 3,072 bytes, the festival's mean group of 24 transfers;
//! `-- --test`: a smoke run of 0.05 s)
//!
//! One writer writes a group in place over a preallocated, synced segment and calls
//! `fdatasync`, back to back, as the busy log thread does, and records when each
//! write began and each sync ended. A payment that arrives while sync k is in flight
//! joins group k + 1, written as sync k ends, and is durable when sync k + 1 ends: in
//! general, when the first sync begun after it ends. Arrivals are taken at every
//! microsecond of the run (a uniform load), so the latencies printed are what any load
//! that keeps the log busy would see at best. A second case runs two writers over
//! halves of the segment (two syncs in flight). Files go to
//! `<workspace>/target/sync-floor` (not /tmp, which may be tmpfs).

mod common;

use common::percentile_us;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tally_log::{DirLock, FsStorage, Storage};

/// The segment written over, as the engine's preallocated segments are.
const SEGMENT_BYTES: u64 = 64 << 20;
const SEGMENT: &str = "segment";

/// Prepares a synced segment of zeros, so each write later changes data in place.
fn preallocated(dir: &Path) -> io::Result<FsStorage> {
    let mut storage = FsStorage::create_dir(dir)?;
    storage.create(SEGMENT)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        storage.append(SEGMENT, &zeros)?;
    }
    storage.sync_data(SEGMENT)?;
    storage.sync_dir()?;
    Ok(storage)
}

/// One sync: when its group's write began and when its `fdatasync` returned, in
/// nanoseconds from the run's start.
#[derive(Clone, Copy)]
struct SyncSpan {
    began: u64,
    ended: u64,
}

/// Writes and syncs groups back to back for `duration`, each writer over its own region
/// of the segment; every sync, in order of its start.
fn syncs(
    storage: &FsStorage,
    writers: usize,
    group_bytes: usize,
    duration: Duration,
) -> io::Result<Vec<SyncSpan>> {
    let region = SEGMENT_BYTES / writers as u64;
    let start = Instant::now();
    let mut all = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers as u64)
            .map(|writer| {
                let mut storage = storage.another_handle()?;
                Ok(scope.spawn(move || -> io::Result<Vec<SyncSpan>> {
                    let group = vec![0xA5u8; group_bytes];
                    let mut mine = Vec::new();
                    let mut offset = 0u64;
                    while start.elapsed() < duration {
                        if offset + group_bytes as u64 > region {
                            offset = 0;
                        }
                        let began = start.elapsed().as_nanos() as u64;
                        storage.write_at(SEGMENT, writer * region + offset, &group)?;
                        storage.sync_data(SEGMENT)?;
                        offset += group_bytes as u64;
                        let ended = start.elapsed().as_nanos() as u64;
                        mine.push(SyncSpan { began, ended });
                    }
                    Ok(mine)
                }))
            })
            .collect::<io::Result<_>>()?;
        let mut all = Vec::new();
        for thread in threads {
            let mine = thread
                .join()
                .map_err(|_| io::Error::other("a writer panicked"))??;
            all.extend(mine);
        }
        Ok::<_, io::Error>(all)
    })?;
    all.sort_unstable_by_key(|sync| sync.began);
    Ok(all)
}

/// Latency, in nanoseconds, of an arrival at every microsecond of the run: it is
/// durable when the first sync that began after it ends (with one writer: the rest of
/// the sync in flight, then the next one). Arrivals after the last sync began are left
/// out.
fn arrival_latencies_ns(syncs: &[SyncSpan]) -> Vec<u64> {
    // The earliest end among the syncs from each one on.
    let mut earliest_end = vec![u64::MAX; syncs.len() + 1];
    for (i, sync) in syncs.iter().enumerate().rev() {
        earliest_end[i] = earliest_end[i + 1].min(sync.ended);
    }
    let Some(last) = syncs.last() else {
        return Vec::new();
    };
    let mut latencies = Vec::with_capacity((last.began / 1_000) as usize);
    let mut next = 0;
    let mut at = 0;
    while at <= last.began {
        while syncs[next].began < at {
            next += 1;
        }
        latencies.push(earliest_end[next] - at);
        at += 1_000;
    }
    latencies
}

/// The tail of `sorted_ns` (ascending), in microseconds.
fn tail_us(sorted_ns: &[u64]) -> String {
    let at = |p| percentile_us(sorted_ns, p);
    format!(
        "p50 {:.0} us  p99 {:.0} us  p99.9 {:.0} us  p99.99 {:.0} us  max {:.0} us",
        at(0.50),
        at(0.99),
        at(0.999),
        at(0.9999),
        at(1.0),
    )
}

fn main() -> io::Result<()> {
    let (arguments, smoke) = tally_testkit::bench_arguments();
    let seconds: f64 = arguments
        .first()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 0.05 } else { 10.0 });
    let group_bytes: usize = arguments
        .get(1)
        .and_then(|s| s.parse().ok())
        .filter(|&bytes| bytes > 0 && bytes as u64 <= SEGMENT_BYTES)
        .unwrap_or(3_072);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sync-floor");
    let _ = std::fs::remove_dir_all(&dir);
    let lock = DirLock::acquire(&dir).map_err(io::Error::other)?;
    let storage = preallocated(&dir)?;
    println!(
        "sync_floor: {seconds} s a case, {group_bytes}-byte groups written in place and \
         synced back to back, dir {}",
        dir.display()
    );
    for writers in [1, 2] {
        let syncs = syncs(
            &storage,
            writers,
            group_bytes,
            Duration::from_secs_f64(seconds),
        )?;
        report(writers, &syncs);
    }
    drop(storage);
    drop(lock);
    std::fs::remove_dir_all(&dir)
}

fn report(writers: usize, syncs: &[SyncSpan]) {
    let mut syncs_ns: Vec<u64> = syncs.iter().map(|sync| sync.ended - sync.began).collect();
    syncs_ns.sort_unstable();
    let mut latencies = arrival_latencies_ns(syncs);
    latencies.sort_unstable();
    println!(
        "  {writers} in flight: write + fdatasync, {} syncs: {}",
        syncs_ns.len(),
        tail_us(&syncs_ns)
    );
    println!(
        "  {writers} in flight: a payment's floor, {} arrivals: {}",
        latencies.len(),
        tail_us(&latencies)
    );
}
