//! Group-commit throughput and fdatasync latency of the write-ahead log on the real
//! filesystem, for groups of one batch of 1, 100, 1000 and 8190 transfers, and for groups
//! of several batches.
//!
//! Run: `cargo bench -p tally-log --bench wal_bench -- [seconds per case]`
//! (`-- --test`: a smoke run of 0.02 s per case)
//!
//! Files go to `<workspace>/target/wal-bench` (not /tmp, which may be tmpfs and would
//! make fdatasync free). Closed loop, one writer: each append waits for its own sync,
//! which is what one log-writer thread does.

mod common;

use common::percentile_us;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tally_log::{DirLock, FsStorage, LogOptions, LogRecord, Storage, Wal};
use tally_types::{Batch, Transfer};

/// FsStorage that times every `sync_data`, to split fdatasync from the write.
#[derive(Debug)]
struct TimedStorage {
    inner: FsStorage,
}

/// The Wal owns its storage, so the timings land here. One uncontended lock per
/// fdatasync is noise next to the sync itself.
static SYNC_NS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

impl Storage for TimedStorage {
    fn path(&self, name: &str) -> PathBuf {
        self.inner.path(name)
    }
    fn list(&mut self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&mut self, name: &str) -> io::Result<()> {
        self.inner.create(name)
    }
    fn len(&mut self, name: &str) -> io::Result<u64> {
        self.inner.len(name)
    }
    fn read_at(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(name, offset, buf)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.append(name, bytes)
    }
    fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_at(name, offset, bytes)
    }
    fn sync_data(&mut self, name: &str) -> io::Result<()> {
        let start = Instant::now();
        let result = self.inner.sync_data(name);
        let elapsed_ns = start.elapsed().as_nanos() as u64;
        SYNC_NS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(elapsed_ns);
        result
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn close(&mut self, name: &str) {
        self.inner.close(name)
    }
    fn another_handle(&self) -> io::Result<Box<dyn Storage>> {
        self.inner.another_handle()
    }
}

fn batch(events: usize) -> Batch {
    Batch::CreateTransfers(
        (0..events)
            .map(|i| Transfer {
                id: i as u128 + 1,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 1_250,
                ledger: 156,
                code: 1,
                ..Transfer::default()
            })
            .collect(),
    )
}

fn run(
    dir: &PathBuf,
    batches_per_group: usize,
    events: usize,
    duration: Duration,
) -> io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let _lock = DirLock::acquire(dir).map_err(io::Error::other)?;
    let storage = TimedStorage {
        inner: FsStorage::create_dir(dir)?,
    };
    SYNC_NS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let (mut wal, _) = Wal::open_with_storage(Box::new(storage), LogOptions::default())
        .map_err(io::Error::other)?;
    let template = batch(events);
    let mut group: Vec<LogRecord> = Vec::with_capacity(batches_per_group);
    let mut append_ns = Vec::new();
    let start = Instant::now();
    let mut timestamp = 1u64;
    while start.elapsed() < duration {
        group.clear();
        for _ in 0..batches_per_group {
            group.push(LogRecord {
                sequence: wal.next_sequence() + group.len() as u64,
                timestamp,
                batch: template.clone(),
            });
            timestamp += events as u64;
        }
        let began = Instant::now();
        wal.append(&group).map_err(io::Error::other)?;
        append_ns.push(began.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let groups = append_ns.len();
    drop(wal);
    let mut sync_ns = std::mem::take(&mut *SYNC_NS.lock().unwrap_or_else(|p| p.into_inner()));
    append_ns.sort_unstable();
    sync_ns.sort_unstable();
    let events_total = (groups * batches_per_group * events) as f64;
    let bytes_total = (groups * batches_per_group * (48 + 128 * events)) as f64;
    println!(
        "{:>6} x {:>5} | {:>7} groups | {:>11.0} events/s | {:>7.1} MB/s | append p50 {:>8.1} us p99 {:>8.1} us max {:>8.1} us | fdatasync p50 {:>8.1} us p99 {:>8.1} us",
        batches_per_group,
        events,
        groups,
        events_total / elapsed,
        bytes_total / elapsed / 1e6,
        percentile_us(&append_ns, 0.50),
        percentile_us(&append_ns, 0.99),
        percentile_us(&append_ns, 1.0),
        percentile_us(&sync_ns, 0.50),
        percentile_us(&sync_ns, 0.99),
    );
    std::fs::remove_dir_all(dir)
}

fn main() -> io::Result<()> {
    let (arguments, smoke) = tally_testkit::bench_arguments();
    let seconds: f64 = arguments
        .first()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 0.02 } else { 3.0 });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wal-bench");
    println!(
        "wal_bench: {} s per case, one writer, fdatasync per group, dir {}",
        seconds,
        dir.display()
    );
    println!("batches x events per group");
    for (batches, events) in [(1, 1), (1, 100), (1, 1000), (1, 8190), (8, 1000), (64, 100)] {
        run(&dir, batches, events, Duration::from_secs_f64(seconds))?;
    }
    Ok(())
}
